"""The pipeline's configuration: one dataclass tree, one TOML file per experiment."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from learn_features.cex.extractor import EncoderConfig
from learn_features.config import PATH, from_dict
from learn_features.data.config import DataConfig
from learn_features.data.split import SplitConfig
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule
from learn_features.pch.model import PCHConfig
from learn_features.retrieval import DEFAULT_KS
from learn_features.data.sources import data_source
from learn_features.data.tables import ORDER_BY_TIME
from training.methods import CONTENT_KINDS, METHODS, get_methods
from training.trainer import LAST_POSITION_OBJECTIVES, TrainConfig

#: Training settings every method shares: seeds are numbered from train.seed, one device and
#: worker pool serves the run, and one validation metric makes the methods' selections comparable.
SHARED_TRAIN_KEYS = ("seed", "device", "workers", "select_metric")
#: Tower settings a method does not take from [model_by_method]: its variant is the method's own.
SHARED_MODEL_KEYS = ("variant",)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    primary_method: str = "learn_v1"  # whose embeddings `embed` publishes
    bootstrap_rounds: int = 1000
    seeds: int = 1  # trained methods are trained this many times (train.seed, +1, ...); tables give mean ± SD
    recent_days: float = 365.0  # popularity_recent's trailing window
    references: list[str] = field(default_factory=lambda: ["learn_v1"])  # every method is paired against each
    tail_share: float = 0.2  # the tail_items subset: this share of the warm items, the least trained
    # Leave the items each user already has in the evaluated users' ranking, as RecBole's
    # sequential evaluation does (the published Amazon figures): their scores then compete
    # with the target. Off, they are removed (recommending what a user has is not the task).
    # Users whose target repeats an item of theirs are not evaluated either way, and model
    # selection during training always removes them.
    rank_seen: bool = False
    # How items without a training event (served from content alone) enter a method's ranking;
    # learn_features.new_items says why each exists. Both are per method, for methods that score new
    # items from their content, one rule a method; both are chosen on the protocol one period
    # earlier (split.until), never on test users (scripts/cold_bias_sweep.py).
    # cold_bias: a score added to every new item, on the scale of the method's scores, e.g.
    # {learn_hybrid = 0.2}.
    cold_bias: dict[str, float] = field(default_factory=dict)
    # cold_share: new items take this multiple of the share of new items among each user's
    # latest cold_share_window history events, of every prefix of their ranking (at most all of
    # it), e.g. {learn_hybrid = 1.25}.
    cold_share: dict[str, float] = field(default_factory=dict)
    cold_share_window: int = 10

    def new_item_rule(self, method: str) -> NewItemRule | None:
        """``method``'s rule for new items, or None (a bias of 0 is no rule)."""
        if self.cold_bias.get(method):
            return NewItemRule("bias", self.cold_bias[method], self.cold_share_window)
        return NewItemRule("share", self.cold_share[method], self.cold_share_window) if method in self.cold_share else None

    def __post_init__(self) -> None:
        # Checked here, when the config loads, so that a bad value is refused before any work
        # (and before any output is rewritten), not after a whole job.
        get_methods(self.methods)
        if not self.methods:
            raise LearnFeaturesError("eval.methods is empty; choose from " + str(sorted(METHODS)))
        if self.primary_method not in METHODS or not METHODS[self.primary_method].trained:
            raise LearnFeaturesError(f"eval.primary_method must be a trained method, got {self.primary_method!r}")
        bad = [k for k in self.ks if k < 1]
        if not self.ks or bad or len(set(self.ks)) != len(self.ks):
            raise LearnFeaturesError(f"eval.ks must be distinct positive cut-offs, e.g. [10, 50, 100]; got {self.ks}")
        if self.bootstrap_rounds < 1:
            raise LearnFeaturesError(f"eval.bootstrap_rounds must be >= 1, got {self.bootstrap_rounds}")
        self.ks = sorted(self.ks)
        if self.seeds < 1 or self.recent_days <= 0:
            raise LearnFeaturesError("eval.seeds must be >= 1 and eval.recent_days > 0")
        # A reference is a row of the tables: a paired difference needs its per-user scores.
        absent = [name for name in self.references if name not in self.methods]
        if absent or len(set(self.references)) != len(self.references):
            raise LearnFeaturesError(
                f"eval.references must be distinct methods of eval.methods {self.methods}; got {self.references}"
                + (f" ({absent} not evaluated: add them to eval.methods or set eval.references)" if absent else "")
            )
        if not 0.0 < self.tail_share < 1.0:
            raise LearnFeaturesError(f"eval.tail_share must be in (0, 1), got {self.tail_share}")
        for key, rule in (("cold_bias", self.cold_bias), ("cold_share", self.cold_share)):
            no_content = [name for name in rule if name not in METHODS or METHODS[name].content not in CONTENT_KINDS]
            if no_content:
                raise LearnFeaturesError(
                    f"eval.{key}: {no_content} do not score new items from content; it applies to {sorted(n for n, m in METHODS.items() if m.content in CONTENT_KINDS)}"
                )
        bad_bias = {name: bias for name, bias in self.cold_bias.items() if not math.isfinite(bias)}
        if bad_bias:
            raise LearnFeaturesError(f"eval.cold_bias must be finite numbers, got {bad_bias}")
        bad_scale = {name: scale for name, scale in self.cold_share.items() if not (math.isfinite(scale) and scale >= 0)}
        if bad_scale:
            raise LearnFeaturesError(f"eval.cold_share must be finite numbers >= 0, got {bad_scale}")
        both = sorted(set(self.cold_bias) & set(self.cold_share))
        if both:
            raise LearnFeaturesError(f"eval: {both} have both cold_bias and cold_share; a method takes one rule for new items")
        if self.cold_share_window < 1:
            raise LearnFeaturesError(f"eval.cold_share_window must be >= 1, got {self.cold_share_window}")


