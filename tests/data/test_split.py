"""The evaluation protocols: no target an evaluated user must find ever reaches training.

Each protocol is checked against the raw events by an independent re-implementation of its
rules (``expect_temporal``, ``expect_leave_one_out``), on MovieLens and on synthetic data with
repeats and non-positive events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import MOVIELENS_DIR, clustered_interactions, needs_movielens
from learn_features.data.movielens import load_movielens_catalog, load_movielens_interactions
from learn_features.data.split import Split, SplitConfig, catalog_until, events_until, resolve_cut_time, split_dataset
from learn_features.data.tables import LoadReport, assemble, validate_catalog, validate_interactions
from learn_features.errors import LearnFeaturesError


def by_user(interactions: pd.DataFrame, split: Split) -> dict[str, pd.DataFrame]:
    index = {item: i for i, item in enumerate(split.item_ids)}
    events = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable").assign(
        idx=lambda d: d["item_id"].map(index), pos=lambda d: d["positive"] if "positive" in d else True
    )
    return {u: g.reset_index(drop=True) for u, g in events.groupby("user_id", sort=True)}


def train_pairs(split: Split) -> set[tuple[str, int]]:
    return {(u, int(i)) for u, s in split.train.items() for i in s.items}


def assert_eval_users_never_train(split: Split) -> None:
    pairs = train_pairs(split)
    for users in (split.test, split.val):
        for user, targets in zip(users.user_ids, users.targets):
            assert not {(user, int(i)) for i in targets} & pairs, user


def expect_window(g: pd.DataFrame, start: int, length: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(history, targets, exclude) of a window at ``start``: new positive items only."""
    before = g["idx"].to_numpy()[:start]
    window = g.iloc[start : start + length]
    seen = set(before.tolist())
    targets = []
    for item in window.loc[window["pos"].astype(bool), "idx"]:
        if item not in seen and item not in targets:
            targets.append(int(item))
    if not len(before) or not targets:
        return None
    return before[-n:], np.array(targets), np.unique(before)


