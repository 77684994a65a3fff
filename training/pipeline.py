"""The LEARN job, stage by stage: extract -> train -> embed -> evaluate.

Every stage reads the config, reloads and re-splits the data (seconds, deterministic), checks
the inputs it needs (content stores, checkpoints), records the config and the split
(``config.json``, ``split.json``) and then writes its outputs atomically under ``run_dir``:

- ``content/<encoder>/``: content embeddings aligned to the catalog, as the fp16 sharded
  store that training and inference read row by row (``extract``, streamed from the cache);
- ``models/<method>/{best,last}.pt``: trained towers, resumable (``train``);
- ``embeddings/{user,item}_embeddings.parquet`` + ``manifest.json`` (``embed``);
- ``metrics.json`` + ``metrics.md`` (``evaluate``).

Re-running a finished stage is cheap: extraction hits the cache, training finds its last
checkpoint complete, and outputs are rewritten with identical content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from learn_features.atomic import write_json_atomic, write_text_atomic
from learn_features.cex.extractor import ContentExtractor, EncoderConfig, ShardPass
from learn_features.cex.model_loading import pick_device
from learn_features.cex.prompt import render_prompts
from learn_features.cex.sharding import local_device, resolve_shard
from learn_features.data.movielens import load_movielens_catalog, load_movielens_interactions
from learn_features.data.split import Split, resolve_cut_time, split_dataset
from learn_features.data.tables import Dataset, LoadReport, assemble, load_generic
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, run_manifest_path, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.content_store import INDEX, ContentStore, ContentStoreBuilder, items_digest, open_current
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.retrieval import rank_items
from training.config import PipelineConfig
from training.evaluation import method_metrics, metrics_markdown
from training.methods import Method, get_methods
from training.trainer import BEST, LAST, TrainResult, train_towers


@dataclass
class Prepared:
    """Validated data and its split: the common starting point of every stage."""

    config: PipelineConfig
    dataset: Dataset
    split: Split

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)


def prepare(config: PipelineConfig) -> Prepared:
    data = config.data
    if data.source == "movielens":
        interactions = load_movielens_interactions(data.movielens_dir)
        cut = resolve_cut_time(interactions, config.split)
        catalog = load_movielens_catalog(data.movielens_dir, tags_before=cut)
        dataset = assemble(interactions, catalog, str(Path(data.movielens_dir) / "ratings.csv"), LoadReport())
    else:
        dataset = load_generic(data.interactions, data.catalog)
    split = split_dataset(dataset.interactions, dataset.catalog, config.split)
    return Prepared(config, dataset, split)


def record(prep: Prepared) -> None:
    """Write the run's ``config.json`` and ``split.json``.

    Each stage calls this only once its own checks have passed, so a refused command (a
    missing content store, an unknown method, an unsafe checkpoint) never rewrites the record
    of a finished run.
    """
    write_json_atomic(prep.run_dir / "config.json", asdict(prep.config))
    write_json_atomic(prep.run_dir / "split.json", {"load": asdict(prep.dataset.report), "split": prep.split.summary()})


def needed_contents(config: PipelineConfig) -> list[str]:
    """The content encoders ("llm", "text_encoder") that the configured methods read."""
    return sorted({m.content for m in get_methods(config.eval.methods) if m.content != "ids"})


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


def content_store_dir(run_dir: Path, content: str) -> Path:
    return run_dir / "content" / content


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


def assemble_store(prep: Prepared, content: str, extractor: ContentExtractor, keys: list[str], progress: bool) -> ContentStore:
    """The catalog's cached vectors as the run's fp16 content store, streamed one cache shard at
    a time (never the whole matrix in memory); kept as is when already built from the same keys."""
    directory = content_store_dir(prep.run_dir, content)
    source = {"encoder": extractor.config.content_identity(), "model_fingerprint": extractor.fingerprint,
              "keys_sha256": items_digest(keys)}
    store = open_current(directory, source)
    if store is not None and store.items_sha256 == items_digest(prep.split.item_ids):
        return store
    with ContentStoreBuilder(directory, prep.split.item_ids, source) as builder:
        for positions, vectors in tqdm(extractor.cache.scatter(keys), desc=f"assembling {content} store",
                                       unit="cache shard", disable=not progress):
            builder.put(positions, vectors)
        return builder.commit()


def content_store(prep: Prepared, content: str) -> ContentStore:
    """The run's content embeddings (fp16, memory-mapped), as ``extract`` assembled them.

    Refused, with the reason, when they were extracted under other encoder settings or for
    another catalog: new content must never meet towers or versions made for the old.
    """
    directory = content_store_dir(prep.run_dir, content)
    if not (directory / INDEX).exists():
        raise LearnFeaturesError(f"{directory}: content embeddings not found; run `learn-features extract` first")
    store = ContentStore(directory)
    recorded = store.source.get("encoder") or {}
    current = encoder_for(prep.config, content).content_identity()
    changed = [name for name, value in current.items() if recorded.get(name) != value]
    if changed:
        raise LearnFeaturesError(
            f"{directory}: extracted with other {content} settings ({', '.join(changed)}); re-run `learn-features extract`"
        )
    if store.items_sha256 != items_digest(prep.split.item_ids):
        raise LearnFeaturesError(f"{directory}: items differ from the current catalog; re-run `learn-features extract`")
    return store


def training_item_ids(split: Split) -> list[str]:
    trained = np.unique(np.concatenate(list(split.train.values())))
    return [split.item_ids[i] for i in trained]


def inputs_for(prep: Prepared, method: Method, device: torch.device) -> ItemInputs:
    if method.content == "ids":
        trained = np.concatenate(list(prep.split.train.values()))
        return ItemInputs.from_training_items(len(prep.split.item_ids), trained, device)
    return ItemInputs(store=content_store(prep, method.content))


def train(prep: Prepared, only: list[str] | None = None, progress: bool = True) -> dict[str, TrainResult]:
    config = prep.config
    device = pick_device(config.train.device)
    methods = [m for m in get_methods(only or config.eval.methods) if m.trained]
    inputs = {m.name: inputs_for(prep, m, device) for m in methods}
    for method in methods:  # a resume checkpoint that cannot be read safely is refused before any work
        last = prep.run_dir / "models" / method.name / LAST
        if last.exists():
            checkpoint.load_payload(last)
    record(prep)
    results = {}
    for method in methods:
        model_config = replace(config.model, variant=method.variant)
        results[method.name] = train_towers(
            prep.run_dir / "models" / method.name,
            model_config,
            config.train,
            prep.split,
            inputs[method.name],
            config.split.history_len,
            config.split.target_len,
            method.name,
            training_item_ids(prep.split) if method.content == "ids" else None,
            progress,
        )
    return results


def method_vectors(prep: Prepared, method: Method, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors for ``histories``, item vectors for the whole catalog) of one method."""
    if not method.trained:
        store = content_store(prep, method.content)
        content = store.take(np.arange(len(store))).astype(np.float32)
        content = content / np.linalg.norm(content, axis=1, keepdims=True)
        users = np.stack([content[h].mean(axis=0) for h in histories])
        return users / np.linalg.norm(users, axis=1, keepdims=True), content
    payload = checkpoint.load_payload(prep.run_dir / "models" / method.name / BEST)
    device = pick_device(prep.config.train.device)
    model = checkpoint.build_model(payload, device)
    inputs = inputs_for(prep, method, device)
    return user_vectors(model, inputs, histories), item_vectors(model, inputs, np.arange(len(prep.split.item_ids)))


