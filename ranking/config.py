"""Dataclass configuration for the ranking experiment, loadable from TOML.

Every knob that changes a number in the report lives here, so the report can print the
whole config next to its results and a run can be repeated from ``report.json`` alone.
Unknown keys in a TOML file are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from learn_features.config import PATH
from learn_features.config import load_config as load_library_config
from learn_features.data.config import DataConfig
from learn_features.data.tables import ORDER_BY_TIME
from learn_features.errors import LearnFeaturesError
from ranking.arms import ARMS_BY_NAME, BASELINE_MODELS, LEARN_MODELS

@dataclass
class PeriodsConfig:
    """The ranker's time periods (the ``[split]`` section): train < validation < cut <= evaluation.

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
    #: When a row's features are taken (docs/ranking.md, "Periods and the leakage rule"):
    #: ``"cut"``: as of ``min(impression time, cut)``, so evaluation rows see the world frozen at
    #: the cut; ``"impression"``: as of the impression time itself, as an online ranker computes
    #: them at request time. Either way nothing at or after that time is used.
    features_as_of: Literal["cut", "impression"] = "cut"


@dataclass
class EmbeddingConfig:
    """Where the LEARN embeddings come from.

    ``parquet`` reads snapshot files written by ``embeddings_io.write_table`` (by default
    ``run_dir/user_embeddings.parquet`` and ``run_dir/item_embeddings.parquet``); ``feast``
    joins them point-in-time through ``get_historical_features`` in ``feast_repo`` (default:
    the run's replay repo ``run_dir/feast_replay``, see ``learn_features.store.replay``); ``none``
    runs the baselines only. ``expected_model_version``, when set, rejects any joined
    embedding from another model version (e.g. one trained past the cut); ``"run"`` takes
    the version from ``run_dir/embeddings/manifest.json``.
    """

    source: Literal["parquet", "feast", "none"] = "parquet"
    run_dir: str | None = field(default=None, metadata=PATH)
    user_paths: list[str] = field(default_factory=list, metadata=PATH)
    item_paths: list[str] = field(default_factory=list, metadata=PATH)
    feast_repo: str | None = field(default=None, metadata=PATH)
    expected_model_version: str | None = None
    #: Parquet source only: ignore snapshots older than this (a view TTL). None keeps a
    #: snapshot valid until the next one, as the Feast views of feature_repo/ do (TTL 0).
    max_age_days: float | None = None
    #: How many of a user's latest events the history features average (LightGBM's
    #: item-history similarity, the frozen-LLM control's user vector): the LEARN user tower's
    #: window. None: the run's ``config.json`` ``split.history_len``, else LEARN's default.
    history_len: int | None = None


@dataclass
class ControlConfig:
    """The DNN control arms (``ranking/controls.py``).

    ``content_store``: the frozen LLM's content vectors, rows aligned to the run's
    ``embeddings/item_embeddings.parquet`` (default: the run's ``content/llm``).
    ``random_seed`` draws the random arm's fixed vector per id; it does not change with the
    ranking seeds, so every seed's random arm reads the same vectors.
    """

    content_store: str | None = field(default=None, metadata=PATH)
    random_seed: int = 20240507


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
    #: Row and feature subsampling per tree. With none, LightGBM is deterministic and every
    #: seed trains the same trees, so "mean ± SD over seeds" would show no spread at all,
    #: though a change in the 6th decimal of one feature moves its UAUC by tenths of a point
    #: (docs/ranking.md, "Run-to-run changes"). Subsampling makes the seed draw from that spread.
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    #: PCA components of the LEARN item vector added to the tree features (besides the cosines).
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
    #: Seeds the user draws; fixed apart from the ranker seeds, so every comparison reads one draw.
    seed: int = 0


@dataclass
class ExperimentConfig:
    data: DataConfig
    split: PeriodsConfig = field(default_factory=PeriodsConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    tiers: TierConfig = field(default_factory=TierConfig)
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)
    dnn: DNNConfig = field(default_factory=DNNConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    controls: ControlConfig = field(default_factory=ControlConfig)
    models: list[str] = field(default_factory=lambda: [*BASELINE_MODELS, *LEARN_MODELS])
    #: Every arm is trained once per seed; the report gives mean ± SD over seeds and the
    #: seed-paired differences, and scores the seed-averaged predictions.
    seeds: list[int] = field(default_factory=lambda: [0])
    num_threads: int = 2

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in ARMS_BY_NAME]
        if unknown:
            raise LearnFeaturesError(f"config models: unknown model(s) {unknown}; choose from {list(ARMS_BY_NAME)}")
        self.data.conversion_rules()  # refused when the config loads, before any work
        if self.data.order != ORDER_BY_TIME:
            raise LearnFeaturesError(f"config data.order must be {ORDER_BY_TIME!r}: the ranker's periods are times, got {self.data.order!r}")
        if self.embeddings.source == "none" and any(ARMS_BY_NAME[m].vectors for m in self.models):
            raise LearnFeaturesError("config: embeddings.source is 'none' but LEARN models are requested; drop them from models")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise LearnFeaturesError(f"config seeds: need one or more distinct seeds, got {self.seeds}")
        if self.embeddings.history_len is not None and self.embeddings.history_len < 1:
            raise LearnFeaturesError(f"config embeddings.history_len must be >= 1, got {self.embeddings.history_len}")
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an ``ExperimentConfig`` from a TOML file plus ``section.key=value`` overrides.

    Parsing, type checks and path resolution are the library's (``learn_features.config``):
    unknown keys and wrong types are refused as in the pipeline config, and relative paths
    written in the file resolve against the file's folder, while paths given as overrides
    are relative to the working directory.
    """
    return load_library_config(ExperimentConfig, path, overrides)
