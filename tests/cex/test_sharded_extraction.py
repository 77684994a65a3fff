"""CEX at scale, checked on CPU with a tiny random decoder: sharded extraction into a shared
cache, the background shard writer, SDPA loading, and a smoke run of bench/extract.py."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import transformers

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import files_in, load_script
from learn_features.cex import extractor as extractor_module
from learn_features.cex.cache import EmbeddingCache
from learn_features.cex.extractor import ContentExtractor, EncoderConfig
from learn_features.cex.sharding import Shard, local_device, resolve_shard, shard_from_env
from learn_features.cex.writer import WRITE_QUEUE_DEPTH
from learn_features.cli import main
from learn_features.errors import LearnFeaturesError
from learn_features.pch.content_store import ContentStore
from job_fixtures import write_config, write_synthetic

REPO = Path(__file__).resolve().parents[2]
TEXTS = [f"Item {i}: " + "a fairly long description " * (i % 7) + f"number {i}" for i in range(40)]


def make(model_dir: Path, cache: Path, **kwargs) -> ContentExtractor:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("chunk_size", 8)
    return ContentExtractor(EncoderConfig(model=str(model_dir), device="cpu", **kwargs), cache)


def shard_keys(directory: Path) -> list[str]:
    """Every key stored in the cache shard files below ``directory``."""
    keys: list[str] = []
    for shard in sorted(directory.rglob("shard-*.npz")):
        with np.load(shard) as data:
            keys += data["keys"].tolist()
    return keys


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("model loaded although every key is cached")

    monkeypatch.setattr(extractor_module, "load_frozen", refuse)


# --- shards ------------------------------------------------------------------------------


def test_shard_parsing_and_validation() -> None:
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard.parse(" 0 / 2 ")) == "0/2"
    for bad in ("1", "a/b", "1/", "-1/2", "1.5/2"):
        with pytest.raises(LearnFeaturesError, match="must look like I/N"):
            Shard.parse(bad)
    with pytest.raises(LearnFeaturesError, match="0 <= I < N"):
        Shard.parse("2/2")
    with pytest.raises(LearnFeaturesError, match="0 <= I < N"):
        EncoderConfig(shard="3/2")


def test_shard_from_torchrun_environment() -> None:
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a single process owns everything
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == Shard(3, 8)
    with pytest.raises(LearnFeaturesError, match="WORLD_SIZE='eight'"):
        shard_from_env({"RANK": "3", "WORLD_SIZE": "eight"})
    env = {"RANK": "1", "WORLD_SIZE": "2"}
    assert resolve_shard("0/4", env) == Shard(0, 4)  # an explicit shard wins over the launcher's
    assert resolve_shard(None, env) == Shard(1, 2)
    assert resolve_shard(None, None) is None  # no environment given: never sharded implicitly
    assert local_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"


def test_shards_are_disjoint_cover_everything_and_are_roughly_balanced(tiny_llm_dir: Path, tmp_path: Path) -> None:
    keys = make(tiny_llm_dir, tmp_path).keys([f"text {i}" for i in range(2000)])
    owners = [[s for s in range(4) if Shard(s, 4).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    counts = np.bincount([o[0] for o in owners], minlength=4)
    assert counts.min() > 400, counts


def test_two_shards_give_exactly_the_vectors_of_an_unsharded_run(
    tiny_llm_dir: Path, tmp_path: Path, single_thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards 0/2 and 1/2 (separate calls, shared cache) write disjoint keys that cover every
    item; assembling then loads no model and returns the unsharded run's vectors bit for bit.
    batch_size=1 makes every forward identical across runs, so equality can be exact."""
    reference = make(tiny_llm_dir, tmp_path / "plain", batch_size=1).embed_texts(TEXTS, progress=False)
    shared = tmp_path / "shared"
    written = []
    for index in range(2):
        before = set(shard_keys(shared))
        result = make(tiny_llm_dir, shared, batch_size=1).fill_cache(TEXTS, Shard(index, 2), progress=False)
        written.append(set(shard_keys(shared)) - before)
        assert result.embedded == result.items == len(written[-1]) > 0
    all_keys = set(make(tiny_llm_dir, shared).keys(TEXTS))
    assert not written[0] & written[1] and written[0] | written[1] == all_keys

    again = make(tiny_llm_dir, shared).fill_cache(TEXTS, Shard(0, 2), progress=False)
    assert again.embedded == 0 and again.items == len(written[0])  # a re-run of a shard resumes: nothing left
    monkeypatch.setattr(extractor_module, "load_frozen", lambda *a, **k: pytest.fail("assembling loaded the model"))
    np.testing.assert_array_equal(make(tiny_llm_dir, shared).embed_texts(TEXTS, progress=False), reference)


