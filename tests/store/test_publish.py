"""Publishing into the offline sources: atomic, idempotent, versioned, strict about input.

These tests never import Feast; they check the files that the Feast sources glob.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast_fixtures import copy_repo, publication_files, write_run

from learn_features.embeddings_io import ITEM_FILE, USER_FILE
from learn_features.errors import LearnFeaturesError
from learn_features.store import commit
from learn_features.store.cli import register
from learn_features.store.ledger import active_publication, list_publications
from learn_features.store.publish import publish_run
from learn_features.store.published import read_published
from learn_features.store.repo import offline_glob


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


def _rows(repo: Path, entity: str) -> pd.DataFrame:
    files = sorted(Path("/").glob(offline_glob(repo, entity).lstrip("/")))  # type: ignore[arg-type]
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def test_publish_writes_feature_named_rows_stamped_with_publish_time(repo: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "v1", 7, 11, 8, seed=0)
    before = pd.Timestamp.now(tz="UTC")
    result = publish_run(run.run_dir, repo)
    assert result.created
    pub = result.publication
    assert (pub.kind, pub.model_version, pub.dim, pub.rows) == ("full", "v1", 8, {"user": 7, "item": 11})
    assert before <= pub.published_at <= pd.Timestamp.now(tz="UTC")
    users = _rows(repo, "user")
    assert list(users.columns) == ["user_id", "user_embedding", "event_timestamp", "user_model_version"]
    assert str(users["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert (users["event_timestamp"] == pub.published_at).all()
    assert set(users["user_model_version"]) == {"v1"}
    for uid, vec in zip(users["user_id"], users["user_embedding"]):
        assert np.asarray(vec, dtype=np.float32).tobytes() == run.users[uid].tobytes()
    assert len(_rows(repo, "item")) == 11


def test_rerun_is_a_no_op_and_adds_no_rows(repo: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "v1", 5, 5, 4, seed=1)
    first = publish_run(run.run_dir, repo)
    files = publication_files(repo)
    again = publish_run(run.run_dir, repo)
    assert not again.created and again.publication == first.publication
    assert publication_files(repo) == files
    assert len(_rows(repo, "user")) == 5


def test_crash_mid_publish_leaves_no_visible_rows_and_rerun_recovers(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_run(tmp_path / "run", "v1", 5, 6, 4, seed=2)
    commit.ensure_offline_schema(repo)  # so that the writes counted below are the publication's
    real_write = pq.write_table
    calls = []

    def crash_on_second_file(table: pa.Table, where: object, **kw: object) -> None:
        calls.append(where)
        if len(calls) == 2:  # user.parquet is written, item.parquet is not
            raise KeyboardInterrupt("simulated crash")
        real_write(table, where, **kw)

    monkeypatch.setattr(commit.pq, "write_table", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        publish_run(run.run_dir, repo)
    assert publication_files(repo) == []  # nothing visible to the Feast sources
    assert list_publications(repo) == []
    monkeypatch.setattr(commit.pq, "write_table", real_write)
    (repo / "data" / "staging" / "leftover.tmp").mkdir(parents=True)  # debris of a hard kill
    result = publish_run(run.run_dir, repo)
    assert result.created and len(_rows(repo, "item")) == 6
    assert list((repo / "data" / "staging").iterdir()) == []


def test_crash_at_commit_rename_leaves_previous_publication_active(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = write_run(tmp_path / "r1", "v1", 4, 4, 4, seed=3)
    v2 = write_run(tmp_path / "r2", "v2", 4, 4, 4, seed=4)
    publish_run(v1.run_dir, repo)
    files = publication_files(repo)

    def no_rename(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(commit.os, "rename", no_rename)
    with pytest.raises(OSError):
        publish_run(v2.run_dir, repo)
    assert publication_files(repo) == files
    assert active_publication(repo).model_version == "v1"  # type: ignore[union-attr]


def test_new_version_rolls_forward_and_rollback_is_a_new_publication(repo: Path, tmp_path: Path) -> None:
    v1 = write_run(tmp_path / "r1", "v1", 4, 4, 4, seed=5)
    v2 = write_run(tmp_path / "r2", "v2", 4, 4, 6, seed=6)
    p1 = publish_run(v1.run_dir, repo).publication
    p2 = publish_run(v2.run_dir, repo).publication
    assert p2.published_at > p1.published_at and active_publication(repo) == p2
    back = publish_run(v1.run_dir, repo)
    assert back.created and back.publication.published_at > p2.published_at
    assert active_publication(repo).model_version == "v1"  # type: ignore[union-attr]
    assert [p.model_version for p in list_publications(repo)] == ["v1", "v2", "v1"]


def test_same_version_with_other_vectors_is_refused(repo: Path, tmp_path: Path) -> None:
    publish_run(write_run(tmp_path / "a", "v1", 4, 4, 4, seed=7).run_dir, repo)
    other = write_run(tmp_path / "b", "v1", 4, 4, 4, seed=8)
    with pytest.raises(LearnFeaturesError, match="already published with different vectors"):
        publish_run(other.run_dir, repo)


def test_event_time_options(repo: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "r1", "v1", 3, 3, 4, seed=9, as_of="2025-06-01T00:00:00+00:00")
    pub = publish_run(run.run_dir, repo, event_time="as-of").publication
    assert pub.published_at == pd.Timestamp("2025-06-01T00:00:00Z")
    v2 = write_run(tmp_path / "r2", "v2", 3, 3, 4, seed=10)
    with pytest.raises(LearnFeaturesError, match="not after the latest publication"):
        publish_run(v2.run_dir, repo, event_time="2025-05-01T00:00:00Z")
    with pytest.raises(LearnFeaturesError, match="no timezone"):
        publish_run(v2.run_dir, repo, event_time="2025-07-01T00:00:00")
    assert publish_run(v2.run_dir, repo, event_time="2025-07-01T12:00:00+02:00").publication.published_at == pd.Timestamp(
        "2025-07-01T10:00:00Z"
    )


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _with_vector(table: pa.Table, row: int, vec: list[float]) -> pa.Table:
    vectors = table.column("embedding").to_pylist()
    vectors[row] = vec
    idx = table.schema.get_field_index("embedding")
    return table.set_column(idx, "embedding", pa.array(vectors, pa.list_(pa.float32())))


BAD_INPUTS = {
    "missing column": (ITEM_FILE, lambda t: t.drop(["model_version"]), r"item_embeddings\.parquet: missing column.*model_version"),
    "misnamed column": (
        USER_FILE,
        lambda t: t.rename_columns(["userid", "embedding", "event_timestamp", "model_version"]),
        r"user_embeddings\.parquet: missing column.*user_id",
    ),
    "wrong length": (ITEM_FILE, lambda t: _with_vector(t, 2, [1.0] * 3), r"item_embeddings\.parquet: row 2 .*length 3"),
    "NaN": (ITEM_FILE, lambda t: _with_vector(t, 1, [float("nan")] * 4), r"item_embeddings\.parquet: row 1 .*NaN"),
    "naive timestamps": (
        USER_FILE,
        # without pandas metadata, which would put the zone back on read
        lambda t: t.set_column(2, "event_timestamp", t.column(2).cast(pa.timestamp("us"))).replace_schema_metadata(None),
        r"user_embeddings\.parquet: column event_timestamp must be timezone-aware",
    ),
    "other version inside": (
        ITEM_FILE,
        lambda t: t.set_column(3, "model_version", pa.array(["v2"] + ["v9"] * (t.num_rows - 1))),
        r"item_embeddings\.parquet: row 0 .*model_version 'v2' differs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_with_file_and_row_and_publishes_nothing(repo: Path, tmp_path: Path, case: str) -> None:
    good = write_run(tmp_path / "good", "v1", 4, 4, 4, seed=11)
    publish_run(good.run_dir, repo)
    files = publication_files(repo)
    bad = write_run(tmp_path / "bad", "v9", 4, 4, 4, seed=12)
    name, change, message = BAD_INPUTS[case]
    _rewrite(bad.run_dir / "embeddings" / name, change)
    with pytest.raises(LearnFeaturesError, match=message):
        publish_run(bad.run_dir, repo)
    assert publication_files(repo) == files
    assert active_publication(repo).model_version == "v1"  # type: ignore[union-attr]


def test_manifest_dim_must_match_vectors(repo: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "v1", 3, 3, 4, seed=13)
    path = run.run_dir / "embeddings" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dim": 5}))
    with pytest.raises(LearnFeaturesError, match=r"user_embeddings\.parquet: row 0 .*length 4, the run manifest says dim 5"):
        publish_run(run.run_dir, repo)
    path.unlink()
    with pytest.raises(LearnFeaturesError, match="manifest.json: run manifest not found"):
        publish_run(run.run_dir, repo)


def test_read_published_keeps_latest_vector_per_item_of_one_version(repo: Path, tmp_path: Path) -> None:
    v1 = write_run(tmp_path / "r1", "v1", 2, 5, 4, seed=14)
    v2 = write_run(tmp_path / "r2", "v2", 2, 3, 4, seed=15)
    publish_run(v1.run_dir, repo)
    publish_run(v2.run_dir, repo)
    got = read_published(repo, "item", "v1")
    assert sorted(got.ids) == sorted(v1.items)
    for i, vec in zip(got.ids, got.vectors):
        assert vec.tobytes() == v1.items[i].tobytes()
    assert sorted(read_published(repo, "item", "v2").ids) == sorted(v2.items)
    with pytest.raises(LearnFeaturesError, match="no published item embeddings for 'v3'"):
        read_published(repo, "item", "v3")


def test_publish_command(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="learn-features")
    register(parser.add_subparsers(dest="command", required=True))
    run = write_run(tmp_path / "run", "v1", 3, 3, 4, seed=16)
    args = parser.parse_args(["publish", "--run-dir", str(run.run_dir), "--repo", str(repo)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "published v1: 3 users, 3 items, dim 4" in out
    assert f"next: (cd {repo} && feast apply) && learn-features materialize --repo {repo} && learn-features verify-online" in out
    assert args.func(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["publish", "--help"])
    assert "learn-features materialize" in capsys.readouterr().out


def test_vectors_past_int32_list_offsets_are_written_in_chunks(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publications larger than 2^31 floats are split into list chunks (shrunk here to 10 values)."""
    monkeypatch.setattr(commit, "MAX_LIST_VALUES", 10)
    run = write_run(tmp_path / "run", "v1", 5, 7, 4, seed=3)
    publish_run(run.run_dir, repo)
    items = _rows(repo, "item")
    for iid, vec in zip(items["item_id"], items["item_embedding"]):
        assert np.asarray(vec, dtype=np.float32).tobytes() == run.items[iid].tobytes()
    back = read_published(repo, "item", "v1")
    for iid, vec in zip(back.ids, back.vectors):
        assert vec.tobytes() == run.items[iid].tobytes()


