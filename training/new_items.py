"""How items without a training event (new items, served from content alone) enter a ranking.

Trained towers learn the warm items' co-occurrences, which a new item lacks, so a hybrid ranks
every new item below the warm ones (MovieLens temporal: recall@50 on new movies 0.000). Two
rules, per method, in ``[eval]``:

- ``cold_bias``: a constant added to every new item's score. It lives on the scale of one
  model's scores, and that scale moves between periods and models (MovieLens: 0.2 gave new
  movies 18% of the top 50 one period earlier and 43% in the reported window).
- ``cold_share``: each user's ranking gives new items a share of its slots equal to
  ``scale`` times the share of new items among the user's latest ``cold_share_window``
  history events (at most 1): a user who watched new releases lately is shown new items, one
  who did not is shown none. The share is read from the user's own history, not from a score,
  so it follows the period's demand for new items and not the model's scale (MovieLens: a
  user's recent share of new movies correlates 0.52-0.54 with the share among their targets,
  in both periods). Warm and new items keep the method's order within each group; the two
  lists are interleaved in proportion, so every prefix of the ranking (R@10 as much as R@50)
  holds about that share.

A method takes at most one of the two. Both are chosen on the protocol one period earlier
(``split.until``), never on test users (``scripts/cold_bias_sweep.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from learn_features.data.split import EvalUsers


def with_cold_bias(scores: np.ndarray, warm: np.ndarray, bias: float) -> np.ndarray:
    """``scores`` (users x items) with ``bias`` added to every item that is not ``warm`` (a copy)."""
    return scores + np.where(warm, 0.0, bias).astype(scores.dtype)


def recent_new_shares(histories: Sequence[np.ndarray], warm: np.ndarray, window: int) -> np.ndarray:
    """Per user, the share of new items among their last ``window`` history events (0 for none)."""
    new = ~warm
    return np.array([float(new[h[-window:]].mean()) if len(h) else 0.0 for h in histories])


def cold_shares(histories: Sequence[np.ndarray], warm: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Per user, the share of their ranking that new items take under ``eval.cold_share``:
    ``scale`` times their recent share (``recent_new_shares``), at most all of it."""
    return np.minimum(1.0, scale * recent_new_shares(histories, warm, window))


def with_cold_share(scores: np.ndarray, warm: np.ndarray, exclude: Sequence[np.ndarray], shares: np.ndarray) -> np.ndarray:
    """Scores (users x items, float64) whose descending order interleaves each user's new items
    with their warm ones so that a share ``shares[u]`` of every prefix is new.

    The output is a rank key, not a similarity: an item ranked r-th (from 0) within its group
    scores ``-(r + 0.5) / group share``, so the two groups advance at the rates of their shares.
    A group with share 0 follows the other whole. Excluded items are ranked last within their
    group, so they take no place from an item the ranking keeps."""
    new = ~warm
    out = np.empty(scores.shape, dtype=np.float64)
    n_items = scores.shape[1]
    for row, (excluded, share) in enumerate(zip(exclude, np.clip(shares, 0.0, 1.0))):
        values = scores[row].astype(np.float64)
        values[excluded] = -np.inf
        for group, part in ((new, share), (~new, 1.0 - share)):
            members = np.flatnonzero(group)
            ordered = members[np.argsort(-values[members], kind="stable")]
            ranks = np.arange(len(ordered), dtype=np.float64)
            out[row, ordered] = -((ranks + 0.5) / part) if part > 0 else -(n_items + 1.0 + ranks)
    return out


def _apply_bias(scores: np.ndarray, warm: np.ndarray, users: EvalUsers, bias: float, window: int) -> tuple[np.ndarray, float]:
    return with_cold_bias(scores, warm, bias), bias


def _apply_share(scores: np.ndarray, warm: np.ndarray, users: EvalUsers, scale: float, window: int) -> tuple[np.ndarray, float]:
    shares = cold_shares(users.histories, warm, scale, window)
    return with_cold_share(scores, warm, users.exclude, shares), float(shares.mean())


#: Each rule by name (``eval.cold_<name>``): (scores of ``users``, warm mask, users, the rule's
#: value, ``eval.cold_share_window``) -> (the scores under the rule, what the diagnostics
#: report of it: the bias, or the users' mean share). The evaluation and
#: ``scripts/cold_bias_sweep.py`` both apply rules through it, so a sweep ranks as the tables do.
RULES: dict[str, Callable[[np.ndarray, np.ndarray, EvalUsers, float, int], tuple[np.ndarray, float]]] = {
    "bias": _apply_bias,
    "share": _apply_share,
}
