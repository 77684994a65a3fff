"""Rankers on a planted world: LEARN inputs must help, the auxiliary loss must be wired as
main + weight * aux, and online scoring must reproduce offline scores."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from learn_features.embeddings_io import read_frame
from learn_features.data.config import DataConfig
from ranking.config import BootstrapConfig, DNNConfig, ExperimentConfig, LGBMConfig, PeriodsConfig
from ranking.dataset import build_dataset
from ranking.joins import HISTORY_COLUMNS, STAT_COLUMNS
from ranking.dnn import DNNRanker, ranking_loss
from ranking.embeddings import FeastEmbeddingJoiner, ParquetEmbeddingJoiner
from ranking.experiment import train_models
from ranking.features import exact_pca, fit_feature_spec, pca_transform
from ranking.lgbm import TreeRanker
from ranking.metrics import auc
from ranking.scoring import score_candidates
from ranking.synthetic import make_world, write_learn_snapshot

CONFIG = ExperimentConfig(
    data=DataConfig(positive="rating >= 4"),
    split=PeriodsConfig(cut_quantile=0.8, valid_fraction=0.15),
    lgbm=LGBMConfig(max_rounds=300, early_stopping_rounds=30),
    dnn=DNNConfig(max_epochs=15),
    bootstrap=BootstrapConfig(n_resamples=50),
    num_threads=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    world = make_world(n_users=150, n_items=400, n_impressions=6000, seed=0)
    out = tmp_path_factory.mktemp("learn")
    user_p, item_p = write_learn_snapshot(world, out, world.start, "v1", user_ids=sorted(world.user_latent))
    ds = build_dataset(world.impressions, CONFIG.split, items=world.items, joiner=ParquetEmbeddingJoiner([user_p], [item_p]))
    return ds, train_models(ds, CONFIG), (user_p, item_p)


def test_learn_rankers_beat_id_baselines_on_planted_signal(trained):
    ds, rankers, _ = trained
    y = ds.test["label"].to_numpy()
    scores = {name: auc(y, r.predict(ds.test)) for name, r in rankers.items()}
    assert scores["dnn_learn"] > scores["dnn_baseline"] + 0.03, scores
    assert scores["lgbm_learn"] > scores["lgbm_baseline"] + 0.03, scores


def test_total_loss_is_main_plus_weighted_aux(trained):
    ds, rankers, _ = trained
    ranker = rankers["dnn_learn"]
    batch = ranker.tensors(ds.valid.head(64))
    labels = torch.from_numpy(ds.valid["label"].head(64).to_numpy(np.float32))
    ranker.net.eval()
    for weight in (0.0, 0.5, 2.0):
        parts = ranking_loss(ranker.net, batch, labels, weight)
        assert parts.aux is not None
        torch.testing.assert_close(parts.total, parts.main + weight * parts.aux)
    # With weight 0 the auxiliary head gets no gradient; with weight > 0 it does.
    for weight, expect_grad in ((0.0, False), (1.0, True)):
        ranker.net.zero_grad()
        ranking_loss(ranker.net, batch, labels, weight).total.backward()
        grad = ranker.net.aux.head.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect_grad
    ranker.net.zero_grad()
    assert ranking_loss(rankers["dnn_baseline"].net, rankers["dnn_baseline"].tensors(ds.valid.head(8)), labels[:8], 1.0).aux is None


def test_main_tower_reads_fusion_and_raw_learn_embeddings(trained):
    ds, rankers, _ = trained
    net = rankers["dnn_learn"].net
    spec = rankers["dnn_learn"].spec
    cfg = CONFIG.dnn
    first = net.tower[0]
    assert first.in_features == 2 * cfg.id_dim + len(spec.dense_names) + cfg.fusion_dim + 2 * spec.learn_dim + 2


def test_dnn_training_is_deterministic(trained):
    ds, _, _ = trained
    spec = fit_feature_spec(ds.train, ds.item_numeric_columns, ds.has_genres, True, 2)
    cfg = DNNConfig(max_epochs=2, hidden=[16], aux_hidden=[8])
    a = DNNRanker(cfg, spec, "learn", seed=7, num_threads=1).fit(ds.train, ds.valid).predict(ds.test)
    b = DNNRanker(cfg, spec, "learn", seed=7, num_threads=1).fit(ds.train, ds.valid).predict(ds.test)
    np.testing.assert_array_equal(a, b)


def _one_user_candidates(ds):
    test = ds.test
    user = test["user_id"].value_counts().index[0]
    return user, test[test["user_id"] == user].reset_index(drop=True)


@pytest.mark.parametrize("name", ["dnn_learn", "lgbm_learn"])
def test_online_scoring_from_vectors_equals_offline(trained, name):
    """Vectors read straight from the published snapshot (what an online store holds) plus the
    id/statistics features reproduce the offline scores exactly."""
    ds, rankers, (user_p, item_p) = trained
    user, rows = _one_user_candidates(ds)
    users = read_frame(user_p, "user").set_index("user_id")["embedding"]
    items = read_frame(item_p, "item").set_index("item_id")["embedding"]
    id_features = rows[[*STAT_COLUMNS, *HISTORY_COLUMNS, "genres", "year"]]
    online = score_candidates(rankers[name], user, users[user], rows["item_id"].tolist(), [items[i] for i in rows["item_id"]], id_features)
    np.testing.assert_allclose(online, rankers[name].predict(rows), rtol=0, atol=1e-7)
    # The check has teeth: a different user vector changes the scores.
    other = score_candidates(rankers[name], user, users[user] + 1.0, rows["item_id"].tolist(), [items[i] for i in rows["item_id"]], id_features)
    assert not np.allclose(other, online)


def test_feast_joiner_restores_row_order(monkeypatch, tmp_path, trained):
    """Feast does not promise row order; the joiner contract is checked with a shuffling stand-in
    for ``historical_learn_features`` built on the Parquet join."""
    ds, _, (user_p, item_p) = trained
    parquet = ParquetEmbeddingJoiner([user_p], [item_p])
    calls = []

    def historical_learn_features(repo_path, entity_df):
        calls.append(repo_path)
        return parquet(entity_df).sample(frac=1.0, random_state=0)

    monkeypatch.setitem(sys.modules, "learn_features.store.historical", types.SimpleNamespace(historical_learn_features=historical_learn_features))
    via_feast = build_dataset(ds.train.head(300)[["user_id", "item_id", "timestamp", "label"]], CONFIG.split, joiner=FeastEmbeddingJoiner(tmp_path))
    direct = build_dataset(ds.train.head(300)[["user_id", "item_id", "timestamp", "label"]], CONFIG.split, joiner=parquet)
    assert calls == [tmp_path, tmp_path]  # the rows, then the one model version's item vectors for the history
    for name in ("train", "valid", "test"):
        a, b = via_feast.split(name), direct.split(name)
        assert a["item_id"].tolist() == b["item_id"].tolist()
        assert all(np.array_equal(x, y) for x, y in zip(a["item_embedding"], b["item_embedding"]))
        np.testing.assert_array_equal(a["learn_history_cosine"], b["learn_history_cosine"])



def _low_rank_rows(n: int = 10_000, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(1)
    rows = (rng.normal(size=(n, 8)) @ rng.normal(size=(8, dim)) + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _pca_features_under(threads: int, rows: np.ndarray) -> np.ndarray:
    with threadpool_limits(limits=threads, user_api="blas"):  # what OMP_NUM_THREADS or the core count would set
        return pca_transform(exact_pca(rows, 4), rows)


def test_pca_features_do_not_depend_on_the_blas_thread_count(monkeypatch):
    """LightGBM + LEARN moved by 0.8 pp UAUC between runs on identical inputs because PCA's
    covariance product rounds differently with 1 and 2 BLAS threads (docs/ranking.md). The
    PCA features must be the same bits whatever thread count the machine gives BLAS."""
    rows = _low_rank_rows()
    np.testing.assert_array_equal(_pca_features_under(1, rows), _pca_features_under(2, rows))
    if (os.cpu_count() or 1) >= 2:  # negative control: without the pin, the bits follow the thread count
        monkeypatch.setattr("ranking.features.threadpool_limits", lambda **_: contextlib.nullcontext())
        assert not np.array_equal(_pca_features_under(1, rows), _pca_features_under(2, rows))


def test_lightgbm_seeds_differ_only_with_subsampling(trained):
    """Without subsampling every seed trains the same trees (the seed spread is 0 and says
    nothing); with it, the seed draws from LightGBM's run-to-run spread, and a seed is still
    reproducible."""
    ds, _, _ = trained
    spec = fit_feature_spec(ds.train, ds.item_numeric_columns, ds.has_genres, True, 2)

    def scores(cfg, seed):
        return TreeRanker(cfg, spec, True, seed, 1).fit(ds.train, ds.valid).predict(ds.test)

    plain = LGBMConfig(max_rounds=40, early_stopping_rounds=10)
    np.testing.assert_array_equal(scores(plain, 0), scores(plain, 1))
    sub = dataclasses.replace(plain, feature_fraction=0.8, bagging_fraction=0.8, bagging_freq=1)
    np.testing.assert_array_equal(scores(sub, 0), scores(sub, 0))
    assert not np.array_equal(scores(sub, 0), scores(sub, 1))


def test_arm_inputs_built_once_equal_fresh_ones_and_survive_every_seed(trained):
    """The experiment featurizes each arm once and trains every seed on it: the shared inputs
    must equal what each ranker would build itself, and fitting must not write to them."""
    from ranking.experiment import arm_inputs, feature_specs

    ds, rankers, _ = trained
    config = dataclasses.replace(CONFIG, lgbm=LGBMConfig(max_rounds=5), dnn=DNNConfig(max_epochs=1))
    specs = feature_specs(ds, config)
    inputs = arm_inputs(ds, config, specs)
    for name in config.models:
        ranker = rankers[name]
        fresh = ranker.features if isinstance(ranker, TreeRanker) else ranker.tensors
        for period in ("train", "valid", "test"):
            shared, frame = getattr(inputs[name], period), ds.split(period)
            np.testing.assert_array_equal(shared.labels, frame["label"].to_numpy())
            expected = fresh(frame)
            if isinstance(expected, dict):
                assert shared.inputs.keys() == expected.keys()
                for key in expected:
                    torch.testing.assert_close(shared.inputs[key], expected[key], rtol=0, atol=0)
            else:
                pd.testing.assert_frame_equal(shared.inputs, expected, check_exact=True)
    before = {name: copy.deepcopy(inputs[name]) for name in config.models}
    for seed in (0, 1):
        for name, ranker in train_models(ds, config, seed, specs, inputs).items():
            shared = ranker.predict_inputs(inputs[name].test.inputs)
            np.testing.assert_array_equal(shared, ranker.predict(ds.test), err_msg=f"{name} seed {seed}")
    for name in config.models:
        for period in ("train", "valid", "test"):
            old, new = getattr(before[name], period).inputs, getattr(inputs[name], period).inputs
            if isinstance(old, dict):
                assert all(torch.equal(old[k], new[k]) for k in old), f"{name} {period} inputs were written to"
            else:
                pd.testing.assert_frame_equal(old, new, check_exact=True)