def test_tokenizing_in_waves_changes_nothing(tiny_llm_dir: Path, tmp_path: Path, monkeypatch, single_thread) -> None:
    """Cache misses are tokenized and length-sorted a wave at a time (host memory at 31M items);
    with waves of 7 texts the cached vectors equal one wave's, each row in its input position."""
    reference = make(tiny_llm_dir, tmp_path / "one-wave", batch_size=1).embed_texts(TEXTS, progress=False)
    monkeypatch.setattr(extractor_module, "TOKENIZE_WAVE", 7)
    waves = make(tiny_llm_dir, tmp_path / "waves", batch_size=1)
    np.testing.assert_array_equal(waves.embed_texts(TEXTS, progress=False), reference)
    assert waves.stats.items == len(TEXTS)


def test_cli_sharded_extract_then_assemble(tiny_llm_dir: Path, tmp_path: Path, capsys, monkeypatch, single_thread) -> None:
    """`extract --shard 0/2`, then rank 1 of a torchrun launch (RANK/WORLD_SIZE, no --shard),
    then a plain `extract` that only assembles: the same content files as one unsharded run."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    interactions, catalog = write_synthetic(tmp_path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "sharded").mkdir()
    plain = write_config(tmp_path / "plain", interactions, catalog, tiny_llm_dir)
    sharded = write_config(tmp_path / "sharded", interactions, catalog, tiny_llm_dir)
    one_at_a_time = ["--set", "llm.batch_size=1", "--set", "text_encoder.batch_size=1", "--quiet"]
    assert main(["extract", "--config", str(plain), *one_at_a_time]) == 0

    assert main(["extract", "--config", str(sharded), "--shard", "0/2", *one_at_a_time]) == 0
    out = capsys.readouterr().out
    assert "llm: shard 0/2" in out and "text_encoder: shard 0/2" in out
    assert not (tmp_path / "sharded" / "run" / "content").exists(), "a shard must not assemble partial content"
    with monkeypatch.context() as env:
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "2")
        assert main(["extract", "--config", str(sharded), *one_at_a_time]) == 0
    assert "llm: shard 1/2" in capsys.readouterr().out

    monkeypatch.setattr(extractor_module, "load_frozen", lambda *a, **k: pytest.fail("assembling loaded the model"))
    assert main(["extract", "--config", str(sharded), *one_at_a_time]) == 0
    for content in ("llm", "text_encoder"):
        a = ContentStore(tmp_path / "plain" / "run" / "content" / content)
        b = ContentStore(tmp_path / "sharded" / "run" / "content" / content)
        assert a.items_sha256 == b.items_sha256 and a.vectors_sha256 == b.vectors_sha256
        np.testing.assert_array_equal(a.take(np.arange(len(a))), b.take(np.arange(len(b))))


def test_training_refuses_content_extracted_in_another_dtype(tiny_llm_dir: Path, tmp_path: Path, capsys, single_thread) -> None:
    """Content extracted in fp32 is not bf16 content: train stops and names the dtype."""
    interactions, catalog = write_synthetic(tmp_path)
    config = write_config(tmp_path, interactions, catalog, tiny_llm_dir)
    assert main(["extract", "--config", str(config), "--quiet"]) == 0
    assert ContentStore(tmp_path / "run" / "content" / "llm").source["encoder"]["dtype"] == "float32"
    assert main(["train", "--config", str(config), "--set", 'llm.dtype="bfloat16"', "--quiet"]) == 2
    assert "extracted with other llm settings (dtype)" in capsys.readouterr().err


def test_cli_bad_shard_exits_2(tiny_llm_dir: Path, tmp_path: Path, capsys) -> None:
    interactions, catalog = write_synthetic(tmp_path)
    config = write_config(tmp_path, interactions, catalog, tiny_llm_dir)
    assert main(["extract", "--config", str(config), "--shard", "2/2", "--quiet"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err


# --- background writer -------------------------------------------------------------------


def test_compute_goes_on_while_a_shard_is_being_written(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread
) -> None:
    """The first shard write blocks until the next chunk has been computed: with writes on the
    compute thread this would wait out its timeout and fail."""
    reference = make(tiny_llm_dir, tmp_path / "ref").embed_texts(TEXTS[:6], progress=False)
    second_chunk_started = threading.Event()
    original_write, original_forward = EmbeddingCache.write_shard, ContentExtractor._forward
    overlapped: list[bool] = []
    forwards: list[int] = []

    def slow_write(self, keys, vectors):
        if not overlapped:
            overlapped.append(second_chunk_started.wait(timeout=30))
        return original_write(self, keys, vectors)

    def counting_forward(self, token_ids):
        forwards.append(len(token_ids))
        if len(forwards) == 2:
            second_chunk_started.set()
        return original_forward(self, token_ids)

    monkeypatch.setattr(EmbeddingCache, "write_shard", slow_write)
    monkeypatch.setattr(ContentExtractor, "_forward", counting_forward)
    vectors = make(tiny_llm_dir, tmp_path / "cache", batch_size=1, chunk_size=1).embed_texts(TEXTS[:6], progress=False)
    assert overlapped == [True]
    np.testing.assert_allclose(vectors, reference, atol=1e-5, rtol=0)
    assert len(shard_keys(tmp_path / "cache")) == 6


def test_write_queue_is_bounded(tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread) -> None:
    """While the first write is stuck, at most depth + 2 chunks get computed (queued, being
    written, waiting to be queued): a slow disk holds the model back instead of filling memory."""
    original_write, original_forward = EmbeddingCache.write_shard, ContentExtractor._forward
    forwards: list[int] = []
    ahead: list[int] = []

    def stuck_write(self, keys, vectors):
        if not ahead:
            threading.Event().wait(timeout=1.0)
            ahead.append(len(forwards))
        return original_write(self, keys, vectors)

    def counting_forward(self, token_ids):
        forwards.append(len(token_ids))
        return original_forward(self, token_ids)

    monkeypatch.setattr(EmbeddingCache, "write_shard", stuck_write)
    monkeypatch.setattr(ContentExtractor, "_forward", counting_forward)
    vectors = make(tiny_llm_dir, tmp_path, batch_size=1, chunk_size=1).embed_texts(TEXTS[:12], progress=False)
    assert vectors.shape == (12, 32) and len(forwards) == 12
    assert 1 <= ahead[0] <= WRITE_QUEUE_DEPTH + 2


def test_interrupt_keeps_every_queued_chunk(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread
) -> None:
    """Ctrl-C after three chunks: the writer still finishes all three before the interrupt propagates."""
    original = ContentExtractor._forward
    calls: list[int] = []

    def interrupt_fourth(self, token_ids):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, token_ids)

    monkeypatch.setattr(ContentExtractor, "_forward", interrupt_fourth)
    with pytest.raises(KeyboardInterrupt):
        make(tiny_llm_dir, tmp_path, batch_size=2, chunk_size=2).embed_texts(TEXTS[:10], progress=False)
    assert len(shard_keys(tmp_path)) == 6
    assert all(p.name.startswith("shard-") for p in files_in(tmp_path))


# --- model loading -----------------------------------------------------------------------


def test_backbone_loads_with_sdpa(tiny_llm_dir: Path, tmp_path: Path) -> None:
    extractor = make(tiny_llm_dir, tmp_path)
    assert extractor.hidden_size == 32 and extractor._model.config._attn_implementation == "sdpa"


def test_architecture_without_sdpa_falls_back_silently(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = transformers.AutoModel.from_pretrained
    requested: list[str | None] = []

    def no_sdpa(*args, **kwargs):
        requested.append(kwargs.get("attn_implementation"))
        if kwargs.get("attn_implementation") == "sdpa":
            raise ValueError("LlamaModel does not support an attention implementation through sdpa yet.")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_sdpa)
    assert make(tiny_llm_dir, tmp_path).embed_texts(TEXTS[:2], progress=False).shape == (2, 32)
    assert requested == ["sdpa", None]


def test_a_model_that_cannot_load_is_reported(tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("weights are corrupt")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", broken)
    with pytest.raises(LearnFeaturesError, match="cannot load model from .*weights are corrupt"):
        make(tiny_llm_dir, tmp_path).embed_texts(TEXTS[:1], progress=False)


# --- benchmark smoke ---------------------------------------------------------------------


def test_extract_benchmark_smoke(tmp_path: Path, single_thread, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/extract.py runs end to end on CPU; only its bookkeeping is checked, never its timings."""
    bench = load_script(monkeypatch, REPO / "bench" / "extract.py")
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny", "--items", "64", "--batch-size", "8", "--dtype", "float32", "bfloat16",
            "--peak-sizes", "64", "--json", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    naive, project, naive16, project16 = report["results"]
    assert [(r["path"], r["dtype"]) for r in report["results"]] == [
        ("naive", "float32"), ("project", "float32"), ("naive", "bfloat16"), ("project", "bfloat16")]
    assert report["model"]["random_weights"] and report["flops_per_token"] == 2 * report["model"]["non_embedding_params"]
    # On a CPU each dtype is judged against this machine's measured GEMM peak in that dtype.
    assert report["peak_tflops"] == {name: gflops / 1e3 for name, gflops in report["cpu_peak_gflops"].items()}
    assert project["peak_fraction"] == pytest.approx(project["tflops"] / report["peak_tflops"]["float32"])
    # Same texts, same real tokens; length-sorted batches never pad more than arrival order.
    assert naive["real_tokens_per_s"] * naive["seconds"] == pytest.approx(project["real_tokens_per_s"] * project["seconds"])
    assert project["padding_fraction"] <= naive["padding_fraction"] and project["padded_per_real"] >= 1.0
    # bf16 changes the vectors a little, not their direction.
    cosine = report["cosine_to_first_dtype"]["bfloat16"]
    assert 0.99 < cosine["min"] <= cosine["mean"] < 1.0
    assert set(report["over_first_dtype"]["bfloat16"]) == {"naive", "project"}


