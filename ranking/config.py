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
from learn_features.data.labels import LabelRule
from learn_features.config import load_config as load_library_config
from learn_features.errors import LearnFeaturesError

BASELINE_MODELS = ("lgbm_baseline", "dnn_baseline")
LEARN_MODELS = ("lgbm_learn", "dnn_learn")
#: Each LEARN variant is judged against the baseline that differs from it only by the LEARN inputs.
MODEL_PAIRS = (("dnn_baseline", "dnn_learn"), ("lgbm_baseline", "lgbm_learn"))


@dataclass
class DataConfig:
    """Where the interactions come from and how they become labels.

    * ``format="files"``: LEARN's own input tables (README, "Input format"), read by LEARN's
      loader: ``interactions`` with ``user_id``, ``item_id``, ``timestamp`` and optional
      ``rating``/``label``/``event_type``, and optionally the ``items`` catalog (``item_id``
      plus text fields). Labels come from two rules (``learn_features.data.labels``):
      ``positive`` (required, e.g. ``"rating >= 4"``, ``"label == 1"``,
      ``"event_type in ['purchase', 'cart']"``) and ``negative`` (e.g. ``"rating <= 3"``;
      omitted: every row that is not positive). Item features: the catalog's
      ``genres_column`` split on ``genres_separator`` (multi-hot) and its numeric columns.
    * ``format="movielens"``: ``ratings.csv``/``movies.csv``, labelled ``rating >=
      positive_min_rating`` and ``rating <= negative_max_rating``.
    * ``format="generic"``: one table with ``user_id, item_id, timestamp, label`` (0/1 on
      every row), and an optional item table with pipe-separated ``genres``.

    Rows that match neither rule (a 3.5 rating on MovieLens) are not impressions, but they
    still count as user/item activity in the history statistics and tiers.
    """

    interactions: str = field(metadata=PATH)
    items: str | None = field(default=None, metadata=PATH)
    format: Literal["movielens", "files", "generic"] = "movielens"
    positive_min_rating: float = 4.0
    negative_max_rating: float = 3.0
    positive: str | None = None
    negative: str | None = None
    genres_column: str | None = None
    genres_separator: Literal["|", ","] = "|"

    def __post_init__(self) -> None:
        files_only = [key for key in ("positive", "negative", "genres_column") if getattr(self, key) is not None]
        if self.format != "files" and files_only:
            raise LearnFeaturesError(f"config data.{files_only[0]} applies to data.format = 'files' only, not {self.format!r}")
        if self.format == "files":
            self.label_rules()  # refuse a bad rule when the config loads, before any work

    def label_rules(self) -> tuple[LabelRule, LabelRule | None]:
        """The (positive, negative) rules of the ``files`` format."""
        if self.positive is None:
            raise LearnFeaturesError("config data.format = 'files' needs data.positive, a rule such as \"rating >= 4\" or \"label == 1\"")
        positive = LabelRule.parse(self.positive, "config data.positive")
        return positive, None if self.negative is None else LabelRule.parse(self.negative, "config data.negative")


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


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an ``ExperimentConfig`` from a TOML file plus ``section.key=value`` overrides.

    Parsing, type checks and path resolution are the library's (``learn_features.config``):
    unknown keys and wrong types are refused as in the pipeline config, and relative paths
    written in the file resolve against the file's folder, while paths given as overrides
    are relative to the working directory.
    """
    return load_library_config(ExperimentConfig, path, overrides)