def embed(prep: Prepared) -> dict[str, Path]:
    """Publishable LEARN embeddings of the primary method: every user with a past, every item."""
    config = prep.config
    method = get_methods([config.eval.primary_method])[0]
    best_path = prep.run_dir / "models" / method.name / BEST
    payload = checkpoint.load_payload(best_path)
    inputs = inputs_for(prep, method, pick_device(config.train.device))
    record(prep)
    version = checkpoint.model_version(payload, method.name, inputs.identity)
    user_ids = sorted(prep.split.profiles)
    users, items = method_vectors(prep, method, [prep.split.profiles[u] for u in user_ids])
    out = prep.run_dir / "embeddings"
    as_of = prep.split.cut_time
    paths = {
        "user": write_table(EmbeddingTable("user", user_ids, users, as_of, version), out / USER_FILE),
        "item": write_table(EmbeddingTable("item", prep.split.item_ids, items, as_of, version), out / ITEM_FILE),
    }
    write_json_atomic(
        run_manifest_path(prep.run_dir),
        {
            "model_version": version,
            "method": method.name,
            "dim": int(users.shape[1]),
            "as_of": as_of.isoformat(),
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "checkpoint": str(best_path.resolve()),
            "encoder": asdict(encoder_for(config, method.content)),
            "cache_dir": str(Path(config.cache_dir).resolve()),
            "users": len(user_ids),
            "items": len(prep.split.item_ids),
        },
    )
    return paths


def evaluate(prep: Prepared, progress: bool = True) -> dict[str, dict]:
    """Retrieval metrics of every method on the held-out test users, overall and on cold items."""
    config, split = prep.config, prep.split
    methods = get_methods(config.eval.methods)
    for method in methods:  # every input is checked before anything is written
        if method.trained:
            checkpoint.load_payload(prep.run_dir / "models" / method.name / BEST)
        if method.content != "ids":
            content_store(prep, method.content)
    record(prep)
    test = split.test
    cold_targets = [t[~split.warm_items[t]] for t in test.targets]
    results = {}
    for method in tqdm(methods, desc="evaluating", disable=not progress):
        users, items = method_vectors(prep, method, test.histories)
        ranked = rank_items(users, items, test.exclude, max(config.eval.ks))
        results[method.name] = method_metrics(ranked, test.targets, cold_targets, config.eval)
    write_json_atomic(prep.run_dir / "metrics.json", results)
    write_text_atomic(prep.run_dir / "metrics.md", metrics_markdown(results, split.summary(), config.eval.ks))
    return results
