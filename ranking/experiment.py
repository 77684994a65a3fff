"""The ranking experiment: baselines vs LEARN rankers, overall (Table 6) and by tier (Table 7).

``run_ranking_experiment(config)`` loads the data, joins LEARN embeddings point-in-time,
trains every configured model on the training period with early stopping on the
validation period, and scores the evaluation period once. Nothing downstream of the
training period is used to pick anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.data.split import parse_time
from learn_features.embeddings_io import ITEM_FILE, MANIFEST_FILE, USER_FILE, read_run_manifest, run_manifest_path
from learn_features.errors import LearnFeaturesError
from learn_features.store.replay import replay_repo_path
from ranking.bootstrap import PairedDelta, paired_bootstrap
from ranking.config import LEARN_MODELS, MODEL_PAIRS, EmbeddingConfig, ExperimentConfig
from ranking.dataset import RankingDataset, build_dataset, load_data
from ranking.dnn import DNNRanker
from ranking.embeddings import EmbeddingJoiner, FeastEmbeddingJoiner, ParquetEmbeddingJoiner
from ranking.features import fit_feature_spec
from ranking.lgbm import TreeRanker
from ranking.metrics import auc, grouped_auc, logloss
from ranking.tiers import TIER_NAMES, Thresholds, assign_tiers, resolve_thresholds

MANIFEST = Path("embeddings") / MANIFEST_FILE  # as named in messages
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
    best_iteration: int  # boosting rounds (trees) or best epoch (DNN), chosen on validation

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class TierResult:
    pair: str  # "dnn" or "lgbm"
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
    metrics: dict[str, ModelMetrics]
    tiers: list[TierResult]
    predictions: pd.DataFrame  # evaluation rows + one score column per model + tiers
    rankers: dict[str, TreeRanker | DNNRanker]
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
    folder = Path(cfg.run_dir) / "embeddings"
    return [folder / USER_FILE], [folder / ITEM_FILE]


def feast_repo_for(cfg: EmbeddingConfig) -> str:
    """``feast_repo``, else the LEARN run's replay repo (``learn-features publish --replay``)."""
    if cfg.feast_repo is not None:
        return cfg.feast_repo
    if cfg.run_dir is None:
        raise LearnFeaturesError("embeddings.source='feast' needs embeddings.feast_repo or embeddings.run_dir (or --run-dir)")
    return str(replay_repo_path(cfg.run_dir))


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
    if cfg.run_dir is None or not run_manifest_path(cfg.run_dir).exists():
        return None
    return run_manifest_path(cfg.run_dir), read_run_manifest(cfg.run_dir, required=(key,))[key]


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


def run_ranking_experiment(config: ExperimentConfig) -> ExperimentResults:
    """Load, split, join, train, evaluate (see module docstring). Reports are written separately."""
    impressions, history, items = load_data(config.data)
    joiner = make_joiner(config.embeddings)
    split = config.split
    if split.train_start == TRAIN_START_FROM_EMBEDDINGS:
        start = _earliest_snapshot(joiner, config.embeddings)
        split = dataclasses.replace(split, train_start=start.isoformat())
    dataset = build_dataset(
        impressions,
        split,
        history=history,
        items=items,
        joiner=joiner,
        expected_model_version=expected_model_version(config.embeddings),
    )
    learn_cut = learn_training_end(config.embeddings) if config.embeddings.source != "none" else None
    if learn_cut is not None and learn_cut > dataset.periods.cut:
        raise LearnFeaturesError(
            f"{Path(config.embeddings.run_dir or '') / MANIFEST}: the LEARN model was trained on data up to {learn_cut}, "
            f"after the ranking cut {dataset.periods.cut}; its embeddings would carry evaluation-period behaviour. "
            "Train LEARN with a cut at or before the ranking cut."
        )
    fingerprint = data_fingerprint(config, dataset, history, learn_cut)
    return run_on_dataset(dataset, history, config, fingerprint)


