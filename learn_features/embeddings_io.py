"""LEARN embedding tables: the contract between training, Feast publishing and ranking.

One Parquet file per entity kind, with columns
``<entity>_id`` (string), ``embedding`` (list<float32>, fixed length), ``event_timestamp``
(timestamp[us, UTC]) and ``model_version`` (string). Ids are strings everywhere so that
catalogs with SKU-like ids and MovieLens' integers share one Feast entity type.
Microsecond timestamps avoid DuckDB's nanosecond conversion failure at materialize time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from learn_features.atomic import atomic_path
from learn_features.data.tables import read_parquet
from learn_features.errors import LearnFeaturesError

Entity = Literal["user", "item"]
USER_FILE = "user_embeddings.parquet"
ITEM_FILE = "item_embeddings.parquet"


def id_column(entity: Entity) -> str:
    return f"{entity}_id"


@dataclass(frozen=True)
class EmbeddingTable:
    """Vectors for one entity kind from one model version, as of one timestamp."""

    entity: Entity
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32
    event_timestamp: pd.Timestamp  # tz-aware UTC
    model_version: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                id_column(self.entity): pd.Series(self.ids, dtype="string"),
                "embedding": list(self.vectors.astype(np.float32)),
                "event_timestamp": pd.Series([self.event_timestamp] * len(self.ids), dtype="datetime64[us, UTC]"),
                "model_version": self.model_version,
            }
        )


def arrow_schema(entity: Entity, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(id_column(entity), pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


def validate_frame(df: pd.DataFrame, entity: Entity, source: str, dim: int | None = None, per_time: bool = False) -> int:
    """Check an embedding frame against the contract; return its dimension.

    Raises ``LearnFeaturesError`` naming ``source`` and the first offending row, so a bad
    file is rejected before it reaches an offline source or an online store.
    """
    key = id_column(entity)
    missing = [c for c in (key, "embedding", "event_timestamp", "model_version") if c not in df.columns]
    if missing:
        raise LearnFeaturesError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
    if df[key].isna().any():
        raise LearnFeaturesError(f"{source}: row {int(np.flatnonzero(df[key].isna())[0])}: {key} is empty")
    dup = df.duplicated([key, "event_timestamp"] if per_time else [key])  # snapshots: one row per id and time
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise LearnFeaturesError(f"{source}: row {row}: duplicate {key} {df[key].iloc[row]!r}")
    ts = df["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise LearnFeaturesError(f"{source}: column event_timestamp must be timezone-aware (UTC); got {ts.dtype}")
    lengths = df["embedding"].map(lambda v: -1 if v is None else len(v)).to_numpy()
    expected = int(dim if dim is not None else (lengths[0] if len(lengths) else 0))
    bad = np.flatnonzero(lengths != expected)
    if bad.size:
        row = int(bad[0])
        raise LearnFeaturesError(
            f"{source}: row {row} ({key}={df[key].iloc[row]!r}): embedding has length {lengths[row]}, expected {expected}"
        )
    if len(df):
        mat = np.stack(df["embedding"].to_numpy()).astype(np.float32)
        nonfinite = np.flatnonzero(~np.isfinite(mat).all(axis=1))
        if nonfinite.size:
            row = int(nonfinite[0])
            raise LearnFeaturesError(f"{source}: row {row} ({key}={df[key].iloc[row]!r}): embedding has NaN or inf")
    return expected


def write_table(table: EmbeddingTable, path: str | Path) -> Path:
    """Validate and write atomically; an existing file is replaced only by a complete one."""
    if not table.ids:
        raise LearnFeaturesError(f"{path}: refusing to write an empty {table.entity} embedding table")
    return write_frame(table.to_frame(), table.entity, path, table.dim)


def write_frame(df: pd.DataFrame, entity: Entity, path: str | Path, dim: int) -> Path:
    """An embedding frame (the contract's columns; rows may carry different event times, as
    user-vector snapshots do, and so one id may appear once per time), validated and written
    atomically."""
    path = Path(path)
    validate_frame(df, entity, str(path), dim, per_time=True)
    arrow = pa.Table.from_pandas(df, schema=arrow_schema(entity, dim), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return path


def read_frame(path: str | Path, entity: Entity) -> pd.DataFrame:
    """Read and validate an embedding Parquet file written by ``write_table`` (or by hand)."""
    path = Path(path)
    if not path.exists():
        raise LearnFeaturesError(f"{path}: embedding file not found")
    table = read_parquet(path)
    missing = [c for c in (id_column(entity), "embedding", "event_timestamp", "model_version") if c not in table.column_names]
    if missing:  # named before the id column is indexed below
        raise LearnFeaturesError(f"{path}: missing column(s) {missing}; found {table.column_names}")
    df = table.to_pandas()
    df[id_column(entity)] = df[id_column(entity)].astype("string")
    df["embedding"] = df["embedding"].map(lambda v: np.asarray(v, dtype=np.float32))
    validate_frame(df, entity, str(path))
    return df


def frame_to_matrix(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["embedding"].to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 0), np.float32)
