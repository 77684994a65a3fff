"""The ledger of publications: what the repo's offline sources hold, and the rules of adding to it.

Layout under the repo (all of it git-ignored)::

    data/offline/<publication id>/user.parquet      # feature names as columns
    data/offline/<publication id>/item.parquet
    data/offline/<publication id>/publication.json  # the record: kind, version, dim, time, digest
    data/offline/<publication id>/catalog.parquet   # push publications: the catalog rows pushed
    data/offline/<publication id>/warm_items.parquet  # full publications with a new-item rule: its warm items
    data/offline/_schema/{user,item}.parquet        # zero rows: the publications' schema
    data/staging/                                   # half-built publications
    data/.publish.lock

A publication is a directory with a ``publication.json`` record; the ledger is the set of
them, read back from disk (there is no separate index to fall out of step). Publications
are never rewritten; history stays for point-in-time joins. Writing one is
``store.commit``; the writers are ``store.publish`` (a run), ``store.push`` (cold-start
items) and ``store.user_publications`` (user vectors as of their own times).

Rules kept here, for every writer:

* Writers hold ``publish_lock``, so publication times increase in commit order.
* Each full or push publication is stamped with one ``event_timestamp`` (its
  ``published_at``), strictly later than every earlier publication (``next_publish_time``).
  Feast's materialize-incremental only reads rows newer than its last run, and online
  stores (Redis) keep a value unless the new one is newer, so a rollout stamped with an
  older time would be silently ignored.
* The active version is the latest full publication's (``active_publication``). Pushed
  items and user vectors must be of it (``store.push``, ``require_active_version``):
  they are scored against, or served next to, its vectors.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pandas as pd

from learn_features.atomic import file_lock
from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule
from learn_features.store.repo import FIELDS, OFFLINE_DIR

PUBLICATION_FILE = "publication.json"
CATALOG_FILE = "catalog.parquet"
WARM_ITEMS_FILE = "warm_items.parquet"
LOCK_FILE = Path("data") / ".publish.lock"
ONE_MICROSECOND = pd.Timedelta(microseconds=1)

Kind = Literal["full", "push", "users"]


@dataclass(frozen=True)
class Publication:
    """One committed publication directory and what it holds."""

    path: Path
    kind: Kind
    model_version: str
    dim: int
    published_at: pd.Timestamp
    digest: str
    rows: dict[str, int]
    source: str
    first_event_time: pd.Timestamp  # == published_at, except for "users" rows stamped at many times
    new_item_rule: NewItemRule | None = None  # full publications: how retrieval ranks items off ``warm_items``

    @classmethod
    def read(cls, meta_path: Path) -> Publication:
        """The publication whose record is ``meta_path`` (a ``publication.json``)."""
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            return cls(
                path=meta_path.parent,
                kind=meta["kind"],
                model_version=str(meta["model_version"]),
                dim=int(meta["dim"]),
                published_at=pd.Timestamp(meta["published_at"]).tz_convert("UTC"),
                digest=str(meta["digest"]),
                rows={str(k): int(v) for k, v in meta["rows"].items()},
                source=str(meta.get("source", "")),
                first_event_time=pd.Timestamp(meta.get("first_event_time", meta["published_at"])).tz_convert("UTC"),
                new_item_rule=NewItemRule.from_record(meta.get("new_item_rule"), str(meta_path)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LearnFeaturesError(f"{meta_path}: unreadable publication record: {exc}") from exc

    @property
    def publication_id(self) -> str:
        return self.path.name

    def parquet(self, entity: Entity) -> Path | None:
        """The entity's file in this publication, or None (push publications hold items only)."""
        path = self.path / FIELDS[entity].parquet_name
        return path if entity in self.rows else None

    @property
    def warm_items(self) -> Path | None:
        """The items its ``new_item_rule`` counts as warm (one ``item_id`` column), if it has a rule."""
        path = self.path / WARM_ITEMS_FILE
        return path if self.new_item_rule is not None else None

    @property
    def catalog(self) -> Path | None:
        """The catalog rows a push embedded (kept to re-embed them after a rollout), if recorded."""
        path = self.path / CATALOG_FILE
        return path if path.is_file() else None


def list_publications(repo_path: str | Path) -> list[Publication]:
    """All committed publications, oldest first."""
    offline = Path(repo_path) / OFFLINE_DIR
    pubs = [_read_record(p, p.stat().st_mtime_ns) for p in offline.glob(f"*/{PUBLICATION_FILE}")]
    return sorted(pubs, key=lambda p: (p.published_at, p.publication_id))


@lru_cache(maxsize=1 << 16)
def _read_record(meta_path: Path, mtime_ns: int) -> Publication:
    """A publication record, parsed once per process. The ledger is listed several times per
    streamed batch and gains a publication with each, so parsing every record every time made
    a long-running stream slower by the hour. A committed record is never rewritten; the key
    carries its mtime all the same, so a record replaced under the same path (a repo deleted
    and built again) is read anew."""
    return Publication.read(meta_path)


def active_publication(repo_path: str | Path) -> Publication | None:
    """The latest full publication: its model version is the one being served."""
    full = [p for p in list_publications(repo_path) if p.kind == "full"]
    return full[-1] if full else None


def require_active_version(repo_path: str | Path, model_version: str, dim: int | None = None) -> None:
    """Refuse user vectors of a model version (or dimension) other than the active item
    publication's: they would be scored against item vectors of another model."""
    active = active_publication(repo_path)
    if active is None or active.model_version != model_version or (dim is not None and active.dim != dim):
        found = "nothing is published" if active is None else (
            f"the active item publication is {active.model_version!r} (dim {active.dim}, {active.publication_id})")
        shape = "" if dim is None else f" (dim {dim})"
        raise LearnFeaturesError(
            f"{repo_path}: the user vectors are of model_version {model_version!r}{shape} but {found}; they would be "
            "scored against item vectors of another model. Publish the run first (`learn-features publish`)"
        )


def publish_lock(repo_path: str | Path) -> AbstractContextManager[None]:
    """Serialise publishers: publication times must increase in commit order."""
    return file_lock(Path(repo_path) / LOCK_FILE)


def next_publish_time(repo_path: str | Path, requested: pd.Timestamp | None = None) -> pd.Timestamp:
    """The timestamp for a new publication: ``requested`` or now, after every earlier one.

    With no request, a clock at or behind the latest publication is nudged 1 µs past it;
    an explicit request that is not later is an error, since it would be ignored online.
    """
    pubs = list_publications(repo_path)
    latest = pubs[-1].published_at if pubs else None
    if requested is None:
        now = pd.Timestamp.now(tz="UTC").floor("us")
        return now if latest is None or now > latest else latest + ONE_MICROSECOND
    if latest is not None and requested <= latest:
        raise LearnFeaturesError(
            f"event time {requested.isoformat()} is not after the latest publication "
            f"{pubs[-1].publication_id} ({latest.isoformat()}); publications must move forward in time"
        )
    return requested
