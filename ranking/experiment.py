"""The ranking experiment: baselines vs LEARN and control rankers, overall (Table 6) and by tier (Table 7).

``run_ranking_experiment(config)`` loads the data, joins LEARN embeddings point-in-time,
adds the control arms' vectors, trains every configured model once per seed on the training
period with early stopping on the validation period, and scores the evaluation period. Per
arm it keeps every seed's metrics and learning curve; the bootstrap intervals and the tiers
read the seed-averaged predictions (``ranking/seeds.py``). Nothing downstream of the training
period is used to pick anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.data.sources import data_source
from learn_features.data.split import SplitConfig, parse_time
from learn_features.errors import LearnFeaturesError
from learn_features.run import RunDir
from ranking.bootstrap import PairedDelta, paired_bootstrap
from ranking.arms import ARMS_BY_NAME, BASELINE_MODELS, MODEL_PAIRS
from ranking.config import EmbeddingConfig, ExperimentConfig
from ranking.controls import load_content, with_llm_frozen, with_random
from ranking.coverage import split_coverage
from ranking.dataset import RankingDataset, build_dataset
from ranking.dnn import DNNRanker, dnn_tensors
from ranking.embeddings import EmbeddingJoiner, FeastEmbeddingJoiner, ParquetEmbeddingJoiner
from ranking.features import FeatureSpec, Featurized, fit_feature_spec, learn_vector_dim, tree_features
from ranking.history import HistoryIndex
from ranking.joins import point_in_time_stats
from ranking.lgbm import TreeRanker
from ranking.loading import load_data
from ranking.metrics import auc, grouped_auc, logloss
from ranking.seeds import SeedPaired, SeedSpread, verdict
from ranking.tiers import TIER_NAMES, Thresholds, assign_tiers, resolve_thresholds

MANIFEST = RunDir(Path()).manifest  # as named in messages
TRAIN_START_FROM_EMBEDDINGS = "embeddings"
#: ``embeddings.expected_model_version`` value meaning "the model_version in the run manifest".
MODEL_VERSION_FROM_RUN = "run"


@dataclass
class ModelMetrics:
    name: str
    auc: float | None
    logloss: float
    uauc: float | None
    wuauc: float | None
    n_impressions: int
    n_users_uauc: int
    n_single_class_users: int
    best_iteration: int | None  # boosting rounds (trees) or best epoch (DNN) chosen on validation; None: seed average

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class ArmResult:
    """One ranker arm over all seeds: per-seed metrics and learning curves, and the metrics of
    the seed-averaged predictions."""

    name: str
    seeds: list[int]
    per_seed: list[ModelMetrics]
    averaged: ModelMetrics
    curves: list[list[dict[str, float | None]]]  # per seed: validation metrics per epoch/round

    def spread(self, metric: str) -> SeedSpread:
        return SeedSpread([getattr(m, metric) for m in self.per_seed])

    def to_dict(self) -> dict[str, object]:
        return {
            "seeds": self.seeds,
            "per_seed": [m.to_dict() for m in self.per_seed],
            "seed_averaged": self.averaged.to_dict(),
            **{f"{metric}_over_seeds": self.spread(metric).to_dict() for metric in ("auc", "uauc", "wuauc", "logloss")},
            "validation_curves": self.curves,
        }


@dataclass
class Comparison:
    """``arm`` against ``reference``: seed-paired differences and the bootstrap on seed-averaged predictions."""

    reference: str
    arm: str
    seed_paired: dict[str, SeedPaired]  # "uauc", "wuauc"
    bootstrap: dict[str, PairedDelta | None]  # "auc", "uauc", "wuauc"

    def verdict(self, metric: str) -> tuple[str, str]:
        return verdict(self.seed_paired[metric], self.bootstrap[metric])

    def to_dict(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "arm": self.arm,
            "seed_paired": {m: p.to_dict() for m, p in self.seed_paired.items()},
            "bootstrap": {m: None if d is None else d.to_dict() for m, d in self.bootstrap.items()},
            "verdict": {m: dict(zip(("result", "why"), self.verdict(m))) for m in self.seed_paired},
        }


@dataclass
class TierResult:
    reference: str  # the baseline
    arm: str  # the arm compared with it
    dimension: str  # "all", "user" or "item"
    tier: str
    n_impressions: int
    share: float  # of evaluation impressions
    n_users: int
    n_single_class_users: int
    auc: PairedDelta | None
    uauc: PairedDelta | None
    wuauc: PairedDelta | None
    note: str | None

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        for metric in ("auc", "uauc", "wuauc"):
            delta = getattr(self, metric)
            d[metric] = None if delta is None else delta.to_dict()
        return d


@dataclass
class ExperimentResults:
    config: ExperimentConfig
    dataset: RankingDataset
    thresholds: Thresholds
    arms: dict[str, ArmResult]
    comparisons: list[Comparison]
    tiers: list[TierResult]
    predictions: pd.DataFrame  # evaluation rows + one seed-averaged score column per model + tiers
    coverage: dict[str, dict[str, object]]  # per split (``ranking/coverage.py``)
    fingerprint: dict[str, object]
    notes: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embedding_paths(cfg: EmbeddingConfig) -> tuple[list[Path], list[Path]]:
    """Explicit snapshot files, else the LEARN run's ``embeddings/`` folder."""
    if cfg.user_paths or cfg.item_paths:
        return [Path(p) for p in cfg.user_paths], [Path(p) for p in cfg.item_paths]
    if cfg.run_dir is None:
        raise LearnFeaturesError("embeddings.source='parquet' needs embeddings.run_dir (or --run-dir) or user_paths/item_paths")
    run = RunDir(cfg.run_dir)
    return [run.embedding_table("user")], [run.embedding_table("item")]


