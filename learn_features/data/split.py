"""Leak-free chronological split at one global cut time.

- Everything before the cut is "the past"; training sees only past events of training users.
- Test users are the users active on both sides of the cut. They are held out of training
  entirely: history = their last N events before the cut, target = their first M events at
  or after it.
- Validation users are a random share of the remaining users, also held out of training.
  Their past sequence is cut internally (target = its last min(M, len/2) events), so model
  selection never looks at anything after the global cut, nor at any test user.
- Cold-start items are items with no event before the cut: no model has seen their ids.

On MovieLens few users straddle any global cut (users rate in bursts), so the test set is
small; the evaluation reports the user count with every table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError


@dataclass
class SplitConfig:
    cut_time: str | None = None  # ISO-8601; wins over cut_quantile when set
    cut_quantile: float = 0.8  # of all interaction timestamps
    history_len: int = 80
    target_len: int = 40
    val_fraction: float = 0.15
    min_val_events: int = 4  # a validation user needs at least this many past events
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.cut_quantile < 1.0:
            raise LearnFeaturesError(f"split.cut_quantile must be in (0, 1), got {self.cut_quantile}")
        if self.history_len < 1 or self.target_len < 1:
            raise LearnFeaturesError("split.history_len and split.target_len must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise LearnFeaturesError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.min_val_events < 2:
            # A validation user's past is split into history and target, so it needs one of each.
            raise LearnFeaturesError(f"split.min_val_events must be >= 2, got {self.min_val_events}")


@dataclass
class EvalUsers:
    """Users scored by retrieval: history in, targets to find, past items excluded from ranking."""

    user_ids: list[str]
    histories: list[np.ndarray]
    targets: list[np.ndarray]
    exclude: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class Split:
    cut_time: pd.Timestamp
    item_ids: list[str]  # index -> item_id, in catalog order
    train: dict[str, np.ndarray]  # training user -> chronological past item indices
    val: EvalUsers
    test: EvalUsers
    profiles: dict[str, np.ndarray]  # every user with past events -> last N past item indices
    warm_items: np.ndarray  # bool per item: seen before the cut

    def summary(self) -> dict[str, object]:
        return {
            "cut_time": self.cut_time.isoformat(),
            "items": len(self.item_ids),
            "warm_items": int(self.warm_items.sum()),
            "train_users": len(self.train),
            "train_events": int(sum(len(s) for s in self.train.values())),
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


def resolve_cut_time(interactions: pd.DataFrame, config: SplitConfig) -> pd.Timestamp:
    if config.cut_time:
        return parse_time(config.cut_time, "split.cut_time")
    ordered = interactions["timestamp"].sort_values(kind="stable").reset_index(drop=True)
    if ordered.empty:
        raise LearnFeaturesError("no interactions: there is nothing to place a cut in")
    return ordered.iloc[int(config.cut_quantile * (len(ordered) - 1))]


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def split_dataset(interactions: pd.DataFrame, catalog: pd.DataFrame, config: SplitConfig) -> Split:
    """``interactions`` must be validated (see data.tables) and cover catalog items only."""
    cut = resolve_cut_time(interactions, config)
    item_ids = catalog["item_id"].tolist()
    index = pd.Series(np.arange(len(item_ids)), index=item_ids)
    events = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    item_index = index.loc[events["item_id"]].to_numpy()
    past_mask = (events["timestamp"] < cut).to_numpy()
    warm = np.zeros(len(item_ids), dtype=bool)
    warm[item_index[past_mask]] = True

    past: dict[str, np.ndarray] = {}
    future: dict[str, np.ndarray] = {}
    users = events["user_id"].to_numpy()
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        user = str(users[start])
        seq, mask = item_index[start:end], past_mask[start:end]
        if mask.any():
            past[user] = seq[mask]
        if (~mask).any():
            future[user] = seq[~mask]

    n, m = config.history_len, config.target_len
    test_ids = sorted(u for u in future if u in past)
    test = EvalUsers(test_ids, [], [], [])
    for user in test_ids:
        seen = np.unique(past[user])
        targets = _unique_in_order(future[user][:m])
        test.histories.append(past[user][-n:])
        test.targets.append(targets[~np.isin(targets, seen)])
        test.exclude.append(seen)
    keep = [i for i, t in enumerate(test.targets) if len(t)]
    test = EvalUsers(*[[getattr(test, f)[i] for i in keep] for f in ("user_ids", "histories", "targets", "exclude")])

    held_out = set(test_ids)
    rest = sorted(u for u in past if u not in held_out)
    rng = np.random.default_rng(config.seed)
    candidates = [u for u in rest if len(past[u]) >= config.min_val_events]
    n_val = int(round(config.val_fraction * len(rest)))
    val_ids = sorted(rng.choice(candidates, size=min(n_val, len(candidates)), replace=False).tolist())
    val = EvalUsers(val_ids, [], [], [])
    for user in val_ids:
        seq = past[user]
        k = min(m, len(seq) // 2)
        history_all = seq[:-k]
        seen = np.unique(history_all)
        targets = _unique_in_order(seq[-k:])
        val.histories.append(history_all[-n:])
        val.targets.append(targets[~np.isin(targets, seen)])
        val.exclude.append(seen)

    val_set = set(val_ids)
    train = {u: past[u] for u in rest if u not in val_set and len(past[u]) >= 2}
    if not train:
        raise LearnFeaturesError(f"no training users: no user has 2+ events before the cut {cut.isoformat()}")
    if not len(test):
        raise LearnFeaturesError(f"no test users: no user has events on both sides of the cut {cut.isoformat()}")
    profiles = {u: s[-n:] for u, s in past.items()}
    return Split(cut, item_ids, train, val, test, profiles, warm)
