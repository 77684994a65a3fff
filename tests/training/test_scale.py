"""Training at scale, the CPU-checkable parts: the fp16 sharded content store, the speed options
(SDPA, optimizer, prefetch, compile), data-parallel training equal to one process, and the
training benchmark's smoke run. GPU figures are not measured here (CI has no GPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import cluster_content, clustered_split, tiny_llm_dir, tiny_pch_config  # noqa: F401
from learn_features.cli import main
from learn_features.config import load_config
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.cex.cache import EmbeddingCache
from learn_features.cex.extractor import ContentExtractor
from learn_features.cex.prompt import render_prompts
from learn_features.pch.content_store import INDEX, ContentStore, ContentStoreBuilder, write_content_store
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH
from learn_features.pch.negatives import Negatives
from job_fixtures import write_config, write_synthetic
from training import trainer
from training.collectives import World
from training.config import PipelineConfig
from training.loader import prefetch
from training.methods import METHODS
from training.trainer import LAST, StepParts, TrainConfig, build_optimizer, host_batches, step_module, train_step

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


# --- content store -----------------------------------------------------------------------


def chunked(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Uneven chunks, as an extractor would hand them over."""
    return np.split(array, np.cumsum(sizes)[:-1])


def test_store_gather_equals_the_array_across_three_shards(tmp_path: Path) -> None:
    """Rows written in uneven chunks land in 3 fp16 .npy shards; any gather (unsorted, repeated,
    crossing shards) returns exactly the fp16 rows, i.e. the array within fp16 precision."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(250, 64)).astype(np.float32)
    ids = [f"i{k}" for k in range(250)]
    store = write_content_store(tmp_path / "llm", chunked(vectors, [7, 120, 3, 120]), ids, {"test": 1}, shard_bytes=100 * 64 * 2)
    index = json.loads((tmp_path / "llm" / INDEX).read_text())
    assert [s["rows"] for s in index["shards"]] == [100, 100, 50] and index["dtype"] == "float16"
    assert sorted(p.name for p in (tmp_path / "llm").iterdir()) == [INDEX, "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    assert np.load(tmp_path / "llm" / "shard-00001.npy", mmap_mode="r").dtype == np.float16

    picks = np.array([249, 0, 99, 100, 100, 7, 199, 200, 13, 13])
    got = ContentStore(tmp_path / "llm").take(picks)
    assert got.dtype == np.float16 and got.shape == (10, 64)
    np.testing.assert_array_equal(got, vectors[picks].astype(np.float16))
    np.testing.assert_allclose(got.astype(np.float32), vectors[picks], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.take(np.arange(250)), vectors.astype(np.float16))


def private_rss_bytes() -> int:
    """Anonymous resident memory (RssAnon). Mapped shard pages count as RssFile instead: that is
    the kernel's page cache, shared and evictable, and how much of it a fault maps (whole large
    folios on recent kernels) is the kernel's business."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_gather_maps_only_the_shards_it_needs(tmp_path: Path) -> None:
    """A gather touches only the shards holding its rows (a missing third shard goes unnoticed),
    and reading 64 rows of a 48 MB store adds far less than a shard to the process's own memory."""
    dim, rows = 4096, 3 * 2048  # 3 shards of 16 MiB
    chunks = (np.random.default_rng(s).normal(size=(1024, dim)).astype(np.float32) for s in range(rows // 1024))
    write_content_store(tmp_path / "big", chunks, [str(k) for k in range(rows)], {}, shard_bytes=2048 * dim * 2)
    (tmp_path / "big" / "shard-00002.npy").unlink()
    store = ContentStore(tmp_path / "big")
    before = private_rss_bytes()
    got = store.take(np.random.default_rng(1).choice(2 * 2048, size=64, replace=False))
    grown = private_rss_bytes() - before
    assert got.shape == (64, dim) and np.isfinite(got.astype(np.float32)).all()
    assert grown < 8 * 2**20, f"gathering 64 rows grew RSS by {grown / 2**20:.1f} MiB"
    with pytest.raises(LearnFeaturesError, match="shard is missing"):
        store.take(np.array([2 * 2048 + 5]))


def test_store_refuses_what_fp16_cannot_hold_and_bad_row_counts(tmp_path: Path) -> None:
    with pytest.raises(LearnFeaturesError, match="float16 range"):
        write_content_store(tmp_path / "s", [np.full((2, 4), 1e5, np.float32)], ["a", "b"], {})
    with pytest.raises(LearnFeaturesError, match="3 content rows for 2 catalog items"):
        write_content_store(tmp_path / "s", [np.zeros((3, 4), np.float32)], ["a", "b"], {})
    with pytest.raises(LearnFeaturesError, match="does not have 4 columns"):
        write_content_store(tmp_path / "s", [np.zeros((1, 4)), np.zeros((1, 5))], ["a", "b"], {})
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []  # nothing half-built is left
    store = write_content_store(tmp_path / "s", [np.ones((2, 4))], ["a", "b"], {})
    with pytest.raises(LearnFeaturesError, match="out of range"):
        store.take(np.array([2]))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_store_assembles_from_cache_shards_in_any_order_at_one_shard_of_memory(tmp_path: Path) -> None:
    """Extraction's assembly: 24 length-sorted cache shards (96 MiB of fp32) scattered into a
    catalog-ordered 48 MiB store. Every row lands in its place, and the process's own memory
    never holds more than a few cache shards: the catalog matrix is never built."""
    dim, per_shard, shards = 4096, 256, 24
    rows = per_shard * shards
    cache = EmbeddingCache(tmp_path / "cache", "bench")
    catalog_order = np.random.default_rng(0).permutation(rows)  # cache row k holds catalog item catalog_order[k]
    keys = [f"k{item}" for item in range(rows)]
    for number in range(shards):
        items = catalog_order[number * per_shard : (number + 1) * per_shard]
        vectors = np.random.default_rng(number).normal(size=(per_shard, dim)).astype(np.float32)
        cache.register(cache.write_shard([keys[i] for i in items], vectors), [keys[i] for i in items])

    peaks: list[int] = []
    before = private_rss_bytes()
    with ContentStoreBuilder(tmp_path / "store", [str(i) for i in range(rows)], {}, shard_bytes=2048 * dim * 2) as builder:
        for positions, vectors in EmbeddingCache(tmp_path / "cache", "bench").scatter(keys):
            builder.put(positions, vectors)
            peaks.append(private_rss_bytes() - before)
        store = builder.commit()
    assert len(peaks) == shards and max(peaks) < 16 * 2**20, f"assembly grew RSS by {max(peaks) / 2**20:.1f} MiB"
    for number in (0, 11, 23):
        items = catalog_order[number * per_shard : (number + 1) * per_shard]
        expected = np.random.default_rng(number).normal(size=(per_shard, dim)).astype(np.float32).astype(np.float16)
        np.testing.assert_array_equal(store.take(items), expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build directory left


def test_store_build_with_a_missing_row_names_the_item_and_leaves_the_old_store(tmp_path: Path) -> None:
    old = write_content_store(tmp_path / "s", [np.ones((3, 4))], ["a", "b", "c"], {"v": 1})
    with pytest.raises(LearnFeaturesError, match=r"1 of 3 catalog items have no content row \(first: item 'b'\)"):
        with ContentStoreBuilder(tmp_path / "s", ["a", "b", "c"], {"v": 2}) as builder:
            builder.put(np.array([2, 0]), np.zeros((2, 4)))
            builder.commit()
    assert ContentStore(tmp_path / "s").source == {"v": 1} and ContentStore(tmp_path / "s").vectors_sha256 == old.vectors_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_store_inputs_train_exactly_like_resident_fp16_content(tmp_path: Path, single_thread) -> None:
    """Per-batch gathering from the store (distinct rows, re-pointed indices) changes nothing:
    the towers train bit for bit as with the same fp16 values resident in memory."""
    split = clustered_split(n_users=60, n_items=60, history_len=8, target_len=4)
    vectors = cluster_content(n_items=60, noise=2.0)
    store = write_content_store(tmp_path / "store", chunked(vectors, [25, 35]), split.item_ids, {}, shard_bytes=20 * 16 * 2)
    resident = ItemInputs.from_content(vectors.astype(np.float16).astype(np.float32), CPU)
    config = TrainConfig(lr=3e-3, epochs=2, batch_size=8, coverage=2.0, uniform_negatives=5, device="cpu", select_metric="recall@10")
    model = tiny_pch_config(max_len=8)
    for name, inputs in (("store", ItemInputs(store=store)), ("resident", resident)):
        trainer.train_towers(trainer.TrainJob(tmp_path / name, model, config, split, inputs, 8, 4, "learn_v1"), progress=False)
    assert_same_weights(tmp_path / "store" / LAST, tmp_path / "resident" / LAST)


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = checkpoint.load_payload(a)["state_dict"], checkpoint.load_payload(b)["state_dict"]
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)


# --- speed options ---------------------------------------------------------------------------


def test_attention_runs_through_sdpa_with_is_causal(monkeypatch: pytest.MonkeyPatch) -> None:
    """In training, every attention call is scaled_dot_product_attention(is_causal=True) with
    no explicit mask, the form the flash and memory-efficient kernels accept."""
    calls: list[tuple[bool, bool]] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((attn_mask is None, is_causal))
        return original(query, key, value, attn_mask, dropout_p, is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = PCH(tiny_pch_config(n_layers=2), content_dim=12).train()
    users, items, _, _ = model(torch.randn(3, 6, 12), torch.randn(3, 4, 12))
    (users.sum() + items.sum()).backward()
    assert len(calls) == 4 and all(no_mask and causal for no_mask, causal in calls), calls


def test_optimizer_choice_and_fused_kernel_on_cuda_only() -> None:
    model = PCH(tiny_pch_config(), content_dim=12)
    adam = build_optimizer(model, TrainConfig(), CPU)
    assert type(adam) is torch.optim.Adam and not adam.defaults["fused"]
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.01), CPU)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01
    # The device only selects the kernel; with a CUDA device the fused one is asked for.
    assert build_optimizer(model, TrainConfig(optimizer="adamw"), torch.device("cuda")).defaults["fused"]
    assert not build_optimizer(model, TrainConfig(fused=False), torch.device("cuda")).defaults["fused"]
    with pytest.raises(LearnFeaturesError, match=r"train.optimizer: 'sgd' is not one of \['adam', 'adamw'\]"):
        load_config(PipelineConfig, None, ["train.optimizer=sgd"])
    with pytest.raises(LearnFeaturesError, match="train.prefetch"):
        TrainConfig(prefetch=-1)


def test_prefetch_keeps_order_reraises_and_stops_its_thread() -> None:
    assert list(prefetch(iter(range(20)), depth=3)) == list(range(20))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))

    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetch(failing(), depth=2))
    before = threading.active_count()
    with closing(prefetch(iter(range(1000)), depth=2)) as stream:
        assert next(stream) == 0
    assert threading.active_count() == before  # the producer exited although 998 items were left