@dataclass
class PipelineConfig:
    run_dir: str = field(default="runs/default", metadata=PATH)
    cache_dir: str = field(default=".cache/learn-features", metadata=PATH)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    llm: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(model="shipped:minilm"))
    model: PCHConfig = field(default_factory=PCHConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # One trained method's own training settings over [train], e.g. [train_by_method.id_baseline]
    # objective = "next_item": a fair table tunes each method on validation, not only LEARN.
    train_by_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The same for the towers over [model], e.g. [model_by_method.id_baseline] tied_output = true.
    model_by_method: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table, by_method, shared_keys, why, settings_for in (
            ("train_by_method", self.train_by_method, SHARED_TRAIN_KEYS, "shared by every method; set them in [train]", self.train_for),
            ("model_by_method", self.model_by_method, SHARED_MODEL_KEYS, "the method's own", self.model_for),
        ):
            for name, settings in by_method.items():
                if name not in METHODS or not METHODS[name].trained:
                    raise LearnFeaturesError(f"{table}.{name}: not a trained method; choose from {[m for m in METHODS if METHODS[m].trained]}")
                shared = sorted(set(settings) & set(shared_keys))
                if shared:
                    raise LearnFeaturesError(f"{table}.{name}: {shared} are {why}")
                # unknown keys, wrong types and bad values fail now, naming the table
                settings_for(name)
        for method in get_methods(self.eval.methods):
            if method.trained and method.content != "ids" and self.model_for(method.name).tied_output:
                raise LearnFeaturesError(
                    f"model.tied_output scores items by their ID rows; {method.name} reads content: set it for the ID baseline alone, "
                    "in [model_by_method.id_baseline]"
                )
        for name in (m for m in METHODS if METHODS[m].trained):  # any of them can be trained with --method
            if self.model_for(name).collaborative_rank and not METHODS[name].id_part:
                raise LearnFeaturesError(
                    f"model.collaborative_rank ({name}): the collaborative part is indexed by the ID slots of a hybrid's items; "
                    f"set it for {[m for m in METHODS if METHODS[m].id_part]} alone, in [model_by_method.<method>]"
                )
            objective = self.train_for(name).objective
            if self.model_for(name).positions == "from_end" and objective not in LAST_POSITION_OBJECTIVES:
                raise LearnFeaturesError(
                    f'model.positions = "from_end" ({name}) needs a train.objective that scores each history at its last '
                    f"position alone ({list(LAST_POSITION_OBJECTIVES)}), got {objective!r}"
                )
        if data_source(self.data.source).paths(self.data)[1] is None:
            raise LearnFeaturesError(f"data.source = {self.data.source!r} needs data.interactions and data.catalog paths: LEARN embeds the catalog")
        if "temporal" in self.split.protocols and self.data.order != ORDER_BY_TIME:
            raise LearnFeaturesError(
                f"split.protocols includes 'temporal', which needs timestamps, but data.order is {self.data.order!r}; "
                "use split.protocols = [\"leave_one_out\"] for sequence-only data"
            )
        longest = max(self.split.history_len, self.split.target_len)
        for name in [None, *self.model_by_method]:
            max_len = (self.model if name is None else self.model_for(name)).max_len
            if max_len < longest:
                where = "model.max_len" if name is None else f"model_by_method.{name}.max_len"
                raise LearnFeaturesError(f"{where} ({max_len}) must cover split.history_len and split.target_len ({longest})")

    def train_for(self, method: str) -> TrainConfig:
        """The training settings of ``method``: [train], then its [train_by_method] table."""
        return _overridden(self.train, self.train_by_method.get(method), f"train_by_method.{method}")

    def model_for(self, method: str) -> PCHConfig:
        """The towers of ``method`` (its variant still to be set by the method): [model], then
        its [model_by_method] table."""
        return _overridden(self.model, self.model_by_method.get(method), f"model_by_method.{method}")


def _overridden(base: Any, settings: dict[str, Any] | None, table: str) -> Any:
    """``base`` (a config dataclass) with one method's table of settings over it, checked as a whole."""
    if not settings:
        return base
    return from_dict(type(base), {**asdict(base), **settings}, table)
