"""Dataclass configuration for the ranking experiment, loadable from TOML.

Every knob that changes a number in the report lives here, so the report can print the
whole config next to its results and a run can be repeated from ``report.json`` alone.
Unknown keys in a TOML file are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from learn_features.config import load_config as load_library_config
from learn_features.config import parse_override
from learn_features.errors import LearnFeaturesError

BASELINE_MODELS = ("lgbm_baseline", "dnn_baseline")
LEARN_MODELS = ("lgbm_learn", "dnn_learn")
#: Each LEARN variant is judged against the baseline that differs from it only by the LEARN inputs.
MODEL_PAIRS = (("dnn_baseline", "dnn_learn"), ("lgbm_baseline", "lgbm_learn"))


@dataclass
class DataConfig:
    """Where the interactions come from and how ratings become labels.

    ``format="movielens"`` reads ``ratings.csv``/``movies.csv``; ratings >= ``positive_min_rating``
    are conversions and ratings <= ``negative_max_rating`` non-conversions. Ratings strictly
    between the two (3.5 on MovieLens) are neither, so they are not impressions, but they
    still count as user/item activity in the history statistics and tiers.
    ``format="generic"`` reads a CSV/Parquet table with ``user_id, item_id, timestamp, label``.
    """

    interactions: str
    items: str | None = None
    format: Literal["movielens", "generic"] = "movielens"
    positive_min_rating: float = 4.0
    negative_max_rating: float = 3.0


@dataclass
class SplitConfig:
    """Time periods: train < validation < cut <= evaluation.

    The validation period is the last ``valid_fraction`` (by time) of the impressions before
    the cut; it is used for early stopping so nothing is tuned on the evaluation period.
    ``train_start`` lets ranker training begin at the LEARN snapshot time, so that training
    impressions can see an embedding point-in-time (see docs/ranking.md).
    """

    cut: str | None = None
    cut_quantile: float = 0.9
    valid_fraction: float = 0.1
    train_start: str | None = None
    eval_end: str | None = None


@dataclass
class EmbeddingConfig:
    """Where the LEARN embeddings come from.

    ``parquet`` reads snapshot files written by ``embeddings_io.write_table`` (by default
    ``run_dir/user_embeddings.parquet`` and ``run_dir/item_embeddings.parquet``); ``feast``
    joins them point-in-time through ``get_historical_features`` in ``feast_repo`` (default:
    the run's replay repo ``run_dir/feast_replay``, see ``learn_features.feast_replay``); ``none``
    runs the baselines only. ``expected_model_version``, when set, rejects any joined
    embedding from another model version (e.g. one trained past the cut); ``"run"`` takes
    the version from ``run_dir/embeddings/manifest.json``.
    """

    source: Literal["parquet", "feast", "none"] = "parquet"
    run_dir: str | None = None
    user_paths: list[str] = field(default_factory=list)
    item_paths: list[str] = field(default_factory=list)
    feast_repo: str | None = None
    expected_model_version: str | None = None
    #: Parquet source only: ignore snapshots older than this (a view TTL). None keeps a
    #: snapshot valid until the next one, as the Feast views of feature_repo/ do (TTL 0).
    max_age_days: float | None = None


@dataclass
class TierConfig:
    """Table 7 tiers. Explicit thresholds win; otherwise ``long_tail_quantile`` sets them.

    The paper's T_u=35 and T_i=30 are absolute counts on Kuaishou's traffic, whose activity
    distribution is not published. We carry them over as a position in the distribution:
    T is the ``long_tail_quantile`` quantile of pre-cut activity among entities with any
    activity (users: interactions, items: positives), rounded up.
    """

    user_long_tail_max: int | None = None
    item_long_tail_max: int | None = None
    long_tail_quantile: float = 0.5


@dataclass
class LGBMConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    min_data_in_leaf: int = 20
    cat_smooth: float = 10.0
    #: PCA components of each LEARN embedding added to the tree features (besides cosine).
    pca_dims: int = 4


@dataclass
class DNNConfig:
    id_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    aux_hidden: list[int] = field(default_factory=lambda: [64])
    fusion_dim: int = 16
    #: Weight of the auxiliary CVR loss: total = main BCE + aux_weight * auxiliary BCE.
    aux_weight: float = 0.5
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3


@dataclass
class BootstrapConfig:
    n_resamples: int = 1000
    confidence: float = 0.95


@dataclass
class ExperimentConfig:
    data: DataConfig
    split: SplitConfig = field(default_factory=SplitConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    tiers: TierConfig = field(default_factory=TierConfig)
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)
    dnn: DNNConfig = field(default_factory=DNNConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    models: list[str] = field(default_factory=lambda: [*BASELINE_MODELS, *LEARN_MODELS])
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in (*BASELINE_MODELS, *LEARN_MODELS)]
        if unknown:
            raise LearnFeaturesError(f"config models: unknown model(s) {unknown}; choose from {[*BASELINE_MODELS, *LEARN_MODELS]}")
        if self.embeddings.source == "none" and any(m in LEARN_MODELS for m in self.models):
            raise LearnFeaturesError("config: embeddings.source is 'none' but LEARN models are requested; drop them from models")
        if not 0.0 < self.split.valid_fraction < 1.0:
            raise LearnFeaturesError(f"config split.valid_fraction must be in (0, 1), got {self.split.valid_fraction}")
        if not 0.0 < self.split.cut_quantile < 1.0:
            raise LearnFeaturesError(f"config split.cut_quantile must be in (0, 1), got {self.split.cut_quantile}")
        if not 0.0 < self.tiers.long_tail_quantile < 1.0:
            raise LearnFeaturesError(f"config tiers.long_tail_quantile must be in (0, 1), got {self.tiers.long_tail_quantile}")
        if not 0.0 < self.bootstrap.confidence < 1.0:
            raise LearnFeaturesError(f"config bootstrap.confidence must be in (0, 1), got {self.bootstrap.confidence}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Config fields that hold filesystem paths, as (section, key).
PATH_FIELDS = (
    ("data", "interactions"),
    ("data", "items"),
    ("embeddings", "run_dir"),
    ("embeddings", "feast_repo"),
    ("embeddings", "user_paths"),
    ("embeddings", "item_paths"),
)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an ``ExperimentConfig`` from a TOML file plus ``section.key=value`` overrides.

    Parsing and type checks are the library's (``learn_features.config``), so the ranking
    config refuses unknown keys and wrong types exactly like the pipeline config. Relative
    paths written in the file resolve against the file's folder, so a config keeps working
    from any working directory; paths given as overrides are left as typed (relative to the
    working directory), like ``--run-dir`` and every other command-line path.
    """
    config = load_library_config(ExperimentConfig, path, overrides)
    overridden = {tuple(parse_override(o)[0]) for o in overrides or []}
    base = Path(path).parent
    for section, key in PATH_FIELDS:
        if (section, key) in overridden:
            continue
        table = getattr(config, section)
        value = getattr(table, key)
        resolved = [_resolve(base, v) for v in value] if isinstance(value, list) else _resolve(base, value)
        setattr(table, key, resolved)
    return config


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    # normpath folds the "../.." of a config stored inside the package, so reports show data/... paths.
    return str(p) if p.is_absolute() else os.path.normpath(base / p)
