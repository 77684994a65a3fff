"""Point-in-time joins of LEARN embeddings onto impressions (DuckDB offline store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast_fixtures import SyntheticRun, copy_repo, write_run

from learn_features.embeddings_io import EmbeddingTable
from learn_features.errors import LearnFeaturesError
from learn_features.store.historical import historical_learn_features
from learn_features.store.ledger import Publication
from learn_features.store.publish import publish_run
from learn_features.store.push import push_item_embeddings
from learn_features.store.repo import apply_repo, open_store

DIM = 8
NOW = pd.Timestamp.now(tz="UTC").floor("s")


@dataclass
class History:
    repo: Path
    v1: SyntheticRun
    v2: SyntheticRun
    p1: Publication
    p2: Publication
    pushed: dict[str, np.ndarray]
    p_push: Publication


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """v1 three days ago (i0..i9), v2 one day ago (i0..i5), then a cold-start item pushed now."""
    root = tmp_path_factory.mktemp("history")
    repo = copy_repo(root / "repo")
    v1 = write_run(root / "v1", "v1", 6, 10, DIM, seed=1)
    v2 = write_run(root / "v2", "v2", 6, 0, DIM, seed=2, item_ids=[f"i{i}" for i in range(6)])
    p1 = publish_run(v1.run_dir, repo, event_time=(NOW - pd.Timedelta(days=3)).isoformat()).publication
    p2 = publish_run(v2.run_dir, repo, event_time=(NOW - pd.Timedelta(days=1)).isoformat()).publication
    apply_repo(open_store(repo), repo)
    vec = np.random.default_rng(3).standard_normal((1, DIM)).astype(np.float32)
    p_push = push_item_embeddings(repo, EmbeddingTable("item", ["fresh"], vec, NOW, "v2"))
    return History(repo, v1, v2, p1, p2, {"fresh": vec[0]}, p_push)


def _expected(h: History, entity: str, key: str, ts: pd.Timestamp) -> tuple[str | None, np.ndarray | None, pd.Timestamp | None]:
    """The latest vector published at or before ts, straight from the fixtures (the views never expire)."""
    best: tuple[str | None, np.ndarray | None, pd.Timestamp | None] = (None, None, None)
    for pub, table in (
        (h.p1, h.v1.users if entity == "user" else h.v1.items),
        (h.p2, h.v2.users if entity == "user" else h.v2.items),
        (h.p_push, {} if entity == "user" else h.pushed),
    ):
        if key in table and pub.published_at <= ts:
            best = (pub.model_version, table[key], pub.published_at)
    return best


def test_no_embedding_published_after_an_impression_is_joined(history: History) -> None:
    rng = np.random.default_rng(0)
    n = 400
    offsets = rng.uniform(-4 * 86400, 60, n)  # from before v1 until just after the push
    stamps = [NOW + pd.Timedelta(seconds=float(s)) for s in offsets]
    users = [f"u{i}" for i in rng.integers(0, 6, n)]
    items = [f"i{i}" if i < 10 else "fresh" for i in rng.integers(0, 11, n)]
    # the exact publication instants and one microsecond before them, for kept, dropped and pushed items
    for pub in (history.p1, history.p2, history.p_push):
        for when in (pub.published_at, pub.published_at - pd.Timedelta(microseconds=1)):
            stamps += [when] * 3
            users += ["u0"] * 3
            items += ["i0", "i9", "fresh"]
    impressions = pd.DataFrame(
        {"user_id": users, "item_id": items, "event_timestamp": pd.DatetimeIndex(stamps).as_unit("us"), "clicked": rng.integers(0, 2, len(stamps))},
        index=pd.RangeIndex(100, 100 + len(stamps)),
    )
    out = historical_learn_features(history.repo, impressions)
    pd.testing.assert_frame_equal(out[impressions.columns], impressions)

    for row in out.itertuples():
        ts = row.event_timestamp
        uver, uvec, upub = _expected(history, "user", row.user_id, ts)
        iver, ivec, ipub = _expected(history, "item", row.item_id, ts)
        assert (row.user_model_version, row.item_model_version) == (uver, iver), row
        for when in (upub, ipub):
            assert when is None or when <= ts  # the property under test
        mismatch = uver is not None and iver is not None and uver != iver
        assert row.learn_version_mismatch == mismatch
        for got, want in ((row.user_embedding, uvec), (row.item_embedding, ivec)):
            if want is None or mismatch:
                assert got is None
            else:
                assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    # the sample really exercised every case
    assert out["user_model_version"].isna().any() and (out["user_model_version"] == "v1").any()
    assert (out["item_model_version"] == "v2").any() and out["learn_version_mismatch"].any()
    assert (out["item_id"].eq("fresh") & out["item_embedding"].notna()).any()


def test_duplicate_rows_and_no_expiry(history: History) -> None:
    """Duplicated entity rows all come back, and a vector years old still joins (TTL 0)."""
    ts = history.p2.published_at + pd.Timedelta(hours=1)
    late = history.p2.published_at + pd.Timedelta(days=3 * 365)
    impressions = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u1"], "item_id": ["i1", "i1", "i1", "i1"], "event_timestamp": [ts, ts, ts, late]}
    )
    out = historical_learn_features(history.repo, impressions)
    assert len(out) == 4 and out["user_model_version"].tolist() == ["v2", "v2", "v2", "v2"]
    assert out["user_embedding"].iloc[3].tobytes() == history.v2.users["u1"].tobytes()


def test_pinned_model_version(history: History) -> None:
    ts = history.p2.published_at + pd.Timedelta(hours=1)
    impressions = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_timestamp": [ts]})
    out = historical_learn_features(history.repo, impressions, model_version="v1")
    assert out["learn_version_mismatch"].tolist() == [True] and out["user_embedding"].iloc[0] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.assign(event_timestamp=df["event_timestamp"].dt.tz_localize(None)), "must be timezone-aware"),
        (lambda df: df.drop(columns="item_id"), r"missing column\(s\) \['item_id'\]"),
        (lambda df: df.assign(user_id=[1, 2]), r"row 0: user_id must be a string"),
        (lambda df: df.assign(user_embedding=[0, 0]), "would be overwritten"),
    ],
)
def test_bad_entity_df(history: History, change, message: str) -> None:  # type: ignore[no-untyped-def]
    good = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_timestamp": [NOW, NOW]})
    with pytest.raises(LearnFeaturesError, match=message):
        historical_learn_features(history.repo, change(good))
