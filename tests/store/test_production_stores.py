"""The production configs against real servers: Redis online store, Postgres registry + online store.

Each run uses its own Feast project (Redis keys end with it) and its own Postgres schema,
and removes them afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import (
    PG_DSN,
    SyntheticRun,
    copy_repo,
    drop_postgres_schema,
    drop_redis_project,
    postgres_config,
    redis_config,
    unique_name,
    write_config,
    write_run,
)

from learn_features.cli import main
from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.store.ledger import list_publications
from learn_features.store.publish import publish_run
from learn_features.store.push import push_item_embeddings
from learn_features.store.repo import ITEM_VIEW, USER_VIEW, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient

pytestmark = pytest.mark.services
DIM = 32


@dataclass
class Deployed:
    kind: str
    repo: Path
    config: str
    run: SyntheticRun
    project: str  # also the Postgres schema


@pytest.fixture(scope="module", params=["redis", "postgres"])
def deployed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """apply -> materialize against the real server, as `feast -f <config> ...` would."""
    root = tmp_path_factory.mktemp(request.param)
    repo = copy_repo(root / "repo")
    project = unique_name()
    config = redis_config(repo, project) if request.param == "redis" else postgres_config(repo, project, project)
    run = write_run(root / "run", "v1", 50, 300, DIM, seed=7)
    publish_run(run.run_dir, repo)
    try:
        store = open_store(repo, config)
        apply_repo(store, repo)
        store.materialize(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(seconds=1))
        yield Deployed(request.param, repo, config, run, project)
    finally:
        if request.param == "redis":
            drop_redis_project(project)
        else:
            drop_postgres_schema(project)


def test_materialized_values_read_back_bit_for_bit(deployed: Deployed) -> None:
    client = LearnFeatureClient(deployed.repo, config=deployed.config)
    items = list(deployed.run.items)[:200] + ["unknown"]
    res = client.score("u3", items)
    assert res.user_vector is not None and res.user_vector.tobytes() == deployed.run.users["u3"].tobytes()
    assert res.item_vectors[:-1].tobytes() == np.stack([deployed.run.items[i] for i in items[:-1]]).tobytes()
    assert res.missing.tolist() == [False] * 200 + [True]
    assert not res.version_mismatch.any() and not res.stale.any()


def test_push_goes_straight_to_the_server(deployed: Deployed) -> None:
    vec = np.random.default_rng(1).standard_normal((2, DIM)).astype(np.float32)
    push_item_embeddings(deployed.repo, EmbeddingTable("item", ["cold-1", "cold-2"], vec, pd.Timestamp.now(tz="UTC"), "v1"), deployed.config)
    res = LearnFeatureClient(deployed.repo, config=deployed.config).score("u0", ["cold-1", "cold-2"])
    assert res.item_vectors.tobytes() == vec.tobytes() and res.scorable.all()


def test_unreachable_server_is_a_clear_error_and_data_stays(deployed: Deployed) -> None:
    live = LearnFeatureClient(deployed.repo, config=deployed.config)
    before = live.score("u1", ["i1", "i2"])
    changes = (
        {"online_store.connection_string": "127.0.0.1:1"}
        if deployed.kind == "redis"
        else {"online_store.port": 1, "registry.path": "postgresql+psycopg://postgres@127.0.0.1:1/test"}
    )
    dead = write_config(deployed.repo, deployed.config, "feature_store.dead.yaml", changes)
    pubs = list_publications(deployed.repo)
    with pytest.raises(LearnFeaturesError, match=r"feature_store\.dead\.yaml: .* failed: .*(Connection|connect)"):
        LearnFeatureClient(deployed.repo, config=dead).score("u1", ["i1"])
    vec = np.ones((1, DIM), np.float32)
    with pytest.raises(LearnFeaturesError, match=r"feature_store\.dead\.yaml: .* failed"):
        push_item_embeddings(deployed.repo, EmbeddingTable("item", ["i1"], vec, pd.Timestamp.now(tz="UTC"), "v1"), dead)
    assert list_publications(deployed.repo) == pubs  # a failed push records nothing offline
    after = live.score("u1", ["i1", "i2"])
    assert after.item_vectors.tobytes() == before.item_vectors.tobytes()
    assert after.user_vector.tobytes() == before.user_vector.tobytes()  # type: ignore[union-attr]


def flush_online_store(deployed: Deployed) -> None:
    """Empty the server's online store for this project, as a restarted Redis would be."""
    if deployed.kind == "redis":
        assert drop_redis_project(deployed.project) > 0
        return
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for view in (USER_VIEW, ITEM_VIEW):
            conn.execute(f'TRUNCATE "{deployed.project}"."{deployed.project}_{view}"')


def test_materialize_full_reloads_a_flushed_server(deployed: Deployed, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last: it empties the server, then leaves it whole again."""
    repo, config = str(deployed.repo), deployed.config
    assert main(["materialize", "--repo", repo, "-f", config, "-q"]) == 0  # the fixture loaded through plain Feast
    flush_online_store(deployed)
    capsys.readouterr()
    assert main(["verify-online", "--repo", repo, "-f", config]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["materialize", "--repo", repo, "-f", config]) == 0
    assert "nothing to materialize" in capsys.readouterr().out  # the ledger cannot see a flush
    assert main(["materialize", "--repo", repo, "-f", config, "--full", "-q"]) == 0
    assert main(["verify-online", "--repo", repo, "-f", config]) == 0
    res = LearnFeatureClient(repo, config=config).score("u0", ["cold-1", "i1"])  # the push is reloaded too
    assert res.scorable.all()
