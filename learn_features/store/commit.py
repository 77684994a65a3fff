"""Writing one publication: vectors as Parquet rows, the schema files, and the atomic commit.

A publication is built in ``data/staging`` and committed with a single directory rename,
so readers see all of it or none of it, and a crash leaves only staging debris that the
next commit removes. The FileSources glob ``data/offline/*/user.parquet`` and
``.../item.parquet``; the schema-only files under ``data/offline/_schema`` keep the globs
matching before the first publication, so Feast (DuckDB) reads an empty table instead of
failing on a glob that matches no file. Which publications may be committed, and when, is
the writers' business (``store.publish``, ``store.push``, ``store.user_publications``)
under the ledger's rules (``store.ledger``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from learn_features.atomic import atomic_path, write_json_atomic
from learn_features.data.tables import write_item_list
from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemsPolicy
from learn_features.store.ledger import CATALOG_FILE, PUBLICATION_FILE, WARM_ITEMS_FILE, Kind, Publication
from learn_features.store.repo import FIELDS, OFFLINE_DIR

SCHEMA_DIR = OFFLINE_DIR / "_schema"  # no publication.json: never listed as a publication
STAGING_DIR = Path("data") / "staging"
MAX_LIST_VALUES = 2**31 - 1  # int32 list offsets


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


def publication_digest(model_version: str, tables: dict[Entity, EntityVectors]) -> str:
    """What a publication's record calls its ``digest``: version, ids, vectors and row times."""
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

    Called when Feast imports the repo definitions (``feast apply``) and by every commit,
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


def flat_values(column: pa.ChunkedArray) -> np.ndarray:
    """All floats of a published ``list<float32>`` column, chunk by chunk (never combined past int32)."""
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
    new_items: NewItemsPolicy | None = None,
) -> Publication:
    """Write a publication to staging, then make it visible with one atomic rename.

    Call under ``publish_lock``. Leftovers of crashed publishes are removed first.
    ``catalog`` (push publications) is kept as ``catalog.parquet`` next to the vectors;
    ``new_items`` (full publications of a method with a new-item rule) as the record's
    ``new_item_rule`` and ``warm_items.parquet``.
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
    digest = digest or publication_digest(model_version, tables)
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
        if new_items is not None:
            write_item_list(staged / WARM_ITEMS_FILE, sorted(new_items.warm_ids))
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
            "new_item_rule": None if new_items is None else new_items.rule.record(),
        }
        write_json_atomic(staged / PUBLICATION_FILE, meta)  # fsynced before the directory is committed
        _fsync_dir(staged)
        final = offline / pub_id
        os.rename(staged, final)  # the commit point: one atomic rename within data/
        _fsync_dir(offline)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
    return Publication.read(final / PUBLICATION_FILE)
