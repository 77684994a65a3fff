"""Streaming refresh of user vectors: new events in, the affected users' vectors served at once.

``UserStream.ingest(events)``:

1. appends the events to the durable short-history table (``store.histories``, a SQLite file
   in the repo), in one transaction, so the history never lives in process memory alone;
2. recomputes every affected user's vector from their latest stored history with the run's
   user tower (``learn_features.user_vectors.UserTower``);
3. pushes the vectors through the user view's PushSource (``learn_user_push``), so the online
   store serves them at once, stamped with the push time;
4. records them as a ``users`` publication, so point-in-time training joins see what was
   served (a vector equal to the one already in effect adds no row), and counts it as
   loaded into this online store.

The history write comes first: if the push fails, a retry of the same batch finds the events
already stored (a re-sent event is a no-op) and recomputes the same vectors. The vectors equal,
bit for bit, an offline recompute of the same histories (``embed-users``), since both run the
same tower over the same ordered events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.data.tables import parse_timestamps, require_columns
from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.store.histories import HistoryStore
from learn_features.store.materialize import record_loaded, store_key
from learn_features.store.published import PublishedRowsReader
from learn_features.store.ledger import Publication, next_publish_time, publish_lock, require_active_version
from learn_features.store.push import push_frame
from learn_features.store.repo import USER_PUSH_SOURCE, open_applied_store, resolve_config, store_errors
from learn_features.store.user_publications import commit_user_vectors, user_vector_rows
from learn_features.user_vectors import UserTower

EVENT_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True)
class StreamResult:
    """One ingested batch: the users whose vectors were pushed, and what could not be used."""

    user_ids: list[str]
    vectors: np.ndarray
    pushed_at: pd.Timestamp | None
    publication: Publication | None
    unknown_events: int
    unknown_examples: list[str]
    without_history: list[str]


def validate_events(events: pd.DataFrame, source: str) -> pd.DataFrame:
    """``user_id``, ``item_id`` (strings) and UTC ``timestamp``, refused by name when unusable."""
    require_columns(events, EVENT_COLUMNS, source)
    if events.empty:
        raise LearnFeaturesError(f"{source}: no events")
    for column in ("user_id", "item_id"):
        empty = events[column].isna() | (events[column].astype(str).str.strip() == "")
        if empty.any():
            raise LearnFeaturesError(f"{source}: field {column!r} is empty in row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}")
    return pd.DataFrame(
        {
            "user_id": events["user_id"].astype(str).str.strip().to_numpy(),
            "item_id": events["item_id"].astype(str).str.strip().to_numpy(),
            "timestamp": parse_timestamps(events["timestamp"].reset_index(drop=True), source).to_numpy(),
        }
    )


class UserStream:
    """A run's user tower, a repo's history table and its online store, for streamed refreshes.

    Build one per process and reuse it: construction loads the towers and opens the store.
    """

    def __init__(self, run_dir: str | Path, repo_path: str | Path, feature_store_yaml: str | Path | None = None, device: str = "auto") -> None:
        self.repo_path = Path(repo_path)
        self.config_path = resolve_config(repo_path, feature_store_yaml)
        self.tower = UserTower.load(run_dir, device)
        self.histories = HistoryStore.in_repo(repo_path, self.tower.history_len)
        self.published = PublishedRowsReader(repo_path, "user")  # each earlier publication read once
        self._store = None

    def bootstrap(self, events: pd.DataFrame, source: str = "events") -> int:
        """Seed the history table with past events (e.g. the data the run was trained on); no push."""
        return len(self.histories.append(validate_events(events, source)))

    def ingest(self, events: pd.DataFrame, source: str = "events") -> StreamResult:
        """Store the events, recompute the affected users and push their vectors online (see module docstring)."""
        events = validate_events(events, source)
        require_active_version(self.repo_path, self.tower.model_version)
        users = self.histories.append(events)
        histories = self.histories.histories(users)
        vectors = self.tower.embed(list(histories), list(histories.values()))
        if not vectors.user_ids:
            return StreamResult([], vectors.vectors, None, None, vectors.unknown_events, vectors.unknown_examples, vectors.without_history)
        # Check, push, record and count as loaded under one lock (as ``push_item_embeddings``
        # does): a rollout landing in between would otherwise leave a served vector unrecorded.
        with publish_lock(self.repo_path):
            require_active_version(self.repo_path, self.tower.model_version, vectors.vectors.shape[1])
            pushed_at = next_publish_time(self.repo_path)
            times = np.full(len(vectors.user_ids), pushed_at.value // 1000, dtype=np.int64)
            rows = user_vector_rows(np.asarray(vectors.user_ids, dtype=object), vectors.vectors, times, "stream")
            store = self._open()
            with store_errors("pushing user vectors to the online store", self.config_path):
                from feast.data_source import PushMode

                table = EmbeddingTable("user", vectors.user_ids, vectors.vectors, pushed_at, self.tower.model_version)
                store.push(USER_PUSH_SOURCE, push_frame(table, pushed_at), to=PushMode.ONLINE)
            result = commit_user_vectors(self.repo_path, self.tower.model_version, rows, "stream", self.published)
            if result.publication is not None:
                record_loaded(self.repo_path, store_key(self.repo_path, self.config_path, store), [result.publication])
        return StreamResult(vectors.user_ids, vectors.vectors, pushed_at, result.publication, vectors.unknown_events,
                            vectors.unknown_examples, vectors.without_history)

    def _open(self):
        if self._store is None:
            self._store = open_applied_store(self.repo_path, self.config_path)
        return self._store