def feast_repo_for(cfg: EmbeddingConfig) -> str:
    """``feast_repo``, else the LEARN run's replay repo (``learn-features publish --replay``)."""
    if cfg.feast_repo is not None:
        return cfg.feast_repo
    if cfg.run_dir is None:
        raise LearnFeaturesError("embeddings.source='feast' needs embeddings.feast_repo or embeddings.run_dir (or --run-dir)")
    return str(RunDir(cfg.run_dir).feast_replay)


def make_joiner(cfg: EmbeddingConfig) -> EmbeddingJoiner | None:
    if cfg.source == "none":
        return None
    if cfg.source == "feast":
        return FeastEmbeddingJoiner(feast_repo_for(cfg))
    users, items = embedding_paths(cfg)
    max_age = None if cfg.max_age_days is None else pd.Timedelta(days=cfg.max_age_days)
    return ParquetEmbeddingJoiner(users, items, max_age)


def _run_manifest_value(cfg: EmbeddingConfig, key: str) -> tuple[Path, object] | None:
    """``(manifest path, value of key)`` from the LEARN run's manifest, None without a manifest."""
    if cfg.run_dir is None or not RunDir(cfg.run_dir).manifest.exists():
        return None
    return RunDir(cfg.run_dir).manifest, RunDir(cfg.run_dir).read_manifest(required=(key,))[key]


def learn_training_end(cfg: EmbeddingConfig) -> pd.Timestamp | None:
    """The LEARN model's data cut from its run manifest (``as_of``), when a run dir is known."""
    found = _run_manifest_value(cfg, "as_of")
    if found is None:
        return None
    path, as_of = found
    return parse_time(str(as_of), f"{path}: the LEARN data cut 'as_of'")


def expected_model_version(cfg: EmbeddingConfig) -> str | None:
    """The model version every joined embedding must carry.

    ``"run"`` pins the version in the run manifest, so a config need not hard-code a weights
    hash, yet a Feast repo holding another model's publication can never feed the ranker.
    """
    if cfg.expected_model_version != MODEL_VERSION_FROM_RUN:
        return cfg.expected_model_version
    found = _run_manifest_value(cfg, "model_version")
    if found is None:
        raise LearnFeaturesError(
            f"embeddings.expected_model_version={MODEL_VERSION_FROM_RUN!r} needs embeddings.run_dir (or --run-dir) "
            f"with {MANIFEST}; got run_dir {cfg.run_dir!r}"
        )
    return str(found[1])


def _earliest_snapshot(joiner: EmbeddingJoiner | None, cfg: EmbeddingConfig) -> pd.Timestamp:
    if isinstance(joiner, ParquetEmbeddingJoiner):
        return min(joiner.user_snapshots["event_timestamp"].min(), joiner.item_snapshots["event_timestamp"].min())
    manifest_cut = learn_training_end(cfg)
    if manifest_cut is None:
        raise LearnFeaturesError(
            f"split.train_start={TRAIN_START_FROM_EMBEDDINGS!r} needs parquet embeddings or a run dir with {MANIFEST} "
            f"(embeddings.run_dir is {cfg.run_dir!r}); run the LEARN job first, or give an ISO timestamp instead"
        )
    return manifest_cut


