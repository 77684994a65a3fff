"""Publishing LEARN embeddings into the Feast offline sources.

Layout under the repo (all of it git-ignored)::

    data/offline/<publication id>/user.parquet      # feature names as columns
    data/offline/<publication id>/item.parquet
    data/offline/<publication id>/publication.json  # version, dim, time, digest
    data/offline/<publication id>/catalog.parquet   # push publications: the catalog rows pushed
    data/offline/_schema/{user,item}.parquet        # zero rows: the publications' schema
    data/staging/                                   # half-built publications
    data/.publish.lock

The FileSources glob ``data/offline/*/user.parquet`` and ``.../item.parquet``. The
schema-only files keep the globs matching before the first publication, so Feast (DuckDB)
reads an empty table instead of failing on a glob that matches no file. A
publication is built in ``data/staging`` and committed with a single directory rename,
so readers see all of it or none of it, and a crash leaves only staging debris that the
next publish removes. Publications are never rewritten; history stays for point-in-time
joins.

Rules, all enforced here:

* Each full or push publication is stamped with one ``event_timestamp`` (its
  ``published_at``), strictly later than every earlier publication. Feast's
  materialize-incremental only reads rows newer than its last run, and online stores (Redis)
  keep a value unless the new one is newer, so a rollout stamped with an older time would be
  silently ignored.
* Re-publishing the active version with the same vectors is a no-op (idempotent). A
  version already published with *different* vectors is refused: a version string must
  name one set of vectors, or user and item vectors of "the same" version could mix.
* Replays of history (vectors stamped at the run's data cut) go to a per-run copy of the
  repo, not here: see ``store.replay``.
* Re-publishing an older version (same vectors) is a rollback: a new publication that is
  newer than everything else.
* Pushed cold-start items (``kind == "push"``) must carry the active full version.
* ``users`` publications (``embed-users``, ``stream-users``) carry one time per row, none
  later than now (the CLI refuses future snapshot times), and their ``published_at`` is
  their latest row; their rows may lie before earlier publications (see
  ``publish_user_vectors``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from learn_features.atomic import atomic_path, write_json_atomic
from learn_features.data.tables import read_parquet, read_table
from learn_features.embeddings_io import (
    ITEM_FILE,
    USER_FILE,
    Entity,
    EmbeddingTable,
    frame_to_matrix,
    id_column,
    read_frame,
)
from learn_features.errors import LearnFeaturesError
from learn_features.run import RunDir
from learn_features.store.repo import FIELDS, OFFLINE_DIR

PUBLICATION_FILE = "publication.json"
CATALOG_FILE = "catalog.parquet"
SCHEMA_DIR = OFFLINE_DIR / "_schema"  # no publication.json: never listed as a publication
STAGING_DIR = Path("data") / "staging"
LOCK_FILE = Path("data") / ".publish.lock"
ONE_MICROSECOND = pd.Timedelta(microseconds=1)
MAX_LIST_VALUES = 2**31 - 1  # int32 list offsets

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

    @property
    def publication_id(self) -> str:
        return self.path.name

    def parquet(self, entity: Entity) -> Path | None:
        """The entity's file in this publication, or None (push publications hold items only)."""
        path = self.path / FIELDS[entity].parquet_name
        return path if entity in self.rows else None

    @property
    def catalog(self) -> Path | None:
        """The catalog rows a push embedded (kept to re-embed them after a rollout), if recorded."""
        path = self.path / CATALOG_FILE
        return path if path.is_file() else None


@dataclass(frozen=True)
class PublishResult:
    publication: Publication
    created: bool


@dataclass(frozen=True)
class EntityVectors:
    """Ids and their (n, dim) float32 vectors, sorted by id so that digests are order-free."""

    ids: np.ndarray  # object array of str
    vectors: np.ndarray
    times_us: np.ndarray | None = None  # per-row event times (µs, UTC); None: the publication's time

    @classmethod
    def sorted(cls, ids: list[str] | np.ndarray, vectors: np.ndarray, times_us: np.ndarray | None = None) -> EntityVectors:
        """Sorted by (id, time), so that digests do not depend on the order rows came in."""
        ids_arr = np.asarray(ids, dtype=object)
        if times_us is None:
            order = np.argsort(ids_arr, kind="stable")
            return cls(ids_arr[order], np.ascontiguousarray(vectors[order], dtype=np.float32))
        times = np.asarray(times_us, dtype=np.int64)
        order = pd.DataFrame({"id": ids_arr, "t": times}).sort_values(["id", "t"], kind="stable").index.to_numpy()
        return cls(ids_arr[order], np.ascontiguousarray(vectors[order], dtype=np.float32), times[order])


