"""Online serving through Feast (SQLite online store): exact vectors, scores and flags, pushes."""

from __future__ import annotations

import argparse
import sys
import types
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import SyntheticRun, copy_repo, manifest, write_run

from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.store.cli import register
from learn_features.store.ledger import active_publication, list_publications
from learn_features.store.publish import publish_run
from learn_features.store.published import read_published
from learn_features.store.repo import apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient

DIM = 16


@dataclass
class Served:
    repo: Path
    run: SyntheticRun
    client: LearnFeatureClient


def materialize(repo: Path, config: str | None = None) -> None:
    store = open_store(repo, config)
    store.materialize(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(seconds=1))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("serving")
    repo = copy_repo(root / "repo")
    run = write_run(root / "v1", "v1", 12, 30, DIM, seed=0)
    publish_run(run.run_dir, repo)
    apply_repo(open_store(repo), repo)
    materialize(repo)
    return Served(repo, run, LearnFeatureClient(repo))


def test_vectors_round_trip_bit_for_bit_and_scores_are_dot_products(served: Served) -> None:
    items = ["i3", "i0", "i29", "i3"]
    res = served.client.score("u5", items)
    assert res.user_vector is not None and res.user_vector.tobytes() == served.run.users["u5"].tobytes()
    expected = np.stack([served.run.items[i] for i in items])
    assert res.item_vectors.dtype == np.float32 and res.item_vectors.tobytes() == expected.tobytes()
    np.testing.assert_allclose(res.scores, expected @ served.run.users["u5"], rtol=1e-6)
    assert res.model_version == res.user_model_version == "v1" and res.item_model_versions == ["v1"] * 4
    assert not (res.missing.any() or res.stale.any() or res.version_mismatch.any() or res.user_stale)
    assert res.scorable.all()


def test_unknown_ids_are_flagged_missing_never_zero(served: Served) -> None:
    res = served.client.score("u1", ["i1", "no-such-item", "", "i2"])
    assert res.missing.tolist() == [False, True, True, False]
    assert np.isnan(res.item_vectors[[1, 2]]).all() and np.isnan(res.scores[[1, 2]]).all()
    assert res.item_model_versions == ["v1", None, None, "v1"]
    assert res.scorable.tolist() == [True, False, False, True]

    nobody = served.client.score("no-such-user", ["i1"])
    assert nobody.user_missing and nobody.user_vector is None and np.isnan(nobody.scores).all()
    assert nobody.item_vectors[0].tobytes() == served.run.items["i1"].tobytes()

    empty = served.client.score("u1", [])
    assert empty.scores.shape == (0,) and empty.item_vectors.shape == (0, DIM) and not empty.user_missing


def test_cosine_metric(served: Served) -> None:
    res = LearnFeatureClient(served.repo, metric="cosine").score("u2", ["i4", "i5"])
    u = served.run.users["u2"]
    expected = [served.run.items[i] @ u / np.linalg.norm(served.run.items[i]) / np.linalg.norm(u) for i in ("i4", "i5")]
    np.testing.assert_allclose(res.scores, expected, rtol=1e-5)


def test_unapplied_repo_and_bad_metric_are_clear_errors(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    with pytest.raises(LearnFeaturesError, match=r"feature_store\.yaml: reading the Feast registry failed.*feast apply"):
        LearnFeatureClient(repo)
    with pytest.raises(LearnFeaturesError, match="metric"):
        LearnFeatureClient(repo, metric="l2")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticRun, SyntheticRun]:
    """v1 published ten days ago for i0..i9; v2 now, for i0..i4 only (i5..i9 left behind)."""
    root = tmp_path_factory.mktemp("rollout")
    repo = copy_repo(root / "repo")
    v1 = write_run(root / "v1", "v1", 3, 10, DIM, seed=1)
    v2 = write_run(root / "v2", "v2", 3, 0, DIM, seed=2, item_ids=[f"i{i}" for i in range(5)])
    old = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=10)).isoformat()
    publish_run(v1.run_dir, repo, event_time=old)
    apply_repo(open_store(repo), repo)
    materialize(repo)
    publish_run(v2.run_dir, repo)
    materialize(repo)
    return repo, v1, v2


def test_rollout_never_combines_versions(rolled: tuple[Path, SyntheticRun, SyntheticRun]) -> None:
    repo, v1, v2 = rolled
    items = ["i0", "i4", "i5", "i9"]
    res = LearnFeatureClient(repo).score("u0", items)
    assert res.user_model_version == "v2" and res.model_version == "v2"
    assert res.item_model_versions == ["v2", "v2", "v1", "v1"]
    assert res.version_mismatch.tolist() == [False, False, True, True]
    assert not res.missing.any()
    assert np.isnan(res.scores[2:]).all() and np.isnan(res.item_vectors[2:]).all()
    np.testing.assert_allclose(res.scores[:2], np.stack([v2.items["i0"], v2.items["i4"]]) @ v2.users["u0"], rtol=1e-6)

    pinned = LearnFeatureClient(repo, model_version="v1").score("u0", items)
    assert pinned.user_version_mismatch and np.isnan(pinned.scores).all()
    assert pinned.version_mismatch.tolist() == [True, True, False, False]


