"""Materialization through Feast's Ray compute engine, with Ray in local mode (CI has no
cluster), and `verify-online`, which catches what that engine does not report.

The checked-in feature_store.ray.yaml is used as is, except for Ray's temp folder: Ray's
socket paths must stay under 108 bytes, which pytest's tmp_path can exceed.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from feast_fixtures import SyntheticRun, copy_repo, write_config, write_run

from learn_features.cli import main
from learn_features.store.publish import publish_run
from learn_features.store.repo import ITEM_VIEW, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.store.verify import verify_online

ray = pytest.importorskip("ray")


@dataclass
class RayDeployed:
    repo: Path
    config: str
    run: SyntheticRun


@pytest.fixture(scope="module")
def ray_deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayDeployed]:
    """publish -> apply -> `learn-features materialize` on the Ray engine in local mode; Ray stops afterwards."""
    from feast.infra import ray_initializer

    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)  # never join a cluster from a test
        env.setenv("FEAST_RAY_EXECUTION_MODE", "local")
        ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        root = tmp_path_factory.mktemp("ray")
        repo = copy_repo(root / "repo")
        config = write_config(repo, "feature_store.ray.yaml", "feature_store.raytest.yaml",
                              {"batch_engine.ray_conf._temp_dir": ray_temp,
                               "batch_engine.ray_conf.object_store_memory": 200_000_000})
        run = write_run(root / "run", "v1", 40, 500, 16, seed=3)
        publish_run(run.run_dir, repo)
        try:
            store = open_store(repo, config)
            apply_repo(store, repo)
            assert main(["materialize", "--repo", str(repo), "-f", config, "-q"]) == 0  # as docs/scale-out.md says
            assert type(store._get_provider().batch_engine).__name__ == "RayComputeEngine"
            yield RayDeployed(repo, config, run)
        finally:
            ray_initializer.shutdown_ray()  # also resets Feast's own "Ray is running" flag
            shutil.rmtree(ray_temp, ignore_errors=True)
    assert not ray.is_initialized()


def test_ray_engine_materializes_every_row_bit_for_bit(ray_deployed: RayDeployed) -> None:
    version, checks = verify_online(ray_deployed.repo, ray_deployed.config, sample=10_000)
    assert version == "v1" and [(c.entity, c.checked, c.ok) for c in checks] == [("user", 40, True), ("item", 500, True)]
    res = LearnFeatureClient(ray_deployed.repo, config=ray_deployed.config).score("u5", ["i0", "i499"])
    assert res.user_vector.tobytes() == ray_deployed.run.users["u5"].tobytes()  # type: ignore[union-attr]
    assert res.item_vectors.tobytes() == np.stack([ray_deployed.run.items["i0"], ray_deployed.run.items["i499"]]).tobytes()


def test_verify_online_exits_1_naming_rows_lost_after_materialize(ray_deployed: RayDeployed, capsys) -> None:
    """What a silently failed write looks like from the serving side: rows that are not there."""
    repo, config = ray_deployed.repo, ray_deployed.config
    with sqlite3.connect(repo / "data" / "online_store.db") as db:
        table = f"learn_features_{ITEM_VIEW}"
        kept = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} LIMIT 14)")  # 7 items x 2 features
    assert main(["verify-online", "--repo", str(repo), "-f", config]) == 1
    out = capsys.readouterr().out
    assert "user: 40 sampled ids served as published" in out
    assert "item: 500 sampled ids, FAILED: missing 7" in out and kept == 1000
    assert main(["verify-online", "--repo", str(repo), "-f", config, "--sample", "0"]) == 2