def history_len(cfg: EmbeddingConfig) -> tuple[int, str]:
    """(N, where it came from): the LEARN user tower's window, which the history features reuse."""
    if cfg.history_len is not None:
        return cfg.history_len, "embeddings.history_len"
    path = RunDir(cfg.run_dir).config if cfg.run_dir else None
    if path is None or not path.is_file():
        default = SplitConfig().history_len
        return default, f"LEARN's default (no {path or 'run config.json'})"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["split"]["history_len"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LearnFeaturesError(f"{path}: no readable split.history_len ({exc!r}); set embeddings.history_len") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LearnFeaturesError(f"{path}: split.history_len must be a positive integer, got {value!r}")
    return value, str(path)


def run_ranking_experiment(config: ExperimentConfig) -> ExperimentResults:
    """Load, split, join, add control vectors, train, evaluate (see module docstring). Reports are written separately."""
    impressions, history, items = load_data(config.data)
    joiner = make_joiner(config.embeddings)
    split = config.split
    if split.train_start == TRAIN_START_FROM_EMBEDDINGS:
        start = _earliest_snapshot(joiner, config.embeddings)
        split = dataclasses.replace(split, train_start=start.isoformat())
    window, window_source = history_len(config.embeddings)
    dataset = build_dataset(
        impressions,
        split,
        history=history,
        items=items,
        joiner=joiner,
        expected_model_version=expected_model_version(config.embeddings),
        history_len=window,
    )
    learn_cut = learn_training_end(config.embeddings) if config.embeddings.source != "none" else None
    if learn_cut is not None and learn_cut > dataset.periods.cut:
        raise LearnFeaturesError(
            f"{Path(config.embeddings.run_dir or '') / MANIFEST}: the LEARN model was trained on data up to {learn_cut}, "
            f"after the ranking cut {dataset.periods.cut}; its embeddings would carry evaluation-period behaviour. "
            "Train LEARN with a cut at or before the ranking cut."
        )
    dataset = with_controls(dataset, history, config)
    fingerprint = data_fingerprint(config, dataset, history, learn_cut)
    fingerprint["history_len"] = {"value": window, "from": window_source}
    return run_on_dataset(dataset, history, config, fingerprint)


def content_store_for(config: ExperimentConfig) -> Path:
    """``controls.content_store``, else the LEARN run's frozen-LLM content (``content/llm``; the
    caller has checked that ``embeddings.run_dir`` is set)."""
    if config.controls.content_store is not None:
        return Path(config.controls.content_store)
    return RunDir(config.embeddings.run_dir).content("llm")


def _add_llm_frozen(dataset: RankingDataset, history: pd.DataFrame, config: ExperimentConfig, dim: int) -> RankingDataset:
    if config.embeddings.run_dir is None:
        raise LearnFeaturesError("model dnn_llm_frozen needs embeddings.run_dir (or --run-dir): the run's item table orders its content")
    ids, content = load_content(content_store_for(config), config.embeddings.run_dir)
    return with_llm_frozen(dataset, HistoryIndex.build(history), ids, content, dim)


def _add_random(dataset: RankingDataset, history: pd.DataFrame, config: ExperimentConfig, dim: int) -> RankingDataset:
    return with_random(dataset, dim, config.controls.random_seed)


#: How the vectors of each control (an ``ArmSpec.vectors`` other than "learn") join a dataset,
#: applied in this order; a new control is one entry here and one ``ArmSpec``.
CONTROL_VECTORS: dict[str, Callable[[RankingDataset, pd.DataFrame, ExperimentConfig, int], RankingDataset]] = {
    "llm_frozen": _add_llm_frozen,
    "random": _add_random,
}


def with_controls(dataset: RankingDataset, history: pd.DataFrame, config: ExperimentConfig) -> RankingDataset:
    """Add the vectors of the requested control arms (``ranking/controls.py``), of the LEARN dimension."""
    wanted = {ARMS_BY_NAME[m].vectors for m in config.models}
    controls = [add for vectors, add in CONTROL_VECTORS.items() if vectors in wanted]
    if not controls:
        return dataset
    dim = learn_vector_dim(dataset.train)
    for add in controls:
        dataset = add(dataset, history, config, dim)
    return dataset


def run_on_dataset(
    dataset: RankingDataset, history: pd.DataFrame, config: ExperimentConfig, fingerprint: dict[str, object] | None = None
) -> ExperimentResults:
    """Train every configured model once per seed on an assembled dataset; evaluate and compare."""
    notes: list[str] = []
    if any(ARMS_BY_NAME[m].vectors for m in config.models) and not dataset.has_embeddings:
        raise LearnFeaturesError("LEARN models requested but the dataset was built without an embedding join")
    if dataset.has_embeddings:
        for name in ("train", "valid", "test"):
            frame = dataset.split(name)
            if len(frame) and frame["item_embedding"].isna().all():
                notes.append(
                    f"no {name}-period impression has an item LEARN embedding point-in-time: the snapshot is newer "
                    "than these rows, or older than the TTL (embeddings.max_age_days)"
                )
    test = dataset.test
    thresholds = resolve_thresholds(history, dataset.periods.cut, config.tiers)
    # Tiers are activity before the ranking cut (the paper's Table 7), whatever time features are taken at.
    at_cut = point_in_time_stats(history, test, pd.Series(dataset.periods.cut, index=test.index))
    predictions = pd.concat([test[["user_id", "item_id", "timestamp", "label"]], assign_tiers(at_cut, thresholds)], axis=1)
    specs = feature_specs(dataset, config)
    inputs = arm_inputs(dataset, config, specs)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in config.models}
    per_seed: dict[str, list[ModelMetrics]] = {name: [] for name in config.models}
    curves: dict[str, list[list[dict[str, float | None]]]] = {name: [] for name in config.models}
    for seed in config.seeds:
        for name, ranker in train_models(dataset, config, seed, specs, inputs).items():
            seed_scores = ranker.predict_inputs(inputs[name].test.inputs)
            scores[name].append(seed_scores)
            per_seed[name].append(model_metrics(name, test, seed_scores, ranker.best_iteration))
            curves[name].append(ranker.history)
    arms = {}
    for name in config.models:
        predictions[name] = np.mean(scores[name], axis=0)
        averaged = model_metrics(name, test, predictions[name].to_numpy(), None)
        arms[name] = ArmResult(name, list(config.seeds), per_seed[name], averaged, curves[name])
    if arms:
        # Labels are shared by all models, so the single-class users are the same for each.
        first = next(iter(arms.values())).averaged
        if first.n_single_class_users:
            notes.append(
                f"{first.n_single_class_users} of {test['user_id'].nunique()} evaluation users have only positives or only "
                "negatives; they are excluded from UAUC/WUAUC (counted in every table)"
            )
        if first.auc is None:
            notes.append("the evaluation period has a single label class: AUC is undefined")
    comparisons = compare_arms(arms, predictions, config)
    tiers = tier_table(predictions, config, {(c.reference, c.arm): c.bootstrap for c in comparisons})
    notes += [f"{t.arm} vs {t.reference}, {t.dimension} {t.tier}: {t.note}" for t in tiers if t.note]
    return ExperimentResults(
        config=config,
        dataset=dataset,
        thresholds=thresholds,
        arms=arms,
        comparisons=comparisons,
        tiers=tiers,
        predictions=predictions,
        coverage=split_coverage(dataset, specs.get(True)),
        fingerprint=fingerprint or {},
        notes=notes,
    )


