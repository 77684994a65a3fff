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
from typing import Any, Sequence

import numpy as np

from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemsPolicy
from learn_features.store.ledger import active_publication
from learn_features.store.published import read_published, version_items
from learn_features.store.serving import Metric, check_rule_metric, l2_normalise


@dataclass(frozen=True)
class Candidates:
    """Retrieved item ids, best first, with their similarity to the user.

    Under a new-item rule (``ItemIndex.policy``) the order is the rule's, so ``scores`` (the
    vectors' similarity, as ``LearnFeatureClient.score`` gives it) need not descend; ``new``
    flags the items the rule counts as new (all False without a rule).
    """

    item_ids: list[str]
    scores: np.ndarray  # (k,) float32
    new: np.ndarray  # (k,) bool


class ItemIndex:
    """Exact maximum-inner-product search over item vectors of one model version.

    With ``metric="cosine"`` items and queries are L2-normalised, so inner product is
    cosine similarity. Retrieve with the same metric the ranker scores with.

    With a ``policy`` (the version's new-item rule, ``learn_features.new_items``; what
    ``from_published`` reads) the warm and the new items are searched apart and a user's top k
    is ranked by the rule from their k best of each, which is exact: a trained hybrid scores
    every new item below the warm ones, and without the rule its candidates would hold no new
    item. A ``bias`` is on the scale of dot-product scores, so it is refused with cosine.
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        model_version: str,
        metric: Metric = "dot",
        policy: NewItemsPolicy | None = None,
    ) -> None:
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
        check_rule_metric(policy, metric, model_version)
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.model_version = model_version
        self.metric: Metric = metric
        self.policy = policy
        self.new = np.zeros(len(item_ids), dtype=bool) if policy is None else ~policy.warm(list(item_ids))
        # Without a rule one group holds every item; with one, the warm and the new items.
        self._groups: list[tuple[np.ndarray, Any]] = []
        for rows in ([np.arange(len(item_ids))] if policy is None else [np.flatnonzero(~self.new), np.flatnonzero(self.new)]):
            index = faiss.IndexFlatIP(matrix.shape[1])
            index.add(matrix[rows])
            self._groups.append((rows, index))
        self._dim = matrix.shape[1]

    @classmethod
    def from_published(
        cls, repo_path: str | Path, model_version: str | None = None, metric: Metric = "dot", apply_new_item_rule: bool = True
    ) -> ItemIndex:
        """Index the latest published vector of every item of ``model_version`` (default: active),
        with the new-item rule it was published with unless ``apply_new_item_rule`` is False."""
        if model_version is None:
            active = active_publication(repo_path)
            if active is None:
                raise LearnFeaturesError(f"{repo_path}: nothing published yet; run `learn-features publish`")
            model_version = active.model_version
        items = read_published(repo_path, "item", model_version)
        policy = version_items(repo_path, model_version).policy if apply_new_item_rule else None
        return cls(list(items.ids), items.vectors, model_version, metric, policy)

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self.item_ids)

    def search(self, queries: np.ndarray, k: int, histories: Sequence[Sequence[str]] | None = None) -> list[Candidates]:
        """Top-``k`` items for each row of ``queries`` (fewer when the catalog is smaller).

        ``histories``, each user's item ids oldest first, are read by a ``share`` rule alone (a
        user's share of new items in their latest events); other searches ignore them."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise LearnFeaturesError(f"queries have shape {q.shape}, expected (n, {self.dim})")
        if not np.isfinite(q).all():
            raise LearnFeaturesError(f"query row {int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])} has NaN or inf")
        if k <= 0:
            raise LearnFeaturesError(f"k must be positive, got {k}")
        if histories is not None and len(histories) != len(q):
            raise LearnFeaturesError(f"{len(histories)} histories for {len(q)} queries")
        if self.metric == "cosine":
            q = l2_normalise(q)
            if not np.isfinite(q).all():
                raise LearnFeaturesError(f"query row {int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])} is a zero vector")
        found = [(rows, *index.search(q, min(k, len(rows)))) for rows, index in self._groups if len(rows)]
        results = []
        for u in range(len(q)):
            hits = np.concatenate([rows[r[u][r[u] >= 0]] for rows, _, r in found]) if found else np.zeros(0, np.int64)
            scores = np.concatenate([s[u][r[u] >= 0] for _, s, r in found]) if found else np.zeros(0, np.float32)
            if self.policy is not None:
                order = self.policy.order(self.item_ids[hits].tolist(), scores, None if histories is None else histories[u])[:k]
                hits, scores = hits[order], scores[order]
            results.append(Candidates(self.item_ids[hits].tolist(), scores, self.new[hits]))
        return results

    def top_k(self, user_vector: np.ndarray, k: int, history: Sequence[str] | None = None) -> Candidates:
        """Top-``k`` items for one user vector (``history``: see ``search``)."""
        return self.search(np.asarray(user_vector, dtype=np.float32)[None, :], k, None if history is None else [history])[0]
