"""User vectors as ``users`` publications: rows stamped at their own times, not at publish time.

``embed-users`` (``store.user_snapshots``) publishes vectors as of snapshot times and
``stream-users`` (``store.stream``) the vectors it pushed online. Both commit here, by the
same rules:

* The vectors must be of the active model version (``ledger.require_active_version``):
  they are scored against its item vectors.
* Each row carries its own time, none later than now (the CLI refuses future snapshot
  times); the publication's ``published_at`` is its latest row. Rows may lie before
  earlier publications: ``learn-features materialize`` loads every pending publication
  whatever its time, and point-in-time joins pick, per impression, the latest row at or
  before it.
* A row whose vector is what a point-in-time read at its time already returns is left out,
  so publishing the same snapshots again adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from learn_features.store.commit import EntityVectors, commit_publication
from learn_features.store.ledger import Publication, publish_lock, require_active_version
from learn_features.store.published import PublishedRowsReader


@dataclass(frozen=True)
class UserPublishResult:
    """A ``users`` publication, or None when every row was already in effect."""

    publication: Publication | None
    published: int  # rows committed
    unchanged: int  # rows left out: a point-in-time read at their time already returns their vector


def publish_user_vectors(
    repo_path: str | Path, model_version: str, ids: np.ndarray, vectors: np.ndarray, times: np.ndarray, source: str
) -> UserPublishResult:
    """Commit user vectors stamped at their own times (``times``: UTC µs) as a ``users`` publication.

    These are the inductive user tower's vectors as of snapshot times, or streamed ones. Under
    the module's rules: refused unless of the active version, and rows already in effect are
    left out, so a snapshot of users whose history did not change adds nothing.
    """
    table = user_vector_rows(ids, vectors, times, source)
    with publish_lock(repo_path):
        require_active_version(repo_path, model_version, vectors.shape[1])
        return commit_user_vectors(repo_path, model_version, table, source)


def user_vector_rows(ids: np.ndarray, vectors: np.ndarray, times: np.ndarray, source: str) -> EntityVectors:
    """The rows of a ``users`` publication, sorted; refused when empty or with two vectors of
    one user at one time."""
    if not len(ids):
        raise LearnFeaturesError(f"{source}: no user vectors to publish")
    table = EntityVectors.sorted(ids, vectors, times)
    duplicated = pd.DataFrame({"id": table.ids, "t": table.times_us}).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise LearnFeaturesError(f"{source}: user {table.ids[row]!r} has two vectors at one time ({pd.Timestamp(int(table.times_us[row]) * 1000, tz='UTC')})")
    return table


def commit_user_vectors(
    repo_path: str | Path, model_version: str, table: EntityVectors, source: str, published: PublishedRowsReader | None = None
) -> UserPublishResult:
    """``publish_user_vectors``' commit, for a caller that holds ``publish_lock`` and has run
    ``require_active_version`` under it (the stream checks, pushes and records under one lock).
    A caller that commits again and again passes its own ``published`` reader, which reads
    each earlier publication once."""
    rows = (published or PublishedRowsReader(repo_path, "user")).rows(model_version)
    new = np.ones(len(table.ids), dtype=bool)
    if len(rows.ids):
        present, current = rows.in_effect(table.ids, table.times_us)
        new = ~(present & (current == table.vectors).all(axis=1))
    if not new.any():
        return UserPublishResult(None, 0, len(new))
    kept = EntityVectors(table.ids[new], table.vectors[new], table.times_us[new])
    latest = pd.Timestamp(int(kept.times_us.max()) * 1000, tz="UTC")
    pub = commit_publication(repo_path, "users", model_version, {"user": kept}, latest, source)
    return UserPublishResult(pub, int(new.sum()), int((~new).sum()))
