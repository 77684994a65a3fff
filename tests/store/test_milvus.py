"""Candidates through Feast's own vector search, on embedded Milvus Lite (no server, no network).

Every test works on its own repo copy whose Milvus Lite database is a file under it. pymilvus
and milvus-lite come with the project's `dev` extra (through `milvus`), so these always run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import SyntheticRun, copy_repo, with_new_item_rule, write_config, write_run

from learn_features.cli import main
from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule
from learn_features.store.candidates import ItemIndex
from learn_features.store.materialize import materialize_publications
from learn_features.store.publish import publish_run
from learn_features.store.push import push_item_embeddings
from learn_features.store.repo import apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient

MOVIES = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small" / "movies.csv"
DIM = 64


def milvus_repo(root: Path, dim: int = DIM) -> tuple[Path, str]:
    """A repo copy with the shipped Milvus config, its embedding_dim set to ``dim``."""
    repo = copy_repo(root / "repo")
    config = write_config(repo, "feature_store.milvus.yaml", "feature_store.milvus-test.yaml", {"online_store.embedding_dim": dim})
    return repo, config


def published(root: Path, run: SyntheticRun, dim: int = DIM) -> tuple[Path, str]:
    repo, config = milvus_repo(root, dim)
    publish_run(run.run_dir, repo)
    apply_repo(open_store(repo, config), repo)
    materialize_publications(repo, config, quiet=True)
    return repo, config


def exact_top_k(run_items: dict[str, np.ndarray], user: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """Exact inner-product top-k with faiss (``store.candidates.ItemIndex``), ties by id."""
    ids = list(run_items)
    found = ItemIndex(ids, np.stack([run_items[i] for i in ids]), "v", metric="dot").top_k(user, len(ids))
    order = sorted(range(len(ids)), key=lambda r: (-found.scores[r], found.item_ids[r]))[:k]
    return [found.item_ids[r] for r in order], found.scores[order]


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, SyntheticRun]:
    """Random vectors for MovieLens' whole catalog (9,742 movies), materialized into Milvus Lite."""
    root = tmp_path_factory.mktemp("milvus")
    movies = pd.read_csv(MOVIES, usecols=["movieId"])["movieId"].astype(str).tolist()
    run = write_run(root / "v1", "v1", 8, 0, DIM, seed=0, item_ids=movies)
    repo, config = published(root, run)
    return repo, config, run


def test_candidates_are_the_exact_top_k_on_the_movielens_catalog(movielens: tuple[Path, str, SyntheticRun]) -> None:
    """FLAT index: the same items, order and scores as exact faiss, for every user, k = 100 and 500."""
    repo, config, run = movielens
    client = LearnFeatureClient(repo, config)
    for user, vector in run.users.items():
        for k in (100, 500):
            got = client.candidates(user, k)
            want_ids, want_scores = exact_top_k(run.items, vector, k)
            assert got.item_ids == want_ids and got.model_version == "v1" and got.dropped == 0
            np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-5)
    assert main(["verify-online", "--repo", str(repo), "-f", config, "-q"]) == 0


def test_a_pushed_item_is_retrievable_at_once(tmp_path: Path) -> None:
    run = write_run(tmp_path / "v1", "v1", 3, 200, 16, seed=1)
    repo, config = published(tmp_path, run, dim=16)
    client = LearnFeatureClient(repo, config)
    assert "new-item" not in client.candidates("u0", 10).item_ids
    best = (run.users["u0"] * 10).astype(np.float32)[None]  # scores above every catalog item for u0
    push_item_embeddings(repo, EmbeddingTable("item", ["new-item"], best, pd.Timestamp.now(tz="UTC"), "v1"), config)
    got = client.candidates("u0", 10)
    assert got.item_ids[0] == "new-item" and len(got.item_ids) == 10
    np.testing.assert_allclose(got.scores[0], float(best[0] @ run.users["u0"]), rtol=1e-5)


