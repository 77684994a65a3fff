"""The binary user-item matrix that count-based models start from.

Item-kNN's co-occurrences (``training.baselines``) and the hybrid's SVD start
(``learn_features.pch.id_init``) both read who touched what, each item counted once per user
however often they touched it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def incidence_matrix(item_lists: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """(len(item_lists), n_items) float matrix: 1 where row u's list holds the item, else 0."""
    distinct = [np.unique(items) for items in item_lists]
    rows = np.concatenate([np.full(len(d), u) for u, d in enumerate(distinct)]) if distinct else np.zeros(0, np.int64)
    cols = np.concatenate(distinct) if distinct else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(item_lists), n_items))
