"""Content embeddings on disk: fp16, sharded, memory-mapped; a batch reads only its rows.

Why: at the paper's scale (31M items x 4096 dims) the content matrix is ~254 GB even in fp16,
so it can live neither in host nor in GPU memory, and re-running the LLM every epoch is out
of the question. The store is written once, after extraction, and training gathers just the
rows a batch references; the content projection then runs on the device.

Layout of a store directory::

    index.json            {"format", "rows", "dim", "dtype", "items_sha256", "vectors_sha256", "source", "shards": [{"file", "start", "rows"}]}
    shard-00000.npy       (rows_0, dim) float16, plain .npy so np.load(mmap_mode="r") maps it
    shard-00001.npy       ...

``index.json`` is written last: a directory without it is an interrupted build and is never
read. A rebuild happens in a sibling temporary directory that then replaces the old store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learn_features.atomic import write_json_atomic
from learn_features.errors import LearnFeaturesError

FORMAT = 2  # 2: the index records vectors_sha256
INDEX = "index.json"
DTYPE = np.float16
FP16_MAX = float(np.finfo(np.float16).max)
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB: ~131k rows of a 4096-d LLM, ~240 shards for 31M items


def items_digest(item_ids: Sequence[str]) -> str:
    """Identifies the catalog order a store is aligned to, without storing 31M ids in the index."""
    digest = hashlib.sha256()
    for item in item_ids:
        digest.update(item.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def shard_rows_for(dim: int, shard_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    return max(1, shard_bytes // (dim * np.dtype(DTYPE).itemsize))


class ContentStore:
    """Read side: shards are memory-mapped lazily, on the first batch that needs one of their rows."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.exists():
            raise LearnFeaturesError(f"{index_path}: content store not found (or its build was interrupted); rebuild it")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT or index.get("dtype") != np.dtype(DTYPE).name:
            raise LearnFeaturesError(f"{index_path}: unsupported content store format {index.get('format')}/{index.get('dtype')}; rebuild it")
        self.rows: int = index["rows"]
        self.dim: int = index["dim"]
        self.items_sha256: str = index["items_sha256"]
        # What the vectors are, independent of where they came from: trained towers and the
        # published model version are tied to it, so new content never meets old towers.
        self.vectors_sha256: str = index["vectors_sha256"]
        self.source: dict[str, Any] = index["source"]
        self._files = [shard["file"] for shard in index["shards"]]
        self._starts = np.array([shard["start"] for shard in index["shards"]], dtype=np.int64)
        self._mapped: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.rows

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._mapped:
            path = self.directory / self._files[number]
            if not path.exists():
                raise LearnFeaturesError(f"{path}: content store shard is missing; rebuild the store")
            self._mapped[number] = np.load(path, mmap_mode="r")
        return self._mapped[number]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """(K, dim) float16 rows in the order of ``indices``; only shards holding them are touched.

        Sorted indices (np.unique's output) read each shard front to back, which is what disk
        readahead rewards.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.rows):
            raise LearnFeaturesError(f"{self.directory}: row index out of range [0, {self.rows}) in a content gather")
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        out = np.empty((indices.size, self.dim), dtype=DTYPE)
        for number in np.unique(shard_of).tolist():
            selected = shard_of == number
            out[selected] = self._shard(number)[indices[selected] - self._starts[number]]
        return out


def _fp16_rows(chunk: np.ndarray, dim: int, where: str) -> np.ndarray:
    """fp16 halves the bytes of the biggest artefact; values it cannot hold are refused, not clipped."""
    if chunk.ndim != 2 or chunk.shape[1] != dim:
        raise LearnFeaturesError(f"{where}: content chunk of shape {chunk.shape} does not have {dim} columns")
    if not np.isfinite(chunk).all() or (chunk.size and np.abs(chunk).max() > FP16_MAX):
        raise LearnFeaturesError(f"{where}: content embeddings have NaN/inf or values beyond the float16 range (±{FP16_MAX:g})")
    return chunk.astype(DTYPE)


def _write_shards(
    directory: Path, chunks: Iterable[np.ndarray], shard_bytes: int, where: str
) -> tuple[int, list[dict[str, Any]], str]:
    """Re-blocks arbitrary chunks into equal shards; holds about one shard in memory.

    Returns the row dimension (taken from the first chunk), the shard entries of the index
    and the sha256 of all fp16 rows in order.
    """
    digest = hashlib.sha256()
    shards: list[dict[str, Any]] = []
    pending: list[np.ndarray] = []
    pending_rows = written = dim = shard_rows = 0

    def flush(rows: int) -> None:
        nonlocal pending, pending_rows, written
        block = np.concatenate(pending)
        name = f"shard-{len(shards):05d}.npy"
        np.save(directory / name, block[:rows])
        digest.update(np.ascontiguousarray(block[:rows]).tobytes())
        shards.append({"file": name, "start": written, "rows": rows})
        written += rows
        pending = [block[rows:]] if rows < len(block) else []
        pending_rows -= rows

    for chunk in chunks:
        chunk = np.asarray(chunk)
        if not dim:
            dim = int(chunk.shape[-1])
            shard_rows = shard_rows_for(dim, shard_bytes)
        pending.append(_fp16_rows(chunk, dim, where))
        pending_rows += len(pending[-1])
        while pending_rows >= shard_rows:
            flush(shard_rows)
    if pending_rows:
        flush(pending_rows)
    return dim, shards, digest.hexdigest()


def write_content_store(
    directory: str | Path,
    chunks: Iterable[np.ndarray],
    item_ids: Sequence[str],
    source: dict[str, Any],
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ContentStore:
    """Build a store from (rows, dim) chunks in catalog order, streamed: an extractor can yield
    them as it goes, and only about one shard is ever in memory.

    ``source`` records what the store was built from, so a reader can tell a stale store.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".building", dir=directory.parent))
    try:
        dim, shards, vectors_sha256 = _write_shards(building, chunks, shard_bytes, str(directory))
        rows = sum(shard["rows"] for shard in shards)
        if rows == 0 or rows != len(item_ids):
            raise LearnFeaturesError(f"{directory}: {rows} content rows for {len(item_ids)} catalog items")
        index = {"format": FORMAT, "rows": rows, "dim": dim, "dtype": np.dtype(DTYPE).name,
                 "items_sha256": items_digest(item_ids), "vectors_sha256": vectors_sha256,
                 "source": source, "shards": shards}
        write_json_atomic(building / INDEX, index)
        _replace_directory(building, directory)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return ContentStore(directory)


def _replace_directory(new: Path, target: Path) -> None:
    """Swap ``new`` in for ``target``; readers never see a half-written store (only, briefly, none)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def open_current(directory: str | Path, source: dict[str, Any]) -> ContentStore | None:
    """The store at ``directory`` if it was built from ``source``; None if absent, partial or stale."""
    try:
        store = ContentStore(directory)
    except LearnFeaturesError:
        return None
    return store if store.source == source else None


def iter_npz_rows(path: str | Path, key: str, chunk_rows: int) -> Iterator[np.ndarray]:
    """Rows of a 2-d array inside an uncompressed ``.npz``, chunk by chunk (np.load reads it whole)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        if len(shape) != 2 or fortran_order or dtype.hasobject:
            raise LearnFeaturesError(f"{path}: {key!r} is not a C-ordered 2-d numeric array")
        rows, dim = shape
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            yield np.frombuffer(handle.read(count * dim * dtype.itemsize), dtype=dtype).reshape(count, dim)
