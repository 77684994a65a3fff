"""Labelled impressions, point-in-time statistics and embeddings, and the no-leakage proof."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learn_features.embeddings_io import EmbeddingTable, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.data.config import DataConfig
from ranking.config import BootstrapConfig, DNNConfig, ExperimentConfig, LGBMConfig, PeriodsConfig
from ranking.controls import with_llm_frozen, with_random
from ranking.dataset import RankingDataset, build_dataset
from ranking.joins import point_in_time_stats
from ranking.loading import load_data, validate_impressions
from ranking.periods import resolve_periods
from ranking.embeddings import ParquetEmbeddingJoiner
from ranking.experiment import train_models
from ranking.history import HistoryIndex
from ranking.synthetic import make_world, write_learn_snapshot

T0 = pd.Timestamp("2021-01-01", tz="UTC")


def test_movielens_labels_and_history(tmp_path):
    path = tmp_path / "ratings.csv"
    pd.DataFrame(
        {"userId": [1, 1, 1, 1, 2], "movieId": [10, 11, 12, 13, 10], "rating": [5.0, 4.0, 3.5, 3.0, 0.5], "timestamp": [1, 2, 3, 4, 5]}
    ).to_csv(path, index=False)
    pd.DataFrame({"movieId": [10, 11, 12, 13], "title": ["A (1995)", "B", "C (2001)", "D"], "genres": ["Drama|Comedy", "(no genres listed)", "Drama", ""]}).to_csv(
        tmp_path / "movies.csv", index=False
    )
    impressions, history, items = load_data(DataConfig(movielens_dir=str(tmp_path), positive="rating >= 4", negative="rating <= 3"))
    assert impressions["item_id"].tolist() == ["10", "11", "13", "10"]  # the 3.5 is no impression
    assert impressions["label"].tolist() == [1, 1, 0, 0]
    assert len(history) == 5 and history["label"].tolist() == [1, 1, 0, 0, 0]  # ...but it is activity
    assert str(impressions["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert items["genres"].tolist() == [["Drama", "Comedy"], [], ["Drama"], []]  # from LEARN's catalog
    assert items["year"].tolist()[::2] == [1995.0, 2001.0] and items["year"].isna().tolist()[1::2] == [True, True]


MOVIELENS = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"


def test_files_format_reads_learns_tables_as_the_movielens_format_does(tmp_path):
    """MovieLens rewritten in LEARN's input format ("files": user_id/item_id/timestamp/rating and a
    catalog with pipe-separated genres) gives the same impressions, history and genres."""
    ratings = pd.read_csv(MOVIELENS / "ratings.csv").rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = pd.read_csv(MOVIELENS / "movies.csv").rename(columns={"movieId": "item_id"})
    ratings.to_csv(interactions := tmp_path / "interactions.csv", index=False)
    movies.to_csv(catalog := tmp_path / "catalog.csv", index=False)
    files = DataConfig("files", interactions=str(interactions), catalog=str(catalog), positive="rating >= 4", negative="rating <= 3",
                       genres_column="genres", genres_separator="|")
    movielens = DataConfig("movielens", str(MOVIELENS), positive="rating >= 4", negative="rating <= 3")
    (imp_f, hist_f, items_f), (imp_m, hist_m, items_m) = load_data(files), load_data(movielens)

    def ordered(df: pd.DataFrame) -> pd.DataFrame:
        return df.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)[list(imp_m.columns)]

    pd.testing.assert_frame_equal(ordered(imp_f), ordered(imp_m))
    pd.testing.assert_frame_equal(ordered(hist_f), ordered(hist_m))
    assert len(imp_m) < len(hist_m)  # half-star ratings between the rules: activity, not impressions
    genres = items_m.set_index("item_id")["genres"]
    assert items_f.set_index("item_id")["genres"].equals(genres.loc[items_f["item_id"]])


def test_files_format_with_event_rules_and_comma_separated_genres(tmp_path):
    events = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b"],
            "item_id": ["x", "y", "z", "x", "y"],
            "timestamp": ["2021-01-01", "2021-01-02", "2021-01-03", "2021-01-01T12:00:00Z", "2021-01-04"],
            "event_type": ["view", "purchase", "wishlist", "cart", "view"],
        }
    )
    catalog = pd.DataFrame({"item_id": ["x", "y", "z"], "title": ["X", "Y", "Z"], "tags": ["Drama, Comedy", "", "Drama"],
                            "price": ["9.5", "12", ""]})
    events.to_csv(path := tmp_path / "events.csv", index=False)
    catalog.to_parquet(items := tmp_path / "catalog.parquet")
    config = DataConfig("files", interactions=str(path), catalog=str(items), positive="event_type in ['purchase', 'cart']",
                        negative="event_type == 'view'", genres_column="tags", genres_separator=",")
    impressions, history, side = load_data(config)
    assert list(zip(impressions["user_id"], impressions["item_id"], impressions["label"])) == [
        ("a", "x", 0), ("a", "y", 1), ("b", "x", 1), ("b", "y", 0)]  # the wishlist row is no impression...
    assert len(history) == 5 and history["label"].tolist() == [0, 1, 0, 1, 0]  # ...but it is activity
    assert side["genres"].tolist() == [["Drama", "Comedy"], [], ["Drama"]]
    assert side["price"].tolist()[:2] == [9.5, 12.0] and "title" not in side.columns

    every_other = dataclasses.replace(config, negative=None)  # no negative rule: every non-positive row
    assert load_data(every_other)[0]["label"].tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(LearnFeaturesError, match=r"events\.csv: 1 row\(s\) match both the positive rule \"event_type != 'view'\" .*\(first: row 2\)"):
        load_data(dataclasses.replace(config, positive="event_type != 'view'", negative="event_type == 'purchase'"))


def test_files_format_config_is_checked_when_it_loads():
    with pytest.raises(LearnFeaturesError, match="data.positive is needed"):
        ExperimentConfig(DataConfig("files", interactions="events.csv"))
    with pytest.raises(LearnFeaturesError, match="data.negative: 'rating =< 3' is not a rule"):
        DataConfig("files", interactions="events.csv", positive="rating >= 4", negative="rating =< 3")
    with pytest.raises(LearnFeaturesError, match="data.genres_column applies to data.source = 'files' only"):
        DataConfig(genres_column="genres")


def test_generic_impressions_reject_bad_labels_and_timestamps():
    df = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": pd.to_datetime(["2021-01-01", "2021-01-02"], utc=True)})
    with pytest.raises(LearnFeaturesError, match=r"row 1: label 'yes' is not 0/1"):
        validate_impressions(df.assign(label=[1, "yes"]), "imp.csv")
    with pytest.raises(LearnFeaturesError, match="missing column"):
        validate_impressions(df, "imp.csv")
    with pytest.raises(LearnFeaturesError, match=r"imp\.csv: field 'timestamp' has 1 unparseable value\(s\) \(rows 2; first value 'soon'\)"):
        validate_impressions(df.assign(label=[0, 1], timestamp=["2021-01-01", "soon"]), "imp.csv")


def test_generic_impression_timestamps_follow_the_library_rules():
    """Unix seconds, ISO strings and naive datetimes all mean UTC, as in learn_features.data."""
    df = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "label": [0, 1]})
    expected = pd.Series(pd.to_datetime(["2021-01-01", "2021-01-02"], utc=True), name="timestamp")
    for timestamps in (
        [int(t.timestamp()) for t in expected],
        ["2021-01-01T01:00:00+01:00", "2021-01-02"],
        pd.to_datetime(["2021-01-01", "2021-01-02"]),
    ):
        got = validate_impressions(df.assign(timestamp=timestamps), "imp.csv")["timestamp"]
        pd.testing.assert_series_equal(got, expected.astype("datetime64[ns, UTC]"))


def test_point_in_time_stats_match_a_loop_and_are_strict():
    rng = np.random.default_rng(0)
    n = 400
    hist = pd.DataFrame(
        {
            "user_id": rng.integers(0, 15, n).astype(str),
            "item_id": rng.integers(0, 25, n).astype(str),
            "timestamp": T0 + pd.to_timedelta(rng.integers(0, 40, n), unit="D"),  # many equal times
            "label": rng.integers(0, 2, n),
        }
    )
    rows = hist.sample(120, random_state=1).reset_index(drop=True)
    got = point_in_time_stats(hist, rows, rows["timestamp"])
    for r, g in zip(rows.itertuples(), got.itertuples()):
        earlier = hist[hist["timestamp"] < r.timestamp]  # strictly before: same-time events are not history
        u, i = earlier[earlier["user_id"] == r.user_id], earlier[earlier["item_id"] == r.item_id]
        assert (g.user_n, g.user_pos, g.item_n, g.item_pos) == (len(u), u["label"].sum(), len(i), i["label"].sum())


def _snapshot(tmp_path, name, entity, ids, vectors, at, version):
    path = tmp_path / name / f"{entity}.parquet"
    return write_table(EmbeddingTable(entity, ids, np.asarray(vectors, np.float32), at, version), path)


def test_parquet_joiner_takes_latest_snapshot_not_after_row_time(tmp_path):
    t1, t2 = T0 + pd.Timedelta(days=10), T0 + pd.Timedelta(days=20)
    users = [_snapshot(tmp_path, s, "user", ["a"], [[float(k)]], t, f"v{k}") for k, (s, t) in enumerate([("s1", t1), ("s2", t2)], 1)]
    items = [_snapshot(tmp_path, s, "item", ["x"], [[float(k)]], t, f"v{k}") for k, (s, t) in enumerate([("s1", t1), ("s2", t2)], 1)]
    times = [T0, t1, t1 + pd.Timedelta(days=1), t2, t2 + pd.Timedelta(days=5)]
    entity = pd.DataFrame({"user_id": ["a"] * 5, "item_id": ["x"] * 5, "event_timestamp": times, "extra": range(5)})
    out = ParquetEmbeddingJoiner(users, items)(entity.iloc[::-1])  # order must be preserved, not re-sorted
    assert out["extra"].tolist() == [4, 3, 2, 1, 0]
    assert out["user_model_version"].tolist() == ["v2", "v2", "v1", "v1", None]
    assert [None if v is None else float(v[0]) for v in out["item_embedding"]] == [2.0, 2.0, 1.0, 1.0, None]
    # With a TTL (Feast's rule) a snapshot older than max_age no longer counts.
    ttl = ParquetEmbeddingJoiner(users, items, max_age=pd.Timedelta(days=3))(entity)
    assert ttl["user_model_version"].tolist() == [None, "v1", "v1", "v2", None]


@pytest.fixture(scope="module")
def world():
    return make_world(n_users=80, n_items=150, n_impressions=2500, seed=3)


def _config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(positive="rating >= 4"),
        split=PeriodsConfig(cut_quantile=0.8, valid_fraction=0.15),
        lgbm=LGBMConfig(max_rounds=60, early_stopping_rounds=10),
        dnn=DNNConfig(max_epochs=3, hidden=[32], aux_hidden=[16]),
        bootstrap=BootstrapConfig(n_resamples=50),
        num_threads=1,
    )


def test_no_leakage_from_the_evaluation_period(world, tmp_path):
    """Everything at or after the cut is rewritten: labels flipped, a LEARN model 'trained on the
    future' published after the cut. No feature and no prediction of any model may change."""
    cfg = _config()
    user_p, item_p = write_learn_snapshot(world, tmp_path / "past", world.start, "learn-past", user_ids=sorted(world.user_latent))
    clean = build_dataset(world.impressions, cfg.split, items=world.items, joiner=ParquetEmbeddingJoiner([user_p], [item_p]))
    cut = clean.periods.cut

    poisoned = world.impressions.copy()
    after = poisoned["timestamp"] >= cut
    poisoned.loc[after, "label"] = 1 - poisoned.loc[after, "label"]
    # Future item vectors that encode post-cut labels: a leak would make them very predictive.
    future_rate = poisoned[after].groupby("item_id")["label"].mean()
    leak = write_learn_snapshot(world, tmp_path / "future", cut + pd.Timedelta(seconds=1), "learn-future", noise=0.0, user_ids=sorted(world.user_latent))
    fut_items = pd.read_parquet(leak[1])
    leak_item = _snapshot(
        tmp_path, "future2", "item", fut_items["item_id"].tolist(),
        [[future_rate.get(i, 0.5)] * 8 for i in fut_items["item_id"]], cut + pd.Timedelta(seconds=1), "learn-future",
    )  # fmt: skip
    joiner = ParquetEmbeddingJoiner([user_p, leak[0]], [item_p, leak_item])
    dirty = build_dataset(poisoned, cfg.split, items=world.items, joiner=joiner)

    assert dirty.periods == clean.periods
    feature_cols = [c for c in clean.test.columns if c != "label"]
    for name in ("train", "valid", "test"):
        a, b = clean.split(name), dirty.split(name)
        cols = list(a.columns) if name != "test" else feature_cols
        pd.testing.assert_frame_equal(a[cols].drop(columns=["user_embedding", "item_embedding"]), b[cols].drop(columns=["user_embedding", "item_embedding"]))
        for col in ("user_embedding", "item_embedding"):
            assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a[col], b[col]))
        assert "learn-future" not in set(b["user_model_version"]) | set(b["item_model_version"])
    assert not np.array_equal(clean.test["label"], dirty.test["label"])

    for name, model in train_models(clean, cfg).items():
        other = train_models(dirty, dataclasses.replace(cfg, models=[name]))[name]
        np.testing.assert_array_equal(model.predict(clean.test), other.predict(dirty.test), err_msg=name)

    # Negative control: joined at the raw impression time (no clamp to the cut), the future
    # model *would* be read, so the assertions above are not vacuous.
    raw = poisoned[after].rename(columns={"timestamp": "event_timestamp"})
    assert "learn-future" in set(joiner(raw)["item_model_version"])


