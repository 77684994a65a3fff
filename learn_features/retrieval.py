"""User -> item retrieval metrics over the full item gallery.

Protocol: every user's past items (all events before their target window) are removed from the
ranking, since recommending what the user already consumed is not the task. The remaining
gallery is ranked by score: inner product of unit vectors (cosine) with an exact faiss
IndexFlatIP for embeddings (``rank_items``), or any dense score matrix (``rank_scores``, used for
the count-based baselines too; equal scores are broken by one fixed random order of the items,
so no method gains from the catalog's order). Targets are the user's distinct future positive
items that are not past items. For a target subset (e.g. cold items) only users with at least
one such target count, and the ranking stays over the full gallery: a cold item must beat warm
items to be found.

- Hit@K: 1 if any target is in the top K.
- Recall@K: share of the user's targets in the top K.
- NDCG@K: binary relevance, ideal DCG over min(#targets, K) hits.
Each is averaged over users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

DEFAULT_KS = (10, 50, 100, 200)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, for cosine scores; a zero row stays zero (it scores 0 against
    everything) rather than failing, since offline vectors may legitimately be empty.
    (``learn_features.store.serving.l2_normalise`` turns a zero row into NaN instead: a served
    vector must never pass for a real score of 0.)"""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def rank_items(user_vectors: np.ndarray, item_vectors: np.ndarray, exclude: Sequence[np.ndarray], depth: int) -> np.ndarray:
    """(U, depth) item indices, best first, with each user's excluded items removed."""
    index = faiss.IndexFlatIP(item_vectors.shape[1])
    index.add(np.ascontiguousarray(item_vectors, dtype=np.float32))
    longest = max((len(e) for e in exclude), default=0)
    search_depth = min(depth + longest, item_vectors.shape[0])
    _, found = index.search(np.ascontiguousarray(user_vectors, dtype=np.float32), search_depth)
    ranked = np.full((len(user_vectors), depth), -1, dtype=np.int64)
    for row, (candidates, excluded) in enumerate(zip(found, exclude)):
        kept = candidates[~np.isin(candidates, excluded)][:depth]
        ranked[row, : len(kept)] = kept
    return ranked


def rank_scores(scores: np.ndarray, exclude: Sequence[np.ndarray], depth: int) -> np.ndarray:
    """(U, depth) item indices by descending ``scores`` (U, n_items), excluded items removed.

    Equal scores are broken by one fixed random order of the catalog, so no method gains or
    loses from the catalog's own order (which often follows popularity or age)."""
    n_items = scores.shape[1]
    tie_order = np.random.default_rng(0).permutation(n_items)  # position k holds item tie_order[k]
    ranked = np.full((scores.shape[0], min(depth, n_items)), -1, dtype=np.int64)
    for row, excluded in enumerate(exclude):
        permuted = scores[row, tie_order].astype(np.float64)
        permuted[np.isin(tie_order, excluded)] = -np.inf
        order = np.argsort(-permuted, kind="stable")[: ranked.shape[1]]
        kept = order[np.isfinite(permuted[order])]
        ranked[row, : len(kept)] = tie_order[kept]
    return ranked


def score_rankings(ranked: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Hit/Recall/NDCG@K over users that have at least one target; adds ``users``."""
    per_user = per_user_scores(ranked, targets, ks)
    result = {name: float(values.mean()) if values.size else float("nan") for name, values in per_user.items()}
    result["users"] = int(next(iter(per_user.values())).size)
    return result


def per_user_scores(ranked: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    keep = [i for i, t in enumerate(targets) if len(t)]
    ranked = ranked[keep]
    sizes = np.array([len(targets[i]) for i in keep], dtype=np.float64)
    hits = np.stack([np.isin(ranked[r], targets[i]) for r, i in enumerate(keep)]) if keep else np.zeros((0, ranked.shape[1]), bool)
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        top = hits[:, :k]
        ideal = np.array([discounts[: int(min(s, k))].sum() for s in sizes])
        out[f"hit@{k}"] = top.any(axis=1).astype(np.float64)
        out[f"recall@{k}"] = top.sum(axis=1) / np.maximum(sizes, 1)
        out[f"ndcg@{k}"] = (top * discounts[:k]).sum(axis=1) / np.maximum(ideal, 1e-12)
    return out


def paired_bootstrap_interval(differences: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-user differences (method minus reference).

    The same users are resampled for both methods, so the spread between users that both share
    cancels: this, not two overlapping per-method intervals, says whether two methods differ.
    """
    return bootstrap_interval(np.asarray(differences, dtype=np.float64), rounds=rounds, seed=seed)


def bootstrap_interval(
    values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, rounds: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval over users: on a few dozen test users, a reader needs it."""
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(rounds, values.size))
    stats = np.array([statistic(values[d]) for d in draws])
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)
