"""Leak-free evaluation protocols: who trains on what, and which events each evaluated user must find.

Two protocols, chosen by ``split.protocol``:

``temporal`` (default): one global cut time T.
- Training sees every event before T, of every user (held-out windows of validation users aside,
  see below). Nothing at or after T ever reaches training.
- Test users are all users with events at or after T, new users included: the towers are
  inductive and need no user id. A test user's post-cut events are halved: the first half joins
  the history, and the target window is the next ``target_len`` events after it. History is the
  last ``history_len`` events before the window, pre- and post-cut alike; targets are the
  window's distinct positive items the user had not interacted with before the window. So a
  user with pre-cut events and one post-cut event has that event as target, and a new user with
  two post-cut events has one as history and one as target.
- Validation (model selection): ``val_fraction`` of the users with at least ``min_val_events``
  pre-cut events hold out the tail of their pre-cut sequence, built like a test window (target
  window after the first half, at most ``target_len`` events). Everything from the window on is
  removed from training, so the validation targets never train; the earlier part still does.

``leave_one_out``: the literature's protocol (SASRec, RecFormer, LEARN's own code). Per user, in
sequence order: the last positive event is the test target, the positive event before it is the
validation target, and everything before the validation target trains. Users with fewer than
two positives (or no event before them) only train. Order is all it needs, so data without
timestamps works. It leaks across the global timeline (a user's training events can come after
another user's test target), which the temporal protocol exists to avoid.

In both, history excludes nothing (every event is context) while targets, in training and in
evaluation, are positive events only (``positive`` column, see ``data.positive``). Items the
user interacted with before the target window are excluded from the ranking: recommending what
the user already consumed is not the task. Cold-start items are items with no training event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError

Protocol = Literal["temporal", "leave_one_out"]
PROTOCOLS: tuple[str, ...] = ("temporal", "leave_one_out")


@dataclass
class SplitConfig:
    protocols: list[str] = field(default_factory=lambda: ["temporal"])  # the first one is what `embed` publishes
    cut_time: str | None = None  # ISO-8601; wins over cut_quantile when set (temporal)
    cut_quantile: float = 0.8  # of all interaction timestamps (temporal)
    # ISO-8601: the split sees only the events before this time and the catalog items that had
    # one by then (``events_until``): the same protocol one period earlier, whose new items are known
    # before the real test window opens, to choose settings such as eval.cold_bias on.
    until: str | None = None
    history_len: int = 80
    target_len: int = 40
    val_fraction: float = 0.15  # temporal: share of users with a held-out validation window
    min_val_events: int = 4  # temporal: a validation user needs at least this many pre-cut events
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise LearnFeaturesError(f"split.protocols must be distinct values of {list(PROTOCOLS)}, got {self.protocols}")
        if not 0.0 < self.cut_quantile < 1.0:
            raise LearnFeaturesError(f"split.cut_quantile must be in (0, 1), got {self.cut_quantile}")
        if self.history_len < 1 or self.target_len < 1:
            raise LearnFeaturesError("split.history_len and split.target_len must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise LearnFeaturesError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.until is not None:
            parse_time(self.until, "split.until")  # refused when the config loads, not after a job
        if self.min_val_events < 2:
            # A validation user's past is split into history and target, so it needs one of each.
            raise LearnFeaturesError(f"split.min_val_events must be >= 2, got {self.min_val_events}")

    @property
    def primary_protocol(self) -> str:
        return self.protocols[0]


@dataclass
class TrainSequence:
    """One user's events in order (in a split: their training events): item indices, which
    are positives, and their times."""

    items: np.ndarray  # int64 catalog indices
    positive: np.ndarray  # bool
    times: np.ndarray  # int64 unix seconds (0 when the data has order only)

    def __len__(self) -> int:
        return len(self.items)

    def part(self, start: int = 0, end: int | None = None) -> TrainSequence:
        return TrainSequence(self.items[start:end], self.positive[start:end], self.times[start:end])


@dataclass
class EvalUsers:
    """Users scored by retrieval: history in, targets to find, past items excluded from ranking."""

    user_ids: list[str] = field(default_factory=list)
    histories: list[np.ndarray] = field(default_factory=list)  # last N events before the target window
    targets: list[np.ndarray] = field(default_factory=list)  # distinct positive items of the window, new to the user
    exclude: list[np.ndarray] = field(default_factory=list)  # every item the user touched before the window
    target_times: list[int] = field(default_factory=list)  # unix seconds of the window's first event

    def __len__(self) -> int:
        return len(self.user_ids)

    def add(self, user: str, before: np.ndarray, window: np.ndarray, window_positive: np.ndarray, time: int, history_len: int) -> bool:
        """Add ``user`` if the window holds a positive item new to them; returns whether it did."""
        seen = np.unique(before)
        targets = _unique_in_order(window[window_positive])
        targets = targets[~np.isin(targets, seen)]
        if not len(before) or not len(targets):
            return False
        self.user_ids.append(user)
        self.histories.append(before[-history_len:])
        self.targets.append(targets)
        self.exclude.append(seen)
        self.target_times.append(int(time))
        return True


@dataclass
class Split:
    protocol: str
    cut_time: pd.Timestamp | None  # temporal: T; leave-one-out: None
    item_ids: list[str]  # index -> item_id, in catalog order
    train: dict[str, TrainSequence]  # user -> training events (a lone event gives no window, but counts for popularity and ids)
    val: EvalUsers
    test: EvalUsers
    profiles: dict[str, np.ndarray]  # every user with training-period events -> last N of them (what `embed` publishes)
    warm_items: np.ndarray  # bool per item: has a training event
    data_end: pd.Timestamp | None  # the latest time the trained model knows of (temporal: T)

    def positive_counts(self) -> np.ndarray:
        """Each item's number of positive training events (float64, catalog order): the
        popularity baseline, and the share of positives the towers' log-q correction uses."""
        counts = np.zeros(len(self.item_ids), dtype=np.float64)
        for seq in self.train.values():
            np.add.at(counts, seq.items[seq.positive], 1.0)
        return counts

    def summary(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "cut_time": None if self.cut_time is None else self.cut_time.isoformat(),
            "items": len(self.item_ids),
            "warm_items": int(self.warm_items.sum()),
            "train_users": len(self.train),
            "train_events": int(sum(len(s) for s in self.train.values())),
            "train_positives": int(sum(int(s.positive.sum()) for s in self.train.values())),
            "val_users": len(self.val),
            "test_users": len(self.test),
            "test_targets": int(sum(len(t) for t in self.test.targets)),
            "test_cold_targets": int(sum((~self.warm_items[t]).sum() for t in self.test.targets)),
        }


