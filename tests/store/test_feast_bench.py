"""Smoke run of bench/feast_bench.py at a tiny size (no timing assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "feast_bench.py"


@pytest.mark.services
def test_bench_runs_tiny(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("feast_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "feast_bench", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    results = bench.main(["--rows", "300", "--users", "10", "--candidates", "20", "--reads", "3", "--dims", "8,16"])
    assert sorted((r.store, r.dim) for r in results) == [("redis", 8), ("redis", 16), ("sqlite", 8), ("sqlite", 16)]
    assert all(r.rows == 300 and r.rows_per_s > 0 and r.p99_ms >= r.p50_ms > 0 for r in results)
    out = capsys.readouterr().out
    assert "redis/sqlite materialize throughput" in out and "dim 16/dim 8" in out
