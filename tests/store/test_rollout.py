"""A rollout with pushed items, through the CLI, on real (tiny) trained runs.

v1 is published and served; two new catalog items are pushed with it. v2 (the same job
retrained with another seed) is published and materialized: the pushed items stay online
as v1, unscorable next to v2 users, and `verify-online` fails naming them and the fix.
`embed-items --repush-stale --push` embeds them again from the catalog rows kept with the
push, and the store is whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from core_fixtures import single_thread, tiny_llm_dir  # noqa: F401  (pytest fixtures)
from feast_fixtures import copy_repo
from job_fixtures import write_config, write_synthetic

from learn_features.cli import main
from learn_features.run import RunDir
from learn_features.store.ledger import list_publications
from learn_features.store.repo import apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.trained_run import embed_catalog_items

NEW_ITEMS = pd.DataFrame(
    {"item_id": ["new-1", "new-2"], "title": ["Space Opera number 900", "Crime Thriller number 901"],
     "category": ["space opera", "crime thriller"]}
)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_items_pushed_before_a_rollout_are_reported_and_repushed(
    tmp_path: Path, tiny_llm_dir: Path, capsys: pytest.CaptureFixture[str], single_thread: None  # noqa: F811
) -> None:
    interactions, catalog = write_synthetic(tmp_path)
    config = str(write_config(tmp_path, interactions, catalog, tiny_llm_dir))
    v1_run, v2_run = tmp_path / "run", tmp_path / "run-v2"
    assert main(["run", "--config", config, "--quiet"]) == 0
    repo = copy_repo(tmp_path / "repo")
    assert cli(capsys, "publish", "--run-dir", str(v1_run), "--repo", str(repo))[0] == 0
    apply_repo(open_store(repo), repo)
    assert cli(capsys, "materialize", "--repo", str(repo), "-q")[0] == 0
    NEW_ITEMS.to_csv(new_items := tmp_path / "new.csv", index=False)
    assert cli(capsys, "embed-items", "--run-dir", str(v1_run), "--catalog", str(new_items), "--push", "--repo", str(repo), "-q")[0] == 0
    assert cli(capsys, "verify-online", "--repo", str(repo))[0] == 0

    # v2: the same job retrained with another seed (the content store is reused), then rolled out.
    shutil.copytree(v1_run, v2_run, ignore=shutil.ignore_patterns("models", "embeddings", "feast_replay"))
    reseed = ["--config", config, "--run-dir", str(v2_run), "--set", "train.seed=1", "--quiet"]
    assert main(["train", *reseed, "--method", "learn_v1"]) == 0 and main(["embed", *reseed]) == 0
    v1, v2 = (RunDir(run).read_manifest()["model_version"] for run in (v1_run, v2_run))
    assert v1 != v2
    assert cli(capsys, "publish", "--run-dir", str(v2_run), "--repo", str(repo), "-q")[0] == 0
    apply_repo(open_store(repo), repo)
    code, out = cli(capsys, "materialize", "--repo", str(repo), "-q")
    assert code == 0 and "loaded 1 publication(s)" in out

    user = "u0"  # active before the cut: has a user vector
    stale = LearnFeatureClient(repo).score(user, ["new-1", "new-2", "sku-1"])
    assert stale.model_version == v2 and stale.version_mismatch.tolist() == [True, True, False]
    code, out = cli(capsys, "verify-online", "--repo", str(repo))
    assert code == 1
    assert f"items pushed under an older version (2 not in {v2}): 2 sampled ids, FAILED: other version 2" in out
    assert f"fix: learn-features embed-items --run-dir {v2_run.resolve()} --repush-stale --push --repo {repo}" in out

    code, out = cli(capsys, "embed-items", "--run-dir", str(v2_run), "--repush-stale", "--push", "--repo", str(repo), "-q")
    assert code == 0 and f"pushed 2 items of {v2} online" in out
    assert cli(capsys, "verify-online", "--repo", str(repo))[0] == 0
    res = LearnFeatureClient(repo).score(user, ["new-1", "new-2", "sku-1"])
    assert res.scorable.all() and res.item_model_versions == [v2, v2, v2]
    expected = embed_catalog_items(v2_run, NEW_ITEMS, device="cpu", progress=False)
    np.testing.assert_allclose(res.item_vectors[:2], expected.vectors, atol=1e-6)

    pushes = [p for p in list_publications(repo) if p.kind == "push"]
    assert [p.model_version for p in pushes] == [v1, v2] and all(p.catalog is not None for p in pushes)
    code, out = cli(capsys, "embed-items", "--run-dir", str(v2_run), "--repush-stale", "--push", "--repo", str(repo))
    assert code == 0 and "nothing to do" in out and len(list_publications(repo)) == 4
