"""Ranking metrics: AUC, logloss, UAUC and WUAUC (the paper's Table 6 metrics).

Global AUC and logloss come from scikit-learn. UAUC/WUAUC are hand-written because they
are computed for thousands of users and, in the bootstrap, thousands of times: a Python
loop over users calling ``roc_auc_score`` is the reference the tests compare against, not
the implementation. The vectorised form sorts once by (user, score), gives tied scores the
average of their ranks (what ``roc_auc_score`` does) and turns every user's rank sum into
an AUC with the Mann-Whitney identity.

Every entry point validates its inputs and raises ``LearnFeaturesError`` rather than
returning a silent NaN: a NaN score, a label outside {0, 1} or mismatched lengths are
caller bugs or bad data, and a metric that quietly reads ``nan`` hides them in a report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from learn_features.errors import LearnFeaturesError


def check_labels(labels: np.ndarray | pd.Series, source: str) -> np.ndarray:
    """Return labels as int8 after checking each is exactly 0 or 1; name the first bad row."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise LearnFeaturesError(f"{source}: labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    numeric = pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isin(numeric, (0.0, 1.0)))
    if bad.size:
        row = int(bad[0])
        value = arr[row].item() if isinstance(arr[row], np.generic) else arr[row]
        raise LearnFeaturesError(f"{source}: row {row}: label {value!r} is not 0/1 ({bad.size} bad label(s) in total)")
    return numeric.astype(np.int8)


def check_scores(scores: np.ndarray | pd.Series, n: int, source: str) -> np.ndarray:
    """Return scores as float64 after checking length and finiteness; name the first bad row."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,):
        raise LearnFeaturesError(f"{source}: expected {n} scores, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        row = int(bad[0])
        raise LearnFeaturesError(
            f"{source}: row {row}: score is {arr[row]} ({bad.size} non-finite score(s)); "
            "the model produced NaN/inf, check its inputs for NaN features"
        )
    return arr


def auc(labels: np.ndarray, scores: np.ndarray, source: str = "auc") -> float | None:
    """Global ROC AUC, or ``None`` when only one class is present (AUC is undefined then)."""
    y = check_labels(labels, source)
    s = check_scores(scores, len(y), source)
    if y.min(initial=1) == y.max(initial=0):
        return None
    return float(roc_auc_score(y, s))


def logloss(labels: np.ndarray, probabilities: np.ndarray, source: str = "logloss") -> float:
    """Binary cross-entropy of predicted probabilities; defined even for a single class."""
    y = check_labels(labels, source)
    p = check_scores(probabilities, len(y), source)
    if len(y) == 0:
        raise LearnFeaturesError(f"{source}: no rows to score")
    if p.min() < 0.0 or p.max() > 1.0:
        raise LearnFeaturesError(f"{source}: logloss needs probabilities in [0, 1], got range [{p.min()}, {p.max()}]")
    return float(log_loss(y, p, labels=[0, 1]))


@dataclass(frozen=True)
class GroupAUC:
    """Per-user AUCs and their unweighted (UAUC) and impression-weighted (WUAUC) means.

    ``user_auc`` is NaN for users without both classes; those users are excluded from both
    means and counted in ``n_single_class`` so a report can say how many were dropped.
    """

    users: np.ndarray  # unique group keys, in code order
    user_auc: np.ndarray  # float64, NaN where undefined
    user_count: np.ndarray  # impressions per user
    n_single_class: int

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.user_auc)

    @property
    def n_users(self) -> int:
        return int(self.valid.sum())

    @property
    def uauc(self) -> float | None:
        v = self.valid
        return float(self.user_auc[v].mean()) if v.any() else None

    @property
    def wuauc(self) -> float | None:
        v = self.valid
        return float(np.average(self.user_auc[v], weights=self.user_count[v])) if v.any() else None


def average_ranks_by_group(codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score within its group, ties sharing their average rank.

    One lexsort by (group, score); tie runs are maximal blocks of equal (group, score) in
    sorted order, and each run's members get the mean of the positions they span.
    """
    n = len(codes)
    order = np.lexsort((scores, codes))
    c, s = codes[order], scores[order]
    pos = np.arange(n, dtype=np.float64)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = c[1:] != c[:-1]
    new_run = new_group.copy()
    new_run[1:] |= s[1:] != s[:-1]
    run_id = np.cumsum(new_run) - 1
    run_start = pos[new_run]
    run_end = np.append(run_start[1:], n) - 1  # inclusive
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0.0))
    ranks_sorted = (run_start[run_id] + run_end[run_id]) / 2.0 - group_start + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def grouped_auc(
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    users: np.ndarray | pd.Series,
    source: str = "uauc",
) -> GroupAUC:
    """Per-user AUC for every user, vectorised (see module docstring)."""
    y = check_labels(labels, source)
    s = check_scores(scores, len(y), source)
    u = np.asarray(users)
    if u.shape != y.shape:
        raise LearnFeaturesError(f"{source}: expected {len(y)} user ids, got shape {u.shape}")
    if pd.isna(u).any():
        raise LearnFeaturesError(f"{source}: row {int(np.flatnonzero(pd.isna(u))[0])}: user id is missing")
    codes, uniques = pd.factorize(u, sort=True)
    n_groups = len(uniques)
    ranks = average_ranks_by_group(codes, s)
    n = np.bincount(codes, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(codes, weights=y, minlength=n_groups)
    n_neg = n - n_pos
    rank_sum_pos = np.bincount(codes, weights=ranks * y, minlength=n_groups)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        user_auc = np.where(defined, (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg), np.nan)
    return GroupAUC(
        users=np.asarray(uniques),
        user_auc=user_auc,
        user_count=n.astype(np.int64),
        n_single_class=int((~defined).sum()),
    )


def weighted_auc_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC under each row of ``weights`` (shape (B, n)); NaN where a class has zero weight.

    This is ``roc_auc_score(labels, scores, sample_weight=w)`` for B weight vectors with one
    shared sort: a cluster bootstrap over users is exactly a re-weighting of rows by how often
    their user was drawn, so the bootstrap of global AUC costs one sort, not B.
    """
    y = check_labels(labels, "weighted_auc")
    s = check_scores(scores, len(y), "weighted_auc")
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(y):
        raise LearnFeaturesError(f"weighted_auc: weights have {w.shape[1]} columns for {len(y)} rows")
    if len(y) == 0:
        return np.full(w.shape[0], np.nan)
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted, w_sorted = s[order], y[order].astype(np.float64), w[:, order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    wp = np.add.reduceat(w_sorted * y_sorted, starts, axis=1)  # positive weight per tie block
    wn = np.add.reduceat(w_sorted * (1.0 - y_sorted), starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    total_p, total_n = wp.sum(axis=1), wn.sum(axis=1)
    numer = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((total_p > 0) & (total_n > 0), numer / (total_p * total_n), np.nan)
