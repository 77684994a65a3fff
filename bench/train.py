"""PCH training throughput and peak memory: the naive configuration vs the optimised one, in one run.

    .venv/bin/python bench/train.py                      # --preset paper: 12 layers, d=768, history 80, target 40, batch 512
    .venv/bin/python bench/train.py --compile --json out.json
    .venv/bin/python bench/train.py --preset tiny        # seconds on a CPU: a smoke test, not a measurement
    .venv/bin/python bench/train.py --preset movielens   # the CPU default towers (make run's), with the CPU's peak

Both configurations run the trainer's own code (``build_optimizer``, ``step_module``,
``host_batches``, ``prefetch``, ``to_device_ahead``, ``train_step``) over the same batches:

- naive: fp32, plain Adam (no fused kernel), batches built inline (no prefetch), eager;
- optimised: bf16 autocast, fused AdamW, batches built ahead in a thread into pinned memory
  and copied on a side stream, plus ``torch.compile`` with ``--compile``.

The data are synthetic: random fp16 content in a sharded content store (written to a
temporary directory, so the per-batch row gather from memory-mapped shards is part of the
measurement) and random full-length item sequences. Speed does not depend on what the
vectors mean. Each configuration runs in a fresh spawned process, so its peak memory is its
own: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU. On a CPU
bf16 autocast and the fused optimizer do not apply (the trainer uses them on CUDA only).
``host batch s`` is the time to build one batch on the host; prefetch hides it only while it
stays below the step time.

Achieved FLOP/s: one extra, untimed step runs under ``torch.utils.flop_counter.FlopCounterMode``
(forward and backward, every matmul and attention kernel, as torch itself counts them), and
that count over the timed seconds per step is the rate. On a CPU it is also given as a share
of this machine's fp32 GEMM peak, measured at the start by ``bench/cpu_peak.py``; the
optimiser update and the batch gather are time without counted FLOPs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from learn_features.device import pick_device
from learn_features.pch.batching import make_batch
from learn_features.pch.content_store import ContentStore, write_content_store
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH, PCHConfig
from training.collectives import World
from training.loader import prefetch, to_device_ahead
from training.trainer import StepParts, TrainConfig, build_optimizer, host_batches, step_module, train_step
from training.workers import spawn_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_peak import measure_peak  # noqa: E402

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Preset:
    model: PCHConfig
    content_dim: int
    items: int
    history_len: int
    target_len: int
    batch_size: int
    steps: int
    warmup: int


PRESETS = {
    # The paper's towers (BERT-base sized) over a 4096-d LLM (Baichuan2-7B's hidden size).
    "paper": Preset(PCHConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072, d_out=64, max_len=80), 4096, 50_000, 80, 40, 512, 20, 3),
    # make run's towers (training/configs/movielens.toml) over SmolLM2's 576-d content, MovieLens-sized
    "movielens": Preset(PCHConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, d_out=64, max_len=80), 576, 9742, 80, 40, 64, 30, 3),
    "tiny": Preset(PCHConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, d_out=16, max_len=8), 48, 500, 8, 4, 16, 4, 1),
}
CONFIGS = {
    "naive": {"bf16": False, "optimizer": "adam", "fused": False, "prefetch": 0, "compile": False},
    "optimised": {"bf16": True, "optimizer": "adamw", "fused": True, "prefetch": 2, "compile": False},
}
HOST_PROBE_BATCHES = 3


def write_synthetic_store(directory: Path, preset: Preset, seed: int) -> None:
    """Random content in several shards (64 MiB each), so batches gather across shards."""
    rng = np.random.default_rng(seed)
    chunk = 8192
    chunks = (rng.standard_normal((min(chunk, preset.items - s), preset.content_dim), dtype=np.float32) for s in range(0, preset.items, chunk))
    write_content_store(directory, chunks, [str(i) for i in range(preset.items)], {"synthetic": seed}, shard_bytes=1 << 26)


def synthetic_batches(preset: Preset, seed: int) -> list[list[Pair]]:
    """warmup + steps global batches of full-length (history, target) pairs: the costliest shape."""
    rng = np.random.default_rng(seed)
    return [
        [(rng.integers(0, preset.items, preset.history_len), rng.integers(0, preset.items, preset.target_len)) for _ in range(preset.batch_size)]
        for _ in range(preset.warmup + preset.steps)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GiB max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB peak RSS"  # ru_maxrss is KiB on Linux


def measure(preset: Preset, options: dict[str, Any], store_dir: str, device_name: str, seed: int) -> dict[str, Any]:
    """One configuration in this (fresh) process: users/s over ``steps`` after ``warmup`` steps."""
    device = pick_device(device_name)
    config = TrainConfig(lr=1e-4, batch_size=preset.batch_size, device=device_name, **options)
    inputs = ItemInputs(store=ContentStore(store_dir))
    batches = synthetic_batches(preset, seed)
    started = time.perf_counter()
    for batch in batches[:HOST_PROBE_BATCHES]:
        make_batch(batch, inputs)
    host_batch_s = (time.perf_counter() - started) / HOST_PROBE_BATCHES

    torch.manual_seed(seed)
    model = PCH(preset.model, content_dim=preset.content_dim).to(device).train()
    optimizer = build_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    module = step_module(model, config, device, World())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    parts = StepParts(module, model, inputs, optimizer, scheduler, config, World(), autocast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with closing(prefetch(host_batches(batches, inputs, World(), pin=device.type == "cuda"), config.prefetch)) as ready:
            for step, batch in enumerate(to_device_ahead(ready, device)):
                if step == preset.warmup:
                    _sync(device)
                    started = time.perf_counter()
                loss, _ = train_step(parts, batch, len(batches[step]))
        _sync(device)
        elapsed = time.perf_counter() - started
        counter = FlopCounterMode(display=False)
        with counter:  # one more step, untimed: what a step computes
            train_step(parts, make_batch(batches[0], inputs).to(device), len(batches[0]))
    except torch.cuda.OutOfMemoryError:
        return {"error": "CUDA out of memory (try --batch-size)", "options": options}
    peak, unit = _peak_memory(device)
    return {
        "options": options,
        "users_per_s": preset.steps * preset.batch_size / elapsed,
        "step_s": elapsed / preset.steps,
        "steps_per_s": preset.steps / elapsed,
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "gflop_per_s": counter.get_total_flops() / 1e9 * preset.steps / elapsed,
        "host_batch_s": host_batch_s,
        "peak_memory": peak,
        "memory_unit": unit,
        "final_loss": loss,
    }


def run_isolated(preset: Preset, options: dict[str, Any], store_dir: str, device: str, seed: int) -> dict[str, Any]:
    """A fresh spawned process per configuration: peak memory is then that configuration's own."""
    with spawn_pool(1) as pool:
        return pool.submit(measure, preset, options, store_dir, device, seed).result()