def test_prefetch_and_compile_change_no_weight_and_still_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread) -> None:
    """Inline batches and batches built ahead train identically; torch.compile (here its eager
    backend: CPU inductor compiles take minutes) wraps the towers, checkpoints keep plain keys,
    and as runtime-only options they do not stop a finished run from being recognised; nor
    does naming the same device differently, nor CUDA-only options on the CPU."""
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    split = clustered_split(n_users=60, n_items=60, history_len=8, target_len=4)
    inputs = ItemInputs.from_content(cluster_content(n_items=60, noise=2.0), CPU)
    base = TrainConfig(lr=3e-3, epochs=1, batch_size=8, device="cpu", select_metric="recall@10")
    model = tiny_pch_config(max_len=8, dropout=0.0)

    def train(name: str, **options) -> trainer.TrainResult:
        config = dataclasses.replace(base, **options)
        return trainer.train_towers(trainer.TrainJob(tmp_path / name, model, config, split, inputs, 8, 4, "learn_v1"), progress=False)

    train("inline", prefetch=0)
    train("ahead", prefetch=3)
    assert_same_weights(tmp_path / "inline" / LAST, tmp_path / "ahead" / LAST)
    train("compiled", compile=True)
    assert len(compiled) == 1 and isinstance(compiled[0], PCH)
    assert not any("_orig_mod" in key for key in checkpoint.load_payload(tmp_path / "compiled" / LAST)["state_dict"])
    assert_same_weights(tmp_path / "compiled" / LAST, tmp_path / "inline" / LAST, atol=1e-5)
    before = (tmp_path / "inline" / LAST).read_bytes()
    train("inline", prefetch=2, compile=True)  # finished: nothing retrained, rewritten or even rebuilt
    assert (tmp_path / "inline" / LAST).read_bytes() == before and len(compiled) == 1
    train("inline", device="auto")  # resolves to the same CPU: the device alone is not the math
    assert (tmp_path / "inline" / LAST).read_bytes() == before
    train("inline", device="auto", bf16=False, fused=False)  # both only take effect on CUDA
    assert (tmp_path / "inline" / LAST).read_bytes() == before