def parse_time(value: str, field: str) -> pd.Timestamp:
    """An ISO-8601 time from config ``field`` as UTC; naive means UTC, as in the data tables.

    Shared by every configured time (the LEARN cut, the ranking periods) so that one string
    names the same instant everywhere.
    """
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise LearnFeaturesError(f"{field} {value!r} is not an ISO-8601 time: {exc}") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def events_until(interactions: pd.DataFrame, until: str | None, source: str) -> pd.DataFrame:
    """The events before ``until`` (``split.until``; all of them when None).

    Backtesting one period earlier is only honest if the earlier period looks as the real one
    did: its catalog is filtered to the items seen by then as well (``catalog_until``), since a
    catalog that already holds every later item would rank films not yet released among the
    "new" ones.
    """
    if until is None:
        return interactions
    if "timestamp" not in interactions or interactions["timestamp"].isna().any():
        raise LearnFeaturesError(f"{source}: split.until keeps the events before a time, but these interactions have no timestamps")
    kept = interactions[interactions["timestamp"] < parse_time(until, "split.until")].reset_index(drop=True)
    if kept.empty:
        raise LearnFeaturesError(f"{source}: no interaction before split.until = {until!r}")
    return kept


def catalog_until(catalog: pd.DataFrame | None, interactions: pd.DataFrame, until: str | None) -> pd.DataFrame | None:
    """The catalog items with an event in ``interactions`` when ``until`` is set, in catalog order."""
    if until is None or catalog is None:
        return catalog
    return catalog[catalog["item_id"].isin(interactions["item_id"])].reset_index(drop=True)


def resolve_cut_time(interactions: pd.DataFrame, config: SplitConfig) -> pd.Timestamp:
    if config.cut_time:
        return parse_time(config.cut_time, "split.cut_time")
    if "timestamp" not in interactions or interactions["timestamp"].isna().all():
        raise LearnFeaturesError("the temporal protocol needs interaction timestamps; this data has order only (use split.protocols = [\"leave_one_out\"])")
    ordered = interactions["timestamp"].sort_values(kind="stable").reset_index(drop=True)
    if ordered.empty:
        raise LearnFeaturesError("no interactions: there is nothing to place a cut in")
    return ordered.iloc[int(config.cut_quantile * (len(ordered) - 1))]


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _user_events(interactions: pd.DataFrame, item_ids: list[str]) -> dict[str, TrainSequence]:
    """Each user's events in sequence order: the ``order`` column of ``data.tables.assemble``,
    else time then item id."""
    index = pd.Series(np.arange(len(item_ids)), index=item_ids)
    keys = ["user_id", "order"] if "order" in interactions else ["user_id", "timestamp", "item_id"]
    events = interactions.sort_values(keys, kind="stable")
    items = index.loc[events["item_id"]].to_numpy()
    positive = events["positive"].to_numpy(dtype=bool) if "positive" in events else np.ones(len(events), bool)
    if "timestamp" in events and events["timestamp"].notna().all():
        times = events["timestamp"].to_numpy(dtype="datetime64[s]").astype(np.int64)
    else:
        times = np.zeros(len(events), np.int64)
    users = events["user_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    return {
        str(users[s]): TrainSequence(items[s:e], positive[s:e], times[s:e]) for s, e in zip(bounds[:-1], bounds[1:])
    }