def report(preset_name: str, device: str, results: dict[str, dict[str, Any]], cpu_peak_gflops: float | None) -> dict[str, Any]:
    naive, optimised = results["naive"], results["optimised"]
    both = "error" not in naive and "error" not in optimised
    return {
        "preset": preset_name,
        "device": device,
        "cpu_fp32_peak_gflops": cpu_peak_gflops,
        "data": "synthetic (random fp16 content store, random full-length sequences)",
        "results": results,
        "speedup_users_per_s": optimised["users_per_s"] / naive["users_per_s"] if both else None,
        "peak_memory_ratio": optimised["peak_memory"] / naive["peak_memory"] if both else None,
    }


def print_report(summary: dict[str, Any]) -> None:
    peak = summary["cpu_fp32_peak_gflops"]
    print(f"preset {summary['preset']} on {summary['device']}; data: {summary['data']}"
          + (f"; CPU fp32 GEMM peak {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)" if peak else ""))
    print(f"{'config':<10} {'users/s':>10} {'steps/s':>8} {'step s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'host batch s':>13} {'peak memory':>12}  options")
    for name, result in summary["results"].items():
        if "error" in result:
            print(f"{name:<10} {result['error']}")
            continue
        share = f"{result['gflop_per_s'] / peak:.1%}" if peak else "n/a"
        print(f"{name:<10} {result['users_per_s']:>10.1f} {result['steps_per_s']:>8.2f} {result['step_s']:>9.4f} "
              f"{result['gflop_per_step']:>11.3f} {result['gflop_per_s']:>8.1f} {share:>8} {result['host_batch_s']:>13.4f} "
              f"{result['peak_memory']:>8.2f} GiB  {result['options']} ({result['memory_unit']})")
    if summary["speedup_users_per_s"] is not None:
        print(f"optimised / naive: users/s x{summary['speedup_users_per_s']:.2f}, peak memory x{summary['peak_memory_ratio']:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--steps", type=int, help="timed steps (after the warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised configuration (compile time is in the warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    preset = replace(preset, batch_size=args.batch_size or preset.batch_size, steps=args.steps or preset.steps)
    device = str(pick_device(args.device))
    configs = {**CONFIGS, "optimised": {**CONFIGS["optimised"], "compile": args.compile}}
    cpu_peak = measure_peak("float32").gflops if device == "cpu" else None
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        store_dir = Path(tmp) / "content"
        write_synthetic_store(store_dir, preset, args.seed)
        results = {name: run_isolated(preset, options, str(store_dir), device, args.seed) for name, options in configs.items()}
    summary = report(args.preset, device, results, cpu_peak) | {"preset_config": asdict(preset)}
    print_report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