def test_unknown_user_still_gets_one_version_of_candidates(rolled: tuple[Path, SyntheticRun, SyntheticRun]) -> None:
    """No user vector and no pin: the candidates' majority version is the reference."""
    repo, _, v2 = rolled
    res = LearnFeatureClient(repo).score("nobody", ["i0", "i1", "i2", "i5"])
    assert res.user_missing and res.model_version == "v2"
    assert res.version_mismatch.tolist() == [False, False, False, True]
    assert res.item_vectors[0].tobytes() == v2.items["i0"].tobytes() and np.isnan(res.item_vectors[3]).all()


def test_stale_rows_are_flagged_but_scored(rolled: tuple[Path, SyntheticRun, SyntheticRun]) -> None:
    repo, _, _ = rolled
    res = LearnFeatureClient(repo, max_age=timedelta(days=5)).score("u0", ["i5", "i0"])
    assert res.stale.tolist() == [True, False]  # i5 is v1 from ten days ago; i0 is fresh v2
    assert LearnFeatureClient(repo).score("u0", ["i5"]).stale.tolist() == [False]  # within the 180-day TTL


def _fake_tower(monkeypatch: pytest.MonkeyPatch, version: str | None = None, nan: bool = False) -> dict[str, np.ndarray]:
    """Stand-in for the trained item tower: random vectors of the run's dimension."""
    made: dict[str, np.ndarray] = {}

    def embed_catalog_items(run_dir: Path, catalog: pd.DataFrame, progress: bool = True) -> EmbeddingTable:
        info = manifest(Path(run_dir))
        rng = np.random.default_rng(len(catalog))
        vectors = rng.standard_normal((len(catalog), int(info["dim"]))).astype(np.float32)
        if nan:
            vectors[-1, 0] = np.nan
        made.update(zip(catalog["item_id"], vectors))
        return EmbeddingTable("item", list(catalog["item_id"]), vectors, pd.Timestamp.now(tz="UTC"), version or info["model_version"])

    module = types.ModuleType("learn_features.trained_run")
    module.embed_catalog_items = embed_catalog_items  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "learn_features.trained_run", module)
    return made


def _embed_items(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="learn-features")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["embed-items", *argv])
    return int(args.func(args))


def test_embed_items_push_makes_new_items_rankable_at_once(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _fake_tower(monkeypatch)
    catalog = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["new-1", "new-2"], "title": ["A film", "Another"], "genres": ["Drama", "Comedy"]}).to_csv(catalog, index=False)
    out = tmp_path / "new.parquet"
    argv = ["--run-dir", str(served.run.run_dir), "--catalog", str(catalog), "--repo", str(served.repo), "--push"]
    assert _embed_items([*argv, "--output", str(out)]) == 0
    assert out.is_file()
    res = served.client.score("u0", ["new-1", "new-2", "i0"])
    assert not res.missing.any() and not res.version_mismatch.any()
    assert res.item_vectors[0].tobytes() == made["new-1"].tobytes()
    np.testing.assert_allclose(res.scores[:2], np.stack([made["new-1"], made["new-2"]]) @ served.run.users["u0"], rtol=1e-6)
    pushes = [p for p in list_publications(served.repo) if p.kind == "push"]
    assert [(p.model_version, p.rows) for p in pushes] == [("v1", {"item": 2})]
    assert active_publication(served.repo).kind == "full"  # type: ignore[union-attr]


def test_bad_pushes_are_refused_and_online_data_stays(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = served.client.score("u0", ["i7", "i8"])
    catalog = tmp_path / "c.csv"
    pd.DataFrame({"item_id": ["i7", "i8"], "title": ["x", "y"]}).to_csv(catalog, index=False)
    argv = ["--run-dir", str(served.run.run_dir), "--catalog", str(catalog), "--repo", str(served.repo), "--push"]
    pubs = list_publications(served.repo)

    _fake_tower(monkeypatch, nan=True)
    with pytest.raises(LearnFeaturesError, match=r"row 1 \(item_id='i8'\): embedding has NaN"):
        _embed_items(argv)
    _fake_tower(monkeypatch, version="v-other")
    with pytest.raises(LearnFeaturesError, match="model_version 'v-other'.*active publication"):
        _embed_items(argv)
    with pytest.raises(LearnFeaturesError, match="nothing to do"):
        _embed_items(argv[:-1])
    pd.DataFrame({"id": ["a"]}).to_csv(catalog, index=False)
    with pytest.raises(LearnFeaturesError, match=r"c\.csv: missing required column\(s\) \['item_id'\]"):
        _embed_items(argv)

    after = served.client.score("u0", ["i7", "i8"])
    assert after.item_vectors.tobytes() == before.item_vectors.tobytes()
    assert list_publications(served.repo) == pubs


def test_documented_ranking_service_example(served: Served) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "feast.md").read_text()
    block = doc.split("<!-- ranking-service-example:start -->")[1].split("<!-- ranking-service-example:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/feast.md", "exec"), namespace)
    ranker = namespace["LearnRanker"](str(served.repo))  # type: ignore[operator]

    user = served.run.users["u1"]
    ranked = ranker.rank("u1", ["i1", "nope", "i2", "i3"])
    by_score = sorted(["i1", "i2", "i3"], key=lambda i: -float(served.run.items[i] @ user))
    assert [i for i, _ in ranked] == [*by_score, "nope"] and np.isnan(ranked[-1][1])

    published = read_published(served.repo, "item", "v1")
    best = np.argsort(-(published.vectors @ user))[:5]
    assert [i for i, _ in ranker.rank("u1", k=5)] == [published.ids[j] for j in best]
    assert ranker.rank("no-such-user") == []
