"""Streamed user vectors: events -> served-vector latency and throughput, beside a full recompute.

On a trained run (default ``runs/movielens``, after ``make run``) and a throwaway copy of
feature_repo/ (SQLite online store), in one process:

1. publish the run, apply, materialize; seed the history table with the run's own events
   (``stream-users --bootstrap``);
2. **latency**: ``--events`` times, one new event for one random user, timed from
   ``UserStream.ingest`` until ``LearnFeatureClient`` serves the new vector (p50/p99, ms);
3. **throughput**: batches of ``--batch`` users with one new event each (users/s);
4. **full recompute**, the naive baseline a nightly job would use: every user's vector from
   their whole history with the same tower (``embed-users --as-of``'s code path, no publish),
   users/s and the time to bring one changed user up to date that way.

    .venv/bin/python bench/stream_bench.py --run-dir runs/movielens --config training/configs/movielens.toml
    .venv/bin/python bench/stream_bench.py --events 20 --batch 20          # smoke size

Absolute times count only on the machine they were measured on; the ratio streamed vs full
recompute is what transfers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.config import load_config
from learn_features.store.publish import publish_run
from learn_features.store.repo import USER, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.store.stream import UserStream
from learn_features.store.user_snapshots import embed_user_snapshots
from learn_features.user_vectors import snapshot_histories
from training import pipeline
from training.config import PipelineConfig

REPO_SRC = Path(__file__).resolve().parents[1] / "feature_repo"
REPO_FILES = (".feastignore", "feature_store.yaml", "learn_repo.py")


def throwaway_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    for name in REPO_FILES:
        shutil.copy(REPO_SRC / name, repo / name)
    return repo


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/movielens")
    parser.add_argument("--config", default="training/configs/movielens.toml", help="the run's job config (its data seeds the histories)")
    parser.add_argument("--events", type=int, default=200, help="single-user refreshes timed for latency")
    parser.add_argument("--batch", type=int, default=100, help="users per batch in the throughput run")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    config = load_config(PipelineConfig, args.config, [f"run_dir={json.dumps(args.run_dir)}"])
    events = pipeline.prepare(config).dataset.interactions
    rng = np.random.default_rng(args.seed)
    users = events["user_id"].unique()
    items = events["item_id"].unique()
    clock = events["timestamp"].max()

    def new_events(n: int) -> pd.DataFrame:
        nonlocal clock
        clock += pd.Timedelta(seconds=1)
        return pd.DataFrame({"user_id": rng.choice(users, n, replace=False), "item_id": rng.choice(items, n), "timestamp": clock})

    with tempfile.TemporaryDirectory() as tmp:
        repo = throwaway_repo(Path(tmp))
        publish_run(args.run_dir, repo)
        apply_repo(open_store(repo), repo)
        stream = UserStream(args.run_dir, repo)
        stream.bootstrap(events)
        client = LearnFeatureClient(repo)
        stream.ingest(new_events(1))  # warm-up: the store connection and the push path

        latencies = []
        for _ in range(args.events):
            batch = new_events(1)
            started = time.perf_counter()
            result = stream.ingest(batch)
            served = client.read(USER, result.user_ids)
            latencies.append(time.perf_counter() - started)
            assert np.array_equal(served.vectors[0], result.vectors[0]), "the online store does not serve the pushed vector"

        spans = []
        for _ in range(args.batches):
            batch = new_events(args.batch)
            started = time.perf_counter()
            stream.ingest(batch)
            spans.append(time.perf_counter() - started)
        streamed_users_per_s = args.batch * args.batches / sum(spans)

        started = time.perf_counter()
        rows = snapshot_histories(events, [clock + pd.Timedelta(seconds=1)], stream.tower.history_len, changed_only=False)
        full = embed_user_snapshots(args.run_dir, rows, progress=False)
        full_s = time.perf_counter() - started

    results = {
        "run_dir": args.run_dir,
        "users": int(len(users)),
        "single_user_refresh_ms": {"p50": percentile_ms(latencies, 50), "p99": percentile_ms(latencies, 99), "n": len(latencies)},
        "streamed_users_per_s": streamed_users_per_s,
        "batch": args.batch,
        "full_recompute": {"users": full.rows, "seconds": full_s, "users_per_s": full.rows / full_s},
        "ratio_full_recompute_s_over_one_refresh_p50": full_s / (percentile_ms(latencies, 50) / 1000.0),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
