"""The LEARN job, stage by stage: extract -> train -> embed -> evaluate.

Every stage reads the config, reloads and re-splits the data (seconds, deterministic), checks
the inputs it needs (content stores, checkpoints), records the config and the splits and then
writes its outputs atomically under the run directory (``learn_features.run.RunDir`` names
every path): the content stores (``extract``, streamed from the cache), the trained towers of
every protocol, method and seed (``train``, resumable), the published embeddings of the
primary method of the primary protocol, first seed, with their manifest (``embed``), and the
retrieval tables (``evaluate``).

Re-running a finished stage is cheap: extraction hits the cache, a finished model's result is
read from its last checkpoint, and outputs are rewritten with identical content.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from learn_features.atomic import atomic_path, write_json_atomic, write_text_atomic
from learn_features.cex.extractor import ContentExtractor, EncoderConfig, ShardPass, content_keys
from learn_features.cex.model_loading import resolve_model
from learn_features.cex.prompt import render_prompts
from learn_features.cex.sharding import local_device, resolve_shard
from learn_features.data.split import Split, catalog_until, events_until, parse_time, resolve_cut_time, split_dataset
from learn_features.data.sources import data_source
from learn_features.data.tables import Dataset, LoadReport, assemble, write_item_list
from learn_features.device import pick_device
from learn_features.embeddings_io import EmbeddingTable, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.content_store import INDEX, ContentStore, ContentStoreBuilder, items_digest, open_current
from learn_features.pch.inputs import ItemInputs
from learn_features.retrieval import rank_scores
from learn_features.run import RunDir
from learn_features.trained_run import TrainedRun
from training.config import PipelineConfig
from training.evaluation import (
    COLD_GALLERY, MethodRankings, metrics_markdown, per_user_frame, protocol_metrics, rank_among_cold, target_subsets, user_tables,
)
from training.methods import CONTENT_KINDS, Method, get_methods
from training.published import PublishedRow, published_path, read_published
from training.trainer import TrainJob, TrainResult, train_towers
from training.workers import spawn_pool

@dataclass
class Prepared:
    """Validated data and its split under every configured protocol, and the figures published
    on that data (``training.published``): the start of every stage."""

    config: PipelineConfig
    dataset: Dataset
    splits: dict[str, Split]
    published: list[PublishedRow]
    # Stores already checked against the config: the check renders and hashes every item's
    # prompt, once per encoder rather than once per method and protocol.
    _checked_stores: dict[str, ContentStore] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def split(self) -> Split:
        """The primary protocol's split: what `embed` publishes."""
        return self.splits[self.config.split.primary_protocol]

    @property
    def item_ids(self) -> list[str]:
        return self.dataset.catalog["item_id"].tolist()

    def content_store(self, content: str) -> ContentStore:
        """The run's content embeddings (fp16, memory-mapped), as ``extract`` assembled them.

        Refused, with the reason, when they were extracted under other encoder settings, for
        another catalog or from other item texts or weights: new content must never meet towers
        or versions made for the old.
        """
        if content in self._checked_stores:
            return self._checked_stores[content]
        directory = self.run.content(content)
        if not (directory / INDEX).exists():
            raise LearnFeaturesError(f"{directory}: content embeddings not found; run `learn-features extract` first")
        store = ContentStore(directory)
        recorded = store.source.get("encoder") or {}
        encoder = encoder_for(self.config, content)
        fingerprint = resolve_model(encoder.model, encoder.gguf_file).fingerprint
        keys = content_keys(encoder, fingerprint, render_prompts(self.dataset.catalog, encoder.prompt_template))
        current = content_source(encoder, fingerprint, keys)
        changed = [name for name, value in current["encoder"].items() if recorded.get(name) != value]
        if changed:
            raise LearnFeaturesError(
                f"{directory}: extracted with other {content} settings ({', '.join(changed)}); re-run `learn-features extract`"
            )
        if store.items_sha256 != items_digest(self.item_ids):
            raise LearnFeaturesError(f"{directory}: items differ from the current catalog; re-run `learn-features extract`")
        if store.source.get("keys_sha256") != current["keys_sha256"]:  # a key holds the weights' fingerprint and the text
            raise LearnFeaturesError(
                f"{directory}: the item texts or the {content} weights differ from those the store was extracted from (the "
                "catalog changed, or with MovieLens split.protocols did: tags count only before the temporal cut); "
                "re-run `learn-features extract`"
            )
        self._checked_stores[content] = store
        return store

    def item_inputs(self, split: Split, method: Method, device: torch.device) -> ItemInputs:
        """What ``method``'s towers read per item: an ID slot per item with a training event, the
        content store, or both (the hybrid)."""
        if not method.learns_ids:
            return ItemInputs(store=self.content_store(method.content))
        ids = ItemInputs.from_training_items(len(split.item_ids), np.flatnonzero(split.warm_items), device)
        return ids if method.content == "ids" else ItemInputs(store=self.content_store(method.content)).with_id_part(ids)


