"""Each row's user history as the LEARN user tower reads it: the last N events strictly before ``as_of``.

Two rankers' inputs average item vectors over that history: the frozen-LLM control arm
(the mean content vector of the history, ``ranking/controls.py``) and LightGBM's
item-history similarity (the mean LEARN item vector of the history, ``ranking/features.py``).
Both must be point-in-time: an event at or after a row's ``as_of`` never enters its mean.

Events are ordered per user by (time, item id), the order LEARN's split uses
(``learn_features.data.split``), so "the last N" picks the same events the tower would. The
means come from per-user cumulative sums, so any number of rows costs one ``searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class HistoryIndex:
    """All history events sorted by (user, time, item); ``item_ids`` aligned to that order."""

    user_codes: np.ndarray  # int64, sorted
    times: np.ndarray  # int64 ns, sorted within each user
    item_ids: np.ndarray  # object array of str
    users: pd.Index  # code -> user id

    @classmethod
    def build(cls, history: pd.DataFrame) -> HistoryIndex:
        events = history.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort")
        users = pd.Index(pd.unique(events["user_id"].astype(str)))
        return cls(
            user_codes=users.get_indexer(events["user_id"].astype(str)).astype(np.int64),
            times=events["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
            item_ids=events["item_id"].astype(str).to_numpy(dtype=object),
            users=users,
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def last_n_mean(
        self, user_ids: pd.Series, as_of: pd.Series, event_vectors: np.ndarray, event_present: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the mean of ``event_vectors`` over the present events among the user's last
        ``n`` events strictly before ``as_of``, and how many were averaged (0: no mean, zeros).

        ``event_vectors[k]`` belongs to event k of this index; ``event_present[k]`` is False for
        an event whose item has no vector (it still counts as one of the last ``n`` events, as it
        would in the tower's history window, but adds nothing to the mean).
        """
        codes = self.users.get_indexer(user_ids.astype(str)).astype(np.int64)
        t = as_of.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        # One sorted key per event: user code in the high part, time rank in the low part.
        all_times, inverse = np.unique(np.r_[self.times, t], return_inverse=True)
        stride = np.int64(len(all_times) + 1)
        key = self.user_codes * stride + inverse[: len(self.times)]
        row_key = np.where(codes >= 0, codes, 0) * stride + inverse[len(self.times) :]
        end = np.searchsorted(key, row_key, side="left")  # first event at or after as_of
        first = np.searchsorted(self.user_codes, np.where(codes >= 0, codes, 0), side="left")
        start = np.maximum(first, end - n)
        start = np.where(codes >= 0, start, end)  # a user with no history at all
        weights = event_present.astype(np.float64)
        sums = np.vstack([np.zeros((1, event_vectors.shape[1])), np.cumsum(event_vectors * weights[:, None], axis=0)])
        counts = np.r_[0.0, np.cumsum(weights)]
        n_used = counts[end] - counts[start]
        total = sums[end] - sums[start]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(n_used[:, None] > 0, total / np.maximum(n_used, 1.0)[:, None], 0.0)
        return means, n_used.astype(np.int64)
