"""Smoke run of bench/feast_bench.py at a tiny size (no timing assertions)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from core_fixtures import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench" / "feast_bench.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/feast_bench.py loaded as a module (it is a script, not part of the package)."""
    return load_script(monkeypatch, BENCH)


@pytest.mark.services
def test_bench_runs_tiny(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    results = bench.main(["--rows", "300", "--users", "10", "--candidates", "20", "--reads", "3", "--dims", "8,16"])
    assert sorted((r.store, r.dim) for r in results) == [("redis", 8), ("redis", 16), ("sqlite", 8), ("sqlite", 16)]
    assert all(r.rows == 300 and r.rows_per_s > 0 and r.p99_ms >= r.p50_ms > 0 for r in results)
    out = capsys.readouterr().out
    assert "redis/sqlite materialize throughput" in out and "dim 16/dim 8" in out
    assert all(not r.candidates for r in results)  # no vector search in SQLite or Redis


def test_bench_measures_candidates_on_milvus_lite(bench: ModuleType) -> None:
    """On the vector store, candidates() through Feast with the FLAT index finds exactly faiss's
    top-k (recall 1), and each store/index is timed at each k."""
    results = bench.main(["--rows", "400", "--users", "12", "--candidates", "20", "--reads", "3", "--dims", "8",
                          "--stores", "sqlite,milvus,milvus-hnsw", "--ks", "10,50", "--queries", "6"])
    by = {r.store: r for r in results}
    assert not by["sqlite"].candidates
    for store in ("milvus", "milvus-hnsw"):
        assert [c.k for c in by[store].candidates] == [10, 50] and all(c.p99_ms >= c.p50_ms > 0 for c in by[store].candidates)
    assert all(c.recall == 1.0 for c in by["milvus"].candidates)


def test_run_dir_sizes_come_from_its_manifest(bench: ModuleType, tmp_path: Path) -> None:
    """--run-dir takes the run's dim and item count from its embeddings manifest: the vectors
    themselves are read once, when the bench publishes them (none exist here)."""
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "manifest.json").write_text('{"dim": 24, "items": 4385, "users": 10}')
    args = bench.parse_args(["--run-dir", str(tmp_path), "--candidates", "20"])
    assert (args.dims, args.rows) == ([24], 4385)
