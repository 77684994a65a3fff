"""Getting publications of any age into an online store, and refusing a registry that points elsewhere.

* The documented flow (`publish`, `feast apply`, `learn-features materialize`,
  `verify-online`) loads a publication stamped in 2016 into a new store, where plain
  `feast materialize-incremental` loads nothing (a never-expiring view's first window
  starts a year before now).
* The ledger: a re-run loads only pending publications, `--full` reloads everything,
  `--end` leaves later ones pending, every online store (YAML + online_store section)
  has its own entry, and a push counts as loaded into the store it was pushed to.
* The repo materializes before the first publish (schema-only Parquet under the globs).
* A repo copied to another folder reads the old folder's files until `feast apply`.

`feast` runs as the real CLI, from the repo folder, where the flow says so.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from feast_fixtures import copy_repo, write_config, write_run

from learn_features.cli import main
from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.store.historical import historical_learn_features
from learn_features.store.materialize import materialize_publications
from learn_features.store.commit import SCHEMA_DIR
from learn_features.store.ledger import list_publications
from learn_features.store.publish import publish_run
from learn_features.store.push import push_item_embeddings
from learn_features.store.repo import ITEM_VIEW, USER_VIEW, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient

FEAST = Path(sys.executable).parent / "feast"
AS_OF = "2016-03-22T08:26:11+00:00"


def feast(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEAST_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(FEAST), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def wipe_online_rows(repo: Path) -> None:
    """What a flushed online store looks like: the tables are there, the rows are gone."""
    with sqlite3.connect(repo / "data" / "online_store.db") as db:
        for view in (USER_VIEW, ITEM_VIEW):
            db.execute(f"DELETE FROM learn_features_{view}")


def test_as_of_publication_reaches_a_new_store_through_the_documented_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy_repo(tmp_path / "repo")
    run = write_run(tmp_path / "run", "v1", 6, 9, 8, seed=0, as_of=AS_OF)
    code, out = cli(capsys, "publish", "--run-dir", str(run.run_dir), "--repo", str(repo), "--event-time", "as-of")
    assert code == 0 and f"learn-features materialize --repo {repo}" in out
    assert feast(repo, "apply").returncode == 0

    # The old way loads nothing from 2016, exits 0, and only verify-online notices.
    assert feast(repo, "materialize-incremental", now()).returncode == 0
    code, out = cli(capsys, "verify-online", "--repo", str(repo))
    assert code == 1 and "user: 6 sampled ids, FAILED: missing 6" in out

    code, out = cli(capsys, "materialize", "--repo", str(repo))
    assert code == 0 and "loaded 1 publication(s)" in out and f"window {pd.Timestamp(AS_OF).isoformat()} to" in out
    code, out = cli(capsys, "verify-online", "--repo", str(repo))
    assert code == 0 and "user: 6 sampled ids served as published" in out and "item: 9 sampled ids" in out

    # Nothing pending: a no-op that leaves the registry and the online store as they are.
    stored = {name: (repo / "data" / name).read_bytes() for name in ("registry.db", "online_store.db")}
    code, out = cli(capsys, "materialize", "--repo", str(repo))
    assert code == 0 and "nothing to materialize" in out
    assert {name: (repo / "data" / name).read_bytes() for name in stored} == stored

    # A flushed store: the ledger still says loaded, so only --full brings it back.
    wipe_online_rows(repo)
    assert cli(capsys, "verify-online", "--repo", str(repo))[0] == 1
    assert "nothing to materialize" in cli(capsys, "materialize", "--repo", str(repo))[1]
    assert cli(capsys, "verify-online", "--repo", str(repo))[0] == 1
    code, out = cli(capsys, "materialize", "--repo", str(repo), "--full")
    assert code == 0 and "loaded 1 publication(s)" in out
    assert cli(capsys, "verify-online", "--repo", str(repo))[0] == 0


def test_only_pending_publications_load_per_online_store(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    other = write_config(repo, "feature_store.yaml", "feature_store.other.yaml", {"online_store.path": "data/other_online.db"})
    v1 = write_run(tmp_path / "v1", "v1", 4, 6, 4, seed=1, as_of=AS_OF)
    v2 = write_run(tmp_path / "v2", "v2", 4, 5, 4, seed=2)
    p1 = publish_run(v1.run_dir, repo, event_time="as-of").publication
    p2 = publish_run(v2.run_dir, repo, event_time="2017-06-01T00:00:00Z").publication
    for config in (None, other):  # `feast [-f other] apply`: each store gets its online tables
        apply_repo(open_store(repo, config), repo)

    first = materialize_publications(repo, end=pd.Timestamp("2016-12-31T00:00:00Z"))
    assert first.loaded == [p1] and first.start == p1.published_at
    assert LearnFeatureClient(repo).score("u0", ["i5"]).user_model_version == "v1"
    second = materialize_publications(repo)
    assert second.loaded == [p2] and second.start == p2.published_at
    with pytest.raises(LearnFeaturesError, match="would write older vectors over it"):  # a window ending before p2 rolls back
        materialize_publications(repo, full=True, end=pd.Timestamp("2016-12-31T00:00:00Z"))
    res = LearnFeatureClient(repo).score("u0", ["i0", "i5"])
    assert res.user_vector.tobytes() == v2.users["u0"].tobytes()  # type: ignore[union-attr]
    assert res.item_model_versions == ["v2", "v1"]  # i5 is not in v2: the rollout leaves its v1 row

    vec = np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)
    pushed = push_item_embeddings(repo, EmbeddingTable("item", ["cold"], vec, pd.Timestamp.now(tz="UTC"), "v2"))
    assert materialize_publications(repo).loaded == []  # the push went to this store already
    fresh = materialize_publications(repo, other)  # another online store: everything is pending there
    assert fresh.loaded == [p1, p2, pushed] and fresh.store != second.store
    served = LearnFeatureClient(repo, config=other).score("u0", ["cold", "i0"])
    assert served.item_vectors[0].tobytes() == vec[0].tobytes() and served.scorable.all()
    assert materialize_publications(repo, other).loaded == []
    assert materialize_publications(repo, full=True).loaded == [p1, p2, pushed]


def test_the_repo_materializes_before_the_first_publish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = copy_repo(tmp_path / "repo")
    assert feast(repo, "apply").returncode == 0  # writes data/offline/_schema/{user,item}.parquet
    done = feast(repo, "materialize-incremental", now())
    assert done.returncode == 0, done.stderr
    assert cli(capsys, "materialize", "--repo", str(repo))[0] == 2  # nothing published: a clear refusal

    run = write_run(tmp_path / "run", "v1", 3, 3, 4, seed=4)
    pub = publish_run(run.run_dir, repo).publication
    assert list_publications(repo) == [pub]  # the schema folder is no publication
    for entity in ("user", "item"):
        assert pq.read_schema(repo / SCHEMA_DIR / f"{entity}.parquet").equals(pq.read_schema(pub.parquet(entity)))  # type: ignore[arg-type]
        assert pq.read_metadata(repo / SCHEMA_DIR / f"{entity}.parquet").num_rows == 0

    # Control: without the schema files the glob matches nothing and Feast fails outright.
    empty = copy_repo(tmp_path / "empty")
    assert feast(empty, "apply").returncode == 0
    shutil.rmtree(empty / SCHEMA_DIR)
    failed = feast(empty, "materialize-incremental", now())
    assert failed.returncode != 0 and "No files found" in failed.stderr + failed.stdout


def test_a_copied_repo_reads_the_old_folder_until_feast_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The FileSource paths in the registry are absolute, so a copy keeps reading the original's
    Parquet files. learn-features' own entry points refuse such a registry; `feast apply` fixes it."""
    old = copy_repo(tmp_path / "old")
    v1 = write_run(tmp_path / "v1", "v1", 3, 4, 4, seed=5, as_of=AS_OF)
    v2 = write_run(tmp_path / "v2", "v2", 3, 4, 4, seed=6)
    publish_run(v1.run_dir, old, event_time="as-of")
    apply_repo(open_store(old), old)
    new = Path(shutil.copytree(old, tmp_path / "new"))
    publish_run(v2.run_dir, new)
    impressions = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})

    store = open_store(new)  # plain Feast on the copy
    assert store.get_feature_view(USER_VIEW).batch_source.path.startswith(str(old.resolve()))
    joined = store.get_historical_features(entity_df=impressions, features=[f"{USER_VIEW}:user_model_version"]).to_df()
    assert joined["user_model_version"].tolist() == ["v1"]  # the old folder's publication, not the copy's v2

    message = f"registry points at {old.resolve()}"
    for entry_point in (lambda: LearnFeatureClient(new), lambda: historical_learn_features(new, impressions),
                        lambda: materialize_publications(new)):
        with pytest.raises(LearnFeaturesError, match=message):
            entry_point()
    code = main(["verify-online", "--repo", str(new)])
    assert code == 2 and f"run `feast apply` in {new.resolve()}" in capsys.readouterr().err

    assert feast(new, "apply").returncode == 0
    assert historical_learn_features(new, impressions)["user_model_version"].tolist() == ["v2"]
    assert cli(capsys, "materialize", "--repo", str(new))[0] == 0
    assert cli(capsys, "verify-online", "--repo", str(new))[0] == 0
