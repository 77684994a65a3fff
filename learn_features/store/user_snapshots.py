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
from tqdm.auto import tqdm

from learn_features.embeddings_io import EmbeddingTable, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.store.publish import UserPublishResult, active_publication, publish_user_vectors
from learn_features.user_vectors import UserTower, snapshot_histories


@dataclass
class SnapshotRun:
    """What ``embed_user_snapshots`` computed and where it went."""

    model_version: str
    snapshots: int
    rows: int
    users: int
    unknown_events: int
    unknown_examples: list[str]
    seconds: float  # tower time (histories excluded)
    published: list[tuple[Path, UserPublishResult]]  # (repo, what was committed there)

    @property
    def seconds_per_1000_users(self) -> float:
        return 1000.0 * self.seconds / max(self.rows, 1)


def require_active_version(repo_path: str | Path, model_version: str) -> None:
    """Refuse before any work when the repo serves item vectors of another model version."""
    active = active_publication(repo_path)
    if active is None or active.model_version != model_version:
        found = "nothing is published" if active is None else f"the active item publication is {active.model_version!r}"
        raise LearnFeaturesError(
            f"{repo_path}: the run's model version is {model_version!r} but {found}; its user vectors would be scored "
            "against item vectors of another model. Publish the run first (`learn-features publish`)"
        )


def embed_user_snapshots(
    run_dir: str | Path,
    events: pd.DataFrame,
    times: Sequence[pd.Timestamp],
    repos: Sequence[str | Path] = (),
    output: str | Path | None = None,
    changed_only: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> SnapshotRun:
    """Every user's vector as of each of ``times`` (see ``user_vectors.snapshot_histories``),
    published into each of ``repos`` and/or written to ``output`` (one Parquet file per time)."""
    if not times:
        raise LearnFeaturesError("no snapshot times: give --as-of or --from/--to/--every")
    tower = UserTower.load(run_dir, device)
    for repo in repos:
        require_active_version(repo, tower.model_version)
    ids, vectors, stamps = [], [], []
    unknown, examples, users = 0, [], set()
    seconds = 0.0
    for snapshot in tqdm(snapshot_histories(events, times, tower.history_len, changed_only), desc="user snapshots", unit="snapshot", disable=not progress):
        started = time.perf_counter()
        result = tower.embed(snapshot.user_ids, snapshot.histories)
        seconds += time.perf_counter() - started
        unknown += result.unknown_events
        examples = sorted(set(examples) | set(result.unknown_examples))[:5]
        if not result.user_ids:
            continue
        users.update(result.user_ids)
        ids.append(np.asarray(result.user_ids, dtype=object))
        vectors.append(result.vectors)
        stamps.append(np.full(len(result.user_ids), snapshot.time.floor("us").value // 1000, dtype=np.int64))
        if output is not None:
            write_table(EmbeddingTable("user", result.user_ids, result.vectors, snapshot.time, tower.model_version),
                        Path(output) / f"users-{snapshot.time.strftime('%Y%m%dT%H%M%S%fZ')}.parquet")
    if not ids:
        raise LearnFeaturesError("no user has an event before any snapshot time; nothing to embed")
    all_ids, all_vectors, all_times = np.concatenate(ids), np.concatenate(vectors), np.concatenate(stamps)
    published = [
        (Path(repo), publish_user_vectors(repo, tower.model_version, all_ids, all_vectors, all_times, f"{Path(run_dir).resolve()} (embed-users)"))
        for repo in repos
    ]
    return SnapshotRun(tower.model_version, len(times), len(all_ids), len(users), unknown, examples, seconds, published)