def prepare(config: PipelineConfig) -> Prepared:
    data = config.data
    reader = data_source(data.source)
    source = str(reader.paths(data)[0])
    interactions = events_until(reader.interactions(data), config.split.until, source)
    cut = resolve_cut_time(interactions, config.split) if "temporal" in config.split.protocols else None
    report = LoadReport()
    # Catalog text written from the cut on is left out; without a cut, from split.until on.
    text_before = cut if cut is not None or config.split.until is None else parse_time(config.split.until, "split.until")
    catalog = catalog_until(reader.catalog(data, report, text_before), interactions, config.split.until)
    dataset = assemble(interactions, catalog, source, report, data.order)
    rule, _ = data.label_rules()
    positive = rule.matches(dataset.interactions, source) if rule is not None else True
    dataset.interactions["positive"] = positive
    timed = "timestamp" in dataset.interactions and dataset.interactions["timestamp"].notna().all()
    if not timed and "popularity_recent" in config.eval.methods:
        # Without times every window would be empty and the "baseline" a random ranking.
        raise LearnFeaturesError(
            f"{source}: eval.methods has popularity_recent, which counts events in a time window, but the interactions "
            "have no timestamps; remove it from eval.methods"
        )
    splits = {p: split_dataset(dataset.interactions, dataset.catalog, config.split, p) for p in config.split.protocols}
    return Prepared(config, dataset, splits, read_published(published_path(data)))


def record(prep: Prepared) -> None:
    """Write the run's ``config.json`` and ``split.json``.

    Each stage calls this only once its own checks have passed, so a refused command (a
    missing content store, an unknown method, an unsafe checkpoint) never rewrites the record
    of a finished run.
    """
    write_json_atomic(prep.run.config, asdict(prep.config))
    splits = {p: s.summary() for p, s in prep.splits.items()}
    write_json_atomic(prep.run.split, {"load": asdict(prep.dataset.report), "splits": splits})


def needed_contents(config: PipelineConfig) -> list[str]:
    """The content encoders ("llm", "text_encoder") that the configured methods read."""
    return sorted({m.content for m in get_methods(config.eval.methods) if m.content in CONTENT_KINDS})


def encoder_for(config: PipelineConfig, content: str) -> EncoderConfig:
    return config.llm if content == "llm" else config.text_encoder


def require_unsharded(config: PipelineConfig) -> None:
    """``run`` needs every item's content; a shard belongs to ``extract`` alone."""
    sharded = [f"{content}.shard" for content in needed_contents(config) if encoder_for(config, content).shard]
    if sharded:
        raise LearnFeaturesError(
            f"{' and '.join(sharded)} is set, but `run` needs the content of every item: run the shards with "
            "`learn-features extract --shard I/N`, then `run` without a shard (it finds them cached)"
        )


def extract(prep: Prepared, progress: bool = True, env: Mapping[str, str] | None = None) -> dict[str, Path | ShardPass]:
    """Content embeddings for every catalog item, for each encoder the chosen methods use.

    An encoder with a shard (``llm.shard``; with ``env``, torchrun's RANK/WORLD_SIZE when none
    is set) only fills its share of the shared cache and assembles nothing: its value is the
    ``ShardPass``, and a later unsharded extract finds everything cached and assembles the store.
    """
    jobs = []
    for content in needed_contents(prep.config):
        encoder = encoder_for(prep.config, content)
        shard = resolve_shard(encoder.shard, env)
        if env is not None:
            encoder = replace(encoder, device=local_device(encoder.device, env))
        jobs.append((content, shard, ContentExtractor(encoder, prep.config.cache_dir),
                     render_prompts(prep.dataset.catalog, encoder.prompt_template)))
    record(prep)
    written: dict[str, Path | ShardPass] = {}
    for content, shard, extractor, prompts in jobs:
        if shard is not None:
            written[content] = extractor.fill_cache(prompts, shard, progress)
            continue
        written[content] = assemble_store(prep, content, extractor, extractor.ensure_cached(prompts, progress), progress).directory
    return written