def test_statistics_freeze_at_the_cut(world):
    ds = build_dataset(world.impressions, _config().split, items=world.items)
    before = world.impressions[world.impressions["timestamp"] < ds.periods.cut]
    per_user = before.groupby("user_id").size()
    expected = ds.test["user_id"].map(per_user).fillna(0).astype(int)
    np.testing.assert_array_equal(ds.test["user_n"], expected)
    assert (ds.test["as_of"] == ds.periods.cut).all()


def test_unexpected_model_version_is_rejected(world, tmp_path):
    user_p, item_p = write_learn_snapshot(world, tmp_path, world.start, "v-other", user_ids=["u0", "u1"])
    with pytest.raises(LearnFeaturesError, match="model version 'v-other', expected 'v-cut'"):
        build_dataset(world.impressions, _config().split, joiner=ParquetEmbeddingJoiner([user_p], [item_p]), expected_model_version="v-cut")


def test_embeddings_newer_than_all_training_rows_are_a_clear_error(world, tmp_path):
    from ranking.features import fit_feature_spec

    cfg = _config()
    user_p, item_p = write_learn_snapshot(world, tmp_path, world.end, "late")
    ds = build_dataset(world.impressions, cfg.split, joiner=ParquetEmbeddingJoiner([user_p], [item_p]))
    assert ds.train["item_embedding"].isna().all()
    with pytest.raises(LearnFeaturesError, match="split.train_start"):
        fit_feature_spec(ds.train, [], False, with_learn=True, pca_dims=2)