def expect_temporal(interactions: pd.DataFrame, split: Split, config: SplitConfig) -> None:
    cut = split.cut_time
    users = by_user(interactions, split)
    n, m = config.history_len, config.target_len
    expected_test = {}
    for user, g in users.items():
        n_pre = int((g["timestamp"] < cut).sum())
        if n_pre < len(g):
            window = expect_window(g, n_pre + (len(g) - n_pre) // 2, m, n)
            if window is not None:
                expected_test[user] = window
    assert split.test.user_ids == sorted(expected_test)
    for user, history, targets, exclude in zip(split.test.user_ids, split.test.histories, split.test.targets, split.test.exclude):
        np.testing.assert_array_equal(history, expected_test[user][0])
        np.testing.assert_array_equal(targets, expected_test[user][1])
        np.testing.assert_array_equal(exclude, expected_test[user][2])
    # Training: pre-cut prefixes only; a validation user's sequence stops before their window.
    val = dict(zip(split.val.user_ids, zip(split.val.histories, split.val.targets)))
    assert set(split.train) == {u for u, g in users.items() if (g["timestamp"] < cut).any()}
    for user, seq in split.train.items():
        pre = users[user][users[user]["timestamp"] < cut]
        assert len(seq) <= len(pre)
        np.testing.assert_array_equal(seq.items, pre["idx"].to_numpy()[: len(seq)])
        np.testing.assert_array_equal(seq.positive, pre["pos"].to_numpy(dtype=bool)[: len(seq)])
        if user not in val:
            assert len(seq) == len(pre)
    for user, (history, targets) in val.items():
        pre = users[user][users[user]["timestamp"] < cut]
        start = max(len(pre) // 2, len(pre) - m)
        expected = expect_window(pre, start, m, n)
        assert expected is not None
        np.testing.assert_array_equal(history, expected[0])
        np.testing.assert_array_equal(targets, expected[1])
        if user in split.train:
            assert len(split.train[user]) == start
    assert_eval_users_never_train(split)
    for user, profile in split.profiles.items():
        np.testing.assert_array_equal(profile, users[user].loc[users[user]["timestamp"] < cut, "idx"].to_numpy()[-n:])
    warm = np.zeros(len(split.item_ids), bool)
    for seq in split.train.values():
        warm[seq.items] = True
    np.testing.assert_array_equal(split.warm_items, warm)
    assert all(ev.times.max() < cut.timestamp() for ev in split.train.values())


def expect_leave_one_out(interactions: pd.DataFrame, split: Split, config: SplitConfig) -> None:
    users = by_user(interactions, split)
    n = config.history_len
    for user, g in users.items():
        positions = np.flatnonzero(g["pos"].to_numpy(dtype=bool))
        evaluated = user in split.test.user_ids or user in split.val.user_ids
        if evaluated:
            v = int(positions[-2])
            assert len(split.train[user]) == v
        else:
            assert len(split.train[user]) == len(g)
    for users_, which in ((split.test, -1), (split.val, -2)):
        for user, history, targets in zip(users_.user_ids, users_.histories, users_.targets):
            g = users[user]
            position = int(np.flatnonzero(g["pos"].to_numpy(dtype=bool))[which])
            np.testing.assert_array_equal(history, g["idx"].to_numpy()[:position][-n:])
            assert targets.tolist() == [int(g["idx"].iloc[position])]
    assert_eval_users_never_train(split)


def with_positives(interactions: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return interactions.assign(positive=rng.random(len(interactions)) < share)


@needs_movielens
def test_temporal_protocol_on_movielens() -> None:
    """The default protocol on the real ratings: no leak, over 100 test users, new users included."""
    interactions = load_movielens_interactions(MOVIELENS_DIR).assign(positive=lambda d: d["rating"] >= 4)
    config = SplitConfig()
    cut = resolve_cut_time(interactions, config)
    catalog = load_movielens_catalog(MOVIELENS_DIR, tags_before=cut)
    split = split_dataset(interactions, catalog, config, "temporal")
    expect_temporal(interactions, split, config)
    assert len(split.test) > 100
    new_users = set(split.test.user_ids) - set(split.profiles)
    assert new_users, "users first seen after the cut must be tested too"
    assert 0 < split.summary()["test_cold_targets"] < split.summary()["test_targets"]


@needs_movielens
def test_leave_one_out_protocol_on_movielens() -> None:
    interactions = load_movielens_interactions(MOVIELENS_DIR).assign(positive=lambda d: d["rating"] >= 4)
    catalog = load_movielens_catalog(MOVIELENS_DIR)
    config = SplitConfig(protocols=["leave_one_out"])
    split = split_dataset(interactions, catalog, config)
    expect_leave_one_out(interactions, split, config)
    assert len(split.test) > 500 and split.cut_time is None
    # The published vectors see every event, so they are stamped just after the last one.
    assert split.data_end == interactions["timestamp"].max() + pd.Timedelta(microseconds=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["temporal", "leave_one_out"])
def test_no_leakage_on_synthetic(seed: int, protocol: str) -> None:
    """Short windows, repeats after the cut and non-positive events exercise every path."""
    interactions, catalog = clustered_interactions(seed=seed)
    first = interactions.groupby("user_id").head(1)
    repeats = first[first["user_id"].str[1:].astype(int) % 4 == 0].assign(timestamp=lambda d: d["timestamp"] + pd.Timedelta(days=30))
    interactions = with_positives(pd.concat([interactions, repeats], ignore_index=True), 0.7, seed)
    config = SplitConfig(protocols=[protocol], cut_quantile=0.6, history_len=3, target_len=2, val_fraction=0.3, min_val_events=4, seed=seed)
    split = split_dataset(interactions, catalog, config)
    assert len(split.val) > 0 and len(split.test) > 0
    (expect_temporal if protocol == "temporal" else expect_leave_one_out)(interactions, split, config)


def test_non_positive_events_are_history_but_never_targets() -> None:
    raw = pd.DataFrame(
        {
            "user_id": ["a"] * 6 + ["b"] * 3,
            "item_id": ["x", "y", "z", "w", "v", "u", "x", "y", "z"],
            "timestamp": [1, 2, 3, 11, 12, 13, 1, 2, 3],
            "rating": [5, 1, 5, 5, 1, 5, 4, 4, 4],
        }
    )
    interactions = validate_interactions(raw, "r").assign(positive=lambda d: d["rating"] >= 4)
    catalog = validate_catalog(pd.DataFrame({"item_id": list("xyzwvu"), "t": list("abcdef")}), "c")
    split = split_dataset(interactions, catalog, SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.0))
    ids = split.item_ids
    # a: 3 pre-cut events, 3 post-cut: window starts after one post-cut event (w), holds v (1 star) and u.
    assert split.test.user_ids == ["a"]
    assert [ids[i] for i in split.test.histories[0]] == ["x", "y", "z", "w"]
    assert [ids[i] for i in split.test.targets[0]] == ["u"]
    assert split.train["a"].positive.tolist() == [True, False, True]


def test_users_new_after_the_cut_are_tested_with_their_post_cut_history() -> None:
    raw = pd.DataFrame(
        {"user_id": ["old", "old", "new", "new", "new", "new"], "item_id": ["x", "y", "x", "y", "z", "w"], "timestamp": [1, 2, 11, 12, 13, 14]}
    )
    catalog = validate_catalog(pd.DataFrame({"item_id": list("xyzw"), "t": list("abcd")}), "c")
    split = split_dataset(validate_interactions(raw, "r"), catalog, SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.0))
    assert split.test.user_ids == ["new"]
    assert [split.item_ids[i] for i in split.test.histories[0]] == ["x", "y"]
    assert [split.item_ids[i] for i in split.test.targets[0]] == ["z", "w"]
    assert "new" not in split.train and "new" not in split.profiles


def test_cut_time_override_wins_and_is_utc() -> None:
    interactions, catalog = clustered_interactions()
    times = interactions["timestamp"].sort_values().reset_index(drop=True)
    chosen = times.iloc[len(times) // 2]
    for text in (chosen.tz_convert(None).isoformat(), chosen.tz_convert("Asia/Tokyo").isoformat()):
        config = SplitConfig(cut_time=text, cut_quantile=0.1, history_len=5, target_len=3)
        split = split_dataset(interactions, catalog, config)
        assert split.cut_time == chosen and str(split.cut_time.tz) == "UTC"
        expect_temporal(interactions, split, config)
    assert resolve_cut_time(interactions, SplitConfig(cut_quantile=0.1)) == times.iloc[int(0.1 * (len(times) - 1))] != chosen
    with pytest.raises(LearnFeaturesError, match="split.cut_time 'soon'"):
        resolve_cut_time(interactions, SplitConfig(cut_time="soon"))


def test_cold_items_have_no_training_event() -> None:
    raw = pd.DataFrame(
        {"user_id": ["a", "a", "a", "b", "b", "b", "c", "c"], "item_id": ["x", "y", "late", "x", "y", "z", "y", "atcut"],
         "timestamp": [1, 2, 50, 3, 4, 5, 6, 10]}
    )
    catalog = validate_catalog(pd.DataFrame({"item_id": ["x", "y", "z", "late", "atcut", "never"], "t": list("abcdef")}), "c")
    split = split_dataset(validate_interactions(raw, "r"), catalog, SplitConfig(cut_time="1970-01-01T00:00:10", val_fraction=0.0))
    assert dict(zip(split.item_ids, split.warm_items.tolist())) == {"x": True, "y": True, "z": True, "late": False, "atcut": False, "never": False}
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


def test_split_is_deterministic_for_a_seed() -> None:
    interactions, catalog = clustered_interactions()
    config = SplitConfig(cut_quantile=0.7, history_len=5, target_len=3, val_fraction=0.3)
    a, b = split_dataset(interactions, catalog, config), split_dataset(interactions, catalog, config)
    assert a.val.user_ids == b.val.user_ids and a.test.user_ids == b.test.user_ids
    other = split_dataset(interactions, catalog, SplitConfig(**{**config.__dict__, "seed": 7}))
    assert other.val.user_ids != a.val.user_ids


@pytest.mark.parametrize(
    "kwargs, message",
    [({"cut_quantile": 1.0}, "cut_quantile"), ({"history_len": 0}, "history_len"), ({"val_fraction": 1.0}, "val_fraction"),
     ({"min_val_events": 1}, "min_val_events"), ({"protocols": ["random"]}, "protocols"), ({"protocols": []}, "protocols"),
     ({"until": "last tuesday"}, "split.until 'last tuesday' is not an ISO-8601 time")],
)
def test_split_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(LearnFeaturesError, match=message):
        SplitConfig(**kwargs)


@pytest.mark.parametrize("order", ["row", "position"])
def test_leave_one_out_needs_only_order(order: str) -> None:
    """Sequence-only data (no timestamps): by the file's row order or by a position column."""
    raw = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 3, "item_id": ["w", "x", "y", "z", "x", "y", "z"]})
    if order == "position":  # rows shuffled; the column restores the order
        raw = raw.assign(position=[3, 0, 1, 2, 2, 0, 1])
    interactions = validate_interactions(raw, "seq.csv", order)
    catalog = validate_catalog(pd.DataFrame({"item_id": list("wxyz"), "t": list("abcd")}), "c")
    dataset = assemble(interactions, catalog, "seq.csv", LoadReport(), order)
    split = split_dataset(dataset.interactions, dataset.catalog, SplitConfig(protocols=["leave_one_out"]))
    ids = split.item_ids
    expected = {"row": {"a": (["w", "x", "y"], "z"), "b": (["x", "y"], "z")},
                "position": {"a": (["x", "y", "z"], "w"), "b": (["y", "z"], "x")}}[order]
    for user, history, targets in zip(split.test.user_ids, split.test.histories, split.test.targets):
        assert ([ids[i] for i in history], ids[targets[0]]) == expected[user]
    with pytest.raises(LearnFeaturesError, match="timestamps"):
        split_dataset(dataset.interactions, dataset.catalog, SplitConfig(protocols=["temporal"]))