def content_source(encoder: EncoderConfig, fingerprint: str, keys: list[str]) -> dict[str, Any]:
    """What a content store is made from: encoder settings, weights and every item's cache key
    (its prompt text included). ``extract`` records it; training, embedding and evaluation
    refuse a store whose record differs, so towers never learn from texts the config no longer
    produces (``run`` would then re-extract and retrain everything)."""
    return {"encoder": encoder.content_identity(), "model_fingerprint": fingerprint, "keys_sha256": items_digest(keys)}


def assemble_store(prep: Prepared, content: str, extractor: ContentExtractor, keys: list[str], progress: bool) -> ContentStore:
    """The catalog's cached vectors as the run's fp16 content store, streamed one cache shard at
    a time (never the whole matrix in memory); kept as is when already built from the same keys."""
    directory = prep.run.content(content)
    source = content_source(extractor.config, extractor.fingerprint, keys)
    store = open_current(directory, source)
    if store is not None and store.items_sha256 == items_digest(prep.item_ids):
        return store
    with ContentStoreBuilder(directory, prep.item_ids, source) as builder:
        for positions, vectors in tqdm(extractor.cache.scatter(keys), desc=f"assembling {content} store",
                                       unit="cache shard", disable=not progress):
            builder.put(positions, vectors)
        return builder.commit()


def training_item_ids(split: Split) -> list[str]:
    """The items that own an ID slot: every item with a training event."""
    return [split.item_ids[i] for i in np.flatnonzero(split.warm_items)]


def seeds_of(config: PipelineConfig) -> list[int]:
    return [config.train.seed + k for k in range(config.eval.seeds)]


def train(prep: Prepared, only: list[str] | None = None, progress: bool = True) -> dict[str, TrainResult]:
    """Every trained method, under every protocol and seed; keys are ``protocol/method/seed<k>``.

    With ``train.workers`` > 1 on a CPU, that many spawned processes train one job each at a
    time, single-threaded: the towers are small, so two one-thread processes on two cores get
    through about twice the steps of one two-thread process. Each job is seeded and resumable
    on its own, so the results do not depend on how the jobs were spread.
    """
    config = prep.config
    device = pick_device(config.train.device)
    methods = [m for m in get_methods(only or config.eval.methods) if m.trained]
    jobs = [(split, m, prep.item_inputs(split, m, device)) for split in prep.splits.values() for m in methods]
    for split, method, _ in jobs:  # a resume checkpoint that cannot be read safely is refused before any work
        for seed in seeds_of(config):
            last = prep.run.last(split.protocol, method.name, seed)
            if last.exists():
                checkpoint.load_payload(last)
    record(prep)
    keys = [(split.protocol, method.name, seed) for split, method, _ in jobs for seed in seeds_of(config)]
    if config.train.workers > 1 and device.type == "cpu" and len(keys) > 1:
        return _train_in_workers(prep, keys, progress)
    inputs = {(split.protocol, method.name): i for split, method, i in jobs}
    return {f"{p}/{m}/seed{s}": train_towers(train_job(prep, p, m, s, inputs[p, m]), progress) for p, m, s in keys}


def train_job(prep: Prepared, protocol: str, method_name: str, seed: int, inputs: ItemInputs) -> TrainJob:
    """One trained method under one protocol and seed, and where its checkpoints go."""
    config, split = prep.config, prep.splits[protocol]
    method = get_methods([method_name])[0]
    return TrainJob(
        prep.run.model(protocol, method.name, seed),
        replace(config.model_for(method.name), variant=method.variant),
        replace(config.train_for(method.name), seed=seed),
        split,
        inputs,
        config.split.history_len,
        config.split.target_len,
        method.name,
        training_item_ids(split) if method.learns_ids else None,
    )