def test_cpu_peak_probe_counts_2n3_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/cpu_peak.py: the best size wins and a GEMM of n is 2 n^3 FLOPs over its best time."""
    probe = load_script(monkeypatch, REPO / "bench" / "cpu_peak.py")
    clock = itertools.cycle([0.0, 0.5, 2.0, 4.0, 10.0, 11.0])  # warm-up 0.5 s, then two repeats: 2 s, 1 s (the best)
    monkeypatch.setattr(probe, "perf_counter", lambda: next(clock))
    peak = probe.measure_peak("float32", sizes=(16, 8), repeats=2, budget_s=1e9)
    assert (peak.size, peak.gflops, peak.skipped) == (16, 2 * 16**3 / 1.0 / 1e9, ())
    assert set(probe.measure_peaks(sizes=(8,), repeats=2)) == {"float32", "bfloat16"}
    assert set(probe.measure_peaks(("float32",), sizes=(8,), repeats=2)) == {"float32"}


def test_cpu_peak_probe_skips_sizes_that_would_overrun_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow path (bf16 without native instructions) must not stall the benchmark: after the
    smallest size, a size runs only if its time, predicted by n^3 scaling, fits the budget; the
    skipped sizes are reported, not hidden."""
    probe = load_script(monkeypatch, REPO / "bench" / "cpu_peak.py")
    ran: list[int] = []

    def one_second_at_64(n: int, dtype, repeats: int) -> tuple[float, float]:
        ran.append(n)
        return (n / 64) ** 3, (n / 64) ** 3

    monkeypatch.setattr(probe, "gemm_seconds", one_second_at_64)
    # 64 costs 1 + 2 = 3 s; 128 is predicted at 8 s x 3 = 24 s: 27 s fits in 30, 256 (192 s more) does not.
    peak = probe.measure_peak("bfloat16", sizes=(64, 128, 256), repeats=2, budget_s=30)
    assert ran == [64, 128] and peak.skipped == (256,) and peak.size in (64, 128)
    assert "n=256 skipped" in peak.describe()
    ran.clear()
    assert probe.measure_peak("bfloat16", sizes=(64, 128), repeats=2, budget_s=0).skipped == (128,) and ran == [64]