def test_until_keeps_the_events_and_the_catalog_of_an_earlier_period() -> None:
    """split.until: the events before it, and only the catalog items that had one by then, in
    catalog order; unset, both pass through untouched."""
    interactions, catalog = clustered_interactions()
    until = "2020-09-14T00:00:00"
    kept = events_until(interactions, until, "x.csv")
    assert len(kept) == int((interactions["timestamp"] < pd.Timestamp(until, tz="UTC")).sum()) < len(interactions)
    assert kept["timestamp"].max() < pd.Timestamp(until, tz="UTC")
    earlier = catalog_until(catalog, kept, until)
    assert set(earlier["item_id"]) == set(kept["item_id"]) and len(earlier) < len(catalog)
    assert earlier["item_id"].tolist() == [i for i in catalog["item_id"] if i in set(kept["item_id"])]
    assert events_until(interactions, None, "x.csv") is interactions and catalog_until(catalog, kept, None) is catalog
    with pytest.raises(LearnFeaturesError, match=r"x.csv: no interaction before split.until = '2000-01-01'"):
        events_until(interactions, "2000-01-01", "x.csv")
    with pytest.raises(LearnFeaturesError, match="x.csv: split.until .* no timestamps"):
        events_until(interactions.drop(columns="timestamp"), until, "x.csv")