def test_a_kept_reader_reads_each_publication_once_and_sees_new_ones(repo: Path, tmp_path: Path, monkeypatch) -> None:
    """The stream's reader of published rows equals a fresh read after every commit, while
    reading each publication's Parquet once: its cost does not grow with the publications."""
    from learn_features.store import published
    from learn_features.store.user_publications import publish_user_vectors

    run = write_run(tmp_path / "run", "v1", 4, 3, 4, seed=21)
    publish_run(run.run_dir, repo)
    kept = published.PublishedRowsReader(repo, "user")
    kept_reads: list[Path] = []
    read_parquet = published.read_parquet

    def counting(path, **kw):
        kept_reads.append(Path(path))
        return read_parquet(path, **kw)

    rng = np.random.default_rng(22)
    for batch in range(3):
        with monkeypatch.context() as patch:
            patch.setattr(published, "read_parquet", counting)
            kept_rows = kept.rows("v1")
        fresh = published.PublishedRowsReader(repo, "user").rows("v1")
        for field in ("ids", "times_us", "vectors"):
            assert np.array_equal(getattr(kept_rows, field), getattr(fresh, field))
        assert len(kept_rows.ids) == 4 + 2 * batch
        later = pd.Timestamp("2026-02-01", tz="UTC") + pd.Timedelta(days=batch)
        publish_user_vectors(repo, "v1", np.array(["u0", "u9"], dtype=object), rng.standard_normal((2, 4)).astype(np.float32),
                             np.full(2, later.value // 1000, dtype=np.int64), "test")
    assert len(kept_reads) == len(set(kept_reads)) == 3  # the full publication, then each users publication once
