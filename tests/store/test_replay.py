"""The per-run replay repo: vectors as of the data cut, joinable point-in-time, rebuilt on retrain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import copy_repo, write_run

from learn_features.store.historical import historical_learn_features
from learn_features.store.ledger import list_publications
from learn_features.store.publish import publish_run
from learn_features.run import RunDir
from learn_features.store.replay import publish_replay
from learn_features.store.repo import apply_repo, open_store

AS_OF = "2016-03-22T08:26:11+00:00"


@pytest.fixture
def live_repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


def _join(repo: Path, when: str) -> pd.DataFrame:
    impressions = pd.DataFrame(
        {"user_id": ["u0", "u1"], "item_id": ["i0", "i1"], "event_timestamp": pd.DatetimeIndex([when, when]).as_unit("us")}
    )
    return historical_learn_features(repo, impressions)


def test_replay_is_joinable_after_the_cut_and_never_before(live_repo: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "v1", 3, 4, 4, seed=1, as_of=AS_OF)
    publish_run(run.run_dir, live_repo)  # live, at now: invisible to 2016-2018 impressions
    apply_repo(open_store(live_repo), live_repo)
    assert _join(live_repo, "2017-01-01T00:00:00Z")["user_embedding"].isna().all()

    result = publish_replay(run.run_dir, live_repo)
    replay = RunDir(run.run_dir).feast_replay
    assert result.created and result.publication.published_at == pd.Timestamp(AS_OF)
    after = _join(replay, "2017-01-01T00:00:00Z")
    assert after["user_embedding"].iloc[0].tobytes() == run.users["u0"].tobytes()
    assert after["item_embedding"].iloc[1].tobytes() == run.items["i1"].tobytes()
    assert _join(replay, "2016-03-22T08:26:10Z")["user_embedding"].isna().all()
    assert len(list_publications(live_repo)) == 1  # the live repo is untouched


def test_rerun_is_a_no_op_and_a_retrained_run_rebuilds_its_replay(live_repo: Path, tmp_path: Path) -> None:
    first = write_run(tmp_path / "run", "v1", 3, 4, 4, seed=1, as_of=AS_OF)
    publish_replay(first.run_dir, live_repo)
    assert not publish_replay(first.run_dir, live_repo).created
    retrained = write_run(tmp_path / "run", "v2", 3, 4, 4, seed=2, as_of=AS_OF)  # same run folder
    assert publish_replay(retrained.run_dir, live_repo).created
    replay = RunDir(retrained.run_dir).feast_replay
    assert [p.model_version for p in list_publications(replay)] == ["v2"]
    joined = _join(replay, "2017-01-01T00:00:00Z")
    assert np.asarray(joined["user_embedding"].iloc[0]).tobytes() == retrained.users["u0"].tobytes()