def test_items_of_another_model_version_are_never_candidates(tmp_path: Path) -> None:
    """After a rollout the store still serves the old version's items the new run lacks; they
    are left out of the search, a better-scoring one included, and a client pinned to the old
    version refuses the new user vector."""
    v1 = write_run(tmp_path / "v1", "v1", 3, 60, 16, seed=2)
    v2 = write_run(tmp_path / "v2", "v2", 3, 0, 16, seed=3, item_ids=[f"i{i}" for i in range(40)])  # i40..i59 stay v1
    old = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).isoformat()
    repo, config = milvus_repo(tmp_path, dim=16)
    publish_run(v1.run_dir, repo, event_time=old)
    apply_repo(open_store(repo, config), repo)
    materialize_publications(repo, config, quiet=True)
    publish_run(v2.run_dir, repo)
    materialize_publications(repo, config, quiet=True)
    user = v2.users["u0"]
    best_v1 = max((i for i in v1.items if int(i[1:]) >= 40), key=lambda i: float(v1.items[i] @ user))
    got = LearnFeatureClient(repo, config).candidates("u0", 60)
    assert got.model_version == "v2" and len(got.item_ids) == 40 and best_v1 not in got.item_ids
    assert got.item_ids == exact_top_k(v2.items, user, 40)[0]
    with pytest.raises(LearnFeaturesError, match="pinned to 'v1'"):
        LearnFeatureClient(repo, config, model_version="v1").candidates("u0", 5)


def test_clear_errors(movielens: tuple[Path, str, SyntheticRun], tmp_path: Path) -> None:
    repo, config, _ = movielens
    client = LearnFeatureClient(repo, config)
    with pytest.raises(LearnFeaturesError, match="user 'nobody' has no LEARN vector"):
        client.candidates("nobody", 10)
    with pytest.raises(LearnFeaturesError, match="k must be at least 1"):
        client.candidates("u0", 0)
    run = write_run(tmp_path / "v1", "v1", 2, 10, 16, seed=4)
    sqlite_repo = copy_repo(tmp_path / "sqlite")
    publish_run(run.run_dir, sqlite_repo)
    apply_repo(open_store(sqlite_repo), sqlite_repo)
    with pytest.raises(LearnFeaturesError, match="no vector search"):
        LearnFeatureClient(sqlite_repo).candidates("u0", 5)
    repo32, config32 = milvus_repo(tmp_path / "dim", dim=32)
    publish_run(run.run_dir, repo32)
    apply_repo(open_store(repo32, config32), repo32)
    with pytest.raises(LearnFeaturesError, match="embedding_dim is 32, but publication .* has 16-d vectors"):
        materialize_publications(repo32, config32)
    item = EmbeddingTable("item", ["new-item"], np.ones((1, 16), np.float32), pd.Timestamp.now(tz="UTC"), "v1")
    with pytest.raises(LearnFeaturesError, match="embedding_dim is 32, but this push has 16-d vectors"):
        push_item_embeddings(repo32, item, config32)


def test_candidates_rank_by_the_versions_new_item_rule(tmp_path: Path) -> None:
    """A version published with a rule: the warm and the new items are searched apart and ranked
    as ``ItemIndex`` ranks them (exactly, for a bias and for a share), a pushed item is found
    and counted new at once, and a share without the user's history is refused."""
    run = write_run(tmp_path / "v1", "v1", 4, 120, 16, seed=6)
    with_new_item_rule(run, NewItemRule("bias", 3.0), [f"i{i}" for i in range(90)])
    repo, config = published(tmp_path, run, dim=16)
    client = LearnFeatureClient(repo, config)

    def agree(k: int, history: list[str] | None = None) -> float:
        index = ItemIndex.from_published(repo)
        shown = []
        for user, vector in run.users.items():
            got, want = client.candidates(user, k, history), index.top_k(vector, k, history)
            assert got.item_ids == want.item_ids and got.new.tolist() == want.new.tolist() and got.dropped == 0
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
            shown.append(got.new.mean())
        return float(np.mean(shown))

    assert 0.0 < agree(15) < 1.0
    with pytest.raises(LearnFeaturesError, match="new-item bias of 3, chosen on dot-product scores"):
        LearnFeatureClient(repo, config, metric="cosine").candidates("u0", 5)
    push_item_embeddings(repo, EmbeddingTable("item", ["new-item"], run.users["u0"][None] * 10, pd.Timestamp.now(tz="UTC"), "v1"), config)
    got = client.candidates("u0", 5)
    assert got.item_ids[0] == "new-item" and got.new[0]
    agree(15)

    with_new_item_rule(run, NewItemRule("share", 1.0, window=2), [f"i{i}" for i in range(90)])
    assert publish_run(run.run_dir, repo).created  # the same vectors under another rule
    with pytest.raises(LearnFeaturesError, match="'share' rule, which reads the user's latest 2 history items"):
        client.candidates("u0", 5)
    assert agree(10, ["i0", "i100"]) == pytest.approx(0.5)
    assert agree(10, ["i100", "i0", "i1"]) == 0.0  # the new item fell out of the last 2