def feature_specs(dataset: RankingDataset, config: ExperimentConfig) -> dict[bool, FeatureSpec]:
    """Feature specs keyed by "reads vectors": fitted on training rows, the same for every seed."""
    needed = {ARMS_BY_NAME[m].vectors is not None for m in config.models}
    return {
        with_vectors: fit_feature_spec(dataset.train, dataset.item_numeric_columns, dataset.has_genres, with_vectors, config.lgbm.pca_dims)
        for with_vectors in sorted(needed)
    }


@dataclass(frozen=True)
class RankerKind:
    """A ranker class as the experiment uses it: ``build`` one for an arm (its feature spec and
    vectors) and seed; ``featurize`` rows into what that ranker's ``fit_featurized`` and
    ``predict_inputs`` read, which depends on the spec and vectors but not on the seed."""

    build: Callable[[ExperimentConfig, FeatureSpec, str | None, int], TreeRanker | DNNRanker]
    featurize: Callable[[pd.DataFrame, FeatureSpec, str | None], object]


#: The ranker kind of each ``ArmSpec.ranker``.
RANKERS: dict[str, RankerKind] = {
    "lgbm": RankerKind(
        build=lambda config, spec, vectors, seed: TreeRanker(config.lgbm, spec, vectors is not None, seed, config.num_threads),
        featurize=lambda frame, spec, vectors: tree_features(frame, spec, vectors is not None),
    ),
    "dnn": RankerKind(
        build=lambda config, spec, vectors, seed: DNNRanker(config.dnn, spec, vectors, seed, config.num_threads),
        featurize=dnn_tensors,
    ),
}


