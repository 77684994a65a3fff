"""How many rows and users each split gives a LEARN (or control) vector and each LEARN tree feature.

A ranker that sees a feature in 14% of its training rows and 9% of its evaluation rows is
not the ranker the paper describes, and a tree that splits on a feature present in few rows
can do worse than no feature at all. The report therefore states, per split:

* the share of rows with a user and with an item vector (LEARN's and every control's);
* among users with any event before a row's ``as_of``, the share whose rows have a user
  vector (by rows, and by users: a user counts as covered when any of their rows has one);
* the share of rows where each of LightGBM + LEARN's features is defined, and the UAUC of
  that feature used alone as the score (over the rows where it is defined): a feature that
  ranks a user's items at chance cannot help a ranker, whatever its coverage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ranking.arms import ARMS
from ranking.dataset import RankingDataset
from ranking.features import FeatureSpec, present, tree_features, vector_columns
from ranking.metrics import grouped_auc

SPLITS = ("train", "valid", "test")
VECTOR_COLUMNS = [c for v in dict.fromkeys(arm.vectors for arm in ARMS if arm.vectors) for c in vector_columns(v)]


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def vector_coverage(frame: pd.DataFrame) -> dict[str, object]:
    """Row and user coverage of every ``user_*``/``item_*`` vector column of ``frame``."""
    out: dict[str, object] = {"rows": len(frame), "users": int(frame["user_id"].nunique())}
    with_history = frame["user_n"].to_numpy() > 0
    out["users_with_history"] = int(frame.loc[with_history, "user_id"].nunique())
    for column in (c for c in VECTOR_COLUMNS if c in frame.columns):
        mask = present(frame, column)
        out[f"{column}_rows"] = _share(mask)
        if column.startswith("user_"):
            out[f"{column}_rows_with_history"] = _share(mask[with_history])
            users = frame.loc[with_history, "user_id"].to_numpy()
            covered = pd.Series(mask[with_history]).groupby(users).any()
            out[f"{column}_users_with_history"] = _share(covered.to_numpy())
    return out


def split_coverage(dataset: RankingDataset, learn_spec: FeatureSpec | None) -> dict[str, dict[str, object]]:
    """``vector_coverage`` per split, plus the defined share of each LightGBM + LEARN feature."""
    if not dataset.has_embeddings:
        return {}
    out = {}
    for name in SPLITS:
        frame = dataset.split(name)
        entry = vector_coverage(frame)
        if learn_spec is not None and learn_spec.learn_dim is not None and len(frame):
            features = tree_features(frame, learn_spec, with_learn=True)
            for column in (c for c in features.columns if c.startswith("learn_")):
                defined = features[column].notna().to_numpy()
                entry[f"feature {column}"] = float(defined.mean())
                alone = grouped_auc(frame["label"].to_numpy()[defined], features[column].to_numpy()[defined], frame["user_id"].to_numpy()[defined])
                entry[f"feature {column}: UAUC alone"] = alone.uauc
        out[name] = entry
    return out