# --- data-parallel training -------------------------------------------------------------------

GLOBAL_BATCH = [  # 5 users over 2 ranks (3 + 2): uneven parts and uneven target lengths
    (np.array([0, 1, 2, 3, 4, 5, 6]), np.array([7, 8, 9])),
    (np.array([10]), np.array([11])),
    (np.array([12, 13, 14]), np.array([15, 16, 17, 18])),
    (np.array([19, 20, 21, 22, 23, 24, 25, 26]), np.array([27, 28])),
    (np.array([29, 3, 17]), np.array([5, 11, 23, 0])),
]


#: The same users for the next-item objective: each history position's next event, -1 where none.
NEXT_ITEM_BATCH = [
    (np.array([0, 1, 2, 3, 4, 5, 6]), np.array([1, 2, -1, 4, 5, 6, 7])),
    (np.array([10]), np.array([11])),
    (np.array([12, 13, 14]), np.array([13, -1, 15])),
    (np.array([19, 20, 21, 22, 23, 24, 25, 26]), np.array([20, 21, 22, 23, 24, 25, 26, 27])),
    (np.array([29, 3, 17]), np.array([3, 17, 5])),
]


def one_step(case: int | str, world: World) -> dict:
    """The trainer's own step (this rank's part of GLOBAL_BATCH) with lr 0: loss and gradients.
    ``case`` is the item-tower variant (sampled softmax), or "next_item" (variant 1, the full
    softmax over all 30 items, NEXT_ITEM_BATCH)."""
    torch.manual_seed(0)
    variant = 1 if case == "next_item" else int(case)
    model = PCH(tiny_pch_config(variant=variant, dropout=0.0, max_len=8), content_dim=12)
    inputs = ItemInputs.from_content(np.random.default_rng(3).normal(size=(30, 12)), CPU)
    if case == "next_item":
        config = TrainConfig(lr=1e-12, grad_clip=1e9, device="cpu", softmax="full", objective="next_item")
        optimizer = build_optimizer(model, config, CPU)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        negatives = Negatives(np.arange(30), 30, 0, None, True, torch.arange(30))
        batch = next(host_batches([NEXT_ITEM_BATCH], inputs, world, False, [np.arange(30)]))
        parts = StepParts(step_module(model, config, CPU, world), model, inputs, optimizer, scheduler, config, world,
                          torch.autocast("cpu", enabled=False), negatives)
        loss, _ = train_step(parts, batch, len(NEXT_ITEM_BATCH))
        return {"loss": loss, "local_users": int(batch.history.shape[0]), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    config = TrainConfig(lr=1e-12, grad_clip=1e9, device="cpu")
    optimizer = build_optimizer(model, config, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    module = step_module(model, config, CPU, world)
    # Every correction of the objective is on: log-q, masking of the shared items (3, 5, 11, 17, 23
    # are targets of one user and history or targets of another), uniform extras, and for
    # variant 1 the serving-path term.
    share = torch.log(torch.linspace(1.0, 2.0, 30) / torch.linspace(1.0, 2.0, 30).sum())
    negatives = Negatives(np.arange(30), 3, 0, share, True)
    batch = next(host_batches([GLOBAL_BATCH], inputs, world, False, [np.array([5, 26, 29])]))
    autocast = torch.autocast("cpu", enabled=False)
    parts = StepParts(module, model, inputs, optimizer, scheduler, config, world, autocast, negatives, 1.0 if variant == 1 else 0.0)
    loss, _ = train_step(parts, batch, len(GLOBAL_BATCH))
    return {"loss": loss, "local_users": int(batch.history.shape[0]), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def rank_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """Started by mp.spawn (never fork: forking after OpenMP initialised hangs)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {case: one_step(case, World.current()) for case in (1, 3, "next_item")}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_give_the_loss_and_gradients_of_one_process(tmp_path: Path, single_thread) -> None:
    """2 gloo ranks x their part of a 5-user batch == 1 process x the whole batch, within 1e-5:
    the negatives gathered across ranks are the one-process negatives, and the gradient that
    other ranks' users send to this rank's targets arrives through the gather's backward. Under
    the next-item objective each rank embeds the whole pool and its loss share adds up."""
    out = str(tmp_path / "rank")
    mp.spawn(rank_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for case in (1, 3, "next_item"):
        single = one_step(case, World())
        assert [r[case]["local_users"] for r in ranks] == [3, 2]
        for result in ranks:
            assert result[case]["loss"] == pytest.approx(single["loss"], abs=1e-5)
            for name, grad in single["grads"].items():
                torch.testing.assert_close(result[case]["grads"][name], grad, atol=1e-5, rtol=0, msg=f"{case}: {name}")


def test_world_parts_cover_the_batch() -> None:
    batch = list(range(7))
    parts = [World(r, 3).part(batch) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]] and World(0, 3).slot(7) == 3 and World().part(batch) == batch


# --- pipeline wiring and the torchrun entry point ---------------------------------------------


@pytest.fixture(scope="module")
def extracted_job(tmp_path_factory, tiny_llm_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("scale_job")
    config = write_config(root, *write_synthetic(root), tiny_llm_dir)
    assert main(["extract", "--config", str(config), "--quiet"]) == 0
    return root, config


def test_extract_assembles_the_store_once_from_the_cache(extracted_job, monkeypatch, capsys) -> None:
    """`extract` writes the store in catalog order straight from the cache (the vectors
    embed_texts returns, in fp16); a re-run with nothing new keeps it as it is."""
    from training import pipeline

    root, config = extracted_job
    prep = pipeline.prepare(load_config(PipelineConfig, config))
    store = prep.content_store("llm")
    extractor = ContentExtractor(prep.config.llm, prep.config.cache_dir)
    expected = extractor.embed_texts(render_prompts(prep.dataset.catalog, prep.config.llm.prompt_template), progress=False)
    np.testing.assert_array_equal(store.take(np.arange(len(store))), expected.astype(np.float16))
    inputs = prep.item_inputs(prep.split, METHODS["learn_v1"], CPU)
    assert inputs.store is not None and inputs.content is None

    shard = root / "run" / "content" / "llm" / "shard-00000.npy"
    built = shard.stat().st_mtime_ns
    monkeypatch.setattr(ContentStoreBuilder, "put", lambda *a: pytest.fail("an unchanged extract rebuilt the store"))
    assert main(["extract", "--config", str(config), "--quiet"]) == 0
    assert shard.stat().st_mtime_ns == built
    assert capsys.readouterr().out.splitlines()[0] == f"llm: {root / 'run' / 'content' / 'llm'}"


def test_training_refuses_content_extracted_under_other_settings(extracted_job, capsys) -> None:
    """A changed prompt means other vectors: train stops with the field, it never trains on stale content."""
    root, config = extracted_job
    assert main(["train", "--config", str(config), "--set", 'llm.prompt_template="{title} only"', "--quiet"]) == 2
    assert "extracted with other llm settings (prompt_template)" in capsys.readouterr().err


def test_training_refuses_content_extracted_from_other_item_texts(extracted_job, tmp_path: Path, capsys) -> None:
    """Same items, same encoder, one title changed (as MovieLens tags change with split.protocols):
    the store holds vectors of texts the config no longer produces, so train, embed and evaluate
    stop and say so; nothing is trained and the run's record is left as it was."""
    root, config = extracted_job
    catalog = pd.read_parquet(root / "catalog.parquet")
    catalog.loc[3, "title"] = "A title written after the extraction"
    edited = tmp_path / "catalog.parquet"
    catalog.to_parquet(edited)
    recorded = (root / "run" / "config.json").read_bytes()
    for command in ("train", "embed", "evaluate"):
        assert main([command, "--config", str(config), "--set", f'data.catalog="{edited}"', "--quiet"]) == 2
        assert "the item texts or the llm weights differ from those the store was extracted from" in capsys.readouterr().err
    assert (root / "run" / "config.json").read_bytes() == recorded


def test_run_refuses_a_sharded_config(extracted_job, capsys) -> None:
    root, config = extracted_job
    assert main(["run", "--config", str(config), "--set", 'llm.shard="0/2"', "--quiet"]) == 2
    assert "llm.shard is set, but `run` needs the content of every item" in capsys.readouterr().err


def test_torchrun_trains_like_one_process(extracted_job, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 -m training.distributed` (gloo on CPU) reaches the weights
    of `learn-features train` in one process (dropout off: ranks draw their own masks)."""
    root, config = extracted_job
    common = ["--config", str(config), "--method", "learn_v1", "--set", "model.dropout=0.0", "--set", 'train.device="cpu"']
    for run_dir in ("ddp", "single"):  # content from the shared cache: nothing is embedded again
        assert main(["extract", "--config", str(config), "--run-dir", str(tmp_path / run_dir), "--quiet"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         "-m", "training.distributed", *common, "--run-dir", str(tmp_path / "ddp"), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "temporal/learn_v1/seed0: best epoch" in launched.stdout and "(2 ranks)" in launched.stdout
    assert main(["train", *common, "--run-dir", str(tmp_path / "single"), "--quiet"]) == 0
    ddp, single = (checkpoint.load_payload(tmp_path / d / "models" / "temporal" / "learn_v1" / "seed0" / LAST) for d in ("ddp", "single"))
    for a, b in zip(ddp["state"]["history"], single["state"]["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # Attention is invariant to the key bias, so its gradient is float noise that Adam scales
    # up to lr-sized steps in either run: it is the one slice that cannot be compared.
    d_model = ddp["state_dict"]["head.weight"].shape[1]
    for weights in (ddp["state_dict"], single["state_dict"]):
        weights["transformer.layers.0.self_attn.in_proj_bias"][d_model : 2 * d_model] = 0
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][name], value, atol=1e-6, rtol=0, msg=name)


def test_distributed_entry_point_refuses_a_fixed_gpu_and_a_missing_torchrun(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import distributed

    monkeypatch.delenv("RANK", raising=False)
    assert distributed.main(["--set", 'train.device="cuda:1"']) == 2
    assert "LOCAL_RANK picks each rank's GPU" in capsys.readouterr().err
    assert distributed.main(["--set", 'train.device="cpu"', "--run-dir", str(tmp_path)]) == 2
    assert "must be started by torchrun" in capsys.readouterr().err


def test_more_ranks_than_gpus_is_refused_before_cuda_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two torchrun processes on a one-GPU node: the second rank would share the first's GPU,
    which NCCL refuses; the message says what to change instead of CUDA's "invalid device ordinal"."""
    from training import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("set_device reached"))
    with pytest.raises(LearnFeaturesError, match=r"local rank 1 has no GPU of its own: this node has 1; start at most 1"):
        distributed.init_process_group("auto", timedelta(seconds=1))


# --- benchmark smoke run ----------------------------------------------------------------------


def test_train_bench_tiny_preset_runs_both_configurations(tmp_path: Path) -> None:
    """Smoke test only: timings on a shared CPU mean nothing, so none is asserted."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "bench/train.py", "--preset", "tiny", "--steps", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert set(summary["results"]) == {"naive", "optimised"} and summary["data"].startswith("synthetic")
    for result in summary["results"].values():
        assert result["users_per_s"] > 0 and result["peak_memory"] > 0 and np.isfinite(result["final_loss"])
        assert result["gflop_per_step"] > 0 and result["gflop_per_s"] == pytest.approx(result["gflop_per_step"] * result["steps_per_s"])
    assert summary["device"] != "cpu" or summary["cpu_fp32_peak_gflops"] > 0
    assert summary["results"]["naive"]["options"]["prefetch"] == 0 and summary["results"]["optimised"]["options"]["optimizer"] == "adamw"
    assert summary["speedup_users_per_s"] > 0 and "optimised / naive: users/s x" in done.stdout


def test_training_in_worker_processes_equals_training_in_turn(extracted_job, tmp_path: Path, single_thread) -> None:
    """train.workers=2 (spawned single-threaded processes, one model each) writes the same
    checkpoints, bit for bit, as training the models one after the other on one thread."""
    root, config = extracted_job
    common = ["--config", str(config), "--method", "learn_v1", "--method", "id_baseline", "--seeds", "2", "--quiet"]
    for run_dir in ("workers", "in-turn"):
        assert main(["extract", "--config", str(config), "--run-dir", str(tmp_path / run_dir), "--quiet"]) == 0
    assert main(["train", *common, "--run-dir", str(tmp_path / "workers"), "--set", "train.workers=2"]) == 0
    assert main(["train", *common, "--run-dir", str(tmp_path / "in-turn")]) == 0
    checkpoints = sorted(p.relative_to(tmp_path / "in-turn") for p in (tmp_path / "in-turn" / "models").rglob("best.pt"))
    assert len(checkpoints) == 2 * 2 * 2  # protocols x methods x seeds
    for relative in checkpoints:
        assert_same_weights(tmp_path / "workers" / relative, tmp_path / "in-turn" / relative)
