"""User vectors as of any time: the inductive user tower over each user's history up to then.

The LEARN user tower needs no user id: a vector is a function of the user's last N events. So a
trained run gives every user, including users who arrived after training, a vector as of any
moment, computed from the events strictly *before* it (an impression at time t must never see
its own event or a later one).

- ``UserTower`` is a run's published towers plus the content of its catalog
  (``learn_features.trained_run.TrainedRun``), with item ids mapped to the run's catalog.
- ``snapshot_histories`` cuts every user's history out of an event table at a list of snapshot
  times. A schedule keeps a user's row at a snapshot only when their history changed since the
  previous snapshot: the vector would be the same, and a point-in-time join picks the latest
  earlier row anyway, so the unchanged rows would only cost time and space.
- ``after_each_event`` gives a user a row 1 µs after every distinct time at which they had an
  event: the freshest vector a point-in-time join can give, the one a streamed refresh would
  have served. Any fixed schedule misses the impressions that follow an event within the same
  period (MovieLens users rate dozens of films in one sitting).

Events on items the run's catalog does not hold have no content vector; they are left out of
the history and counted (``UserVectors.unknown_events``), never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from learn_features.trained_run import TrainedRun


@dataclass(frozen=True)
class UserVectors:
    """Vectors for the users that had at least one known event, and what was left out."""

    user_ids: list[str]
    vectors: np.ndarray  # (len(user_ids), dim) float32
    kept: np.ndarray  # for each vector, the position of its user in the input
    unknown_events: int  # events on items outside the run's catalog, left out of the histories
    unknown_examples: list[str]  # a few such item ids, for the message
    without_history: list[str]  # users none of whose events were usable


@dataclass
class UserTower:
    """A run's published user tower with its item inputs: histories of item ids in, user vectors out."""

    trained: TrainedRun
    history_len: int
    item_index: dict[str, int]

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> UserTower:
        trained = TrainedRun.load(run_dir, device)
        return cls(trained, int(trained.manifest["history_len"]), {item: i for i, item in enumerate(trained.item_ids)})

    @property
    def model_version(self) -> str:
        return self.trained.model_version

    def embed(self, user_ids: Sequence[str], histories: Sequence[Sequence[str]], progress: bool = False) -> UserVectors:
        """Each user's vector from their history (item ids, oldest first; the last N are used).
        A user id may appear several times (one row per snapshot time)."""
        kept, kept_histories, without, unknown = [], [], [], []
        for row, (user, history) in enumerate(zip(user_ids, histories)):
            indices = [self.item_index.get(str(item), -1) for item in history]
            unknown += [str(item) for item, index in zip(history, indices) if index < 0]
            known = np.array([i for i in indices if i >= 0], dtype=np.int64)[-self.history_len :]
            if len(known):
                kept.append(row)
                kept_histories.append(known)
            else:
                without.append(str(user))
        vectors = self.trained.user_vectors(kept_histories, progress=progress)
        return UserVectors([str(user_ids[i]) for i in kept], vectors, np.asarray(kept, dtype=np.int64), len(unknown),
                           sorted(set(unknown))[:5], without)


@dataclass(frozen=True)
class SnapshotRows:
    """One row per (user, snapshot time): the user's last events strictly before that time."""

    user_ids: list[str]
    times: list[pd.Timestamp]
    histories: list[list[str]]

    def __len__(self) -> int:
        return len(self.user_ids)


class _Sequences:
    """Every user's events in time order, ties by item id: the order of the offline split
    (``data.tables.assemble``) and of the stream's history table, so a vector is the same
    whichever path computed it."""

    def __init__(self, events: pd.DataFrame) -> None:
        ordered = events.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        self.users = ordered["user_id"].astype(str).to_numpy()
        self.items = ordered["item_id"].astype(str).to_numpy()
        self.stamps = ordered["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        bounds = np.flatnonzero(np.r_[True, self.users[1:] != self.users[:-1], True])
        self.spans = list(zip(bounds[:-1], bounds[1:]))

    def history(self, start: int, n_before: int, history_len: int) -> list[str]:
        return self.items[start + max(0, n_before - history_len) : start + n_before].tolist()


def snapshot_histories(events: pd.DataFrame, times: Sequence[pd.Timestamp], history_len: int, changed_only: bool = True) -> SnapshotRows:
    """Histories as of each of ``times`` (events strictly before it, last ``history_len``).

    ``events`` has ``user_id``, ``item_id`` and UTC ``timestamp``. With ``changed_only``, a
    user gets a row at a snapshot only if they have an event in the interval since the
    previous one (at the first snapshot: any event before it).
    """
    seq = _Sequences(events)
    rows = SnapshotRows([], [], [])
    previous = None
    for time in sorted(times):
        cut = pd.Timestamp(time).value
        for start, end in seq.spans:
            n_before = int(np.searchsorted(seq.stamps[start:end], cut, side="left"))
            if not n_before or (changed_only and previous is not None and seq.stamps[start + n_before - 1] < previous):
                continue
            rows.user_ids.append(str(seq.users[start]))
            rows.times.append(pd.Timestamp(time))
            rows.histories.append(seq.history(start, n_before, history_len))
        previous = cut
    return rows


def after_each_event(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, history_len: int) -> SnapshotRows:
    """A row at ``start`` for every user with an event before it, then one row 1 µs after every
    distinct time in [start, end) at which the user had an event, from the events up to it."""
    if end < start:
        raise LearnFeaturesError(f"--to {end.isoformat()} is before --from {start.isoformat()}")
    seq = _Sequences(events)
    rows = SnapshotRows([], [], [])
    first, last = pd.Timestamp(start).value, pd.Timestamp(end).value
    for begin, stop in seq.spans:
        stamps = seq.stamps[begin:stop]
        user = str(seq.users[begin])
        n_before = int(np.searchsorted(stamps, first, side="left"))
        if n_before:
            rows.user_ids.append(user)
            rows.times.append(pd.Timestamp(first, tz="UTC"))
            rows.histories.append(seq.history(begin, n_before, history_len))
        for moment in np.unique(stamps[(stamps >= first) & (stamps < last)]):
            upto = int(np.searchsorted(stamps, moment, side="right"))
            rows.user_ids.append(user)
            rows.times.append(pd.Timestamp(int(moment) + 1000, tz="UTC"))  # + 1 µs: what follows the event
            rows.histories.append(seq.history(begin, upto, history_len))
    return rows


def schedule(start: pd.Timestamp, end: pd.Timestamp, every: pd.Timedelta) -> list[pd.Timestamp]:
    """``start``, ``start + every``, ... up to and including ``end``."""
    if every <= pd.Timedelta(0):
        raise LearnFeaturesError(f"--every must be a positive interval, got {every}")
    if end < start:
        raise LearnFeaturesError(f"--to {end.isoformat()} is before --from {start.isoformat()}")
    return list(pd.date_range(start, end, freq=every))
