"""Streamed user vectors: event -> served latency and users/s, previous implementation vs current.

On a trained run (default ``runs/movielens``, after ``make run``), in one process, for each of
two implementations of ``UserStream.ingest``'s two costliest steps:

- **previous** (commit ``636550f``): the user tower as it was there
  (``previous_user_vectors`` below: every history position's content gathered and projected,
  and every layer run at every position), and the ledger parsing every ``publication.json``
  each time it is listed (four times a batch);
- **current**: ``learn_features.pch.inference.user_vectors`` (each catalog item projected
  once per process, the last layer at the one position retrieval reads) and the ledger's
  parsed-record cache (``store.ledger.list_publications``);

the same steps, each on its own throwaway copy of feature_repo/ (SQLite online store), the two
interleaved event by event and batch by batch so that other load on the machine falls on both:

1. publish the run, apply, seed the history table with the run's own events (``--bootstrap``);
2. **throughput** on the fresh repo: for each ``--batch`` size, ``--batches`` batches of that
   many distinct users with one new event each: users/s of ``ingest``, and each batch's event
   -> served time (ingest, then the batch read back online; a batcher's wait for the batch to
   fill comes on top);
3. **latency**: ``--events`` times, one new event for one random user, timed from
   ``UserStream.ingest`` until ``LearnFeatureClient`` serves the new vector (checked equal to
   the pushed one): p50/p99 event -> served;
4. **throughput** again, now that every ingest so far has recorded a publication: the
   record's cost grows with their number.

Then one batch (the first size) of the current implementation under cProfile, split by the
step of ``ingest`` it was spent in (history write and read, tower, Feast push, publication
record, ledger reads), and the tower alone over every user's whole history, both
implementations (``UserTower.embed``, as ``embed-users --as-of`` runs it, no publish): the
bound that the tower sets on users/s whatever the rest costs.

    .venv/bin/python bench/stream_bench.py --run-dir runs/movielens --config training/configs/movielens.toml --threads 1
    .venv/bin/python bench/stream_bench.py --events 20 --batch 20 --batches 2   # smoke size

Absolute times count only on the machine they were measured on; the ratio current / previous
of the same run is what transfers.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from learn_features.config import load_config
from learn_features.errors import LearnFeaturesError
from learn_features.pch.batching import pad_array
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH
from learn_features.store import ledger
from learn_features.store.ledger import Publication, list_publications
from learn_features.store.publish import publish_run
from learn_features.store.repo import USER, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.store.stream import UserStream
from learn_features.trained_run import TrainedRun
from learn_features.user_vectors import UserTower, snapshot_histories
from training import pipeline
from training.config import PipelineConfig

PREVIOUS_COMMIT = "636550f"
REPO_SRC = Path(__file__).resolve().parents[1] / "feature_repo"
REPO_FILES = (".feastignore", "feature_store.yaml", "learn_repo.py")

#: Where ``UserStream.ingest`` spends a batch: (label, file ending, function) of the calls it
#: makes, none inside another, so their shares add up to the batch.
INGEST_STEPS = (
    ("check the active version (x2, ledger read)", "store/ledger.py", "require_active_version"),
    ("history write (SQLite transaction)", "store/histories.py", "append"),
    ("history read", "store/histories.py", "histories"),
    ("user tower", "learn_features/user_vectors.py", "embed"),
    ("publication time (ledger read)", "store/ledger.py", "next_publish_time"),
    ("Feast push to the online store", "feast/feature_store.py", "push"),
    ("publication record (commit_user_vectors)", "store/user_publications.py", "commit_user_vectors"),
    ("  of which: read the published user rows", "store/published.py", "rows"),
    ("loaded-into-store ledger", "store/materialize.py", "record_loaded"),
)


@torch.inference_mode()
def previous_user_vectors(model: PCH, inputs: ItemInputs, histories: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """``pch.inference.user_vectors`` as of ``636550f``: every position's content gathered and
    projected, every layer at every position, the last position read."""
    if any(len(h) == 0 for h in histories):
        raise LearnFeaturesError("a user with an empty history has no LEARN user embedding")
    device = next(model.parameters()).device
    out = np.zeros((len(histories), model.config.d_out), np.float32)
    for start in range(0, len(histories), batch_size):
        chunk = list(histories[start : start + batch_size])
        filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
        padded, lengths = pad_array(filled, model.config.max_len)
        indices, lengths = torch.as_tensor(padded, device=device), torch.as_tensor(lengths, device=device)
        vectors = model.last_position(model.user_embeddings(inputs.gather(indices)), lengths).float().cpu().numpy()
        out[start : start + len(chunk)] = vectors[: len(chunk)]
    return out


def use_previous_tower(trained: TrainedRun) -> None:
    """Make ``trained`` (a stream's or a bench's tower) embed users as ``636550f`` did."""
    trained.user_vectors = lambda histories, progress=False: previous_user_vectors(trained.model, trained.inputs, histories)  # type: ignore[method-assign]


@contextmanager
def previous_ledger() -> Iterator[None]:
    """The ledger as of ``636550f`` while in the block: every listing parses every record."""
    cached = ledger._read_record
    ledger._read_record = lambda meta_path, mtime_ns: Publication.read(meta_path)  # type: ignore[assignment]
    try:
        yield
    finally:
        ledger._read_record = cached


#: name -> whether the implementation is the previous one
IMPLEMENTATIONS: dict[str, bool] = {f"previous ({PREVIOUS_COMMIT})": True, "current": False}


def throwaway_repo(repo: Path) -> Path:
    repo.mkdir(parents=True)
    for name in REPO_FILES:
        shutil.copy(REPO_SRC / name, repo / name)
    return repo


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


class EventSource:
    """New events one second apart, each batch for distinct random users of the run's data."""

    def __init__(self, events: pd.DataFrame, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.users = events["user_id"].unique()
        self.items = events["item_id"].unique()
        self.clock = events["timestamp"].max()

    def batch(self, n: int) -> pd.DataFrame:
        self.clock += pd.Timedelta(seconds=1)
        users = self.rng.choice(self.users, n, replace=False)
        return pd.DataFrame({"user_id": users, "item_id": self.rng.choice(self.items, n), "timestamp": self.clock})


@dataclass
class Subject:
    """One implementation's stream on its own repo, with its own copy of the event source (both
    implementations get the same events) and what was measured on it."""

    name: str
    previous: bool
    stream: UserStream
    client: LearnFeatureClient
    source: EventSource
    bootstrap_s: float
    latencies: list[float] = field(default_factory=list)
    ingest_s: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # by (phase, batch size)
    served_s: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, previous: bool, run_dir: str, repo: Path, events: pd.DataFrame, seed: int) -> Subject:
        publish_run(run_dir, repo)
        apply_repo(open_store(repo), repo)
        stream = UserStream(run_dir, repo)
        if previous:
            use_previous_tower(stream.tower.trained)
        started = time.perf_counter()
        stream.bootstrap(events)
        subject = cls(name, previous, stream, LearnFeatureClient(repo), EventSource(events, seed), time.perf_counter() - started)
        subject.step(1)  # warm-up: the store connection and the push path
        return subject

    def step(self, users: int) -> tuple[float, float]:
        """One batch of ``users`` new events: (ingest seconds, event -> served seconds)."""
        batch = self.source.batch(users)
        started = time.perf_counter()
        with previous_ledger() if self.previous else nullcontext():
            result = self.stream.ingest(batch)
        ingested = time.perf_counter() - started
        online = self.client.read(USER, result.user_ids)
        served = time.perf_counter() - started
        assert np.array_equal(online.vectors, result.vectors), "the online store does not serve the pushed vectors"
        return ingested, served

    def throughput(self, phase: str, size: int) -> None:
        ingested, served = self.step(size)
        self.ingest_s.setdefault((phase, size), []).append(ingested)
        self.served_s.setdefault((phase, size), []).append(served)

    def report(self) -> dict:
        phases: dict[str, dict] = {}
        for (phase, size), spans in self.ingest_s.items():
            phases.setdefault(phase, {})[f"batch_{size}"] = {
                "users_per_s": size * len(spans) / sum(spans),
                "event_to_served_ms": percentiles_ms(self.served_s[(phase, size)]),
            }
        return {"implementation": self.name, "bootstrap_s": self.bootstrap_s,
                "single_event_to_served_ms": percentiles_ms(self.latencies), "throughput": phases}


