"""faiss candidate retrieval over published item embeddings, checked against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from feast_fixtures import copy_repo, write_run

from learn_features.errors import LearnFeaturesError
from learn_features.store.candidates import ItemIndex
from learn_features.store.publish import publish_run


def _brute_force(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_top_k_matches_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    ids = [f"i{i}" for i in range(len(items))]
    index = ItemIndex(ids, items, "v1", metric=metric)  # type: ignore[arg-type]
    if metric == "cosine":
        items = items / np.linalg.norm(items, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    want_rows, want_scores = _brute_force(items, queries, 10)
    got = index.search(queries, 10)
    for cand, rows, scores in zip(got, want_rows, want_scores):
        np.testing.assert_allclose(cand.scores, scores, rtol=1e-4, atol=1e-5)
        gaps = np.abs(np.diff(scores)) > 1e-4  # compare ids only where the order is unambiguous
        sure = np.concatenate([[True], gaps]) & np.concatenate([gaps, [True]])
        assert [c for c, s in zip(cand.item_ids, sure) if s] == [ids[r] for r, s in zip(rows, sure) if s]


def test_from_published_uses_the_active_version(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    v1 = write_run(tmp_path / "v1", "v1", 2, 40, 8, seed=1)
    v2 = write_run(tmp_path / "v2", "v2", 2, 25, 8, seed=2)
    publish_run(v1.run_dir, repo)
    publish_run(v2.run_dir, repo)
    index = ItemIndex.from_published(repo)
    assert (index.model_version, len(index), index.dim) == ("v2", 25, 8)
    user = v2.users["u0"]
    ids = list(v2.items)
    rows, _ = _brute_force(np.stack([v2.items[i] for i in ids]), user[None], 5)
    assert index.top_k(user, 5).item_ids == [ids[r] for r in rows[0]]
    assert len(ItemIndex.from_published(repo, model_version="v1")) == 40


def test_small_catalog_and_bad_queries() -> None:
    index = ItemIndex(["a", "b"], np.eye(2, dtype=np.float32), "v1")
    assert index.top_k(np.array([0.0, 1.0]), 10).item_ids == ["b", "a"]
    with pytest.raises(LearnFeaturesError, match=r"expected \(n, 2\)"):
        index.top_k(np.ones(3), 1)
    with pytest.raises(LearnFeaturesError, match="NaN"):
        index.top_k(np.array([np.nan, 1.0]), 1)
    with pytest.raises(LearnFeaturesError, match="k must be positive"):
        index.top_k(np.ones(2), 0)
    with pytest.raises(LearnFeaturesError, match="'b': zero vector"):
        ItemIndex(["a", "b"], np.array([[1, 0], [0, 0]], np.float32), "v1", metric="cosine")


def test_nothing_published(tmp_path: Path) -> None:
    with pytest.raises(LearnFeaturesError, match="nothing published yet"):
        ItemIndex.from_published(copy_repo(tmp_path / "repo"))
