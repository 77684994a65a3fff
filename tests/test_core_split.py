"""The chronological split: no post-cut event and no held-out user ever reaches training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import MOVIELENS_DIR, clustered_interactions, needs_movielens
from learn_features.data.movielens import load_movielens_catalog, load_movielens_interactions
from learn_features.data.split import Split, SplitConfig, resolve_cut_time, split_dataset
from learn_features.data.tables import validate_catalog, validate_interactions
from learn_features.errors import LearnFeaturesError


def assert_no_leakage(interactions: pd.DataFrame, split: Split, config: SplitConfig) -> None:
    """Check every promise of the split against the raw events, independently of split.py."""
    cut = split.cut_time
    index = {item: i for i, item in enumerate(split.item_ids)}
    events = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable").assign(
        idx=lambda d: d["item_id"].map(index)
    )
    by_user = {u: g for u, g in events.groupby("user_id", sort=False)}
    past = {u: g.loc[g["timestamp"] < cut, "idx"].to_numpy() for u, g in by_user.items()}
    future = {u: g.loc[g["timestamp"] >= cut, "idx"].to_numpy() for u, g in by_user.items()}
    n, m = config.history_len, config.target_len

    test_users, val_users, train_users = set(split.test.user_ids), set(split.val.user_ids), set(split.train)
    assert test_users and train_users
    assert not (test_users & val_users) and not (train_users & (test_users | val_users))

    # Training: exactly the pre-cut sequence of users who have nothing at or after the cut.
    straddling = {u for u in by_user if len(past[u]) and len(future[u])}
    for user, seq in split.train.items():
        assert user not in straddling
        assert by_user[user]["timestamp"].max() < cut, f"training user {user} has a post-cut event"
        np.testing.assert_array_equal(seq, past[user])
    # Test: history = last N pre-cut events, targets = new items among the first M post-cut events.
    for user, history, targets, exclude in zip(split.test.user_ids, split.test.histories, split.test.targets, split.test.exclude):
        np.testing.assert_array_equal(history, past[user][-n:])
        assert len(targets) and len(set(targets.tolist())) == len(targets)
        assert set(targets.tolist()) <= set(future[user][:m].tolist())
        assert not set(targets.tolist()) & set(past[user].tolist())
        np.testing.assert_array_equal(np.sort(exclude), np.unique(past[user]))
    # Every straddling user with a new item in their first M future events is a test user.
    expected_test = {u for u in straddling if np.setdiff1d(future[u][:m], past[u]).size}
    assert test_users == expected_test
    # No (user, target item) pair of the held-out users appears in any training sequence.
    train_pairs = {(u, int(i)) for u, s in split.train.items() for i in s}
    for users in (split.test, split.val):
        for user, targets in zip(users.user_ids, users.targets):
            assert not {(user, int(i)) for i in targets} & train_pairs
    # Validation: history and targets both come from the user's pre-cut sequence, in order.
    for user, history, targets in zip(split.val.user_ids, split.val.histories, split.val.targets):
        seq = past[user]
        assert len(seq) >= config.min_val_events and len(history)
        k = min(m, len(seq) // 2)
        np.testing.assert_array_equal(history, seq[:-k][-n:])
        assert set(targets.tolist()) <= set(seq[-k:].tolist())
        assert by_user[user]["timestamp"].max() < cut  # nothing of theirs after the cut at all
    # Profiles are pre-cut only; cold items are exactly those without a pre-cut event.
    for user, profile in split.profiles.items():
        np.testing.assert_array_equal(profile, past[user][-n:])
    warm = np.zeros(len(split.item_ids), bool)
    warm[events.loc[events["timestamp"] < cut, "idx"].to_numpy()] = True
    np.testing.assert_array_equal(split.warm_items, warm)


@needs_movielens
def test_no_leakage_on_movielens() -> None:
    """On the real ml-latest-small ratings, with the default 0.8 quantile cut."""
    interactions = load_movielens_interactions(MOVIELENS_DIR)
    config = SplitConfig()
    cut = resolve_cut_time(interactions, config)
    catalog = load_movielens_catalog(MOVIELENS_DIR, tags_before=cut)
    split = split_dataset(interactions, catalog, config)
    assert split.cut_time == cut
    assert_no_leakage(interactions, split, config)
    summary = split.summary()
    assert summary["test_users"] == len(split.test) > 0 and summary["train_users"] > 0
    assert 0 < summary["test_cold_targets"] < summary["test_targets"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_leakage_on_synthetic(seed: int) -> None:
    """Short histories and targets so truncation and dedup paths are exercised."""
    interactions, catalog = clustered_interactions(seed=seed)
    # Repeat consumption: some users re-see an item after the cut (must not become a target).
    first = interactions.groupby("user_id").head(1)
    repeats = first[first["user_id"].str[1:].astype(int) % 4 == 0].assign(timestamp=lambda d: d["timestamp"] + pd.Timedelta(days=30))
    interactions = pd.concat([interactions, repeats], ignore_index=True)
    config = SplitConfig(cut_quantile=0.6, history_len=3, target_len=2, val_fraction=0.3, min_val_events=4, seed=seed)
    split = split_dataset(interactions, catalog, config)
    assert len(split.val) > 0
    assert_no_leakage(interactions, split, config)


def test_cut_time_override_wins_and_is_utc() -> None:
    interactions, catalog = clustered_interactions()
    times = interactions["timestamp"].sort_values().reset_index(drop=True)
    chosen = times.iloc[len(times) // 2]
    naive = chosen.tz_convert(None).isoformat()
    shifted = chosen.tz_convert("Asia/Tokyo").isoformat()
    for text in (naive, shifted):
        config = SplitConfig(cut_time=text, cut_quantile=0.1, history_len=5, target_len=3)
        split = split_dataset(interactions, catalog, config)
        assert split.cut_time == chosen and str(split.cut_time.tz) == "UTC"
        assert_no_leakage(interactions, split, config)
    quantile = resolve_cut_time(interactions, SplitConfig(cut_quantile=0.1))
    assert quantile == times.iloc[int(0.1 * (len(times) - 1))] != chosen
    with pytest.raises(LearnFeaturesError, match="split.cut_time 'soon'"):
        resolve_cut_time(interactions, SplitConfig(cut_time="soon"))


def test_cold_items_have_no_pre_cut_interaction() -> None:
    """An item first seen at the cut, or never seen, is cold; one seen earlier by anyone is warm."""
    raw = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "b", "c", "c"],
            "item_id": ["x", "y", "late", "x", "y", "z", "y", "atcut"],
            "timestamp": [1, 2, 50, 3, 4, 5, 6, 10],
        }
    )
    catalog = validate_catalog(pd.DataFrame({"item_id": ["x", "y", "z", "late", "atcut", "never"], "t": list("abcdef")}), "c")
    split = split_dataset(validate_interactions(raw, "r"), catalog, SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.0))
    warm = dict(zip(split.item_ids, split.warm_items))
    assert warm == {"x": True, "y": True, "z": True, "late": False, "atcut": False, "never": False}
    assert split.test.user_ids == ["a", "c"]
    assert [split.item_ids[i] for i in split.test.targets[1]] == ["atcut"]


def test_no_test_users_is_an_error() -> None:
    interactions, catalog = clustered_interactions()
    after_everything = (interactions["timestamp"].max() + pd.Timedelta(seconds=1)).isoformat()
    with pytest.raises(LearnFeaturesError, match="no test users"):
        split_dataset(interactions, catalog, SplitConfig(cut_time=after_everything))
    before_everything = interactions["timestamp"].min().isoformat()
    with pytest.raises(LearnFeaturesError, match="no training users"):
        split_dataset(interactions, catalog, SplitConfig(cut_time=before_everything))


def test_test_users_whose_future_is_all_repeats_are_dropped_not_trained_on() -> None:
    """A straddling user with no new item after the cut is neither a test user nor a training user."""
    raw = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "c", "c"],
            "item_id": ["x", "y", "x", "x", "z", "y", "z"],
            "timestamp": [1, 2, 20, 3, 30, 4, 5],
        }
    )
    catalog = validate_catalog(pd.DataFrame({"item_id": ["x", "y", "z"], "t": list("abc")}), "c")
    split = split_dataset(validate_interactions(raw, "r"), catalog, SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.0))
    assert split.test.user_ids == ["b"]
    assert set(split.train) == {"c"}


def test_split_is_deterministic_for_a_seed() -> None:
    interactions, catalog = clustered_interactions()
    config = SplitConfig(cut_quantile=0.7, history_len=5, target_len=3, val_fraction=0.3)
    a, b = split_dataset(interactions, catalog, config), split_dataset(interactions, catalog, config)
    assert a.val.user_ids == b.val.user_ids and a.test.user_ids == b.test.user_ids
    other = split_dataset(interactions, catalog, SplitConfig(**{**config.__dict__, "seed": 7}))
    assert other.val.user_ids != a.val.user_ids


@pytest.mark.parametrize(
    "kwargs, message",
    [({"cut_quantile": 1.0}, "cut_quantile"), ({"history_len": 0}, "history_len"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_split_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(LearnFeaturesError, match=message):
        SplitConfig(**kwargs)


def test_validation_users_always_have_a_history() -> None:
    """Either min_val_events < 2 is refused, or no validation user ends up with an empty history."""
    raw = pd.DataFrame(
        {
            "user_id": ["t", "t", "solo", "p", "p", "p", "q", "q"],
            "item_id": ["x", "y", "x", "x", "y", "z", "x", "z"],
            "timestamp": [1, 20, 2, 3, 4, 5, 6, 7],
        }
    )
    catalog = validate_catalog(pd.DataFrame({"item_id": ["x", "y", "z"], "t": list("abc")}), "c")
    try:
        config = SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.34, min_val_events=1, seed=0)
    except LearnFeaturesError:
        return  # refusing the setting is a valid fix
    for seed in range(10):
        config.seed = seed
        split = split_dataset(validate_interactions(raw, "r"), catalog, config)
        assert all(len(h) for h in split.val.histories), dict(zip(split.val.user_ids, split.val.histories))
