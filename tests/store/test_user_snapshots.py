"""User vectors that follow the user: snapshots as of any time, and streamed refreshes.

One tiny LEARN job is trained once (module fixture); every test works on its own copy of the
Feast repo. The properties a ranker relies on:

- point in time: an impression never sees a vector computed from an event at or after it;
- embed-users refuses a run whose model version is not the active item publication's;
- streaming a user's new events changes what the online store serves, and the served vector
  equals an offline recompute of the same history bit for bit;
- the history table is durable, trimmed to N, and a re-sent batch changes nothing.
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
from learn_features.data.tables import read_table
from learn_features.errors import LearnFeaturesError
from learn_features.run import RunDir
from learn_features.store.histories import HistoryStore
from learn_features.store.historical import historical_learn_features
from learn_features.store.ledger import list_publications
from learn_features.store.published import read_published
from learn_features.store.repo import USER, apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.store.stream import UserStream
from learn_features.user_vectors import UserTower, after_each_event, schedule, snapshot_histories

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path):  # noqa: F811
    root = tmp_path_factory.mktemp("snapshot_job")
    interactions, catalog = write_synthetic(root)
    config = write_config(root, interactions, catalog, tiny_llm_dir)
    assert main(["run", "--config", str(config), "--quiet", "--set", 'split.protocols=["temporal"]']) == 0
    events = read_table(interactions)
    events["timestamp"] = pd.to_datetime(events["timestamp"].astype(int), unit="s", utc=True)
    return root, config, root / "run", events


def published_repo(tmp_path: Path, run: Path) -> Path:
    repo = copy_repo(tmp_path / "repo")
    assert main(["publish", "--run-dir", str(run), "--repo", str(repo), "-q"]) == 0
    apply_repo(open_store(repo), repo)
    return repo


def test_snapshot_histories_use_only_events_before_each_time() -> None:
    t0 = pd.Timestamp("2020-01-01", tz="UTC")
    events = pd.DataFrame(
        {"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "x"], "timestamp": [t0, t0 + DAY, t0 + 3 * DAY, t0 + 3 * DAY]}
    )
    rows = snapshot_histories(events, [t0 + DAY, t0 + 2 * DAY, t0 + 3 * DAY, t0 + 4 * DAY], history_len=2)
    assert list(zip(rows.user_ids, rows.times, rows.histories)) == [
        ("a", t0 + DAY, ["x"]),  # the event at exactly t0 + 1 day is not before it
        ("a", t0 + 2 * DAY, ["x", "y"]),
        # nothing new before t0 + 3 days: the previous row still holds
        ("a", t0 + 4 * DAY, ["y", "z"]),  # last two events only
        ("b", t0 + 4 * DAY, ["x"]),
    ]
    every = snapshot_histories(events, [t0 + 3 * DAY], history_len=2, changed_only=False)
    assert every.user_ids == ["a"]
    after = after_each_event(events, t0 + DAY, t0 + 10 * DAY, history_len=2)
    micro = pd.Timedelta(microseconds=1)
    assert list(zip(after.user_ids, after.times, after.histories)) == [
        ("a", t0 + DAY, ["x"]),  # at the start: the history before it
        ("a", t0 + DAY + micro, ["x", "y"]),  # 1 µs after each event: the event included
        ("a", t0 + 3 * DAY + micro, ["y", "z"]),
        ("b", t0 + 3 * DAY + micro, ["x"]),
    ]
    with pytest.raises(LearnFeaturesError, match="positive interval"):
        schedule(t0, t0 + DAY, pd.Timedelta(0))


def test_impressions_never_see_a_vector_computed_from_later_events(job, tmp_path: Path, single_thread) -> None:  # noqa: F811
    """Snapshots every 5 days, joined point in time through Feast: each impression's user vector
    is the tower over the user's events strictly before the latest snapshot time at or before the
    impression (rows exist only where the history changed, so that is the row the join finds),
    hence never over the impression itself or anything after it."""
    root, config, run, events = job
    repo = published_repo(tmp_path, run)
    times = schedule(events["timestamp"].min() + DAY, events["timestamp"].max() + DAY, 5 * DAY)
    assert main(["embed-users", "--config", str(config), "--set", 'split.protocols=["temporal"]', "--from", times[0].isoformat(),
                 "--to", times[-1].isoformat(), "--every", "5d", "--repo", str(repo), "--output", str(tmp_path / "out"), "-q"]) == 0
    written = pd.read_parquet(tmp_path / "out" / "user_snapshots.parquet")
    assert written["event_timestamp"].nunique() > 5
    impressions = events.sample(60, random_state=0).reset_index(drop=True)
    entity = pd.DataFrame({"user_id": impressions["user_id"].astype(str), "item_id": impressions["item_id"].astype(str),
                           "event_timestamp": impressions["timestamp"]})
    joined = historical_learn_features(repo, entity)
    tower = UserTower.load(run, device="cpu")
    checked = 0
    for vector, impression in zip(joined[USER.embedding], impressions.itertuples()):
        snapshot = max((t for t in times if t <= impression.timestamp), default=None)
        mine = events[events["user_id"] == impression.user_id]
        history = mine[mine["timestamp"] < snapshot] if snapshot is not None else mine.iloc[:0]
        if not len(history):
            assert vector is None  # nothing before any snapshot: no vector, never a later one
            continue
        assert history["timestamp"].max() < impression.timestamp
        expected = tower.embed([impression.user_id], [history.sort_values(["timestamp", "item_id"])["item_id"].tolist()])
        np.testing.assert_array_equal(vector, expected.vectors[0])
        checked += 1
    assert checked > 20


def test_embed_users_refuses_a_run_of_another_model_version(job, tmp_path: Path, capsys, single_thread) -> None:  # noqa: F811
    root, config, run, events = job
    repo = published_repo(tmp_path, run)
    other = tmp_path / "run-v2"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("models", "embeddings", "feast_replay"))
    reseed = ["--config", str(config), "--run-dir", str(other), "--set", "train.seed=7", "--set", 'split.protocols=["temporal"]', "--quiet"]
    assert main(["train", *reseed, "--method", "learn_v1"]) == 0 and main(["embed", *reseed]) == 0
    before = sorted(p.publication_id for p in list_publications(repo))
    capsys.readouterr()
    assert main(["embed-users", *reseed, "--as-of", "end", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert RunDir(other).read_manifest()["model_version"] in err and "active item publication" in err
    assert sorted(p.publication_id for p in list_publications(repo)) == before


def test_streamed_events_change_the_served_vector_and_match_an_offline_recompute(job, tmp_path: Path, single_thread) -> None:  # noqa: F811
    root, config, run, events = job
    repo = published_repo(tmp_path, run)
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0
    user = "u30"  # active on both sides of the cut
    client = LearnFeatureClient(repo)
    before = client.score(user, ["sku-2"]).user_vector.copy()

    stream = UserStream(run, repo, device="cpu")
    stream.bootstrap(events)
    last = events["timestamp"].max()
    new = pd.DataFrame({"user_id": [user, user, "brand-new-user"], "item_id": ["sku-6", "sku-10", "sku-3"],
                        "timestamp": [last + DAY, last + 2 * DAY, last + DAY]})
    result = stream.ingest(new)
    assert sorted(result.user_ids) == sorted([user, "brand-new-user"])
    served = LearnFeatureClient(repo).score(user, ["sku-2"])
    assert not np.array_equal(served.user_vector, before)
    assert LearnFeatureClient(repo).score("brand-new-user", ["sku-2"]).scorable.all()

    everything = pd.concat([events, new], ignore_index=True)
    offline = snapshot_histories(everything, [result.pushed_at + DAY], UserTower.load(run, "cpu").history_len, changed_only=False)
    recomputed = UserTower.load(run, device="cpu").embed([user], [offline.histories[offline.user_ids.index(user)]])
    np.testing.assert_array_equal(served.user_vector, recomputed.vectors[0])
    # The pushed rows are recorded offline too, as served.
    published = read_published(repo, "user", RunDir(run).read_manifest()["model_version"])
    np.testing.assert_array_equal(published.vectors[list(published.ids).index(user)], served.user_vector)
    assert main(["verify-online", "--repo", str(repo)]) == 0

    again = stream.ingest(new)  # a re-sent batch: same histories, same vectors
    np.testing.assert_array_equal(again.vectors, result.vectors)


def test_history_store_keeps_the_newest_n_per_user_durably(tmp_path: Path) -> None:
    t0 = pd.Timestamp("2021-05-01", tz="UTC")
    store = HistoryStore(tmp_path / "h.sqlite", history_len=3)
    batch = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("vwxyz"), "timestamp": [t0 + k * DAY for k in (4, 0, 2, 1, 3)]})
    assert store.append(batch) == ["a"]
    assert store.histories(["a"]) == {"a": ["x", "z", "v"]}  # days 2, 3, 4
    store.append(batch)
    assert len(store) == 3
    reopened = HistoryStore(tmp_path / "h.sqlite", history_len=3)
    assert reopened.histories(["a", "missing"]) == {"a": ["x", "z", "v"]}
    with pytest.raises(LearnFeaturesError, match="holds histories of 3 events"):
        HistoryStore(tmp_path / "h.sqlite", history_len=5)


def test_stream_benchmark_smoke(job, tmp_path: Path, single_thread, monkeypatch) -> None:  # noqa: F811
    """bench/stream_bench.py runs end to end on a tiny run and reports what it measured."""
    import json
    import runpy
    import sys

    root, config, run, events = job
    out = tmp_path / "bench.json"
    argv = ["stream_bench.py", "--run-dir", str(run), "--config", str(config), "--events", "3", "--batch", "4", "5", "--batches", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "bench" / "stream_bench.py"), run_name="__main__")
    results = json.loads(out.read_text())
    assert results["current"]["single_event_to_served_ms"]["n"] == 3 and results["previous"]["single_event_to_served_ms"]["p50"] > 0
    towers = results["tower_only_all_users"]
    assert towers["previous"]["users"] == towers["current"]["users"] == results["users"]
    assert results["ratio_current_over_previous"]["tower_only_users_per_s"] > 0
    for impl in ("previous", "current"):
        phases = results[impl]["throughput"]
        assert list(phases) == ["after 2 publications", "after 9 publications"]  # full + warm-up; then 2 x 2 batches and 3 events
        assert phases["after 9 publications"]["batch_5"]["users_per_s"] > 0 and phases["after 2 publications"]["batch_4"]["event_to_served_ms"]["n"] == 2
    assert results["current"]["profiled_batch"]["steps"]["user tower"]["ms"] > 0


def test_a_schedule_loads_online_whatever_its_times_and_reruns_add_nothing(job, tmp_path: Path, capsys, single_thread) -> None:  # noqa: F811
    """Snapshots stamped before the last materialization still reach the online store (the
    window starts at the publication's earliest row), every user's latest row is served, and
    running the same embed-users again publishes nothing."""
    root, config, run, events = job
    repo = copy_repo(tmp_path / "repo")
    assert main(["publish", "--run-dir", str(run), "--repo", str(repo), "--event-time", "as-of", "-q"]) == 0
    apply_repo(open_store(repo), repo)
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0
    snapshot = ["embed-users", "--config", str(config), "--set", 'split.protocols=["temporal"]', "--from", "as-of", "--to", "end",
                "--every", "3d", "--repo", str(repo), "-q"]
    capsys.readouterr()
    assert main(snapshot) == 0
    assert "published" in capsys.readouterr().out
    users_pub = [p for p in list_publications(repo) if p.kind == "users"]
    assert len(users_pub) == 1 and users_pub[0].first_event_time < users_pub[0].published_at
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0
    assert main(["verify-online", "--repo", str(repo)]) == 0
    latest = read_published(repo, "user", RunDir(run).read_manifest()["model_version"])
    client = LearnFeatureClient(repo)
    for user, vector in list(zip(latest.ids, latest.vectors))[:10]:
        np.testing.assert_array_equal(client.score(str(user), []).user_vector, vector)
    assert main(snapshot) == 0
    assert "nothing new" in capsys.readouterr().out
    assert len([p for p in list_publications(repo) if p.kind == "users"]) == 1


def test_a_row_after_each_event_covers_every_impression_with_a_history(job, tmp_path: Path, single_thread) -> None:  # noqa: F811
    """--every event: every impression of a user with an earlier event (at an earlier time)
    gets a vector, the one computed from exactly the events before it."""
    root, config, run, events = job
    repo = published_repo(tmp_path, run)
    assert main(["embed-users", "--config", str(config), "--set", 'split.protocols=["temporal"]', "--from", "as-of",
                 "--to", "end", "--every", "event", "--repo", str(repo), "-q"]) == 0
    cut = pd.Timestamp(RunDir(run).read_manifest()["as_of"])
    impressions = events[events["timestamp"] >= cut].sample(50, random_state=1).reset_index(drop=True)
    joined = historical_learn_features(repo, pd.DataFrame({"user_id": impressions["user_id"], "item_id": impressions["item_id"],
                                                            "event_timestamp": impressions["timestamp"]}))
    tower = UserTower.load(run, device="cpu")
    for vector, impression in zip(joined[USER.embedding], impressions.itertuples()):
        mine = events[(events["user_id"] == impression.user_id) & (events["timestamp"] < impression.timestamp)]
        if not len(mine):
            assert vector is None
            continue
        expected = tower.embed([impression.user_id], [mine.sort_values(["timestamp", "item_id"])["item_id"].tolist()])
        np.testing.assert_array_equal(vector, expected.vectors[0])