@dataclass(frozen=True)
class ArmInputs:
    """One arm's featurized periods, shared by all of its seeds."""

    train: Featurized
    valid: Featurized
    test: Featurized


def arm_inputs(dataset: RankingDataset, config: ExperimentConfig, specs: dict[bool, FeatureSpec]) -> dict[str, ArmInputs]:
    """Every configured arm's periods featurized once: the inputs depend on the rows, the
    feature spec and the arm's vectors, none of which changes with the seed."""
    out = {}
    for name in config.models:
        arm = ARMS_BY_NAME[name]
        spec, featurize = specs[arm.vectors is not None], RANKERS[arm.ranker].featurize
        out[name] = ArmInputs(
            *(Featurized.of(frame, featurize(frame, spec, arm.vectors)) for frame in (dataset.train, dataset.valid, dataset.test))
        )
    return out


def train_models(
    dataset: RankingDataset,
    config: ExperimentConfig,
    seed: int | None = None,
    specs: dict[bool, FeatureSpec] | None = None,
    inputs: dict[str, ArmInputs] | None = None,
) -> dict[str, TreeRanker | DNNRanker]:
    """Every configured model trained with one seed (default: the first of ``config.seeds``),
    on ``inputs`` when the caller featurized the arms already (``arm_inputs``)."""
    seed = config.seeds[0] if seed is None else seed
    specs = feature_specs(dataset, config) if specs is None else specs
    inputs = arm_inputs(dataset, config, specs) if inputs is None else inputs
    rankers: dict[str, TreeRanker | DNNRanker] = {}
    for name in config.models:
        arm = ARMS_BY_NAME[name]
        ranker = RANKERS[arm.ranker].build(config, specs[arm.vectors is not None], arm.vectors, seed)
        rankers[name] = ranker.fit_featurized(inputs[name].train, inputs[name].valid)
    return rankers


def model_metrics(name: str, test: pd.DataFrame, scores: np.ndarray, best_iteration: int | None) -> ModelMetrics:
    labels = test["label"].to_numpy()
    grouped = grouped_auc(labels, scores, test["user_id"].to_numpy(), f"{name} evaluation")
    return ModelMetrics(
        name=name,
        auc=auc(labels, scores, f"{name} evaluation"),
        logloss=logloss(labels, scores, f"{name} evaluation"),
        uauc=grouped.uauc,
        wuauc=grouped.wuauc,
        n_impressions=len(labels),
        n_users_uauc=grouped.n_users,
        n_single_class_users=grouped.n_single_class,
        best_iteration=best_iteration,
    )


def compare_arms(arms: dict[str, ArmResult], predictions: pd.DataFrame, config: ExperimentConfig) -> list[Comparison]:
    """Every configured (reference, arm) pair of ``MODEL_PAIRS``: seed-paired and bootstrap differences."""
    out = []
    labels, users = predictions["label"].to_numpy(), predictions["user_id"].to_numpy()
    for reference, arm in MODEL_PAIRS:
        if reference not in arms or arm not in arms:
            continue
        paired = {m: SeedPaired.of([getattr(r, m) for r in arms[reference].per_seed], [getattr(a, m) for a in arms[arm].per_seed])
                  for m in ("uauc", "wuauc")}  # fmt: skip
        boot = _bootstrap(labels, predictions[reference].to_numpy(), predictions[arm].to_numpy(), users, config, 0)
        out.append(Comparison(reference, arm, paired, boot))
    return out


def _bootstrap(
    labels: np.ndarray, reference: np.ndarray, arm: np.ndarray, users: np.ndarray, config: ExperimentConfig, k: int
) -> dict[str, PairedDelta | None]:
    """The paired user bootstrap; ``k`` numbers the row slice, so every pair reads the same draws on one slice."""
    b = config.bootstrap
    return paired_bootstrap(labels, reference, arm, users, b.n_resamples, b.confidence, b.seed + k)