def training_results(prep: Prepared, progress: bool = True) -> dict[str, TrainResult]:
    """What ``evaluate`` needs of every trained model, keyed as ``train``'s results.

    A finished model's result (best epoch, score, history) is read from its ``last.pt``, with
    nothing rebuilt; only methods with a model still to train (new seeds, a new method, an
    interrupted run) go through ``train``, which skips their finished models.
    """
    config = prep.config
    device = pick_device(config.train.device)
    results: dict[str, TrainResult | None] = {}
    for split in prep.splits.values():
        for method in (m for m in get_methods(config.eval.methods) if m.trained):
            inputs = prep.item_inputs(split, method, device)
            for seed in seeds_of(config):
                results[f"{split.protocol}/{method.name}/seed{seed}"] = train_job(prep, split.protocol, method.name, seed, inputs).finished()
    missing = list(dict.fromkeys(key.split("/")[1] for key, result in results.items() if result is None))
    if not missing:
        record(prep)
        return {key: result for key, result in results.items() if result is not None}
    return {**results, **train(prep, missing, progress)}


def _train_in_workers(prep: Prepared, keys: list[tuple[str, str, int]], progress: bool) -> dict[str, TrainResult]:
    results = {}
    with spawn_pool(prep.config.train.workers) as pool:
        futures = {pool.submit(_train_job, prep.config, *key): key for key in keys}
        for future in tqdm(as_completed(futures), total=len(futures), desc="training", unit="model", disable=not progress):
            protocol, method, seed = futures[future]
            results[f"{protocol}/{method}/seed{seed}"] = result = future.result()
            if progress:
                tqdm.write(f"[{protocol}/{method}/seed{seed}] best epoch {result.best_epoch} of {len(result.history)}, "
                           f"validation {prep.config.train.select_metric} {result.best_score:.4f}")
    return {f"{p}/{m}/seed{s}": results[f"{p}/{m}/seed{s}"] for p, m, s in keys}


def _train_job(config: PipelineConfig, protocol: str, method_name: str, seed: int) -> TrainResult:
    """A worker process's job: rebuild the (deterministic) split, train one model on one thread."""
    torch.set_num_threads(1)
    prep = prepare(config)
    method = get_methods([method_name])[0]
    inputs = prep.item_inputs(prep.splits[protocol], method, pick_device(config.train.device))
    return train_towers(train_job(prep, protocol, method_name, seed, inputs), False)


def embed(prep: Prepared) -> dict[str, Path]:
    """Publishable LEARN embeddings of the primary method: every user with a past, every item."""
    config, split, run = prep.config, prep.split, prep.run
    method = get_methods([config.eval.primary_method])[0]
    encoder = encoder_for(config, method.content)
    best_path = run.best(split.protocol, method.name, config.train.seed)
    device = pick_device(config.train.device)
    tower = TrainedRun.of_checkpoint(best_path, prep.item_inputs(split, method, device), split.item_ids, device)
    record(prep)
    version = checkpoint.model_version(tower.payload, method.name, tower.inputs.identity)
    user_ids = sorted(split.profiles)
    users, items = tower.user_vectors([split.profiles[u] for u in user_ids]), tower.item_vectors()
    as_of = split.data_end if split.data_end is not None else pd.Timestamp.now(tz="UTC")
    paths = {
        "user": write_table(EmbeddingTable("user", user_ids, users, as_of, version), run.embedding_table("user")),
        "item": write_table(EmbeddingTable("item", split.item_ids, items, as_of, version), run.embedding_table("item")),
    }
    id_part = _write_item_list(run.id_part_items, tower.payload["trained_item_ids"] if method.id_part else None)
    rule = config.eval.new_item_rule(method.name)
    warm = _write_item_list(run.warm_items, None if rule is None else [i for i, w in zip(split.item_ids, split.warm_items) if w])
    write_json_atomic(
        run.manifest,
        {
            "model_version": version,
            "method": method.name,
            "protocol": split.protocol,
            "dim": int(users.shape[1]),
            "as_of": as_of.isoformat(),
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "checkpoint": str(best_path.resolve()),
            # the resolved dtype, so that `embed-items` on another device embeds new items as the run did
            "encoder": {**asdict(encoder), "dtype": encoder.content_identity()["dtype"]},
            "cache_dir": str(Path(config.cache_dir).resolve()),
            "content_store": str(run.content(method.content).resolve()),
            "history_len": config.split.history_len,
            "users": len(user_ids),
            "items": len(split.item_ids),
            "id_part": id_part,
            # The method's rule for new items (eval.cold_bias or eval.cold_share,
            # learn_features.new_items) and the items it counts as warm, which `publish` carries
            # into the feature repo so that retrieval over these vectors ranks as the tables did.
            "new_item_rule": None if rule is None else rule.record(),
            "warm_items": warm,
        },
    )
    if id_part is None:  # a previous embed of a hybrid must not leave its list beside other vectors
        run.id_part_items.unlink(missing_ok=True)
    if warm is None:  # nor one with a rule its warm items
        run.warm_items.unlink(missing_ok=True)
    return paths


