"""The stream's history table (``store.histories``): batched reads return exactly what one
query per user returned, and the kept-open connection shares the file with other writers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learn_features.store import histories
from learn_features.store.histories import HistoryStore

T0 = pd.Timestamp("2021-05-01", tz="UTC")


def per_user_reads(path: Path, user_ids: list[str]) -> dict[str, list[str]]:
    """The reference: one query per user, as the table's reads were before they were batched."""
    out: dict[str, list[str]] = {}
    with sqlite3.connect(path) as db:
        for user in user_ids:
            rows = db.execute("SELECT item_id FROM events WHERE user_id = ? ORDER BY ts, item_id", (user,)).fetchall()
            if rows:
                out[user] = [r[0] for r in rows]
    return out


def random_events(n: int, users: int, seed: int) -> pd.DataFrame:
    """Few distinct times and items, so many events tie on time and some repeat exactly."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, users, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, 12, n)],
            "timestamp": [T0 + pd.Timedelta(minutes=int(k)) for k in rng.integers(0, 6, n)],
        }
    )


@pytest.mark.parametrize("read_chunk", [histories.READ_CHUNK, 7])
def test_batched_history_reads_equal_one_query_per_user(tmp_path: Path, monkeypatch, read_chunk: int) -> None:
    monkeypatch.setattr(histories, "READ_CHUNK", read_chunk)
    store = HistoryStore(tmp_path / "h.sqlite", history_len=5)
    events = random_events(600, users=40, seed=0)
    store.append(events)
    store.append(events.iloc[:50])  # a re-sent part: exact duplicates
    assert events.duplicated().any() and events.duplicated(["user_id", "timestamp"]).sum() > events.duplicated().sum()
    # every stored user, unknown users, repeats, in an order that is not sorted
    asked = [f"u{k}" for k in np.random.default_rng(1).permutation(45)] + ["u3", "nobody", "u3"]
    expected = per_user_reads(store.path, list(dict.fromkeys(asked)))
    got = store.histories(asked)
    assert got == expected
    assert list(got) == list(expected)  # keyed in the order asked
    assert "nobody" not in got and all(0 < len(h) <= 5 for h in got.values())
    assert store.histories([]) == {}


def test_ties_are_read_in_item_order_and_trimmed_to_the_newest(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite", history_len=3)
    batch = pd.DataFrame({"user_id": ["a"] * 4 + ["b"], "item_id": ["z", "y", "x", "w", "q"], "timestamp": [T0] * 4 + [T0]})
    assert store.append(batch) == ["a", "b"]
    assert store.histories(["b", "a"]) == {"b": ["q"], "a": ["x", "y", "z"]}  # "w" sorts first, so it is the oldest


def test_the_kept_connection_sees_other_writers_and_reopens_after_close(tmp_path: Path) -> None:
    first = HistoryStore(tmp_path / "h.sqlite", history_len=3)
    second = HistoryStore(tmp_path / "h.sqlite", history_len=3)
    first.append(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [T0]}))
    second.append(pd.DataFrame({"user_id": ["a"], "item_id": ["y"], "timestamp": [T0 + pd.Timedelta(days=1)]}))
    assert first.histories(["a"]) == second.histories(["a"]) == {"a": ["x", "y"]}
    first.close()
    assert first.histories(["a"]) == {"a": ["x", "y"]}
    seen: list[dict[str, list[str]]] = []
    worker = threading.Thread(target=lambda: seen.append(first.histories(["a"])))  # a stream built in one thread, used in another
    worker.start()
    worker.join()
    assert seen == [{"a": ["x", "y"]}]
