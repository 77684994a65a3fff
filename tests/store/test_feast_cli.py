"""The repo works with the plain Feast CLI, run from its folder exactly as a Feast user runs it.

Each `feast` call is a fresh process (6-9 s of imports), so the flow is one test:
publish v1 -> feast apply -> feast materialize -> publish v2 -> feast plan ->
feast materialize-incremental, checking the online store in between.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from feast_fixtures import copy_repo, write_run

from learn_features.store.publish import publish_run
from learn_features.store.serving import LearnFeatureClient

FEAST = Path(sys.executable).parent / "feast"


def _feast(repo: Path, *args: str) -> str:
    env = {**os.environ, "FEAST_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(FEAST), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"feast {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def test_apply_materialize_plan_materialize_incremental(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    v1 = write_run(tmp_path / "v1", "v1", 4, 6, 8, seed=0)
    v2 = write_run(tmp_path / "v2", "v2", 4, 6, 8, seed=1)
    publish_run(v1.run_dir, repo)

    out = _feast(repo, "apply")
    for name in ("learn_user_embedding", "learn_item_embedding", "learn_ranker", "entity user", "entity item"):
        assert name in out
    _feast(repo, "materialize", "2000-01-01T00:00:00", _now())
    res = LearnFeatureClient(repo).score("u1", ["i2"])
    assert res.user_vector.tobytes() == v1.users["u1"].tobytes()  # type: ignore[union-attr]
    assert res.item_vectors[0].tobytes() == v1.items["i2"].tobytes()

    publish_run(v2.run_dir, repo)
    plan = _feast(repo, "plan")
    assert "Updated feature view learn_user_embedding" in plan and "'model_version': 'v2'" in plan
    _feast(repo, "materialize-incremental", _now())
    res = LearnFeatureClient(repo).score("u1", ["i2"])
    assert res.user_model_version == "v2" and res.item_model_versions == ["v2"]
    assert res.item_vectors[0].tobytes() == v2.items["i2"].tobytes()
