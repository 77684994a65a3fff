"""User vectors as of snapshot times, published for point-in-time joins (``learn-features embed-users``).

The core (``learn_features.user_vectors``) computes each user's vector from their history
before a time; this module publishes a schedule of such snapshots as one ``users``
publication, each row stamped with its snapshot time. A ranker's training join then picks,
for an impression at time t, the user's latest row at or before t: a vector computed from the
events strictly before that snapshot, never from the impression itself or anything later.

Idempotent (a row that a point-in-time read already returns is not published again, so a
re-run, or a snapshot of users whose history did not change, adds nothing) and atomic (one
publication directory rename). The vectors must belong to the repo's active model version:
a user vector is only ever scored against item vectors of its own version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.embeddings_io import write_frame
from learn_features.errors import LearnFeaturesError
from learn_features.store.ledger import require_active_version
from learn_features.store.user_publications import UserPublishResult, publish_user_vectors
from learn_features.user_vectors import SnapshotRows, UserTower


SNAPSHOT_FILE = "user_snapshots.parquet"


@dataclass
class SnapshotRun:
    """What ``embed_user_snapshots`` computed and where it went."""

    model_version: str
    snapshots: int
    rows: int
    users: int
    unknown_events: int
    unknown_examples: list[str]
    seconds: float  # tower time (building histories excluded)
    published: list[tuple[Path, UserPublishResult]]  # (repo, what was committed there)

    @property
    def seconds_per_1000_users(self) -> float:
        return 1000.0 * self.seconds / max(self.rows, 1)


def embed_user_snapshots(
    run_dir: str | Path,
    rows: SnapshotRows,
    repos: Sequence[str | Path] = (),
    output: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> SnapshotRun:
    """The vector of every (user, snapshot time) row (``user_vectors.snapshot_histories`` or
    ``after_each_event``), published into each of ``repos`` and/or written to ``output`` (one
    Parquet file, a row per user and time)."""
    if not len(rows):
        raise LearnFeaturesError("no user has an event before any snapshot time; nothing to embed")
    tower = UserTower.load(run_dir, device)
    for repo in repos:
        require_active_version(repo, tower.model_version)
    started = time.perf_counter()
    result = tower.embed(rows.user_ids, rows.histories, progress)
    seconds = time.perf_counter() - started
    if not result.user_ids:
        raise LearnFeaturesError("no snapshot row has a history on the run's catalog; nothing to embed")
    ids = np.asarray(result.user_ids, dtype=object)
    times = np.array([rows.times[i].floor("us").value // 1000 for i in result.kept], dtype=np.int64)
    if output is not None:
        frame = pd.DataFrame({"user_id": pd.Series(result.user_ids, dtype="string"), "embedding": list(result.vectors),
                              "event_timestamp": pd.to_datetime(times, unit="us", utc=True).astype("datetime64[us, UTC]"),
                              "model_version": tower.model_version})
        write_frame(frame, "user", Path(output) / SNAPSHOT_FILE, result.vectors.shape[1])
    published = [
        (Path(repo), publish_user_vectors(repo, tower.model_version, ids, result.vectors, times, f"{Path(run_dir).resolve()} (embed-users)"))
        for repo in repos
    ]
    return SnapshotRun(tower.model_version, len(set(rows.times)), len(ids), len(set(result.user_ids)), result.unknown_events,
                       result.unknown_examples, seconds, published)
