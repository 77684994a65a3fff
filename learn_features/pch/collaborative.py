"""The collaborative part of a hybrid's published vectors (``PCHConfig.collaborative_rank``).

Why it exists: on a small catalog the towers learn co-occurrence more slowly than a count
model gets it for free. Started from the training events' SVD (``model.id_init = "svd"``), the
MovieLens hybrid still ended level with item-kNN, while PureSVD itself, a user's history summed
and projected on the top right singular vectors (Cremonesi et al., RecSys 2010), kept item
lengths that follow popularity, which a cosine tower cannot. Adding the two scores won where
neither alone did (README, "A collaborative part"). So a hybrid can publish both:

- item ``i``: ``[tower(i), sqrt(w) * f_i]``, ``f_i`` the item's row of the right singular
  vectors of the training user-item matrix, rows scaled to mean square 1 over the items with a
  training event; an item without one (cold, or new since training) has ``f_i = 0`` and is
  served from its content alone, as it is by the ID residual;
- user ``u``: ``[tower(u), sqrt(w) * unit(sum of f_h over the history)]``, PureSVD's fold-in,
  cut to unit length so that ``w`` weighs it the same for every history length, and so that it
  follows each new event of the stream as the tower's part does.

Their dot product is the towers' score plus ``w`` times PureSVD's, one inner product that a
vector store, Feast and the ranker read as they read any LEARN vector. ``w`` is chosen on the
validation users from ``WEIGHTS`` after the towers are trained (``training.trainer``); 0 is in
the grid, so data where the sum does not help publishes the towers' scores unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learn_features.data.incidence import incidence_matrix
from learn_features.pch.id_init import at_mean_square, truncated_svd

#: The weights of the collaborative part compared on the validation users: 0 (off), then
#: doubling steps up to where PureSVD's score all but decides the ranking alone.
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
PAYLOAD_KEY = "collaborative"


@dataclass(frozen=True, eq=False)  # an array field: compare factors with numpy, not ==
class CollaborativePart:
    """Factors by ID slot (row 0, no slot: zeros) and the weight of their score."""

    factors: np.ndarray  # (1 + items with a slot, rank) float32
    weight: float

    @property
    def rank(self) -> int:
        return int(self.factors.shape[1])

    @classmethod
    def fit(cls, slots: np.ndarray, histories: Sequence[np.ndarray], rank: int, weight: float = 1.0) -> CollaborativePart:
        """Factors of the training users' ``histories`` (catalog indices); ``slots`` maps catalog
        index -> ID slot (0: none), as the hybrid's ID residual does."""
        _, vectors = truncated_svd(incidence_matrix(histories, len(slots)), rank)
        warm = np.flatnonzero(slots > 0)
        factors = np.zeros((int(slots.max(initial=0)) + 1, rank), np.float32)
        factors[slots[warm]] = at_mean_square(vectors[warm], 1.0)
        return cls(factors, weight)

    def with_weight(self, weight: float) -> CollaborativePart:
        return CollaborativePart(self.factors, weight)

    def items(self, slots: np.ndarray) -> np.ndarray:
        """(K, rank) parts of items with these ID slots."""
        return np.sqrt(self.weight) * self.factors[slots]

    def users(self, histories: Sequence[np.ndarray], slots: np.ndarray) -> np.ndarray:
        """(U, rank) parts of users after these histories (catalog indices; ``slots`` as in ``fit``)."""
        sums = np.stack([self.factors[slots[h]].sum(axis=0) for h in histories]) if len(histories) else np.zeros((0, self.rank))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return (np.sqrt(self.weight) * sums / np.maximum(norms, 1e-12)).astype(np.float32)

    def to_payload(self) -> dict[str, Any]:
        return {"factors": torch.as_tensor(self.factors), "weight": float(self.weight)}

    @classmethod
    def of_payload(cls, payload: dict[str, Any]) -> CollaborativePart | None:
        """The part a checkpoint carries, None for towers without one."""
        part = payload.get(PAYLOAD_KEY)
        return None if part is None else cls(part["factors"].numpy(), float(part["weight"]))


def stale(payload: dict[str, Any], rank: int) -> bool:
    """Whether a checkpoint's part differs from what a ``collaborative_rank`` of ``rank`` asks
    for: missing, of another rank, its weight chosen from another grid than ``WEIGHTS``, or
    present where the rank is 0 (none)."""
    part = CollaborativePart.of_payload(payload)
    if rank == 0 or part is None:
        return (rank == 0) != (part is None)
    return part.rank != rank or payload[PAYLOAD_KEY].get("grid") != list(WEIGHTS)


def vector_dim(payload: dict[str, Any]) -> int:
    """The length of the vectors a checkpoint publishes: the towers' output and its collaborative part."""
    part = payload.get(PAYLOAD_KEY)
    return int(payload["model_config"]["d_out"]) + (0 if part is None else int(part["factors"].shape[1]))
