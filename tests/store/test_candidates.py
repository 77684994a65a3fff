"""faiss candidate retrieval over published item embeddings, checked against brute force and,
under a new-item rule, against the evaluation's ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import copy_repo, with_new_item_rule, write_run

from learn_features.cli import main
from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule, NewItemsPolicy, recent_new_shares
from learn_features.retrieval import rank_scores
from learn_features.run import RunDir
from learn_features.store.candidates import ItemIndex
from learn_features.store.ledger import next_publish_time
from learn_features.store.publish import publish_run
from learn_features.store.push import record_push


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


def _catalog(n_items: int = 400, dim: int = 16, seed: int = 5) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Ids in catalog order, item vectors, warm mask (the first 80%) and 30 user vectors."""
    rng = np.random.default_rng(seed)
    ids = [f"i{i:04d}" for i in range(n_items)]
    return ids, rng.standard_normal((n_items, dim)).astype(np.float32), np.arange(n_items) < int(0.8 * n_items), rng.standard_normal((30, dim)).astype(np.float32)


def test_a_bias_rule_retrieves_what_the_evaluation_ranks() -> None:
    """With the version's bias, the index's top k is the evaluation's top k (``NewItemRule.apply``
    over the full score matrix), new items flagged; without it, new items are ranked as scored."""
    ids, items, warm, users = _catalog()
    rule = NewItemRule("bias", 3.0)
    index = ItemIndex(ids, items, "v1", policy=NewItemsPolicy(rule, frozenset(np.array(ids)[warm])))
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    none = [np.zeros(0, np.int64)] * len(users)
    evaluated = rank_scores(rule.apply(scores, warm, none, np.zeros(len(users)))[0], none, 20)
    found = index.search(users, 20)
    for cand, rows, user_scores in zip(found, evaluated, scores):
        assert cand.item_ids == [ids[r] for r in rows]
        np.testing.assert_allclose(cand.scores, user_scores[rows], rtol=1e-4, atol=1e-4)  # similarity, not similarity + bias
        np.testing.assert_array_equal(cand.new, ~warm[rows])
    shown = np.mean([c.new.mean() for c in found])
    assert 0.1 < shown < 0.9, f"bias 3.0 gave new items {shown:.0%} of the slots: the test cannot tell the rule from none"
    plain = ItemIndex(ids, items, "v1").search(users, 20)
    assert np.mean([np.isin(c.item_ids, np.array(ids)[~warm]).mean() for c in plain]) < shown and not any(c.new.any() for c in plain)


def test_a_share_rule_reads_each_users_history_as_the_evaluation_does() -> None:
    """``share``: each user's top k holds the evaluation's ranking up to ties of its rank keys, read
    from their history's recent new items; a user without any gets no new item; no history is refused."""
    ids, items, warm, users = _catalog()
    rule = NewItemRule("share", 1.5, window=4)
    index = ItemIndex(ids, items, "v1", policy=NewItemsPolicy(rule, frozenset(np.array(ids)[warm])))
    rng = np.random.default_rng(1)
    histories = [rng.choice(len(ids), size=6, replace=False) for _ in users]
    histories[0] = np.flatnonzero(warm)[:6]  # one user with no new item lately
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    none = [np.zeros(0, np.int64)] * len(users)
    recent = recent_new_shares(histories, warm, 4)
    keys = rule.apply(scores, warm, none, recent)[0]
    evaluated = rank_scores(keys, none, 10)
    found = index.search(users, 10, [[ids[r] for r in h] for h in histories])
    position = {item: row for row, item in enumerate(ids)}
    for user, (cand, rows) in enumerate(zip(found, evaluated)):
        rows_got = [position[i] for i in cand.item_ids]
        got = keys[user, rows_got]
        np.testing.assert_array_equal(np.sort(got), np.sort(keys[user, rows]))  # the same top 10, up to tied keys
        assert (np.diff(got) <= 0).all()
        np.testing.assert_array_equal(cand.new, ~warm[rows_got])
    assert not found[0].new.any() and recent[1:].max() > 0 and sum(c.new.sum() for c in found) > 0
    with pytest.raises(LearnFeaturesError, match="'share' reads the user's latest 4 history items"):
        index.top_k(users[0], 5)


def test_the_published_rule_travels_to_the_index_and_counts_pushed_items_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``publish`` carries the manifest's rule and warm items; ``from_published`` applies them,
    and an item pushed later is new to it. Republishing the same vectors with another rule is
    a new publication; with the same rule, a no-op. ``apply_new_item_rule=False`` opts out, and
    a bias is refused with cosine."""
    repo = copy_repo(tmp_path / "repo")
    run = write_run(tmp_path / "v1", "v1", 2, 30, 8, seed=3)
    with_new_item_rule(run, NewItemRule("bias", 0.5), [f"i{i}" for i in range(20)])
    assert main(["publish", "--run-dir", str(run.run_dir), "--repo", str(repo), "-q"]) == 0
    assert "new items ranked by the rule bias 0.5; ItemIndex and LearnFeatureClient.candidates apply it" in capsys.readouterr().out
    first = publish_run(run.run_dir, repo)
    assert not first.created and first.publication.new_item_rule == NewItemRule("bias", 0.5)
    index = ItemIndex.from_published(repo)
    assert index.policy is not None and index.policy.rule.value == 0.5 and index.new.sum() == 10
    best = index.top_k(run.users["u0"], 30)
    assert best.new.tolist() == [int(i[1:]) >= 20 for i in best.item_ids]
    assert ItemIndex.from_published(repo, apply_new_item_rule=False).policy is None
    with pytest.raises(LearnFeaturesError, match="bias of 0.5, chosen on dot-product scores"):
        ItemIndex.from_published(repo, metric="cosine")

    record_push(repo, EmbeddingTable("item", ["pushed"], np.ones((1, 8), np.float32), pd.Timestamp.now(tz="UTC"), "v1"), next_publish_time(repo))
    assert ItemIndex.from_published(repo).top_k(np.ones(8, np.float32), 1).item_ids == ["pushed"]
    assert ItemIndex.from_published(repo).top_k(np.ones(8, np.float32), 1).new.tolist() == [True]

    with_new_item_rule(run, NewItemRule("share", 1.0, window=3), [f"i{i}" for i in range(20)])
    again = publish_run(run.run_dir, repo)
    assert again.created and again.publication.digest == first.publication.digest
    assert ItemIndex.from_published(repo).policy.rule == NewItemRule("share", 1.0, window=3)


def test_a_manifest_rule_without_its_warm_items_is_refused(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    run = with_new_item_rule(write_run(tmp_path / "v1", "v1", 2, 10, 8, seed=3), NewItemRule("bias", 0.5), ["i0"])
    RunDir(run.run_dir).warm_items.unlink()
    with pytest.raises(LearnFeaturesError, match=r"names a new-item rule but .*warm_items.parquet is missing"):
        publish_run(run.run_dir, repo)
    assert not list((repo / "data" / "offline").glob("*/publication.json"))