def test_extract_benchmark_random_shapes_count_exactly_off_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU the 7B and 0.5B shapes stay on the meta device: parameter counts (the
    known non-embedding sizes of Baichuan2-7B and Qwen2-0.5B) and padding, no timing. A local
    tokenizer directory (for a GPU machine without the shipped package) gives the same lengths."""
    bench = load_script(monkeypatch, REPO / "bench" / "extract.py")
    tokenizer = bench.load_tokenizer(bench.resolve_model("shipped:smollm2"))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    reports = {}
    for model, extra in (("7b-shape", []), ("0.5b-shape", []), ("0.5b-shape", ["--tokenizer", str(tmp_path / "tokenizer")])):
        out = tmp_path / f"{model}{len(extra)}.json"
        assert bench.main(["--model", model, "--items", "64", "--device", "cpu", "--json", str(out), *extra]) == 0
        reports[model, len(extra)] = json.loads(out.read_text())
    def llama_params(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int) -> int:
        """q, o (hidden^2 each), k, v (hidden x kv width each), gate/up/down, 2 norms per layer, final norm."""
        kv = hidden // heads * kv_heads
        return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden) + hidden

    assert reports["7b-shape", 0]["model"]["non_embedding_params"] == llama_params(4096, 11008, 32, 32, 32)  # 6.48B
    assert reports["0.5b-shape", 0]["model"]["non_embedding_params"] == llama_params(896, 4864, 24, 14, 2)  # 0.36B
    assert "results" not in reports["0.5b-shape", 0]
    assert reports["0.5b-shape", 2]["planned_padding"] == reports["0.5b-shape", 0]["planned_padding"]
