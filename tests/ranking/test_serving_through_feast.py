"""Serving check through Feast: a LEARN ranker trained on features joined offline with
``get_historical_features`` scores candidates from vectors read online with
``LearnFeatureClient`` and gets exactly the offline scores."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("feast")
from feast_fixtures import copy_repo  # noqa: E402  (tests/ helper, on sys.path via conftest)

from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, write_table  # noqa: E402
from learn_features.store.commit import EntityVectors, commit_publication  # noqa: E402
from learn_features.store.publish import publish_run  # noqa: E402
from learn_features.store.repo import apply_repo, open_store  # noqa: E402
from learn_features.store.serving import LearnFeatureClient  # noqa: E402
from learn_features.data.config import DataConfig  # noqa: E402
from ranking.config import BootstrapConfig, DNNConfig, ExperimentConfig, LGBMConfig, PeriodsConfig  # noqa: E402
from ranking.dataset import build_dataset  # noqa: E402
from ranking.joins import HISTORY_COLUMNS, STAT_COLUMNS  # noqa: E402
from ranking.embeddings import FeastEmbeddingJoiner, ParquetEmbeddingJoiner  # noqa: E402
from ranking.experiment import train_models  # noqa: E402
from ranking.scoring import score_candidates  # noqa: E402
from ranking.synthetic import make_world, write_learn_snapshot  # noqa: E402

CONFIG = ExperimentConfig(
    data=DataConfig(positive="rating >= 4"),
    split=PeriodsConfig(cut_quantile=0.8, valid_fraction=0.15),
    models=["lgbm_learn", "dnn_learn"],
    lgbm=LGBMConfig(max_rounds=60, early_stopping_rounds=10),
    dnn=DNNConfig(max_epochs=3, hidden=[32], aux_hidden=[16]),
    bootstrap=BootstrapConfig(n_resamples=10),
    num_threads=1,
)


@pytest.fixture(scope="module")
def feast_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking_feast")
    world = make_world(n_users=40, n_items=80, n_impressions=1200, seed=4)
    run = root / "run"
    users_p, items_p = write_learn_snapshot(world, run / "embeddings", world.start, "learn-serve", user_ids=sorted(world.user_latent)[:35])
    (run / "embeddings" / "manifest.json").write_text(json.dumps({"model_version": "learn-serve", "dim": 8, "as_of": world.start.isoformat(), "created_at": world.end.isoformat()}))
    repo = copy_repo(root / "repo")
    publish_run(run, repo, event_time="as-of")  # stamped with the LEARN data cut, not wall-clock time
    store = open_store(repo)
    apply_repo(store, repo)
    store.materialize(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(seconds=1))
    dataset = build_dataset(world.impressions, CONFIG.split, items=world.items, joiner=FeastEmbeddingJoiner(repo))
    return world, repo, dataset, ParquetEmbeddingJoiner([users_p], [items_p])


def test_feast_historical_join_equals_parquet_join(feast_world):
    world, _, via_feast, parquet = feast_world
    direct = build_dataset(world.impressions, CONFIG.split, items=world.items, joiner=parquet)
    for name in ("train", "valid", "test"):
        a, b = via_feast.split(name), direct.split(name)
        for col in ("user_embedding", "item_embedding"):
            assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a[col], b[col])), (name, col)
    assert via_feast.test["user_embedding"].isna().any()  # users without a vector stay None (cold start)


def test_online_scores_from_learn_feature_client_equal_offline(feast_world):
    _, repo, dataset, _ = feast_world
    rankers = train_models(dataset, CONFIG)
    client = LearnFeatureClient(repo)
    test = dataset.test
    # One user with a LEARN vector and one without: both paths must agree in both cases.
    with_vec = test[test["user_embedding"].notna()]["user_id"].value_counts().index[0]
    without = test[test["user_embedding"].isna()]["user_id"].value_counts().index[0]
    for user in (with_vec, without):
        rows = test[test["user_id"] == user].reset_index(drop=True)
        online = client.score(user, rows["item_id"].tolist())
        assert online.user_missing == (user == without)
        item_vectors = [None if miss else vec for miss, vec in zip(online.missing, online.item_vectors)]
        for name, ranker in rankers.items():
            served = score_candidates(ranker, user, online.user_vector, online.item_ids, item_vectors, rows[[*STAT_COLUMNS, *HISTORY_COLUMNS, "genres", "year"]])
            np.testing.assert_allclose(served, ranker.predict(rows), rtol=0, atol=1e-7, err_msg=f"{name} user {user}")


def test_impression_mode_feast_and_parquet_joins_agree_over_snapshots(tmp_path):
    """User-vector snapshots of one model (a schedule, as ``embed-users`` writes it) published at
    several times: in "impression" mode, every row's LEARN vectors and item-history similarity
    through Feast's ``get_historical_features`` equal the Parquet join's, bit for bit."""
    world = make_world(n_users=40, n_items=80, n_impressions=1200, seed=6)
    rng = np.random.default_rng(0)
    items = sorted(world.item_latent)
    item_vectors = rng.normal(size=(len(items), 8)).astype(np.float32)
    times = list(pd.date_range(world.start, world.end, periods=6))
    repo = copy_repo(tmp_path / "repo")
    users_p, items_p = [], []
    for k, t in enumerate(times[:-1]):
        users = sorted(world.impressions.loc[world.impressions["timestamp"] < t, "user_id"].unique()) or ["u0"]
        user_vectors = rng.normal(size=(len(users), 8)).astype(np.float32)
        tables = {"user": EntityVectors.sorted(users, user_vectors), "item": EntityVectors.sorted(items, item_vectors)}
        commit_publication(repo, "full", "learn-snap", tables, t, f"snapshot {k}")
        users_p.append(write_table(EmbeddingTable("user", users, user_vectors, t, "learn-snap"), tmp_path / f"s{k}" / USER_FILE))
        items_p.append(write_table(EmbeddingTable("item", items, item_vectors, t, "learn-snap"), tmp_path / f"s{k}" / ITEM_FILE))
    apply_repo(open_store(repo), repo)
    split = dataclasses.replace(CONFIG.split, features_as_of="impression")
    via_feast = build_dataset(world.impressions, split, items=world.items, joiner=FeastEmbeddingJoiner(repo), history_len=5)
    direct = build_dataset(world.impressions, split, items=world.items, joiner=ParquetEmbeddingJoiner(users_p, items_p), history_len=5)
    for name in ("train", "valid", "test"):
        a, b = via_feast.split(name), direct.split(name)
        assert (a["as_of"] == a["timestamp"]).all()
        for col in ("user_embedding", "item_embedding"):
            assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a[col], b[col])), (name, col)
        np.testing.assert_array_equal(a["learn_history_cosine"], b["learn_history_cosine"])
    # Rows join different snapshots: the same user has different vectors at different times.
    test = direct.test[direct.test["user_embedding"].notna()]
    per_user = test.groupby("user_id")["user_embedding"].agg(lambda vs: len({v.tobytes() for v in vs}))
    assert (per_user > 1).any()
