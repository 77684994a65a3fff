"""This machine's measured matmul peak on CPU, fp32 and bf16: the ceiling extraction is judged against.

A spec-sheet peak means little for a CPU: it depends on the core count torch gets, the clock
under AVX-512 load, and whether the bf16 path has native instructions (``avx512_bf16``,
AMX) or converts to fp32. So the peak is measured: square GEMMs of a few sizes with torch on
all of its threads, the best of ``repeats`` runs of each, and the best size wins. FLOPs of an
``n x n`` by ``n x n`` product are ``2 n^3`` (a multiply and an add per term).

    .venv/bin/python bench/cpu_peak.py                  # fp32 and bf16, sizes 512/1024/2048
    .venv/bin/python bench/cpu_peak.py --threads 1      # one core's peak

``bench/extract.py`` imports ``measure_peaks`` to print extraction as a share of this peak.
On a shared machine the figure is a lower bound: other jobs take cycles from the best run too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from time import perf_counter

import torch

SIZES = (512, 1024, 2048)
REPEATS = 5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Peak:
    """The best GEMM rate for one dtype, and the size that reached it."""

    dtype: str
    gflops: float
    size: int


def cpu_flags() -> set[str]:
    """The CPU feature flags (Linux ``/proc/cpuinfo``); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gemm_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best-of-``repeats`` GFLOP/s of one ``n x n`` product, after one untimed warm-up."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def measure_peak(dtype: str, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> Peak:
    rates = {n: gemm_gflops(n, DTYPES[dtype], repeats) for n in sizes}
    size = max(rates, key=rates.__getitem__)
    return Peak(dtype, rates[size], size)


def measure_peaks(sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> dict[str, Peak]:
    """fp32 and bf16 peaks, keyed by dtype name (``float32``, ``bfloat16``)."""
    return {name: measure_peak(name, sizes, repeats) for name in DTYPES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512f")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), bf16-relevant flags: {' '.join(flags) or 'none'}")
    for peak in measure_peaks(tuple(args.sizes), args.repeats).values():
        print(f"{peak.dtype:<9} {peak.gflops:8.1f} GFLOP/s (best at n={peak.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