def _window_start(n_before: int, n_after: int) -> int:
    """Where the target window starts: after the first half of the events being evaluated."""
    return n_before + n_after // 2


def split_temporal(interactions: pd.DataFrame, catalog: pd.DataFrame, config: SplitConfig) -> Split:
    cut = resolve_cut_time(interactions, config)
    item_ids = catalog["item_id"].tolist()
    per_user = _user_events(interactions, item_ids)
    cut_s = int(cut.timestamp())
    n, m = config.history_len, config.target_len

    test = EvalUsers()
    past: dict[str, TrainSequence] = {}
    for user in sorted(per_user):
        ev = per_user[user]
        n_past = int(np.searchsorted(ev.times, cut_s, side="left"))  # events are time-ordered
        if n_past:
            past[user] = ev.part(0, n_past)
        if n_past < len(ev.items):
            s = _window_start(n_past, len(ev.items) - n_past)
            test.add(user, ev.items[:s], ev.items[s : s + m], ev.positive[s : s + m], ev.times[s], n)

    rng = np.random.default_rng(config.seed)
    candidates = [u for u in sorted(past) if len(past[u].items) >= config.min_val_events]
    n_val = min(int(round(config.val_fraction * len(past))), len(candidates))
    val_ids = sorted(rng.choice(candidates, size=n_val, replace=False).tolist()) if n_val else []
    val = EvalUsers()
    train: dict[str, TrainSequence] = {}
    held_from: dict[str, int] = {}
    for user in val_ids:
        ev = past[user]
        s = max(_window_start(0, len(ev.items)), len(ev.items) - m)
        if val.add(user, ev.items[:s], ev.items[s : s + m], ev.positive[s : s + m], ev.times[s], n):
            held_from[user] = s
    for user, ev in past.items():
        seq = ev.part(0, held_from.get(user))
        if len(seq):
            train[user] = seq
    _require_users(train, test, f"the cut {cut.isoformat()}")
    warm = _warm(train, len(item_ids))
    profiles = {u: ev.items[-n:] for u, ev in past.items()}
    return Split("temporal", cut, item_ids, train, val, test, profiles, warm, cut)


def split_leave_one_out(interactions: pd.DataFrame, catalog: pd.DataFrame, config: SplitConfig) -> Split:
    item_ids = catalog["item_id"].tolist()
    per_user = _user_events(interactions, item_ids)
    n = config.history_len
    train: dict[str, TrainSequence] = {}
    val, test = EvalUsers(), EvalUsers()
    for user in sorted(per_user):
        ev = per_user[user]
        positions = np.flatnonzero(ev.positive)
        keep = len(ev.items)
        if len(positions) >= 2 and positions[-2] >= 1:
            t, v = int(positions[-1]), int(positions[-2])
            single = np.ones(1, bool)
            in_test = test.add(user, ev.items[:t], ev.items[t : t + 1], single, ev.times[t], n)
            in_val = val.add(user, ev.items[:v], ev.items[v : v + 1], single, ev.times[v], n)
            if in_test or in_val:
                keep = v  # nothing from the validation target on trains
        if keep:
            train[user] = ev.part(0, keep)
    _require_users(train, test, "leave-one-out")
    warm = _warm(train, len(item_ids))
    profiles = {u: ev.items[-n:] for u, ev in per_user.items()}
    has_time = "timestamp" in interactions and interactions["timestamp"].notna().all()
    # Just after the last event: the published vectors, computed from every event, are stamped
    # after all of them, so a point-in-time join never gives an event a vector that saw it.
    data_end = interactions["timestamp"].max() + pd.Timedelta(microseconds=1) if has_time else None
    return Split("leave_one_out", None, item_ids, train, val, test, profiles, warm, data_end)


def _require_users(train: dict[str, TrainSequence], test: EvalUsers, where: str) -> None:
    if not any(len(seq) >= 2 for seq in train.values()):
        raise LearnFeaturesError(f"no training users: no user has 2+ training events ({where})")
    if not len(test):
        raise LearnFeaturesError(f"no test users: no user has a history and a new positive item to find ({where})")


def _warm(train: dict[str, TrainSequence], n_items: int) -> np.ndarray:
    warm = np.zeros(n_items, dtype=bool)
    for seq in train.values():
        warm[seq.items] = True
    return warm


def split_dataset(interactions: pd.DataFrame, catalog: pd.DataFrame, config: SplitConfig, protocol: str | None = None) -> Split:
    """``interactions`` must be validated (see data.tables) and cover catalog items only."""
    chosen = protocol or config.primary_protocol
    if chosen == "temporal":
        return split_temporal(interactions, catalog, config)
    return split_leave_one_out(interactions, catalog, config)