def _parse_publication(meta_path: Path) -> Publication:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return Publication(
            path=meta_path.parent,
            kind=meta["kind"],
            model_version=str(meta["model_version"]),
            dim=int(meta["dim"]),
            published_at=pd.Timestamp(meta["published_at"]).tz_convert("UTC"),
            digest=str(meta["digest"]),
            rows={str(k): int(v) for k, v in meta["rows"].items()},
            source=str(meta.get("source", "")),
            first_event_time=pd.Timestamp(meta.get("first_event_time", meta["published_at"])).tz_convert("UTC"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LearnFeaturesError(f"{meta_path}: unreadable publication record: {exc}") from exc


def list_publications(repo_path: str | Path) -> list[Publication]:
    """All committed publications, oldest first."""
    offline = Path(repo_path) / OFFLINE_DIR
    pubs = [_parse_publication(p) for p in offline.glob(f"*/{PUBLICATION_FILE}")]
    return sorted(pubs, key=lambda p: (p.published_at, p.publication_id))


def active_publication(repo_path: str | Path) -> Publication | None:
    """The latest full publication: its model version is the one being served."""
    full = [p for p in list_publications(repo_path) if p.kind == "full"]
    return full[-1] if full else None


@contextmanager
def publish_lock(repo_path: str | Path) -> Iterator[None]:
    """Serialise publishers: publication times must increase in commit order."""
    lock_path = Path(repo_path) / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def _digest(model_version: str, tables: dict[Entity, EntityVectors]) -> str:
    h = hashlib.sha256(model_version.encode("utf-8"))
    for entity in sorted(tables):
        table = tables[entity]
        h.update(f"\0{entity}\0{table.vectors.shape}\0".encode())
        h.update("\n".join(table.ids.tolist()).encode("utf-8"))
        h.update(table.vectors.tobytes())
        if table.times_us is not None:
            h.update(table.times_us.tobytes())
    return h.hexdigest()


def _arrow_table(entity: Entity, table: EntityVectors, published_at: pd.Timestamp, model_version: str) -> pa.Table:
    """Published rows with Feast feature names as columns.

    Vectors are variable-size ``list<float32>`` (not fixed-size) so that publications of
    models with different dimensions can be globbed into one DuckDB scan. Rows carry
    ``published_at`` unless the table has times of its own (user-vector snapshots).
    """
    names = FIELDS[entity]
    n, dim = table.vectors.shape
    times = table.times_us if table.times_us is not None else np.full(n, published_at.value // 1000, dtype=np.int64)
    return pa.table(
        {
            names.join_key: pa.array(table.ids.tolist(), pa.string()),
            names.embedding: _list_column(table.vectors),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            names.model_version: pa.array([model_version] * n, pa.string()),
        }
    )


def ensure_offline_schema(repo_path: str | Path) -> None:
    """Write ``data/offline/_schema/{user,item}.parquet`` (zero rows) unless already right.

    Called when Feast imports the repo definitions (``feast apply``) and by every publish,
    so that materializing before the first publication loads nothing instead of failing.
    The schema is the one ``_arrow_table`` gives publications, so DuckDB unions the files.
    Idempotent, and atomic: a concurrent reader sees the old file or the new one.
    """
    empty = EntityVectors(np.zeros(0, dtype=object), np.zeros((0, 1), np.float32))
    for entity, names in FIELDS.items():
        expected = _arrow_table(entity, empty, pd.Timestamp(0, tz="UTC"), "")
        target = Path(repo_path) / SCHEMA_DIR / names.parquet_name
        try:
            if pq.read_schema(target).equals(expected.schema):
                continue
        except (pa.ArrowException, OSError):
            pass  # missing or unreadable: (re)write it
        with atomic_path(target) as tmp:
            pq.write_table(expected, tmp)


def _list_column(vectors: np.ndarray) -> pa.ChunkedArray:
    """``list<float32>`` rows in chunks of under 2^31 values: a list array's int32 offsets
    would wrap past that (e.g. 34M users x 64 dims) and silently corrupt the vectors."""
    n, dim = vectors.shape
    step = max(1, MAX_LIST_VALUES // max(dim, 1))
    chunks = [
        pa.ListArray.from_arrays(
            pa.array(np.arange(0, (len(block) + 1) * dim, dim, dtype=np.int32)),
            pa.array(block.reshape(-1), pa.float32()),
        )
        for block in (vectors[start : start + step] for start in range(0, n, step))
    ]
    return pa.chunked_array(chunks, type=pa.list_(pa.float32()))


def _flat_values(column: pa.ChunkedArray) -> np.ndarray:
    """All floats of a ``list<float32>`` column, chunk by chunk (never combined past int32)."""
    parts = [chunk.flatten().to_numpy() for chunk in column.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publication_id(published_at: pd.Timestamp, kind: Kind, model_version: str, digest: str) -> str:
    """Time, kind, version and a digest prefix: two ``users`` publications may share a latest time."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_version)[:80]
    return f"{published_at.strftime('%Y%m%dT%H%M%S%fZ')}-{kind}-{safe}-{digest[:8]}"


def commit_publication(
    repo_path: str | Path,
    kind: Kind,
    model_version: str,
    tables: dict[Entity, EntityVectors],
    published_at: pd.Timestamp,
    source: str,
    digest: str | None = None,
    catalog: pa.Table | None = None,
) -> Publication:
    """Write a publication to staging, then make it visible with one atomic rename.

    Call under ``publish_lock``. Leftovers of crashed publishes are removed first.
    ``catalog`` (push publications) is kept as ``catalog.parquet`` next to the vectors.
    """
    repo = Path(repo_path)
    ensure_offline_schema(repo)
    staging_root = repo / STAGING_DIR
    offline = repo / OFFLINE_DIR
    if staging_root.exists():
        shutil.rmtree(staging_root)
    staging_root.mkdir(parents=True)
    offline.mkdir(parents=True, exist_ok=True)
    dims = {t.vectors.shape[1] for t in tables.values()}
    if len(dims) != 1:
        raise LearnFeaturesError(f"{source}: user and item dimensions differ: {sorted(dims)}")
    digest = digest or _digest(model_version, tables)
    pub_id = _publication_id(published_at, kind, model_version, digest)
    staged = Path(tempfile.mkdtemp(prefix=f"{pub_id}.", dir=staging_root))
    staged.chmod(0o755)  # mkdtemp makes it owner-only; serving hosts may read as another user
    try:
        for entity, table in tables.items():
            target = staged / FIELDS[entity].parquet_name
            pq.write_table(_arrow_table(entity, table, published_at, model_version), target)
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        if catalog is not None:
            with atomic_path(staged / CATALOG_FILE) as tmp:
                pq.write_table(catalog, tmp)
        first = min((int(t.times_us.min()) for t in tables.values() if t.times_us is not None and len(t.times_us)), default=None)
        meta = {
            "kind": kind,
            "model_version": model_version,
            "dim": dims.pop(),
            "published_at": published_at.isoformat(),
            "first_event_time": published_at.isoformat() if first is None else pd.Timestamp(first * 1000, tz="UTC").isoformat(),
            "digest": digest,
            "rows": {entity: int(t.vectors.shape[0]) for entity, t in tables.items()},
            "source": source,
        }
        write_json_atomic(staged / PUBLICATION_FILE, meta)  # fsynced before the directory is committed
        _fsync_dir(staged)
        final = offline / pub_id
        os.rename(staged, final)  # the commit point: one atomic rename within data/
        _fsync_dir(offline)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
    return _parse_publication(final / PUBLICATION_FILE)


def _load_run_table(path: Path, entity: Entity, model_version: str, dim: int) -> EntityVectors:
    df = read_frame(path, entity)
    if df.empty:
        # It would become the active version with nothing to serve: every user unscorable,
        # and every later push of items refused against it.
        raise LearnFeaturesError(f"{path}: no {entity} rows; a full publication needs the {entity} vectors of the run")
    matrix = frame_to_matrix(df).reshape(len(df), -1)
    if matrix.shape[1] != dim:
        raise LearnFeaturesError(
            f"{path}: row 0 ({id_column(entity)}={df[id_column(entity)].iloc[0]!r}): "
            f"embedding has length {matrix.shape[1]}, the run manifest says dim {dim}"
        )
    wrong = np.flatnonzero(df["model_version"].astype(str).to_numpy() != model_version)
    if wrong.size:
        row = int(wrong[0])
        raise LearnFeaturesError(
            f"{path}: row {row} ({id_column(entity)}={df[id_column(entity)].iloc[row]!r}): "
            f"model_version {df['model_version'].iloc[row]!r} differs from the run manifest's {model_version!r}"
        )
    return EntityVectors.sorted(df[id_column(entity)].astype(str).to_numpy(), matrix)


def run_model_version(run_dir: str | Path) -> str:
    """The model version a run's embed step stamped on its vectors (its manifest's)."""
    return str(RunDir(run_dir).read_manifest()["model_version"])


def parse_event_time(value: str, as_of: object) -> pd.Timestamp | None:
    """``now`` → None (publish time), ``as-of`` → the run's as_of, else an ISO time with zone."""
    if value == "now":
        return None
    text = str(as_of) if value == "as-of" else value
    try:
        ts = pd.Timestamp(text)
    except ValueError as exc:
        raise LearnFeaturesError(f"--event-time {value!r}: not an ISO timestamp ({exc})") from exc
    if ts.tzinfo is None:
        raise LearnFeaturesError(f"--event-time {text!r}: timestamp has no timezone; add Z or +00:00")
    return ts.tz_convert("UTC").floor("us")


def publish_run(run_dir: str | Path, repo_path: str | Path, event_time: str = "now") -> PublishResult:
    """Publish a run's user and item embeddings as one full publication.

    Everything is validated before anything is written, so bad input leaves the offline
    sources (and hence what later materializations load) untouched.
    """
    run = Path(run_dir)
    manifest = RunDir(run).read_manifest()
    version, dim = str(manifest["model_version"]), int(manifest["dim"])  # type: ignore[call-overload]
    tables = {
        "user": _load_run_table(run / "embeddings" / USER_FILE, "user", version, dim),
        "item": _load_run_table(run / "embeddings" / ITEM_FILE, "item", version, dim),
    }
    requested = parse_event_time(event_time, manifest["as_of"])
    digest = _digest(version, tables)
    with publish_lock(repo_path):
        pubs = list_publications(repo_path)
        full = [p for p in pubs if p.kind == "full"]
        if full and full[-1].model_version == version and full[-1].digest == digest:
            return PublishResult(full[-1], created=False)
        clash = next((p for p in full if p.model_version == version and p.digest != digest), None)
        if clash is not None:
            raise LearnFeaturesError(
                f"{run}: model_version {version!r} was already published with different vectors "
                f"({clash.publication_id}); give the new model a new version"
            )
        published_at = next_publish_time(repo_path, requested)
        pub = commit_publication(repo_path, "full", version, tables, published_at, str(run.resolve()), digest)
    return PublishResult(pub, created=True)


def catalog_rows(catalog: pd.DataFrame) -> pa.Table:
    """Catalog rows as the Arrow table a push keeps; converted before anything is pushed, so a
    column that Parquet cannot hold fails the push instead of its record."""
    try:
        return pa.Table.from_pandas(catalog, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise LearnFeaturesError(f"catalog rows cannot be kept as Parquet ({exc}); give each column a single type") from None


def record_push(
    repo_path: str | Path, table: EmbeddingTable, published_at: pd.Timestamp, catalog: pa.Table | None = None
) -> Publication:
    """Keep pushed cold-start items in the offline store too, for point-in-time training joins.

    Call under ``publish_lock`` with the time the rows were pushed online. ``catalog``, the
    rows the vectors were embedded from, lets a later model version re-embed these items
    (``stale_pushed_items``) when a rollout leaves them behind.
    """
    vectors = EntityVectors.sorted(table.ids, table.vectors.astype(np.float32))
    return commit_publication(repo_path, "push", table.model_version, {"item": vectors}, published_at, "push", catalog=catalog)


def _item_ids(pub: Publication) -> list[str]:
    path = pub.parquet("item")
    return [] if path is None else read_parquet(path, columns=[FIELDS["item"].join_key]).column(0).to_pylist()


def stale_pushed_items(repo_path: str | Path, model_version: str) -> dict[str, Publication]:
    """Pushed items whose latest published vector is not of ``model_version``, each mapped to
    the latest push publication that holds it (and so its catalog row).

    Online stores keep the latest row per item, so these are the pushed items served with
    another model's vector: after a rollout, every item pushed under the old version that
    the new run's catalog does not contain. The serving client flags them
    ``version_mismatch`` and cannot score them until they are pushed again with the active run.
    """
    with_items = [p for p in list_publications(repo_path) if p.parquet("item") is not None]
    pushed: dict[str, Publication] = {}
    for pub in with_items:
        if pub.kind == "push":
            pushed.update(dict.fromkeys(_item_ids(pub), pub))
    latest_version: dict[str, str] = {}
    for pub in with_items:
        latest_version.update((i, pub.model_version) for i in _item_ids(pub) if i in pushed)
    return {i: pushed[i] for i, version in latest_version.items() if version != model_version}


def stale_catalog_rows(repo_path: str | Path, model_version: str) -> pd.DataFrame:
    """The recorded catalog rows of every ``stale_pushed_items`` item, ready to embed again."""
    stale = stale_pushed_items(repo_path, model_version)
    by_pub: dict[Path, tuple[Publication, set[str]]] = {}
    for item, pub in stale.items():
        by_pub.setdefault(pub.path, (pub, set()))[1].add(item)
    unrecorded = [pub.publication_id for pub, _ in by_pub.values() if pub.catalog is None]
    if unrecorded:
        raise LearnFeaturesError(
            f"{Path(repo_path) / OFFLINE_DIR}: push publication(s) {unrecorded} hold no catalog rows (pushed before "
            "learn-features kept them); run `embed-items --catalog FILE --push` with those items' rows instead"
        )
    frames = []
    for pub, items in by_pub.values():
        rows = read_table(pub.catalog)  # type: ignore[arg-type]
        frames.append(rows[rows["item_id"].astype(str).isin(items)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"item_id": []})


@dataclass(frozen=True)
class PublishedRows:
    """Every published row of one entity and model version: ids, event times (µs) and vectors,
    in publication order (a later publication's row wins a tie of times)."""

    ids: np.ndarray
    times_us: np.ndarray
    vectors: np.ndarray

    def latest(self) -> EntityVectors:
        """Per id, the row with the latest event time: what an online store that loaded them all serves."""
        order = pd.DataFrame({"id": self.ids, "t": self.times_us}).sort_values("t", kind="stable").drop_duplicates("id", keep="last")
        rows = order.index.to_numpy()
        return EntityVectors(self.ids[rows], self.vectors[rows], self.times_us[rows])

    def in_effect(self, ids: np.ndarray, times_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each (id, time): whether a row at or before that time exists, and its vector (the
        row a point-in-time join returns then)."""
        query = pd.DataFrame({"id": ids, "t": times_us, "q": np.arange(len(ids))}).sort_values("t", kind="stable")
        table = pd.DataFrame({"id": self.ids, "t": self.times_us, "row": np.arange(len(self.ids))}).sort_values("t", kind="stable")
        found = pd.merge_asof(query, table, on="t", by="id", direction="backward").sort_values("q")
        rows = found["row"].to_numpy()
        present = ~np.isnan(rows)
        vectors = np.zeros((len(ids), self.vectors.shape[1]), np.float32)
        vectors[present] = self.vectors[rows[present].astype(np.int64)]
        return present, vectors


def published_rows(repo_path: str | Path, entity: Entity, model_version: str) -> PublishedRows:
    """Every row of ``entity`` published under ``model_version`` (see ``PublishedRows``)."""
    names = FIELDS[entity]
    ids: list[np.ndarray] = []
    times: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    for pub in list_publications(repo_path):
        path = pub.parquet(entity)
        if pub.model_version != model_version or path is None:
            continue
        tbl = read_parquet(path, columns=[names.join_key, names.embedding, "event_timestamp"])
        ids.append(np.asarray(tbl.column(names.join_key).to_pylist(), dtype=object))
        times.append(tbl.column("event_timestamp").cast(pa.int64()).to_numpy())
        chunks.append(_flat_values(tbl.column(names.embedding)).reshape(len(ids[-1]), pub.dim))
    if not ids:
        return PublishedRows(np.zeros(0, dtype=object), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    return PublishedRows(np.concatenate(ids), np.concatenate(times), np.concatenate(chunks).astype(np.float32, copy=False))


def read_published(repo_path: str | Path, entity: Entity, model_version: str) -> EntityVectors:
    """The latest published vector per id among all publications of ``model_version``: the
    row with the latest event time (rows of one time: the later publication), which is the
    row an online store that loaded them all serves."""
    rows = published_rows(repo_path, entity, model_version)
    if not len(rows.ids):
        raise LearnFeaturesError(f"{Path(repo_path) / OFFLINE_DIR}: no published {entity} embeddings for {model_version!r}")
    return rows.latest()


@dataclass(frozen=True)
class UserPublishResult:
    """A ``users`` publication, or None when every row was already in effect."""

    publication: Publication | None
    published: int  # rows committed
    unchanged: int  # rows left out: a point-in-time read at their time already returns their vector


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


def publish_user_vectors(
    repo_path: str | Path, model_version: str, ids: np.ndarray, vectors: np.ndarray, times: np.ndarray, source: str
) -> UserPublishResult:
    """Commit user vectors stamped at their own times (``times``: UTC µs) as a ``users`` publication.

    These are the inductive user tower's vectors as of snapshot times, or streamed ones; they
    belong to one model version and are refused unless it is the active version here, since
    they are scored against that version's item vectors. A row whose vector is what a
    point-in-time read at its time already returns is left out, so publishing the same
    snapshots again, or a snapshot of users whose history did not change, adds nothing.
    Their times may lie before earlier publications: ``learn-features materialize`` loads
    every pending publication whatever its time, and point-in-time joins pick, per
    impression, the latest row at or before it.
    """
    table = user_vector_rows(ids, vectors, times, source)
    with publish_lock(repo_path):
        require_active_version(repo_path, model_version, vectors.shape[1])
        return commit_user_vectors(repo_path, model_version, table, source)


def user_vector_rows(ids: np.ndarray, vectors: np.ndarray, times: np.ndarray, source: str) -> EntityVectors:
    """The rows of a ``users`` publication, sorted; refused when empty or with two vectors of
    one user at one time."""
    if not len(ids):
        raise LearnFeaturesError(f"{source}: no user vectors to publish")
    table = EntityVectors.sorted(ids, vectors, times)
    duplicated = pd.DataFrame({"id": table.ids, "t": table.times_us}).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise LearnFeaturesError(f"{source}: user {table.ids[row]!r} has two vectors at one time ({pd.Timestamp(int(table.times_us[row]) * 1000, tz='UTC')})")
    return table


def commit_user_vectors(repo_path: str | Path, model_version: str, table: EntityVectors, source: str) -> UserPublishResult:
    """``publish_user_vectors``' commit, for a caller that holds ``publish_lock`` and has run
    ``require_active_version`` under it (the stream checks, pushes and records under one lock)."""
    published = published_rows(repo_path, "user", model_version)
    new = np.ones(len(table.ids), dtype=bool)
    if len(published.ids):
        present, current = published.in_effect(table.ids, table.times_us)
        new = ~(present & (current == table.vectors).all(axis=1))
    if not new.any():
        return UserPublishResult(None, 0, len(new))
    kept = EntityVectors(table.ids[new], table.vectors[new], table.times_us[new])
    latest = pd.Timestamp(int(kept.times_us.max()) * 1000, tz="UTC")
    pub = commit_publication(repo_path, "users", model_version, {"user": kept}, latest, source)
    return UserPublishResult(pub, int(new.sum()), int((~new).sum()))