# ---- "impression" mode: every feature as of the row's own time, strictly before it ----

SNAPSHOT_DIM = 4


def _honest_snapshots(history: pd.DataFrame, times: list[pd.Timestamp], out: Path, items: list[str]) -> tuple[list[Path], list[Path]]:
    """User-vector snapshots as ``embed-users`` makes them: the vector stamped T is a function of
    the user's events strictly before T (here their count and positive rate, so a label or an
    event at or after T would show). Items get one content vector per id in every snapshot."""
    item_vectors = np.random.default_rng(7).normal(size=(len(items), SNAPSHOT_DIM))
    users_p, items_p = [], []
    for k, t in enumerate(times):
        before = history[history["timestamp"] < t]
        stats = before.groupby("user_id")["label"].agg(["size", "mean"])
        if stats.empty:
            continue
        vectors = np.column_stack([np.log1p(stats["size"]), stats["mean"], np.ones(len(stats)), stats["mean"] ** 2])
        users_p.append(_snapshot(out, f"s{k}", "user", stats.index.astype(str).tolist(), vectors, t, "snap"))
        items_p.append(_snapshot(out, f"s{k}", "item", items, item_vectors, t, "snap"))
    return users_p, items_p


def _impression_dataset(impressions, history, out, times, split, items):
    users_p, items_p = _honest_snapshots(history, times, out, items)
    ds = build_dataset(impressions, split, history=history, joiner=ParquetEmbeddingJoiner(users_p, items_p), history_len=5)
    content = np.stack([np.random.default_rng(k).normal(size=12) for k in range(len(items))])
    return with_llm_frozen(with_random(ds, SNAPSHOT_DIM, 1), HistoryIndex.build(history), pd.Index(items), content, SNAPSHOT_DIM)


