"""The short-history table: every user's last N events, durable, for streamed user vectors.

A streamed refresh recomputes a user's vector from their latest history, so the history must
outlive the process that received the events: a restart, a crash between receiving events and
pushing the vector, or a second worker must all see the same history. It lives in one SQLite
file inside the Feast repo (``data/histories.sqlite``), which the project owns and documents:

- ``events(user_id, ts, item_id)``: at most ``history_len`` rows per user, the newest ones;
  the primary key makes a re-sent event (a retried batch) a no-op. So an exact duplicate
  event (same user, time and item) counts once here, where the offline pipeline keeps both.
- every write is one transaction (SQLite's journal makes it atomic and durable), and the
  file is opened with a busy timeout, so concurrent writers wait for each other instead of
  failing.
- one connection per store object, kept open: closing the last connection to a WAL database
  checkpoints it, which cost more than the batch's own writes when every call reopened the
  file (a 100-user append into 610 users' histories: 31 ms reopening, 11 ms kept open);
- a batch's histories are read with one query per ``READ_CHUNK`` users, not one per user.

Order within a user is (timestamp, item id), the order the offline pipeline gives tied events,
so a streamed history and the offline history of the same events are the same sequence and
give the same vector.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from learn_features.errors import LearnFeaturesError

HISTORY_FILE = Path("data") / "histories.sqlite"
BUSY_TIMEOUT_S = 60.0
#: Users per history read: under 999, the fewest bound parameters any SQLite build allows.
READ_CHUNK = 900
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL,
    ts INTEGER NOT NULL,          -- microseconds since the epoch, UTC
    item_id TEXT NOT NULL,
    PRIMARY KEY (user_id, ts, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class HistoryStore:
    """Last-N event histories per user in a SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, history_len: int) -> None:
        if history_len < 1:
            raise LearnFeaturesError(f"history length must be >= 1, got {history_len}")
        self.path = Path(path)
        self.history_len = history_len
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LearnFeaturesError(f"{self.path}: cannot create the history store's folder: {exc}") from exc
        with self._connection() as db:
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM settings WHERE key = 'history_len'").fetchone()
            if row is None:
                db.execute("INSERT INTO settings VALUES ('history_len', ?)", (str(history_len),))
            elif int(row[0]) != history_len:
                raise LearnFeaturesError(
                    f"{self.path}: holds histories of {row[0]} events, but this run uses {history_len}; "
                    "use another history file for a model with another history length"
                )

    @classmethod
    def in_repo(cls, repo_path: str | Path, history_len: int) -> HistoryStore:
        return cls(Path(repo_path) / HISTORY_FILE, history_len)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The store's connection, opened on first use; one caller at a time. After an error it
        is closed, so the next call starts from a fresh connection rather than a broken one."""
        with self._lock:
            try:
                if self._db is None:
                    db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                    self._db = db
                yield self._db
            except sqlite3.Error as exc:
                self._close()
                raise LearnFeaturesError(f"{self.path}: history store failed: {exc}") from exc

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def close(self) -> None:
        """Close the connection (the next call opens it again)."""
        with self._lock:
            self._close()

    def append(self, events: pd.DataFrame) -> list[str]:
        """Add ``user_id``/``item_id``/UTC ``timestamp`` rows, keep each user's newest N, in one
        transaction; returns the users whose history the batch touched (sorted)."""
        rows = [
            (str(u), int(t.value // 1000), str(i))
            for u, i, t in zip(events["user_id"], events["item_id"], pd.to_datetime(events["timestamp"], utc=True))
        ]
        users = sorted({r[0] for r in rows})
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", rows)
                db.executemany(
                    """DELETE FROM events WHERE user_id = ?1 AND (ts, item_id) NOT IN (
                           SELECT ts, item_id FROM events WHERE user_id = ?1 ORDER BY ts DESC, item_id DESC LIMIT ?2)""",
                    [(u, self.history_len) for u in users],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return users

    def histories(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """Each user's stored history, oldest first (users without one are absent), keyed in the
        order of ``user_ids``.

        One query per ``READ_CHUNK`` users, not one per user: the table's primary key is
        clustered by (user, time, item), so the query walks each user's rows in history order
        and needs no sort.
        """
        wanted = list(dict.fromkeys(str(u) for u in user_ids))
        found: dict[str, list[str]] = {}
        with self._connection() as db:
            for start in range(0, len(wanted), READ_CHUNK):
                chunk = wanted[start : start + READ_CHUNK]
                marks = ",".join("?" * len(chunk))
                for user, item in db.execute(
                    f"SELECT user_id, item_id FROM events WHERE user_id IN ({marks}) ORDER BY user_id, ts, item_id", chunk
                ):
                    found.setdefault(user, []).append(item)
        return {user: found[user] for user in wanted if user in found}

    def __len__(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

