"""The retrieval baselines a user already has, scored over the same users and gallery as LEARN.

- ``popularity``: each item's number of positive training events (under the temporal protocol,
  those before the user's target window, i.e. before the cut for test users).
- ``popularity_recent``: the same, counted only in a trailing window (``eval.recent_days``,
  default 365) before the cut (temporal) or before each user's target (leave-one-out). Trends
  weigh heavily when targets come long after the history; this row shows how much.
- ``item_knn``: item-to-item cosine over the training users' co-occurrences, keeping each
  item's ``k`` nearest neighbours; a user's score for an item is the summed similarity to the
  items of their history. It is the classic non-neural baseline that many neural recommenders
  fail to beat (Dacrema et al., RecSys 2019). ``k`` is chosen on the validation users.
- ``llm_frozen`` (the paper's Baseline-v1): no alignment at all. The LLM content vectors are
  centred on the mean of the warm (training) items, because raw decoder embeddings all point
  nearly the same way, then L2-normalised; a user is the normalised mean of their history's
  centred vectors.

Each baseline returns a dense (users, items) score matrix, ranked by ``rank_scores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from learn_features.data.incidence import incidence_matrix
from learn_features.data.split import EvalUsers, Split, TrainSequence
from learn_features.retrieval import unit_rows

KNN_NEIGHBOURS = (20, 50, 100, 200)  # the validation grid of item_knn's k
SECONDS_PER_DAY = 86_400


def popularity_scores(split: Split, users: EvalUsers) -> np.ndarray:
    """Counts of positive training events; under the temporal protocol only those before each
    user's target window (for test users that is everything before the cut)."""
    if split.cut_time is None:
        counts = split.positive_counts()
        return np.broadcast_to(counts, (len(users), len(counts)))
    return PositiveLog.of(split.train).window_counts(window_ends(split, users), None, len(split.item_ids))


def popularity_recent_scores(split: Split, users: EvalUsers, days: float) -> np.ndarray:
    """Counts in the ``days`` before the cut (temporal test users) or before each user's target window."""
    return PositiveLog.of(split.train).window_counts(window_ends(split, users), int(days * SECONDS_PER_DAY), len(split.item_ids))


def window_ends(split: Split, users: EvalUsers) -> np.ndarray:
    """Where each user's counting window ends: their target time, and never after the cut."""
    ends = np.asarray(users.target_times, dtype=np.int64)
    return ends if split.cut_time is None else np.minimum(ends, int(split.cut_time.timestamp()))


@dataclass
class PositiveLog:
    """Every positive training event as (time, item), sorted by time: windows are two searchsorteds."""

    times: np.ndarray
    items: np.ndarray

    @classmethod
    def of(cls, train: dict[str, TrainSequence]) -> "PositiveLog":
        times = np.concatenate([s.times[s.positive] for s in train.values()])
        items = np.concatenate([s.items[s.positive] for s in train.values()])
        order = np.argsort(times, kind="stable")
        return cls(times[order], items[order])

    def window_counts(self, ends: np.ndarray, span: int | None, n_items: int) -> np.ndarray:
        """(users, items) counts in [end - span, end) per user (span None: everything before end);
        users sharing an end share one count vector."""
        out = np.empty((len(ends), n_items))
        for end in np.unique(ends):
            lo = 0 if span is None else np.searchsorted(self.times, end - span, side="left")
            hi = np.searchsorted(self.times, end, side="left")
            out[ends == end] = np.bincount(self.items[lo:hi], minlength=n_items)
        return out


def cooccurrence_cosine(train: dict[str, TrainSequence], n_items: int) -> sp.csr_matrix:
    """(n_items, n_items) cosine similarity of items over training users, no self-loops.

    Built once per split: the validation grid of k (``top_k_neighbours``) only prunes it."""
    x = incidence_matrix([s.items for s in train.values()], n_items)
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    co = (x.T @ x).tocsr().astype(np.float64)
    co.setdiag(0.0)
    co.eliminate_zeros()
    co = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ co @ sp.diags(1.0 / np.maximum(norms, 1e-12))
    return co.tocsr()


def top_k_neighbours(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries (item_knn's neighbourhood), the rest dropped."""
    indptr, indices, data = [0], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        values, columns = matrix.data[start:end], matrix.indices[start:end]
        if len(values) > k:
            keep = np.argpartition(-values, k - 1)[:k]
            values, columns = values[keep], columns[keep]
        indices.append(columns)
        data.append(values)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0), np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
        shape=matrix.shape,
    )


def item_knn_scores(similarity: sp.csr_matrix, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Summed similarity of every item to the items of each history (each item counted once)."""
    h = incidence_matrix(histories, similarity.shape[0])
    return np.asarray((h @ similarity.T).todense())


def centred_content(content: np.ndarray, warm: np.ndarray) -> np.ndarray:
    """Content vectors minus the warm items' mean, L2-normalised (Baseline-v1's item vectors)."""
    centred = content - content[warm].mean(axis=0)
    return unit_rows(centred)


def mean_history_vectors(items: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    users = np.stack([items[h].mean(axis=0) for h in histories]) if histories else np.zeros((0, items.shape[1]))
    return unit_rows(users)