def _features_differ(a: RankingDataset, b: RankingDataset, upto: pd.Timestamp) -> list[str]:
    """(split, column) of every feature that differs between two datasets on rows at or before ``upto``."""
    found = []
    for name in ("train", "valid", "test"):
        x, y = a.split(name), b.split(name)
        x, y = x[x["timestamp"] <= upto], y[y["timestamp"] <= upto]
        assert x[["user_id", "item_id", "timestamp"]].equals(y[["user_id", "item_id", "timestamp"]])
        for col in (c for c in x.columns if c != "label"):
            same = [(p is None and q is None) or (p is not None and q is not None and np.array_equal(p, q, equal_nan=True))
                    if isinstance(p, np.ndarray) or isinstance(q, np.ndarray) or p is None or q is None
                    else (p == q or (pd.isna(p) and pd.isna(q)))
                    for p, q in zip(x[col], y[col])]  # fmt: skip
            if not all(same):
                found.append(f"{name}.{col}")
    return found


@pytest.mark.parametrize("where", ["training", "evaluation"])
def test_impression_mode_uses_nothing_at_or_after_the_row(world, tmp_path, monkeypatch, where):
    """Rewrite everything at or after a time T0 that is an impression's own time: flip every later
    label, add events at exactly T0 and later, and recompute the user-vector snapshots from the
    rewritten history (one is stamped exactly T0). Then no feature of any row at or before T0 may
    change: statistics, LEARN vectors, item-history similarity, control vectors. The negative
    control takes features 1 ns after the row's time and must be caught."""
    imp = world.impressions
    split = PeriodsConfig(cut=(imp["timestamp"].quantile(0.8)).isoformat(), valid_fraction=0.15, features_as_of="impression")
    periods = resolve_periods(validate_impressions(imp, "imp"), split)
    pick = imp["timestamp"] < periods.valid_start if where == "training" else imp["timestamp"] >= periods.cut
    t0 = imp.loc[pick, "timestamp"].iloc[len(imp.loc[pick]) // 2]
    row0 = imp[imp["timestamp"] == t0].iloc[0]
    times = sorted({*pd.date_range(imp["timestamp"].min(), imp["timestamp"].max(), periods=12), t0})
    items = sorted(world.item_latent)

    dirty_imp = imp.copy()
    later = dirty_imp["timestamp"] >= t0
    dirty_imp.loc[later, "label"] = 1 - dirty_imp.loc[later, "label"]
    extra = pd.DataFrame({"user_id": [row0["user_id"]] * 3, "item_id": ["i0", "i1", "i2"],
                          "timestamp": [t0, t0, t0 + pd.Timedelta(hours=1)], "label": [1, 1, 1]})  # fmt: skip
    dirty_hist = pd.concat([dirty_imp, extra], ignore_index=True).astype({"user_id": "string", "item_id": "string"})

    clean = _impression_dataset(imp, imp, tmp_path / "clean", times, split, items)
    dirty = _impression_dataset(dirty_imp, dirty_hist, tmp_path / "dirty", times, split, items)
    assert clean.periods == dirty.periods
    assert (clean.split("train")["as_of"] == clean.split("train")["timestamp"]).all()
    assert clean.split("test")["user_embedding"].notna().mean() > 0.9  # snapshots reach the evaluation rows
    assert _features_differ(clean, dirty, t0) == []
    assert _features_differ(clean, dirty, dirty_imp["timestamp"].max())  # later rows do change: the rewrite bites

    # Negative control: features taken 1 ns after the row's own time see its own event and the extra ones.
    leaky = lambda ts, cut, mode: ts + pd.Timedelta(nanoseconds=1)  # noqa: E731
    monkeypatch.setattr("ranking.dataset.feature_times", leaky)
    leaky_clean = _impression_dataset(imp, imp, tmp_path / "clean2", times, split, items)
    leaky_dirty = _impression_dataset(dirty_imp, dirty_hist, tmp_path / "dirty2", times, split, items)
    caught = _features_differ(leaky_clean, leaky_dirty, t0)
    assert {c.split(".")[1] for c in caught} >= {"user_n", "user_pos"}, caught
