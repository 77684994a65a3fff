"""Feast benchmarks for LEARN embeddings: materialization throughput, online reads, and
candidate retrieval through Feast's vector search.

For each vector dimension it builds a throwaway copy of feature_repo/, publishes
``--rows`` synthetic item embeddings (plus ``--users`` users) with ``learn-features
publish``'s code path, or with ``--run-dir`` a trained run's own vectors (the MovieLens
catalog after ``make run``), then for each online store runs plain Feast ``materialize`` of
the item view (what ``feast materialize`` does) and times, from the same run, where the time
goes: the conversion of Arrow rows to Feast protos and the online store's
``online_write_batch``; the rest is the DuckDB read, dedup and bookkeeping. Then it
measures ``LearnFeatureClient.score`` for one user and ``--candidates`` items. On a store
with vector search (Milvus Lite, by index type: ``milvus`` is FLAT, ``milvus-hnsw`` and
``milvus-ivf`` approximate), it also measures ``LearnFeatureClient.candidates`` at each of
``--ks``: p50/p99 latency of one call, and recall@k against the exact inner-product top-k
(faiss ``IndexFlatIP``, ``store.candidates.ItemIndex``) over the same published vectors.

    .venv/bin/python bench/feast_bench.py                 # 1M rows, dims 64 and 256, SQLite and Redis
    .venv/bin/python bench/feast_bench.py --dims 64 --stores sqlite,redis,milvus,milvus-hnsw,milvus-ivf   # 1M synthetic 64-d
    .venv/bin/python bench/feast_bench.py --run-dir runs/movielens --stores sqlite,redis,milvus,milvus-hnsw,milvus-ivf
    .venv/bin/python bench/feast_bench.py --rows 2000 --reads 20   # smoke size

Redis must listen on 127.0.0.1:6379 (or pass --redis host:port); each run uses its own
Feast project as key suffix and deletes its keys afterwards. Milvus Lite runs embedded
from a file in the throwaway repo.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import yaml

from learn_features.atomic import write_json_atomic
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, frame_to_matrix, read_frame, write_table
from learn_features.store.candidates import ItemIndex
from learn_features.store.publish import publish_run
from learn_features.store.repo import ITEM_VIEW, USER_VIEW, apply_repo, open_store, vector_search_dim
from learn_features.store.serving import LearnFeatureClient

REPO_SRC = Path(__file__).resolve().parents[1] / "feature_repo"


@dataclass
class Retrieval:
    """``candidates`` at one k: mean recall@k against the exact top-k, and call latency."""

    k: int
    recall: float
    p50_ms: float
    p99_ms: float


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
    candidates: list[Retrieval] = field(default_factory=list)  # stores with vector search only


@dataclass
class Catalog:
    """What was published: user and item ids with their vectors (exact top-k's ground truth)."""

    user_ids: list[str]
    user_vectors: np.ndarray
    item_ids: list[str]
    item_vectors: np.ndarray

    @classmethod
    def of_run(cls, run_dir: Path) -> Catalog:
        users, items = (read_frame(run_dir / "embeddings" / name, entity) for entity, name in (("user", USER_FILE), ("item", ITEM_FILE)))  # type: ignore[arg-type]
        return cls(users["user_id"].astype(str).tolist(), frame_to_matrix(users), items["item_id"].astype(str).tolist(), frame_to_matrix(items))


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


def _write_config(repo: Path, base: str, project: str, online: dict[str, Any]) -> str:
    config = yaml.safe_load((repo / base).read_text())
    config.update(project=project, registry=f"data/registry_{project}.db")
    config["online_store"].update(online)
    name = f"feature_store.{project}.yaml"
    (repo / name).write_text(yaml.safe_dump(config))
    return name


def _sqlite(repo: Path, args: argparse.Namespace, dim: int) -> tuple[str | None, str | None]:
    return None, None


def _redis(repo: Path, args: argparse.Namespace, dim: int) -> tuple[str | None, str | None]:
    project = f"learn_bench_{uuid.uuid4().hex[:8]}"
    return _write_config(repo, "feature_store.redis.yaml", project, {"connection_string": args.redis}), project


def _milvus(index: str, params: dict[str, Any], search: dict[str, Any]) -> Callable[..., tuple[str | None, str | None]]:
    """The shipped Milvus Lite config with another index type, in a database file of its own."""

    def config(repo: Path, args: argparse.Namespace, dim: int) -> tuple[str | None, str | None]:
        project = f"learn_bench_{uuid.uuid4().hex[:8]}"
        online = {"path": f"data/{project}.milvus.db", "embedding_dim": dim, "index_type": index, "index_params": params, "search_params": search}
        return _write_config(repo, "feature_store.milvus.yaml", project, online), None

    return config


#: --stores name -> (config file name, Redis project to clean up) for a repo and dimension.
STORES: dict[str, Callable[[Path, argparse.Namespace, int], tuple[str | None, str | None]]] = {
    "sqlite": _sqlite,
    "redis": _redis,
    "milvus": _milvus("FLAT", {}, {}),
    "milvus-hnsw": _milvus("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 128}),
    "milvus-ivf": _milvus("IVF_FLAT", {"nlist": 1024}, {"nprobe": 16}),
}


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


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _latency(client: LearnFeatureClient, catalog: Catalog, candidates: int, reads: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    for _ in range(5):  # warm connections and caches
        client.score(catalog.user_ids[0], [catalog.item_ids[j] for j in rng.integers(0, len(catalog.item_ids), candidates)])
    times = []
    for _ in range(reads):
        user = catalog.user_ids[rng.integers(0, len(catalog.user_ids))]
        cands = [catalog.item_ids[j] for j in rng.integers(0, len(catalog.item_ids), candidates)]
        t0 = time.perf_counter()
        res = client.score(user, cands)
        times.append(time.perf_counter() - t0)
        assert not res.missing.any() and not res.user_missing, "benchmark rows missing online"
    return _percentiles(times)


def _retrieval(client: LearnFeatureClient, catalog: Catalog, ks: list[int], queries: int) -> list[Retrieval]:
    """``candidates`` for ``queries`` random users at each k, against faiss's exact top-k."""
    index = ItemIndex(catalog.item_ids, catalog.item_vectors, "bench", metric="dot")
    rng = np.random.default_rng(1)
    users = rng.choice(len(catalog.user_ids), size=min(queries, len(catalog.user_ids)), replace=False)
    exact = index.search(catalog.user_vectors[users], max(ks))
    client.candidates(catalog.user_ids[users[0]], max(ks))  # warm the search path
    out = []
    for k in ks:
        times, recalls = [], []
        for row, user in enumerate(users):
            t0 = time.perf_counter()
            got = client.candidates(catalog.user_ids[user], k)
            times.append(time.perf_counter() - t0)
            recalls.append(len(set(got.item_ids) & set(exact[row].item_ids[:k])) / k)
        out.append(Retrieval(k, float(np.mean(recalls)), *_percentiles(times)))
    return out


def run(args: argparse.Namespace, workdir: Path) -> list[Result]:
    results = []
    for dim in args.dims:
        root = workdir / f"dim{dim}"
        repo = root / "repo"
        shutil.copytree(REPO_SRC, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        t0 = time.perf_counter()
        run_dir = args.run_dir or root / "run"
        if args.run_dir is None:
            _write_run(run_dir, args.rows, args.users, dim)
        catalog = Catalog.of_run(run_dir)
        t1 = time.perf_counter()
        publish_run(run_dir, repo)
        t2 = time.perf_counter()
        rows = len(catalog.item_ids)
        print(f"dim {dim}: wrote run in {t1 - t0:.1f}s, published {rows + len(catalog.user_ids)} rows in {t2 - t1:.1f}s", flush=True)
        for store in args.stores:
            config, project = STORES[store](repo, args, dim)
            try:
                feast_store = open_store(repo, config)
                apply_repo(feast_store, repo)
                totals: dict[str, float] = {}
                elapsed = _materialize(repo, config, ITEM_VIEW, totals)
                _materialize(repo, config, USER_VIEW)
                client = LearnFeatureClient(repo, config=config)
                p50, p99 = _latency(client, catalog, args.candidates, args.reads)
                retrieval = _retrieval(client, catalog, args.ks, args.queries) if vector_search_dim(feast_store) is not None else []
            finally:
                if project is not None:
                    _drop_redis_project(args.redis, project)
            other = elapsed - totals["convert"] - totals["write"]
            result = Result(store, dim, rows, elapsed, rows / elapsed, totals["convert"], totals["write"], other, p50, p99, retrieval)
            print(
                f"  {store:11s} materialize {elapsed:7.1f}s = {result.rows_per_s:9.0f} rows/s "
                f"(to protos {totals['convert']:.1f}s, store writes {totals['write']:.1f}s, DuckDB read+dedup+other {other:.1f}s); "
                f"score 1+{args.candidates}: p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                flush=True,
            )
            for r in retrieval:
                print(f"  {'':11s} candidates k={r.k}: recall@{r.k} {r.recall:.4f} vs exact faiss, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms", flush=True)
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
        if ("sqlite", dim) in by:
            for store in sorted(name for name in {r.store for r in results} if name.startswith("milvus")):
                if (store, dim) in by:
                    lines.append(f"dim {dim}: {store}/sqlite materialize throughput {by[(store, dim)].rows_per_s / by[('sqlite', dim)].rows_per_s:.2f}x")
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
    parser.add_argument("--run-dir", type=Path, help="publish this trained run's vectors instead of synthetic ones (--rows, --users and --dims are then the run's)")
    parser.add_argument("--stores", type=lambda s: s.split(","), default=["sqlite", "redis"], help=f"comma-separated, of {', '.join(STORES)}")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[100, 500], help="candidates() depths (vector stores)")
    parser.add_argument("--queries", type=int, default=200, help="users queried per k for candidates() recall and latency")
    parser.add_argument("--users", type=int, default=1000, help="user embeddings (read-latency queries)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--reads", type=int, default=300, help="timed score() calls per store")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = set(args.stores) - set(STORES)
    if args.run_dir is not None:
        info = json.loads((args.run_dir / "embeddings" / "manifest.json").read_text())
        args.dims, args.rows = [int(info["dim"])], int(info["items"])  # the manifest counts them: no second read of the vectors
    deepest = max(args.ks) if any(store.startswith("milvus") for store in args.stores) else 0  # k matters where there is search
    if unknown or args.rows < max(args.candidates, deepest) or args.rows <= 0:
        parser.error(f"bad --stores {sorted(unknown)} or --rows {args.rows} (< --candidates {args.candidates} or a --ks value)")
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
