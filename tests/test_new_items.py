"""The rules for new items (``learn_features.new_items``): a user's recent share of new items and the
ranking that gives them that share of every prefix."""

from __future__ import annotations

import numpy as np

from learn_features.retrieval import rank_scores
from learn_features.new_items import NewItemRule, recent_new_shares, with_cold_share

# 20 items: 0-14 warm, 15-19 new; every warm item scores above every new one, and within each
# group a lower index scores higher, so without a rule no new item reaches the top 15.
WARM = np.arange(20) < 15
SCORES = np.where(WARM, 2.0, 1.0)[None, :] - np.arange(20)[None, :] / 100


def ranking(shares: list[float], exclude: list[np.ndarray] | None = None) -> np.ndarray:
    exclude = exclude or [np.array([], dtype=np.int64)] * len(shares)
    scores = np.repeat(SCORES, len(shares), axis=0)
    return rank_scores(with_cold_share(scores, WARM, exclude, np.array(shares)), exclude, 20)


def test_every_prefix_holds_the_users_share_of_new_items_in_the_methods_order() -> None:
    (ranked,) = ranking([0.2])
    new = ~WARM[ranked]
    for prefix in (5, 10, 15):
        assert new[:prefix].sum() == prefix // 5, prefix  # one new item in every five slots
    assert ranked[new].tolist() == [15, 16, 17, 18, 19] and ranked[~new].tolist() == list(range(15))


def test_share_zero_keeps_new_items_after_every_warm_one_and_share_one_before() -> None:
    flipped = SCORES.copy()
    flipped[0, 19] = 10.0  # the best score of all, on a new item
    none, every = (rank_scores(with_cold_share(flipped, WARM, [np.array([], dtype=np.int64)], np.array([s])), [[]], 20)[0] for s in (0.0, 1.0))
    assert none.tolist() == [*range(15), 19, 15, 16, 17, 18]
    assert every.tolist() == [19, 15, 16, 17, 18, *range(15)]


def test_excluded_items_take_no_place_from_a_kept_one() -> None:
    """With half the slots new, the first two ranked are one new and one warm item even when the
    user's two best warm items are excluded."""
    (ranked,) = ranking([0.5], [np.array([0, 1])])
    assert sorted(ranked[:2].tolist()) == [2, 15] and -1 not in ranked[:18] and not np.isin([0, 1], ranked).any()


def test_the_recent_share_reads_the_last_window_events_of_each_history() -> None:
    histories = [np.array([15, 16, 0, 1, 2, 3]), np.array([0, 1, 15, 16]), np.array([], dtype=np.int64)]
    np.testing.assert_allclose(recent_new_shares(histories, WARM, 4), [0.0, 0.5, 0.0])
    np.testing.assert_allclose(recent_new_shares(histories, WARM, 6), [1 / 3, 0.5, 0.0])
    recent, exclude = recent_new_shares(histories, WARM, 6), [np.array([], dtype=np.int64)] * 3
    scores = np.repeat(SCORES, 3, axis=0)
    for scale, shares in ((3.0, [1.0, 1.0, 0.0]), (1.5, [0.5, 0.75, 0.0])):  # scaled, at most all of the ranking
        ranked = rank_scores(NewItemRule("share", scale, 6).apply(scores, WARM, exclude, recent)[0], exclude, 4)
        np.testing.assert_array_equal((~WARM[ranked]).sum(axis=1), np.array(shares) * 4)
        assert NewItemRule("share", scale, 6).apply(scores, WARM, exclude, recent)[1] == np.mean(shares)