def _write_item_list(path: Path, item_ids: list[str] | None) -> dict | None:
    """A list of items (``RunDir.id_part_items``, ``RunDir.warm_items``) as one ``item_id``
    column, and its manifest entry; None (nothing written) for no list."""
    if item_ids is None:
        return None
    write_item_list(path, item_ids)
    return {"items": len(item_ids), "file": str(path.resolve())}


def evaluate(prep: Prepared, progress: bool = True, on: str = "test") -> dict[str, dict]:
    """Retrieval metrics of every method on each protocol's test users, on every target subset
    (``training.evaluation.target_subsets``), paired against each of ``eval.references``.

    ``on="validation"`` scores the validation users instead, into ``metrics-validation.*``: the
    table to compare settings on, since choosing by the test table would tune on test users.
    """
    config, run = prep.config, prep.run
    depth = max(config.eval.ks)
    seeds = seeds_of(config)
    results: dict[str, dict] = {}
    per_user = []
    trained = training_results(prep, progress)
    for protocol, split in prep.splits.items():
        test = split.test if on == "test" else split.val
        exclude = [np.zeros(0, np.int64)] * len(test) if config.eval.rank_seen else test.exclude
        subsets = target_subsets(split, test, config.eval.tail_share)
        rankings, among_cold = [], []
        for method in tqdm(get_methods(config.eval.methods), desc=f"evaluating ({protocol})", disable=not progress):
            runs = seeds if method.trained else seeds[:1]
            model = method.fit(prep, split)
            ranked, ranked_among_cold, diagnostics = [], [], {}
            for seed in runs:
                scored = model.full_sort_predict(test, seed)
                ranked.append(rank_scores(scored.scores, exclude, depth))
                ranked_among_cold.append(rank_among_cold(scored.scores, exclude, split.warm_items, subsets[COLD_GALLERY], depth))
                diagnostics = scored.diagnostics
            training = [_training_summary(trained[f"{protocol}/{method.name}/seed{seed}"]) for seed in runs] if method.trained else []
            rankings.append(MethodRankings(method.name, ranked, diagnostics, training))
            among_cold.append(MethodRankings(method.name, ranked_among_cold))
        full_gallery = {subset: targets for subset, targets in subsets.items() if subset != COLD_GALLERY}
        tables = user_tables(rankings, full_gallery, config.eval.ks) | user_tables(among_cold, {COLD_GALLERY: subsets[COLD_GALLERY]}, config.eval.ks)
        results[protocol] = {
            "split": split.summary(),
            "users": len(test),
            "seeds": seeds,
            "references": config.eval.references,
            "tail_share": config.eval.tail_share,
            "rank_seen": config.eval.rank_seen,
            "methods": protocol_metrics(rankings, tables, config.eval.ks, config.eval.bootstrap_rounds, config.eval.references),
        }
        per_user.append(per_user_frame(protocol, rankings, tables, test.user_ids, subsets, seeds))
    document = {"evaluated_users": on, "protocols": results}
    write_json_atomic(run.metrics_json(on), document)
    # Published figures are test figures: the validation table has nothing to set them against.
    published = prep.published if on == "test" else []
    write_text_atomic(run.metrics_md(on), metrics_markdown(results, config.eval.ks, on, published))
    with atomic_path(run.per_user(on)) as tmp:
        pq.write_table(pa.Table.from_pandas(pd.concat(per_user, ignore_index=True), preserve_index=False), tmp)
    from training.curves import training_curves_png  # matplotlib: only evaluation draws

    curves = training_curves_png(results)
    if curves is not None:
        with atomic_path(run.training_curves(on)) as tmp:
            Path(tmp).write_bytes(curves)
    return document


def _training_summary(result: TrainResult) -> dict:
    last = result.history[-1] if result.history else {}
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_validation": result.best_score,
        "final_loss": last.get("loss"),
        "final_chance_loss": last.get("chance_loss"),
        "history": result.history,
    }
