"""Did the towers learn? Collapse and popularity-bias measures of a method's vectors.

A contrastive two-tower model can "train" into vectors that all point the same way: the loss
sits barely below chance and retrieval degenerates. These numbers make that visible next to
the retrieval table:

- mean pairwise cosine of item (or user) vectors: near 1 means collapse;
- effective rank of the centred vectors (Roy & Vetterli 2007): exp of the entropy of the
  normalised singular values, between 1 (one direction) and the dimension;
- Spearman correlation between an item's mean score over the evaluated users and its training
  popularity: strongly negative means training pushed popular items down (the bias that the
  log-q correction removes), strongly positive means a popularity ranker in disguise.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from learn_features.retrieval import unit_rows

SAMPLE = 4000  # vectors used for the pairwise cosine: O(n^2) beyond that buys nothing


def mean_pairwise_cosine(vectors: np.ndarray, seed: int = 0) -> float | None:
    if len(vectors) < 2:
        return None
    rows = vectors
    if len(rows) > SAMPLE:
        rows = rows[np.random.default_rng(seed).choice(len(rows), SAMPLE, replace=False)]
    unit = unit_rows(rows)
    gram = unit @ unit.T
    n = len(unit)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def effective_rank(vectors: np.ndarray) -> float | None:
    if len(vectors) < 2:
        return None
    singular = np.linalg.svd(vectors - vectors.mean(axis=0), compute_uv=False)
    total = singular.sum()
    if total <= 0:
        return 1.0
    p = singular[singular > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def popularity_correlation(scores: np.ndarray, popularity: np.ndarray, items: np.ndarray) -> float | None:
    """Spearman of mean score over users vs popularity, over ``items`` (the warm ones)."""
    if len(items) < 3 or not len(scores):
        return None
    mean_score = scores[:, items].mean(axis=0)
    if np.ptp(mean_score) == 0 or np.ptp(popularity[items]) == 0:
        return None
    return float(spearmanr(mean_score, popularity[items]).statistic)


def vector_diagnostics(users: np.ndarray, items: np.ndarray, scores: np.ndarray, popularity: np.ndarray, warm: np.ndarray) -> dict:
    return {
        "dim": int(items.shape[1]),
        "item_mean_cosine": mean_pairwise_cosine(items),
        "item_effective_rank": effective_rank(items),
        "user_mean_cosine": mean_pairwise_cosine(users),
        "user_effective_rank": effective_rank(users),
        "popularity_spearman": popularity_correlation(scores, popularity, np.flatnonzero(warm)),
    }