def run_on_dataset(
    dataset: RankingDataset, history: pd.DataFrame, config: ExperimentConfig, fingerprint: dict[str, object] | None = None
) -> ExperimentResults:
    """Train and evaluate every configured model on an assembled dataset."""
    notes: list[str] = []
    if any(m in LEARN_MODELS for m in config.models) and not dataset.has_embeddings:
        raise LearnFeaturesError("LEARN models requested but the dataset was built without an embedding join")
    if dataset.has_embeddings:
        for name in ("train", "valid", "test"):
            frame = dataset.split(name)
            if len(frame) and frame["item_embedding"].isna().all():
                notes.append(
                    f"no {name}-period impression has an item LEARN embedding point-in-time: the snapshot is newer "
                    "than these rows, or older than the TTL (embeddings.max_age_days)"
                )
    rankers = train_models(dataset, config)
    test = dataset.test
    thresholds = resolve_thresholds(history, dataset.periods.cut, config.tiers)
    predictions = test[["user_id", "item_id", "timestamp", "label", "user_n", "item_pos"]].copy()
    predictions = pd.concat([predictions, assign_tiers(test, thresholds)], axis=1)
    metrics: dict[str, ModelMetrics] = {}
    for name, ranker in rankers.items():
        scores = ranker.predict(test)
        predictions[name] = scores
        metrics[name] = model_metrics(name, test, scores, ranker)
    if metrics:
        # Labels are shared by all models, so the single-class users are the same for each.
        first = next(iter(metrics.values()))
        if first.n_single_class_users:
            notes.append(
                f"{first.n_single_class_users} of {test['user_id'].nunique()} evaluation users have only positives or only "
                "negatives; they are excluded from UAUC/WUAUC (counted in every table)"
            )
        if first.auc is None:
            notes.append("the evaluation period has a single label class: AUC is undefined")
    tiers = tier_table(predictions, config)
    notes += [f"{t.pair} {t.dimension} {t.tier}: {t.note}" for t in tiers if t.note]
    return ExperimentResults(
        config=config,
        dataset=dataset,
        thresholds=thresholds,
        metrics=metrics,
        tiers=tiers,
        predictions=predictions,
        rankers=rankers,
        fingerprint=fingerprint or {},
        notes=notes,
    )


def train_models(dataset: RankingDataset, config: ExperimentConfig) -> dict[str, TreeRanker | DNNRanker]:
    specs = {}
    rankers: dict[str, TreeRanker | DNNRanker] = {}
    for name in config.models:
        with_learn = name in LEARN_MODELS
        if with_learn not in specs:
            specs[with_learn] = fit_feature_spec(
                dataset.train, dataset.item_numeric_columns, dataset.has_genres, with_learn, config.lgbm.pca_dims, config.seed
            )
        spec = specs[with_learn]
        if name.startswith("lgbm"):
            ranker: TreeRanker | DNNRanker = TreeRanker(config.lgbm, spec, with_learn, config.seed, config.num_threads)
        else:
            ranker = DNNRanker(config.dnn, spec, with_learn, config.seed, config.num_threads)
        rankers[name] = ranker.fit(dataset.train, dataset.valid)
    return rankers


def model_metrics(name: str, test: pd.DataFrame, scores: np.ndarray, ranker: TreeRanker | DNNRanker) -> ModelMetrics:
    labels = test["label"].to_numpy()
    grouped = grouped_auc(labels, scores, test["user_id"].to_numpy(), f"{name} evaluation")
    best = ranker.best_iteration if isinstance(ranker, TreeRanker) else ranker.best_epoch
    return ModelMetrics(
        name=name,
        auc=auc(labels, scores, f"{name} evaluation"),
        logloss=logloss(labels, scores, f"{name} evaluation"),
        uauc=grouped.uauc,
        wuauc=grouped.wuauc,
        n_impressions=len(labels),
        n_users_uauc=grouped.n_users,
        n_single_class_users=grouped.n_single_class,
        best_iteration=int(best),
    )


def tier_table(predictions: pd.DataFrame, config: ExperimentConfig) -> list[TierResult]:
    """Paired baseline-vs-LEARN deltas per tier, for every pair whose two models were trained."""
    rows: list[TierResult] = []
    total = len(predictions)
    slices = [("all", "all", np.ones(total, dtype=bool))]
    slices += [(dim, tier, (predictions[f"{dim}_tier"] == tier).to_numpy()) for dim in ("user", "item") for tier in TIER_NAMES]
    for base, learn in MODEL_PAIRS:
        if base not in predictions or learn not in predictions:
            continue
        pair = base.split("_")[0]
        for k, (dim, tier, mask) in enumerate(slices):
            sub = predictions[mask]
            if sub.empty:
                rows.append(TierResult(pair, dim, tier, 0, 0.0, 0, 0, None, None, None, "no evaluation impressions in this tier"))
                continue
            labels, users = sub["label"].to_numpy(), sub["user_id"].to_numpy()
            deltas = paired_bootstrap(
                labels,
                sub[base].to_numpy(),
                sub[learn].to_numpy(),
                users,
                config.bootstrap.n_resamples,
                config.bootstrap.confidence,
                config.seed + k,
            )
            single = grouped_auc(labels, sub[base].to_numpy(), users).n_single_class
            note = None
            if deltas["auc"] is None:
                note = "only one label class in this tier: AUC, UAUC and WUAUC undefined"
            elif deltas["uauc"] is None:
                note = "no user in this tier has both positives and negatives: UAUC and WUAUC undefined"
            rows.append(
                TierResult(
                    pair,
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
    files = [config.data.interactions, config.data.items]
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
