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

The rule is part of how a model ranks, so it travels with the vectors: ``embed`` records the
primary method's ``NewItemRule`` and its warm items in the run manifest, ``publish`` carries
both into the publication, and the retrieval stages (``store.candidates.ItemIndex``,
``LearnFeatureClient.candidates``) apply it as the tables did. It lives in the library, not in
``training``, because serving applies it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from learn_features.errors import LearnFeaturesError


def with_cold_bias(scores: np.ndarray, warm: np.ndarray, bias: float) -> np.ndarray:
    """``scores`` (users x items) with ``bias`` added to every item that is not ``warm`` (a copy)."""
    return scores + np.where(warm, 0.0, bias).astype(scores.dtype)


def recent_new_shares(histories: Sequence[np.ndarray], warm: np.ndarray, window: int) -> np.ndarray:
    """Per user, the share of new items among their last ``window`` history events (0 for none)."""
    new = ~warm
    return np.array([float(new[h[-window:]].mean()) if len(h) else 0.0 for h in histories])


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


def _apply_bias(scores: np.ndarray, warm: np.ndarray, exclude: Sequence[np.ndarray], recent: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
    return with_cold_bias(scores, warm, bias), bias


def _apply_share(scores: np.ndarray, warm: np.ndarray, exclude: Sequence[np.ndarray], recent: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    shares = np.minimum(1.0, scale * recent)
    return with_cold_share(scores, warm, exclude, shares), float(shares.mean())


#: Each rule by name (``eval.cold_<name>``): (scores, users x items; warm mask over the items;
#: per user the items to rank last; per user their recent share of new items
#: (``recent_new_shares``); the rule's value) -> (the scores under the rule, what the
#: diagnostics report of it: the bias, or the users' mean share). The evaluation, the sweep and
#: serving all apply rules through it, so each ranks as the tables do.
RULES: dict[str, Callable[[np.ndarray, np.ndarray, Sequence[np.ndarray], np.ndarray, float], tuple[np.ndarray, float]]] = {
    "bias": _apply_bias,
    "share": _apply_share,
}


@dataclass(frozen=True)
class NewItemRule:
    """One method's rule for new items: its name in ``RULES``, its value, and the history window
    a user's recent share is read over (used by ``share`` alone)."""

    rule: str
    value: float
    window: int = 10

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise LearnFeaturesError(f"new-item rule {self.rule!r} is not one of {sorted(RULES)}")
        if not np.isfinite(self.value) or self.window < 1:
            raise LearnFeaturesError(f"new-item rule {self.rule!r}: value {self.value!r} must be finite and window {self.window!r} >= 1")

    def apply(
        self, scores: np.ndarray, warm: np.ndarray, exclude: Sequence[np.ndarray], recent: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """``RULES[rule]`` over ``scores`` (see ``RULES``)."""
        return RULES[self.rule](scores, warm, exclude, recent, self.value)

    def record(self) -> dict[str, Any]:
        """What a run manifest and a publication record hold of it (``from_record`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, where: str) -> NewItemRule | None:
        """The rule a manifest or publication record holds, or None; ``where`` names the file."""
        if record is None:
            return None
        try:
            return cls(str(record["rule"]), float(record["value"]), int(record["window"]))
        except (KeyError, TypeError, ValueError, LearnFeaturesError) as exc:
            raise LearnFeaturesError(f"{where}: unreadable new_item_rule {record!r}: {exc}") from None


@dataclass(frozen=True)
class NewItemsPolicy:
    """A rule for new items with the items it counts as warm, by id: what retrieval over published
    vectors needs to rank as the tables did. An item not on the list, such as one ``embed-items``
    pushed after the run, is new."""

    rule: NewItemRule
    warm_ids: frozenset[str]

    def warm(self, item_ids: Sequence[str]) -> np.ndarray:
        """Per item, whether the rule counts it warm."""
        return np.fromiter((i in self.warm_ids for i in item_ids), dtype=bool, count=len(item_ids))

    def order(self, item_ids: Sequence[str], scores: np.ndarray, history: Sequence[str] | None = None) -> np.ndarray:
        """Positions of ``item_ids`` best first under the rule, given their similarity ``scores``
        to one user whose history (oldest first) is ``history``; a tie under the rule goes to
        the more similar item, then to the smaller id.

        Exact for the user's top k when ``item_ids`` hold at least their k best warm and k best
        new items: neither rule moves an item ahead of a better one of its own group."""
        if self.rule.rule == "share" and history is None:
            raise LearnFeaturesError(
                f"the new-item rule 'share' reads the user's latest {self.rule.window} history items; pass the user's history"
            )
        by_score = sorted(range(len(item_ids)), key=lambda r: (-float(scores[r]), str(item_ids[r])))
        ids = [item_ids[r] for r in by_score]
        past = [] if history is None else list(history)
        recent = recent_new_shares([np.arange(len(past))], self.warm(past), self.rule.window)
        keys, _ = self.rule.apply(np.asarray(scores, np.float64)[by_score][None, :], self.warm(ids), [np.zeros(0, np.int64)], recent)
        return np.asarray(by_score, dtype=np.int64)[np.argsort(-keys[0], kind="stable")]
