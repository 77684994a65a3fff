"""How the hybrid's ID residual starts (``PCHConfig.id_init``).

- ``zeros`` (the library default): the hybrid starts as the pure content model, and each warm
  item's residual grows only as far as the gradients take it.
- ``svd``: each warm item's residual starts at its factor in a truncated SVD of the training
  user-item matrix ``X ~ U S V^T`` (the item side of the factorisation, ``V * sqrt(S)``),
  rescaled to the content projection's scale. This is A-LLMRec's move (KDD 2024: start from
  a collaborative model's item embeddings, then align) done inside the towers' own input.

Why ``svd`` exists: on a small catalog with few users (MovieLens ml-latest-small, 381 to 610
training users) the towers learn co-occurrence far more slowly than a count-based model gets
it for free: item-kNN kept a lead the towers never closed in 30 epochs. Started from the
SVD factors, the towers read that structure from the first step: with uniform attention a
user's state is about the mean of their history's factors and an item's its own factor,
whose dot product is a factorisation model's score, and training refines it. Cold items are
untouched: they own no row (slot 0), so their vectors are still the content path's alone.

The rows are scaled so that their mean squared norm is ``d_model``, the squared norm of a
LayerNorm output (the content projection's last step), so neither part of a warm item's input
drowns the other. A rank above what the matrix has (``min(users, items) - 1``) leaves the
remaining coordinates at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from learn_features.data.incidence import incidence_matrix


def truncated_svd(matrix: sp.csr_matrix, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest singular values of ``matrix`` and its right singular vectors
    (items, rank), zero-padded past what the matrix has (``min(shape) - 1`` for ARPACK).

    ARPACK's start vector is seeded, so the same matrix gives the same factors on every run
    and every rank of a distributed job.
    """
    k = min(rank, min(matrix.shape) - 1)
    singular, vectors = np.zeros(rank), np.zeros((matrix.shape[1], rank))
    if k < 1:
        return singular, vectors
    start = np.random.default_rng(0).uniform(-1.0, 1.0, min(matrix.shape))
    _, singular[:k], vt = svds(matrix.astype(np.float64), k=k, v0=start)
    vectors[:, :k] = vt.T
    return singular, vectors


def at_mean_square(rows: np.ndarray, target: float) -> np.ndarray:
    """``rows`` scaled so that their mean squared norm is ``target`` (unchanged when they are all
    zero): how factors of any rank are put on the scale of what they are added to, here and in
    the collaborative part (``pch.collaborative``)."""
    mean_square = float((rows**2).sum(axis=1).mean()) if len(rows) else 0.0
    return rows * np.sqrt(target / mean_square) if mean_square > 0 else rows


def svd_item_factors(matrix: sp.csr_matrix, rank: int) -> np.ndarray:
    """(items, rank) item factors ``V * sqrt(S)`` of ``matrix ~ U S V^T``, zero-padded past its rank."""
    singular, vectors = truncated_svd(matrix, rank)
    return vectors * np.sqrt(singular)[None, :]


def svd_init(table: torch.Tensor, slots: np.ndarray, histories: Sequence[np.ndarray]) -> None:
    """Write each warm item's SVD factor into its row of the ID ``table`` (see the module docstring).

    ``slots`` maps catalog index -> row (0: no row, a cold item), row 0 stays as it is;
    ``histories`` holds each training user's items.
    """
    warm = np.flatnonzero(slots > 0)
    d_model = table.shape[1]
    factors = at_mean_square(svd_item_factors(incidence_matrix(histories, len(slots)), d_model)[warm], d_model)
    with torch.no_grad():
        table[torch.as_tensor(slots[warm], device=table.device)] = torch.as_tensor(factors, dtype=table.dtype, device=table.device)


def _keep_zeros(table: torch.Tensor, slots: np.ndarray, histories: Sequence[np.ndarray]) -> None:
    """``HybridInput`` already starts its table at zero."""


#: ``PCHConfig.id_init`` -> what writes the start of the ID table (table, slots, training users' items).
ID_INITS: dict[str, Callable[[torch.Tensor, np.ndarray, Sequence[np.ndarray]], None]] = {
    "zeros": _keep_zeros,
    "svd": svd_init,
}
