"""This machine's measured matmul peak on CPU, fp32 and bf16: the ceiling extraction is judged against.

A spec-sheet peak means little for a CPU: it depends on the core count torch gets, the clock
under AVX-512 load, and whether the bf16 path has native instructions (``avx512_bf16``,
AMX) or converts to fp32. So the peak is measured: square GEMMs of a few sizes with torch on
all of its threads, the best of ``repeats`` runs of each, and the best size wins. FLOPs of an
``n x n`` by ``n x n`` product are ``2 n^3`` (a multiply and an add per term).

Sizes run smallest first under a time budget per dtype. Without native bf16 a 2048 GEMM can
take tens of seconds (0.7-2 GFLOP/s on one core with oneDNN held to AVX2), so a size whose
predicted time (the previous size's best time, scaled by ``n^3``) would overrun the budget is
skipped, and the result says which sizes were: the peak is then a lower bound at the sizes
that ran, never a guess.

    .venv/bin/python bench/cpu_peak.py                  # fp32 and bf16, sizes 512/1024/2048
    .venv/bin/python bench/cpu_peak.py --threads 1      # one core's peak
    .venv/bin/python bench/cpu_peak.py --dtypes float32 --budget 60

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
BUDGET_S = 20.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Peak:
    """The best GEMM rate for one dtype, the size that reached it, and the sizes the budget skipped."""

    dtype: str
    gflops: float
    size: int
    skipped: tuple[int, ...] = ()

    def describe(self) -> str:
        note = f"; n={', '.join(map(str, self.skipped))} skipped, over the time budget" if self.skipped else ""
        return f"{self.dtype:<9} {self.gflops:8.1f} GFLOP/s (square GEMM, best at n={self.size}{note})"


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


def gemm_seconds(n: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(untimed-warm-up seconds, best-of-``repeats`` seconds) of one ``n x n`` product."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    start = perf_counter()
    torch.matmul(a, b, out=out)
    warm_up = perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, perf_counter() - start)
    return warm_up, best


def measure_peak(dtype: str, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS, budget_s: float = BUDGET_S) -> Peak:
    """The best rate over ``sizes``; the smallest size always runs, a larger one only if its
    predicted time (the previous run scaled by ``n^3``) fits in what is left of ``budget_s``."""
    ordered = sorted(sizes)
    rates: dict[int, float] = {}
    spent, per_gemm, last = 0.0, 0.0, ordered[0]
    for n in ordered:
        predicted = per_gemm * (n / last) ** 3 * (repeats + 1)
        if rates and spent + predicted > budget_s:
            break
        warm_up, best = gemm_seconds(n, DTYPES[dtype], repeats)
        rates[n] = 2.0 * n**3 / best / 1e9
        spent += warm_up + best * repeats
        per_gemm, last = best, n
    size = max(rates, key=rates.__getitem__)
    return Peak(dtype, rates[size], size, tuple(n for n in ordered if n not in rates))


def measure_peaks(dtypes: tuple[str, ...] = tuple(DTYPES), sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS,
                  budget_s: float = BUDGET_S) -> dict[str, Peak]:
    """Peaks of ``dtypes`` (default fp32 and bf16), keyed by dtype name (``float32``, ``bfloat16``)."""
    return {name: measure_peak(name, sizes, repeats, budget_s) for name in dtypes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds per dtype before larger sizes are skipped")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512f")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), bf16-relevant flags: {' '.join(flags) or 'none'}")
    for peak in measure_peaks(tuple(args.dtypes), tuple(args.sizes), args.repeats, args.budget).values():
        print(peak.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
