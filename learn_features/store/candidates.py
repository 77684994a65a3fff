"""Candidate retrieval in process: top-K items for a user vector with faiss.

The index is built from the published item embeddings of one model version (the active
one by default), read straight from the offline Parquet rather than from the online
store, so it works with any online store: the offline evaluation, batch jobs, and stores
without vector search. Feast's SQLite vector search does not work here: Feast enables
sqlite-vec only on Python 3.10, the Python ``sqlite3`` module here lacks
``enable_load_extension``, and when it was forced on, repeated queries failed and results
came back misaligned. With a Milvus online store, ``LearnFeatureClient.candidates``
retrieves through Feast instead, and sees pushed items without a rebuild. A flat
inner-product index (faiss ``IndexFlatIP``) over a catalog of up to a few million
64-256-d vectors answers in milliseconds and is exact, so its results can be checked
against brute force.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from learn_features.errors import LearnFeaturesError
from learn_features.store.ledger import active_publication
from learn_features.store.published import read_published
from learn_features.store.serving import Metric, l2_normalise


@dataclass(frozen=True)
class Candidates:
    """Retrieved item ids, best first, with their scores."""

    item_ids: list[str]
    scores: np.ndarray  # (k,) float32


class ItemIndex:
    """Exact maximum-inner-product search over item vectors of one model version.

    With ``metric="cosine"`` items and queries are L2-normalised, so inner product is
    cosine similarity. Retrieve with the same metric the ranker scores with.
    """

    def __init__(self, item_ids: Sequence[str], vectors: np.ndarray, model_version: str, metric: Metric = "dot") -> None:
        import faiss

        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(item_ids):
            raise LearnFeaturesError(f"item vectors have shape {matrix.shape}, expected ({len(item_ids)}, dim)")
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad.size:
            raise LearnFeaturesError(f"item {item_ids[int(bad[0])]!r}: vector has NaN or inf")
        if metric == "cosine":
            zero = np.flatnonzero(np.linalg.norm(matrix, axis=1) == 0)
            if zero.size:
                raise LearnFeaturesError(f"item {item_ids[int(zero[0])]!r}: zero vector has no cosine similarity")
            matrix = l2_normalise(matrix)
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.model_version = model_version
        self.metric: Metric = metric
        self._index = faiss.IndexFlatIP(matrix.shape[1])
        self._index.add(matrix)

    @classmethod
    def from_published(cls, repo_path: str | Path, model_version: str | None = None, metric: Metric = "dot") -> ItemIndex:
        """Index the latest published vector of every item of ``model_version`` (default: active)."""
        if model_version is None:
            active = active_publication(repo_path)
            if active is None:
                raise LearnFeaturesError(f"{repo_path}: nothing published yet; run `learn-features publish`")
            model_version = active.model_version
        items = read_published(repo_path, "item", model_version)
        return cls(list(items.ids), items.vectors, model_version, metric)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> list[Candidates]:
        """Top-``k`` items for each row of ``queries`` (fewer when the catalog is smaller)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise LearnFeaturesError(f"queries have shape {q.shape}, expected (n, {self.dim})")
        if not np.isfinite(q).all():
            raise LearnFeaturesError(f"query row {int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])} has NaN or inf")
        if k <= 0:
            raise LearnFeaturesError(f"k must be positive, got {k}")
        if self.metric == "cosine":
            q = l2_normalise(q)
            if not np.isfinite(q).all():
                raise LearnFeaturesError(f"query row {int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])} is a zero vector")
        scores, rows = self._index.search(q, min(k, len(self)))
        return [Candidates(self.item_ids[r[r >= 0]].tolist(), s[r >= 0]) for s, r in zip(scores, rows)]

    def top_k(self, user_vector: np.ndarray, k: int) -> Candidates:
        """Top-``k`` items for one user vector."""
        return self.search(np.asarray(user_vector, dtype=np.float32)[None, :], k)[0]
