"""Feast benchmarks for LEARN embeddings: materialization throughput and online read latency.

For each vector dimension it builds a throwaway copy of feature_repo/, publishes
``--rows`` synthetic item embeddings (plus ``--users`` users) with ``learn-features
publish``'s code path, then for each online store runs plain Feast ``materialize`` of the
item view (what ``feast materialize`` does) and times, from the same run, where the time
goes: the conversion of Arrow rows to Feast protos and the online store's
``online_write_batch``; the rest is the DuckDB read, dedup and bookkeeping. Then it
measures ``LearnFeatureClient.score`` for one user and ``--candidates`` items.

    .venv/bin/python bench/feast_bench.py                 # 1M rows, dims 64 and 256, SQLite and Redis
    .venv/bin/python bench/feast_bench.py --rows 2000 --reads 20   # smoke size

Redis must listen on 127.0.0.1:6379 (or pass --redis host:port); each run uses its own
Feast project as key suffix and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import yaml

from learn_features.atomic import write_json_atomic
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, write_table
from learn_features.store.publish import publish_run
from learn_features.store.repo import ITEM_VIEW, USER_VIEW, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient

REPO_SRC = Path(__file__).resolve().parents[1] / "feature_repo"


@dataclass
class Result:
    store: str
    dim: int
    rows: int
    materialize_s: float
    rows_per_s: float
    convert_s: float
    write_s: float
    other_s: float
    p50_ms: float
    p99_ms: float


@contextmanager
def _timed(owner: Any, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Accumulate the wall time spent in ``owner.name`` while the block runs."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _write_run(run_dir: Path, rows: int, users: int, dim: int) -> None:
    rng = np.random.default_rng(dim)
    ts = pd.Timestamp.now(tz="UTC")
    emb = run_dir / "embeddings"
    for entity, n, name in (("user", users, USER_FILE), ("item", rows, ITEM_FILE)):
        ids = [f"{entity[0]}{i}" for i in range(n)]
        write_table(EmbeddingTable(entity, ids, rng.standard_normal((n, dim), dtype=np.float32), ts, "bench"), emb / name)  # type: ignore[arg-type]
    write_json_atomic(emb / "manifest.json", {"model_version": "bench", "dim": dim, "as_of": ts.isoformat(), "created_at": ts.isoformat()})


def _config(repo: Path, store: str, redis: str) -> tuple[str | None, str | None]:
    """(config file name, Redis project to clean up) for one online store."""
    if store == "sqlite":
        return None, None
    project = f"learn_bench_{uuid.uuid4().hex[:8]}"
    config = yaml.safe_load((repo / "feature_store.redis.yaml").read_text())
    config.update(project=project, registry=f"data/registry_{project}.db")
    config["online_store"]["connection_string"] = redis
    name = f"feature_store.{project}.yaml"
    (repo / name).write_text(yaml.safe_dump(config))
    return name, project


def _drop_redis_project(redis: str, project: str) -> None:
    import redis as redis_py

    host, port = redis.split(":")
    client = redis_py.Redis(host, int(port))
    batch = []
    for key in client.scan_iter(match=b"*" + project.encode(), count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def _materialize(repo: Path, config: str | None, view: str, totals: dict[str, float] | None = None) -> float:
    from feast.infra.compute_engines.local import nodes

    store = open_store(repo, config)
    online_store_cls = type(store._get_provider().online_store)
    start_date = datetime(2000, 1, 1, tzinfo=timezone.utc)
    end_date = datetime.now(timezone.utc) + timedelta(seconds=1)
    sink: dict[str, float] = {"convert": 0.0, "write": 0.0}
    with _timed(nodes, "_convert_arrow_to_proto", sink, "convert"), _timed(online_store_cls, "online_write_batch", sink, "write"):
        t0 = time.perf_counter()
        store.materialize(start_date, end_date, feature_views=[view])
        elapsed = time.perf_counter() - t0
    if totals is not None:
        totals.update(sink)
    return elapsed


def _latency(repo: Path, config: str | None, users: int, items: int, candidates: int, reads: int) -> tuple[float, float]:
    client = LearnFeatureClient(repo, config=config)
    rng = np.random.default_rng(0)
    for _ in range(5):  # warm connections and caches
        client.score("u0", [f"i{j}" for j in rng.integers(0, items, candidates)])
    times = []
    for _ in range(reads):
        user = f"u{rng.integers(0, users)}"
        cands = [f"i{j}" for j in rng.integers(0, items, candidates)]
        t0 = time.perf_counter()
        res = client.score(user, cands)
        times.append(time.perf_counter() - t0)
        assert not res.missing.any() and not res.user_missing, "benchmark rows missing online"
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run(args: argparse.Namespace, workdir: Path) -> list[Result]:
    results = []
    for dim in args.dims:
        root = workdir / f"dim{dim}"
        repo = root / "repo"
        shutil.copytree(REPO_SRC, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        t0 = time.perf_counter()
        _write_run(root / "run", args.rows, args.users, dim)
        t1 = time.perf_counter()
        publish_run(root / "run", repo)
        t2 = time.perf_counter()
        print(f"dim {dim}: wrote run in {t1 - t0:.1f}s, published {args.rows + args.users} rows in {t2 - t1:.1f}s", flush=True)
        for store in args.stores:
            config, project = _config(repo, store, args.redis)
            try:
                apply_repo(open_store(repo, config), repo)
                totals: dict[str, float] = {}
                elapsed = _materialize(repo, config, ITEM_VIEW, totals)
                _materialize(repo, config, USER_VIEW)
                p50, p99 = _latency(repo, config, args.users, args.rows, args.candidates, args.reads)
            finally:
                if project is not None:
                    _drop_redis_project(args.redis, project)
            other = elapsed - totals["convert"] - totals["write"]
            result = Result(store, dim, args.rows, elapsed, args.rows / elapsed, totals["convert"], totals["write"], other, p50, p99)
            print(
                f"  {store:6s} materialize {elapsed:7.1f}s = {result.rows_per_s:9.0f} rows/s "
                f"(to protos {totals['convert']:.1f}s, store writes {totals['write']:.1f}s, DuckDB read+dedup+other {other:.1f}s); "
                f"score 1+{args.candidates}: p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                flush=True,
            )
            results.append(result)
    return results


def _ratios(results: list[Result]) -> list[str]:
    by = {(r.store, r.dim): r for r in results}
    lines = []
    dims = sorted({r.dim for r in results})
    for dim in dims:
        if ("sqlite", dim) in by and ("redis", dim) in by:
            s, r = by[("sqlite", dim)], by[("redis", dim)]
            lines.append(
                f"dim {dim}: redis/sqlite materialize throughput {r.rows_per_s / s.rows_per_s:.2f}x, "
                f"read p50 {r.p50_ms / s.p50_ms:.2f}x, p99 {r.p99_ms / s.p99_ms:.2f}x"
            )
    if len(dims) >= 2:
        lo, hi = dims[0], dims[-1]
        for store in sorted({r.store for r in results}):
            if (store, lo) in by and (store, hi) in by:
                a, b = by[(store, lo)], by[(store, hi)]
                lines.append(
                    f"{store}: dim {hi}/dim {lo} materialize throughput {b.rows_per_s / a.rows_per_s:.2f}x, "
                    f"read p50 {b.p50_ms / a.p50_ms:.2f}x"
                )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="item embeddings to materialize (default 1M)")
    parser.add_argument("--dims", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    parser.add_argument("--stores", type=lambda s: s.split(","), default=["sqlite", "redis"])
    parser.add_argument("--users", type=int, default=1000, help="user embeddings (read-latency queries)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--reads", type=int, default=300, help="timed score() calls per store")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = set(args.stores) - {"sqlite", "redis"}
    if unknown or args.rows < args.candidates or args.rows <= 0:
        parser.error(f"bad --stores {sorted(unknown)} or --rows {args.rows} (< --candidates {args.candidates})")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="learn_feast_bench_") as tmp:
        results = run(args, Path(tmp))
    print("\n".join(["ratios:", *(f"  {line}" for line in _ratios(results))]))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
