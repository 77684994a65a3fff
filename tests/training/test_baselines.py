"""The retrieval baselines, tie-free ranking and the paired bootstrap, against hand computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import clustered_split, load_script
from learn_features.data.split import SplitConfig, split_dataset
from learn_features.data.tables import validate_catalog, validate_interactions
from learn_features.retrieval import bootstrap_interval, paired_bootstrap_interval, rank_scores, unit_rows
from training import baselines
from training.diagnostics import effective_rank, mean_pairwise_cosine, popularity_correlation
from training.trainer import validation_score_of_scores

DAY = 86_400


def tiny_split(protocol: str = "temporal"):
    """Four users over items a-e. Cut at day 100; 'z' is a test user with one post-cut window."""
    rows = [
        ("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 90),
        ("u2", "a", 30), ("u2", "b", 95),
        ("u3", "b", 96), ("u3", "c", 97), ("u3", "d", 98),
        ("z", "a", 99), ("z", "e", 150), ("z", "d", 160),
    ]  # fmt: skip
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "day"])
    raw["timestamp"] = raw["day"] * DAY
    raw["rating"] = [5, 5, 1, 5, 5, 5, 5, 5, 5, 5, 5]
    interactions = validate_interactions(raw.drop(columns="day"), "r").assign(positive=lambda d: d["rating"] >= 4)
    catalog = validate_catalog(pd.DataFrame({"item_id": list("abcde"), "t": list("abcde")}), "c")
    cut = pd.Timestamp(100 * DAY, unit="s", tz="UTC").isoformat()
    return split_dataset(interactions, catalog, SplitConfig(protocols=[protocol], cut_time=cut, val_fraction=0.0, history_len=5, target_len=5))


def by_item(split, vector) -> dict[str, float]:
    return dict(zip(split.item_ids, np.asarray(vector).tolist()))


def test_popularity_counts_positive_training_events_before_the_cut() -> None:
    split = tiny_split()
    assert split.test.user_ids == ["z"]
    scores = baselines.popularity_scores(split, split.test)
    # u1's 'c' is a 1-star rating: history, not a positive.
    assert by_item(split, scores[0]) == {"a": 3.0, "b": 3.0, "c": 1.0, "d": 1.0, "e": 0.0}


def test_popularity_recent_counts_only_the_trailing_window() -> None:
    split = tiny_split()
    scores = baselines.popularity_recent_scores(split, split.test, days=10)  # days 90..100
    assert by_item(split, scores[0]) == {"a": 1.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 0.0}


def test_popularity_recent_under_leave_one_out_ends_at_each_users_target() -> None:
    split = tiny_split("leave_one_out")
    users = dict(zip(split.test.user_ids, range(len(split.test))))
    scores = baselines.popularity_recent_scores(split, split.test, days=1000)
    # u3's test target is 'd' at day 98, so only training positives before day 98 count.
    assert users["u3"] is not None
    before = {item: 0.0 for item in "abcde"}
    for user, seq in split.train.items():
        for item, positive, time in zip(seq.items, seq.positive, seq.times):
            if positive and time < 98 * DAY:
                before[split.item_ids[item]] += 1
    assert by_item(split, scores[users["u3"]]) == before


def test_item_knn_is_cosine_over_training_users_summed_over_the_history() -> None:
    split = tiny_split()
    similarity = baselines.top_k_neighbours(baselines.cooccurrence_cosine(split.train, len(split.item_ids)), k=10).toarray()
    idx = {item: i for i, item in enumerate(split.item_ids)}
    # Training users' item sets: u1 {a,b,c}, u2 {a,b}, u3 {b,c,d}, z {a}.
    users_of = {"a": {"u1", "u2", "z"}, "b": {"u1", "u2", "u3"}, "c": {"u1", "u3"}, "d": {"u3"}, "e": set()}
    for x in "abcde":
        for y in "abcde":
            expected = 0.0 if x == y or not users_of[x] or not users_of[y] else len(users_of[x] & users_of[y]) / np.sqrt(len(users_of[x]) * len(users_of[y]))
            assert similarity[idx[x], idx[y]] == pytest.approx(expected), (x, y)
    scores = baselines.item_knn_scores(baselines.top_k_neighbours(baselines.cooccurrence_cosine(split.train, 5), k=10), split.test.histories)
    history = [split.item_ids[i] for i in split.test.histories[0]]
    assert history == ["a", "e"]
    np.testing.assert_allclose(scores[0], similarity[idx["a"]] + similarity[idx["e"]])
    top1 = baselines.top_k_neighbours(baselines.cooccurrence_cosine(split.train, 5), k=1).toarray()
    assert ((top1 > 0).sum(axis=1) <= 1).all()


def test_llm_frozen_vectors_are_centred_on_warm_items() -> None:
    content = np.array([[1.0, 1.0], [1.0, 3.0], [9.0, 9.0]])
    warm = np.array([True, True, False])
    items = baselines.centred_content(content, warm)
    expected = content - np.array([1.0, 2.0])
    np.testing.assert_allclose(items, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    users = baselines.mean_history_vectors(items, [np.array([0, 2])])
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0)


def test_unit_rows_scales_each_row_to_length_one_and_keeps_a_zero_row_zero() -> None:
    rows = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], dtype=np.float32))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert rows.dtype == np.float32, "offline vectors keep their dtype"


def test_rank_scores_excludes_history_and_breaks_ties_by_a_fixed_random_order() -> None:
    scores = np.array([[0.0, 5.0, 5.0, 5.0, 1.0, 5.0]] * 2)
    ranked = rank_scores(scores, [np.array([1]), np.array([])], depth=6)
    assert 1 not in ranked[0] and ranked[0, -1] == -1
    assert set(ranked[0, :3]) == {2, 3, 5} and ranked[0, 3:5].tolist() == [4, 0]
    assert set(ranked[1, :4]) == {1, 2, 3, 5}
    tied = rank_scores(np.zeros((1, 1000)), [np.array([])], depth=10)
    assert tied[0].tolist() != list(range(10)), "ties must not follow the catalog order"
    np.testing.assert_array_equal(tied, rank_scores(np.zeros((1, 1000)), [np.array([])], depth=10))


def test_paired_bootstrap_matches_a_hand_computation() -> None:
    differences = np.array([0.1, -0.2, 0.4, 0.0, 0.3])
    rng = np.random.default_rng(0)
    means = [differences[rng.integers(0, 5, size=5)].mean() for _ in range(200)]
    expected = np.percentile(means, [2.5, 97.5])
    assert paired_bootstrap_interval(differences, rounds=200, seed=0) == pytest.approx(tuple(expected))
    assert paired_bootstrap_interval(np.full(7, 0.25)) == pytest.approx((0.25, 0.25))


def test_paired_interval_separates_what_per_method_intervals_cannot() -> None:
    """Two methods whose per-user scores differ by a small constant: their own intervals overlap,
    the paired one excludes zero."""
    base = np.random.default_rng(1).uniform(0, 1, 60)
    better = base + 0.02
    low_b, high_b = bootstrap_interval(base)
    low_m, high_m = bootstrap_interval(better)
    assert low_m < high_b  # overlapping
    low, high = paired_bootstrap_interval(better - base)
    assert low > 0


def test_collapse_diagnostics() -> None:
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(500, 16))
    collapsed = np.ones((500, 16)) + 1e-3 * rng.normal(size=(500, 16))
    assert abs(mean_pairwise_cosine(spread)) < 0.05 and mean_pairwise_cosine(collapsed) > 0.99
    assert effective_rank(spread) > 12 and effective_rank(np.outer(rng.normal(size=500), rng.normal(size=16))) < 1.5
    popularity = np.arange(50, dtype=float)
    assert popularity_correlation(np.tile(popularity, (3, 1)), popularity, np.arange(50)) == pytest.approx(1.0)
    assert popularity_correlation(np.tile(-popularity, (3, 1)), popularity, np.arange(50)) == pytest.approx(-1.0)


def test_the_count_models_diagnostic_finds_the_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/count_models.py``: every model it fits (item-kNN, PureSVD, EASE) scores the
    test users of a clustered split far above a random ranking (a broken scorer would not)."""
    count_models = load_script(monkeypatch, Path(__file__).resolve().parents[2] / "scripts" / "count_models.py")
    split = clustered_split(n_users=150, n_items=120)
    random_recall = 10 / len(split.item_ids)
    names = []
    for family in count_models.MODELS:
        for name, scorer in family(split):
            names.append(name.split()[0])
            assert validation_score_of_scores(scorer(split.test), split.test, "recall@10", 10) > 3 * random_recall, name
    assert set(names) == {"item_knn", "pure_svd", "ease"}


def test_the_count_models_diagnostic_pairs_each_choice_against_item_knn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item-kNN against itself differs by exactly 0; a scorer that ranks at random is below it
    on a clustered split, with an interval that says so."""
    count_models = load_script(monkeypatch, Path(__file__).resolve().parents[2] / "scripts" / "count_models.py")
    split = clustered_split(n_users=150, n_items=120)
    name, scorer = next(count_models.item_knn(split))
    noise = np.random.default_rng(0).uniform(size=(len(split.test), len(split.item_ids)))
    chosen = {"item_knn": (name, scorer(split.test)), "noise": ("noise", noise)}
    rows = {row[0]: row for row in count_models.paired_against_item_knn(split.test, chosen, ("recall@10", "ndcg@10")) if row[1] == "recall@10"}
    assert rows[name][3:] == (0.0, 0.0, 0.0)
    _, _, mean, difference, low, high = rows["noise"]
    assert difference == pytest.approx(mean - rows[name][2]) and low <= difference <= high < 0
