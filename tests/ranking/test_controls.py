"""History windows, the control arms' vectors, and when a difference counts as a lift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from learn_features.embeddings_io import ITEM_FILE, EmbeddingTable, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.pch.content_store import write_content_store
from ranking.bootstrap import PairedDelta
from ranking.config import PeriodsConfig
from ranking.controls import load_content, random_unit_vectors, with_llm_frozen, with_random
from ranking.dataset import build_dataset
from ranking.embeddings import ParquetEmbeddingJoiner
from ranking.features import present
from ranking.history import HistoryIndex
from ranking.seeds import SeedPaired, verdict
from ranking.synthetic import make_world, write_learn_snapshot

T0 = pd.Timestamp("2021-01-01", tz="UTC")


def _loop_last_n_mean(history: pd.DataFrame, user: str, as_of: pd.Timestamp, vectors: dict[str, np.ndarray], n: int):
    events = history[(history["user_id"] == user) & (history["timestamp"] < as_of)]
    events = events.sort_values(["timestamp", "item_id"], kind="mergesort").tail(n)
    known = [vectors[i] for i in events["item_id"] if i in vectors]
    return (np.mean(known, axis=0), len(known)) if known else (np.zeros(3), 0)


def test_last_n_mean_is_the_towers_window_strictly_before_as_of():
    rng = np.random.default_rng(0)
    n_events = 300
    history = pd.DataFrame(
        {
            "user_id": rng.integers(0, 12, n_events).astype(str),
            "item_id": rng.integers(0, 30, n_events).astype(str),
            "timestamp": T0 + pd.to_timedelta(rng.integers(0, 25, n_events), unit="D"),  # many equal times
        }
    )
    vectors = {str(i): rng.normal(size=3) for i in range(25)}  # items 25..29 have no vector
    index = HistoryIndex.build(history)
    event_vectors = np.stack([vectors.get(i, np.zeros(3)) for i in index.item_ids])
    known = np.array([i in vectors for i in index.item_ids])
    rows = pd.DataFrame({"user_id": [*rng.integers(0, 14, 80).astype(str)],  # users 12, 13: no history
                         "as_of": T0 + pd.to_timedelta(rng.integers(0, 27, 80), unit="D")})  # fmt: skip
    means, used = index.last_n_mean(rows["user_id"], rows["as_of"], event_vectors, known, 4)
    for k, row in rows.iterrows():
        expected, count = _loop_last_n_mean(history, row["user_id"], row["as_of"], vectors, 4)
        assert used[k] == count
        np.testing.assert_allclose(means[k], expected, atol=1e-12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    world = make_world(n_users=60, n_items=120, n_impressions=2000, seed=5)
    learn_cut = world.start + pd.Timedelta(days=20)
    users_p, items_p = write_learn_snapshot(world, root / "embeddings", learn_cut, "v1")  # users with a past at the cut
    split = PeriodsConfig(cut_quantile=0.8, valid_fraction=0.2, train_start=learn_cut.isoformat(), features_as_of="impression")
    ds = build_dataset(world.impressions, split, items=world.items, joiner=ParquetEmbeddingJoiner([users_p], [items_p]), history_len=6)
    return world, ds, root


def test_control_vectors_have_the_learn_arms_coverage_dimension_and_norm(dataset):
    world, ds, _ = dataset
    items = pd.Index(sorted(world.item_latent))
    content = np.random.default_rng(1).normal(size=(len(items), 20))
    out = with_random(with_llm_frozen(ds, HistoryIndex.build(world.impressions), items, content, 8), 8, seed=3)
    for name in ("train", "valid", "test"):
        frame = out.split(name)
        for entity in ("user", "item"):
            learn = present(frame, f"{entity}_embedding")
            assert 0 < learn.sum() and (entity == "item" or not learn.all())  # users who arrived later have none
            for control in ("llm_frozen", "random"):
                column = f"{entity}_{control}"
                np.testing.assert_array_equal(present(frame, column), learn, err_msg=f"{name} {column}")
                norms = [np.linalg.norm(v) for v in frame[column] if v is not None]
                assert {len(v) for v in frame[column] if v is not None} == {8}
                np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_frozen_llm_vectors_are_pca_of_content_fitted_on_training_items(dataset):
    world, ds, _ = dataset
    items = pd.Index(sorted(world.item_latent))
    content = np.random.default_rng(2).normal(size=(len(items), 20))
    history = world.impressions
    out = with_llm_frozen(ds, HistoryIndex.build(history), items, content, 8)
    train_items = items.get_indexer(pd.unique(ds.train["item_id"]))
    pca = PCA(n_components=8, svd_solver="full").fit(content[np.sort(train_items)])
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    test = out.test
    for k in np.flatnonzero(present(test, "user_llm_frozen"))[:25]:
        row = test.iloc[k]
        np.testing.assert_allclose(test["item_llm_frozen"].iat[k], unit(pca.transform(content[[items.get_loc(row["item_id"])]])[0]), atol=1e-5)
        mean, count = _loop_last_n_mean(history, row["user_id"], row["as_of"], dict(zip(items, content)), 6)
        assert count > 0
        np.testing.assert_allclose(test["user_llm_frozen"].iat[k], unit(pca.transform(mean[None])[0]), atol=1e-5)
    # Changing the content of items never seen in training leaves the PCA (hence every item vector of training items) alone.
    unseen = np.setdiff1d(np.arange(len(items)), train_items)
    moved = content.copy()
    moved[unseen] += 5.0
    again = with_llm_frozen(ds, HistoryIndex.build(history), items, moved, 8)
    seen_rows = present(out.train, "item_llm_frozen")
    for a, b in zip(out.train["item_llm_frozen"][seen_rows], again.train["item_llm_frozen"][seen_rows]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_random_vectors_depend_on_the_id_and_their_seed_only():
    ids = pd.Series(["a", "b", "a", "c"])
    first = random_unit_vectors(ids, "user", 5, seed=1)
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(random_unit_vectors(ids[::-1].reset_index(drop=True), "user", 5, seed=1)[::-1], first)
    assert not np.allclose(random_unit_vectors(ids, "item", 5, seed=1), first)  # users and items draw apart
    assert not np.allclose(random_unit_vectors(ids, "user", 5, seed=2), first)


def test_content_store_must_be_aligned_to_the_runs_item_table(dataset, tmp_path):
    world, _, root = dataset
    items = sorted(world.item_latent)
    run = tmp_path / "run"
    write_table(EmbeddingTable("item", items, np.ones((len(items), 2), np.float32), T0, "v"), run / "embeddings" / ITEM_FILE)
    content = np.random.default_rng(0).normal(size=(len(items), 6)).astype(np.float32)
    write_content_store(tmp_path / "aligned", [content], items, {})
    ids, unit = load_content(tmp_path / "aligned", run)
    assert ids.tolist() == items
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-3)
    write_content_store(tmp_path / "shuffled", [content], items[::-1], {})
    with pytest.raises(LearnFeaturesError, match=r"shuffled: content store rows are not aligned to .*item_embeddings\.parquet"):
        load_content(tmp_path / "shuffled", run)


def _boot(low: float, high: float) -> PairedDelta:
    return PairedDelta(0.6, 0.61, (low + high) / 2, low, high, 100)


def test_a_lift_needs_both_the_seed_spread_and_the_bootstrap():
    steady = SeedPaired([2.0, 2.5, 1.5, 2.2, 1.8])  # mean 2.0, SD 0.38
    noisy = SeedPaired([3.4, -1.5, 0.5, 2.0, -0.4])  # the kind of spread
    assert steady.beyond_noise is True and noisy.beyond_noise is False
    assert verdict(steady, _boot(0.5, 3.5))[0] == "lift"
    assert verdict(steady, _boot(-0.5, 3.5)) == ("not shown", "seed-paired +2.00 ± 0.38 pp (beyond 2 SD); bootstrap [-0.50, +3.50] includes 0")
    assert verdict(noisy, _boot(0.5, 3.5))[0] == "not shown"
    assert verdict(SeedPaired([-2.0, -2.5, -1.5]), _boot(-3.0, -1.0))[0] == "worse"
    assert verdict(SeedPaired([3.4]), _boot(1.0, 5.0)) == ("not shown", "one seed: no seed spread to judge against")
    deterministic = SeedPaired([-2.27] * 5)  # LightGBM without subsampling: every seed the same trees
    assert deterministic.beyond_noise is None and verdict(deterministic, _boot(-4.8, -0.1))[0] == "not shown"
    assert SeedPaired.of([0.60, 0.62], [0.63, 0.61]).deltas_pp == pytest.approx([3.0, -1.0])
