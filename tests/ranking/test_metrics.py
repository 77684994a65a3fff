"""UAUC/WUAUC against a per-user roc_auc_score loop, and the bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from learn_features.errors import LearnFeaturesError
from ranking.metrics import auc, grouped_auc, logloss, weighted_auc_rows


def _random_with_ties(seed: int, n: int = 3000, n_users: int = 120):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(str)
    labels = rng.integers(0, 2, n)
    # Coarse rounding makes many ties inside a user, including ties across classes.
    scores = np.round(rng.random(n) * 6) / 6 + 0.3 * labels * rng.random(n)
    scores = np.round(scores, 1)
    return users, labels, scores


def _reference(users, labels, scores):
    per_user, counts = {}, {}
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            per_user[u] = roc_auc_score(labels[m], scores[m])
            counts[u] = int(m.sum())
    return per_user, counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_auc_matches_sklearn_loop_with_ties(seed):
    users, labels, scores = _random_with_ties(seed)
    # A single-class user and a one-impression user must be excluded and counted.
    users = np.r_[users, ["solo-pos", "solo-pos", "one"]]
    labels = np.r_[labels, [1, 1, 0]]
    scores = np.r_[scores, [0.1, 0.9, 0.5]]
    got = grouped_auc(labels, scores, users)
    ref, counts = _reference(users, labels, scores)

    got_map = {u: a for u, a in zip(got.users, got.user_auc) if not np.isnan(a)}
    assert got_map.keys() == ref.keys()
    np.testing.assert_allclose([got_map[u] for u in ref], list(ref.values()), rtol=0, atol=1e-12)
    assert got.uauc == pytest.approx(np.mean(list(ref.values())), abs=1e-12)
    w = np.array([counts[u] for u in ref])
    assert got.wuauc == pytest.approx(np.average(list(ref.values()), weights=w), abs=1e-12)
    assert got.n_single_class == len(np.unique(users)) - len(ref)
    assert got.n_single_class >= 2


def test_grouped_auc_is_not_fooled_by_row_order():
    users, labels, scores = _random_with_ties(5, n=500, n_users=10)
    perm = np.random.default_rng(0).permutation(len(users))
    a = grouped_auc(labels, scores, users)
    b = grouped_auc(labels[perm], scores[perm], users[perm])
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_allclose(a.user_auc, b.user_auc)


def test_weighted_auc_rows_matches_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    users, labels, scores = _random_with_ties(3, n=400, n_users=30)
    weights = rng.integers(0, 4, size=(5, len(labels))).astype(float)
    got = weighted_auc_rows(labels, scores, weights)
    want = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_single_class_everywhere_gives_none_not_nan():
    res = grouped_auc(np.ones(4, int), np.arange(4.0), np.array(["a", "a", "b", "b"]))
    assert res.uauc is None and res.wuauc is None and res.n_single_class == 2
    assert auc(np.zeros(3, int), np.arange(3.0)) is None


def test_nan_score_is_a_clear_error():
    with pytest.raises(LearnFeaturesError, match=r"row 2: score is nan"):
        grouped_auc(np.array([0, 1, 1]), np.array([0.1, 0.2, np.nan]), np.array(["a", "a", "a"]))
    with pytest.raises(LearnFeaturesError, match="row 0"):
        logloss(np.array([0, 1]), np.array([np.inf, 0.5]))


def test_label_not_binary_is_a_clear_error():
    with pytest.raises(LearnFeaturesError, match=r"row 1: label 2 is not 0/1"):
        auc(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(LearnFeaturesError, match="not 0/1"):
        grouped_auc(np.array([0.0, 0.5]), np.array([0.1, 0.2]), np.array(["a", "a"]))


def test_logloss_rejects_scores_outside_unit_interval():
    with pytest.raises(LearnFeaturesError, match="probabilities"):
        logloss(np.array([0, 1]), np.array([-0.1, 0.5]))
    assert logloss(np.array([1, 1]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
