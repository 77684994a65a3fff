"""LightGBM rankers: the ID/statistics baseline and the cheap "+ LEARN features" variant.

Both are pointwise binary classifiers (the task is CVR), with user and item ids as native
categoricals. The number of boosting rounds is chosen by early stopping on the validation
period, never on the evaluation period.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from ranking.config import LGBMConfig
from ranking.features import FeatureSpec, Featurized, tree_features


class TreeRanker:
    def __init__(self, cfg: LGBMConfig, spec: FeatureSpec, with_learn: bool, seed: int, num_threads: int) -> None:
        self.cfg = cfg
        self.spec = spec
        self.with_learn = with_learn
        self.params = {
            "objective": "binary",
            "metric": "binary_logloss",
            "num_leaves": cfg.num_leaves,
            "learning_rate": cfg.learning_rate,
            "min_data_in_leaf": cfg.min_data_in_leaf,
            "cat_smooth": cfg.cat_smooth,
            "feature_fraction": cfg.feature_fraction,
            "bagging_fraction": cfg.bagging_fraction,
            "bagging_freq": cfg.bagging_freq,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": num_threads,
            "verbosity": -1,
        }
        self.booster: lgb.Booster | None = None
        #: Validation logloss per boosting round: the learning curve the report plots.
        self.history: list[dict[str, float | None]] = []

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        return tree_features(frame, self.spec, self.with_learn)

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> TreeRanker:
        return self.fit_featurized(Featurized.of(train, self.features(train)), Featurized.of(valid, self.features(valid)))

    def fit_featurized(self, train: Featurized[pd.DataFrame], valid: Featurized[pd.DataFrame]) -> TreeRanker:
        """``fit`` on periods featurized by ``features`` (once per arm, for every seed)."""
        cats = ["user_code", "item_code"]
        d_train = lgb.Dataset(train.inputs, label=train.labels, categorical_feature=cats, free_raw_data=False)
        d_valid = lgb.Dataset(valid.inputs, label=valid.labels, categorical_feature=cats, reference=d_train)
        curve: dict[str, dict[str, list[float]]] = {}
        self.booster = lgb.train(
            self.params,
            d_train,
            num_boost_round=self.cfg.max_rounds,
            valid_sets=[d_valid],
            valid_names=["validation"],
            callbacks=[lgb.early_stopping(self.cfg.early_stopping_rounds, verbose=False), lgb.record_evaluation(curve)],
        )
        losses = curve["validation"]["binary_logloss"]
        self.history = [{"epoch": k, "valid_logloss": float(v)} for k, v in enumerate(losses, 1)]
        return self

    @property
    def best_iteration(self) -> int:
        assert self.booster is not None, "fit() first"
        return int(self.booster.best_iteration)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_inputs(self.features(frame))

    def predict_inputs(self, inputs: pd.DataFrame) -> np.ndarray:
        """``predict`` on rows featurized by ``features``."""
        assert self.booster is not None, "fit() first"
        return np.asarray(self.booster.predict(inputs, num_iteration=self.booster.best_iteration), dtype=np.float64)
