"""Paired cluster bootstrap over users for baseline-vs-LEARN metric differences.

Impressions of one user are correlated, so the resampling unit is the user: each resample
draws users with replacement and both models are scored on the *same* draw (paired), which
cancels the between-user variance that both models share. A draw of users is a vector of
multiplicities, so UAUC and WUAUC of a resample are multiplicity-weighted means of the
per-user AUCs (WUAUC also weighting by impressions) and global AUC is a row-weighted AUC:
none needs the rows to be copied or re-sorted, and all three read the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ranking.metrics import auc, grouped_auc, weighted_auc_rows

#: Rows of the (resamples x impressions) weight matrix scored at once; bounds memory to ~40 MB.
_MAX_WEIGHT_CELLS = 5_000_000


@dataclass(frozen=True)
class PairedDelta:
    """Point estimates on the sample, difference in percentage points, percentile interval."""

    base: float
    learn: float
    delta_pp: float
    ci_low_pp: float
    ci_high_pp: float
    n_resamples: int  # draws where the metric was defined for both models

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def user_multiplicities(n_users: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, U) counts of how often each user is drawn in each resample."""
    draws = rng.integers(0, n_users, size=(n_resamples, n_users))
    flat = draws + (np.arange(n_resamples)[:, None] * n_users)
    return np.bincount(flat.ravel(), minlength=n_resamples * n_users).reshape(n_resamples, n_users).astype(np.float64)


def _interval(deltas: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval in pp over the draws where the difference is defined (finite)."""
    ok = deltas[np.isfinite(deltas)]
    if ok.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return float(lo) * 100.0, float(hi) * 100.0, int(ok.size)


def _user_mean_deltas(mult: np.ndarray, user_delta: np.ndarray, user_weight: np.ndarray) -> np.ndarray:
    """Per-draw weighted mean of per-user differences; NaN for a draw with no valid user.

    A user drawn k times counts k times its weight, so one function gives UAUC (weight 1)
    and WUAUC (weight = the user's impressions) from the same multiplicity matrix.
    """
    drawn = mult * user_weight
    with np.errstate(invalid="ignore", divide="ignore"):
        return (drawn @ user_delta) / drawn.sum(axis=1)


def paired_bootstrap(
    labels: np.ndarray,
    base_scores: np.ndarray,
    learn_scores: np.ndarray,
    users: np.ndarray,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, PairedDelta | None]:
    """``{"auc": ..., "uauc": ..., "wuauc": ...}``; an entry is None when the metric is undefined
    on the sample (one class overall, or no user with both classes)."""
    out: dict[str, PairedDelta | None] = dict.fromkeys(("auc", "uauc", "wuauc"))
    codes, _ = pd.factorize(np.asarray(users), sort=True)
    n_users = int(codes.max()) + 1 if len(codes) else 0
    if n_users == 0:
        return out
    mult = user_multiplicities(n_users, n_resamples, np.random.default_rng(seed))

    g_base = grouped_auc(labels, base_scores, users, "bootstrap baseline")
    g_learn = grouped_auc(labels, learn_scores, users, "bootstrap LEARN")
    if g_base.uauc is not None and g_learn.uauc is not None:
        valid = g_base.valid  # same labels -> same users defined for both models
        m = mult[:, valid]
        user_delta = g_learn.user_auc[valid] - g_base.user_auc[valid]
        impressions = g_base.user_count[valid].astype(np.float64)
        # WUAUC is defined exactly when UAUC is: both average the same valid users.
        for metric, user_weight in (("uauc", np.ones_like(impressions)), ("wuauc", impressions)):
            base, learn = getattr(g_base, metric), getattr(g_learn, metric)
            lo, hi, used = _interval(_user_mean_deltas(m, user_delta, user_weight), confidence)
            out[metric] = PairedDelta(base, learn, (learn - base) * 100.0, lo, hi, used)

    a_base, a_learn = auc(labels, base_scores), auc(labels, learn_scores)
    if a_base is not None and a_learn is not None:
        chunk = max(1, _MAX_WEIGHT_CELLS // max(1, len(labels)))
        deltas = np.concatenate(
            [
                weighted_auc_rows(labels, learn_scores, mult[s : s + chunk][:, codes])
                - weighted_auc_rows(labels, base_scores, mult[s : s + chunk][:, codes])
                for s in range(0, n_resamples, chunk)
            ]
        )
        lo, hi, used = _interval(deltas, confidence)
        out["auc"] = PairedDelta(a_base, a_learn, (a_learn - a_base) * 100.0, lo, hi, used)
    return out