def profile_one_batch(subject: Subject, users: int) -> dict:
    """Where one batch's ``ingest`` time goes (``INGEST_STEPS``)."""
    batch = subject.source.batch(users)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(subject.stream.ingest, batch)
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    steps = {}
    for label, path_end, function in INGEST_STEPS:
        seconds = sum(row[3] for (path, _, func), row in stats.items() if func == function and path.endswith(path_end))
        steps[label] = {"ms": seconds * 1000.0, "share": seconds / total}
    return {"users": users, "ms": total * 1000.0, "steps": steps}


def tower_alone(run_dir: str, events: pd.DataFrame, repeats: int) -> dict:
    """Both towers over every user's whole history, interleaved ``repeats`` times (best time
    kept: the least disturbed by other load); the current tower's first call, which builds its
    input table, timed on its own."""
    towers = {name: UserTower.load(run_dir) for name in ("previous", "current")}
    use_previous_tower(towers["previous"].trained)
    rows = snapshot_histories(events, [events["timestamp"].max() + pd.Timedelta(days=1)], towers["current"].history_len, changed_only=False)
    started = time.perf_counter()
    towers["current"].embed(rows.user_ids[:1], rows.histories[:1])
    first_call_s = time.perf_counter() - started
    best = dict.fromkeys(towers, float("inf"))
    for _ in range(repeats):
        for name, tower in towers.items():
            started = time.perf_counter()
            tower.embed(rows.user_ids, rows.histories)
            best[name] = min(best[name], time.perf_counter() - started)
    out: dict = {name: {"users": len(rows), "seconds": s, "users_per_s": len(rows) / s} for name, s in best.items()}
    out["current"]["first_call_with_input_table_s"] = first_call_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/movielens")
    parser.add_argument("--config", default="training/configs/movielens.toml", help="the run's job config (its data seeds the histories)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override the run was trained with (repeatable)")
    parser.add_argument("--events", type=int, default=200, help="single-user refreshes timed for latency")
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 600], help="users per batch, one throughput run per size (at most the run's users)")
    parser.add_argument("--batches", type=int, default=5, help="batches per throughput run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each tower alone over every user")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice); the tower's speed depends on it")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(PipelineConfig, args.config, [*args.set, f"run_dir={json.dumps(args.run_dir)}"])
    events = pipeline.prepare(config).dataset.interactions
    with tempfile.TemporaryDirectory() as tmp:
        subjects = [
            Subject.build(name, previous, args.run_dir, throwaway_repo(Path(tmp) / str(k)), events, args.seed)
            for k, (name, previous) in enumerate(IMPLEMENTATIONS.items())
        ]
        # Interleaved, event by event and batch by batch, so that load from other processes on
        # a shared machine falls on both implementations alike. Throughput twice: on a fresh
        # repo, and after the latency run's publications (every ingest records one).
        def throughput_run() -> None:
            phase = f"after {len(list_publications(subjects[0].stream.repo_path))} publications"
            for size in args.batch:
                for _ in range(args.batches):
                    for subject in subjects:
                        subject.throughput(phase, size)

        throughput_run()
        for _ in range(args.events):
            for subject in subjects:
                subject.latencies.append(subject.step(1)[1])
        throughput_run()
        previous, current = (subject.report() for subject in subjects)
        current["profiled_batch"] = profile_one_batch(subjects[1], args.batch[0])

    tower_only = tower_alone(args.run_dir, events, args.repeats)

    ratio = {f"single_event_to_served_{q}": current["single_event_to_served_ms"][q] / previous["single_event_to_served_ms"][q] for q in ("p50", "p99")}
    for phase, sizes in current["throughput"].items():
        for size, now in sizes.items():
            before = previous["throughput"][phase][size]
            ratio[f"users_per_s, {size}, {phase}"] = now["users_per_s"] / before["users_per_s"]
            ratio[f"event_to_served_p99, {size}, {phase}"] = now["event_to_served_ms"]["p99"] / before["event_to_served_ms"]["p99"]
    ratio["tower_only_users_per_s"] = tower_only["current"]["users_per_s"] / tower_only["previous"]["users_per_s"]
    results = {
        "run_dir": args.run_dir,
        "previous_commit": PREVIOUS_COMMIT,
        "torch_threads": torch.get_num_threads(),
        "users": int(events["user_id"].nunique()),
        "previous": previous,
        "current": current,
        "ratio_current_over_previous": ratio,
        "tower_only_all_users": tower_only,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