def tier_table(
    predictions: pd.DataFrame,
    config: ExperimentConfig,
    all_rows: dict[tuple[str, str], dict[str, PairedDelta | None]] | None = None,
) -> list[TierResult]:
    """Paired baseline-vs-arm deltas per tier on the seed-averaged predictions, for every pair
    of ``MODEL_PAIRS`` whose reference is a baseline and whose two models were trained.

    ``all_rows`` holds the bootstrap of a (reference, arm) pair over all rows when
    ``compare_arms`` ran it already: the "all" tier is that same bootstrap (same rows, same
    draws), so it is read instead of run again.
    """
    all_rows = all_rows or {}
    rows: list[TierResult] = []
    total = len(predictions)
    slices = [("all", "all", np.ones(total, dtype=bool))]
    slices += [(dim, tier, (predictions[f"{dim}_tier"] == tier).to_numpy()) for dim in ("user", "item") for tier in TIER_NAMES]
    for base, arm in MODEL_PAIRS:
        if base not in BASELINE_MODELS or base not in predictions or arm not in predictions:
            continue
        for k, (dim, tier, mask) in enumerate(slices):
            sub = predictions[mask]
            if sub.empty:
                rows.append(TierResult(base, arm, dim, tier, 0, 0.0, 0, 0, None, None, None, "no evaluation impressions in this tier"))
                continue
            labels, users = sub["label"].to_numpy(), sub["user_id"].to_numpy()
            done = all_rows.get((base, arm)) if dim == "all" else None
            deltas = done if done is not None else _bootstrap(labels, sub[base].to_numpy(), sub[arm].to_numpy(), users, config, k)
            single = grouped_auc(labels, sub[base].to_numpy(), users).n_single_class
            note = None
            if deltas["auc"] is None:
                note = "only one label class in this tier: AUC, UAUC and WUAUC undefined"
            elif deltas["uauc"] is None:
                note = "no user in this tier has both positives and negatives: UAUC and WUAUC undefined"
            rows.append(
                TierResult(
                    base,
                    arm,
                    dim,
                    tier,
                    len(sub),
                    len(sub) / total,
                    int(pd.unique(users).size),
                    single,
                    deltas["auc"],
                    deltas["uauc"],
                    deltas["wuauc"],
                    note,
                )
            )
    return rows


def data_fingerprint(
    config: ExperimentConfig, dataset: RankingDataset, history: pd.DataFrame, learn_cut: pd.Timestamp | None
) -> dict[str, object]:
    """What the numbers were computed from: file hashes, sizes, periods and embedding coverage."""
    files = [str(p) for p in data_source(config.data.source).paths(config.data) if p is not None]
    emb = config.embeddings
    if emb.source == "parquet":
        users, items = embedding_paths(emb)
        files += [str(p) for p in (*users, *items)]
    hashes = {str(p): _sha256(Path(p)) for p in files if p is not None and Path(p).is_file()}
    splits = {}
    for name in ("train", "valid", "test"):
        frame = dataset.split(name)
        entry: dict[str, object] = {
            "impressions": len(frame),
            "users": int(frame["user_id"].nunique()),
            "items": int(frame["item_id"].nunique()),
            "positive_rate": float(frame["label"].mean()) if len(frame) else None,
            "first": frame["timestamp"].min().isoformat() if len(frame) else None,
            "last": frame["timestamp"].max().isoformat() if len(frame) else None,
        }
        if dataset.has_embeddings:
            entry["user_embedding_coverage"] = float(frame["user_embedding"].notna().mean()) if len(frame) else None
            entry["item_embedding_coverage"] = float(frame["item_embedding"].notna().mean()) if len(frame) else None
            versions = pd.concat([frame["user_model_version"], frame["item_model_version"]]).dropna().unique()
            entry["model_versions"] = sorted(map(str, versions))
        splits[name] = entry
    return {
        "files_sha256": hashes,
        "history_rows": len(history),
        "periods": dataset.periods.to_dict(),
        "learn_model_data_cut": None if learn_cut is None else learn_cut.isoformat(),
        "embedding_source": emb.source,
        "feast_repo": feast_repo_for(emb) if emb.source == "feast" else None,
        "splits": splits,
    }
