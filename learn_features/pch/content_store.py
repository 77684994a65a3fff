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
from collections.abc import Iterable, Sequence
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
DIGEST_ROWS = 65_536  # rows hashed per read when a build is committed


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
        try:
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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # cut short, hand-edited, not this format
            raise LearnFeaturesError(f"{index_path}: unreadable content store index ({exc!r}); rebuild it with `learn-features extract`") from None
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


class ContentStoreBuilder:
    """Write side: rows arrive in any order and land in their catalog position.

    Why any order: the extraction cache groups items by text length (one cache shard per
    length-sorted chunk), not by catalog position, so assembling a catalog-ordered store means
    scattering each cache shard's rows. The shards are preallocated ``.npy`` files written
    through memory maps, so the builder's own memory stays at one incoming chunk however large
    the catalog (31M x 4096 is ~254 GB): dirty pages belong to the kernel's page cache, which
    writes them back. Nothing is visible at ``directory`` until ``commit`` swaps the finished
    store in; leaving the ``with`` block without a commit removes the partial build.
    """

    def __init__(self, directory: str | Path, item_ids: Sequence[str], source: dict[str, Any],
                 shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.directory = Path(directory)
        self.item_ids = item_ids
        self.source = source
        self.shard_bytes = shard_bytes
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._building = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".building", dir=self.directory.parent))
        self._filled = np.zeros(len(item_ids), dtype=bool)
        self._shards: list[np.memmap] = []
        self._starts = np.zeros(0, dtype=np.int64)
        self.dim = 0

    def __enter__(self) -> ContentStoreBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._shards.clear()
        shutil.rmtree(self._building, ignore_errors=True)

    def _allocate(self, dim: int) -> None:
        """Shards are sized once the first rows tell the dimension."""
        self.dim = dim
        rows, per_shard = len(self.item_ids), shard_rows_for(dim, self.shard_bytes)
        self._starts = np.arange(0, rows, per_shard, dtype=np.int64)
        for number, start in enumerate(self._starts.tolist()):
            shape = (min(per_shard, rows - start), dim)
            self._shards.append(np.lib.format.open_memmap(self._building / f"shard-{number:05d}.npy", "w+", DTYPE, shape))

    def put(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[k]`` at catalog position ``positions[k]`` (checked for fp16 range)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.asarray(rows)
        if not self.dim:
            self._allocate(int(rows.shape[-1]))
        rows = _fp16_rows(rows, self.dim, str(self.directory))
        if len(rows) != len(positions):
            raise LearnFeaturesError(f"{self.directory}: {len(rows)} content rows for {len(positions)} positions")
        if positions.size and (positions.min() < 0 or positions.max() >= len(self.item_ids)):
            raise LearnFeaturesError(f"{self.directory}: content rows beyond the {len(self.item_ids)} catalog items")
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1
        for number in np.unique(shard_of).tolist():
            selected = shard_of == number
            self._shards[number][positions[selected] - self._starts[number]] = rows[selected]
        self._filled[positions] = True

    def commit(self) -> ContentStore:
        """Check every catalog item got a row, digest the rows in catalog order, swap the store in."""
        if not self.dim:
            raise LearnFeaturesError(f"{self.directory}: no content rows for {len(self.item_ids)} catalog items")
        missing = np.flatnonzero(~self._filled)
        if missing.size:
            raise LearnFeaturesError(f"{self.directory}: {missing.size} of {len(self.item_ids)} catalog items have no "
                                     f"content row (first: item {self.item_ids[missing[0]]!r})")
        digest = hashlib.sha256()
        entries = []
        for number, shard in enumerate(self._shards):
            shard.flush()
            for start in range(0, len(shard), DIGEST_ROWS):
                digest.update(np.ascontiguousarray(shard[start : start + DIGEST_ROWS]).tobytes())
            entries.append({"file": f"shard-{number:05d}.npy", "start": int(self._starts[number]), "rows": len(shard)})
        self._shards.clear()  # unmap before the directory moves
        index = {"format": FORMAT, "rows": len(self.item_ids), "dim": self.dim, "dtype": np.dtype(DTYPE).name,
                 "items_sha256": items_digest(self.item_ids), "vectors_sha256": digest.hexdigest(),
                 "source": self.source, "shards": entries}
        write_json_atomic(self._building / INDEX, index)
        _replace_directory(self._building, self.directory)
        return ContentStore(self.directory)


def write_content_store(
    directory: str | Path,
    chunks: Iterable[np.ndarray],
    item_ids: Sequence[str],
    source: dict[str, Any],
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ContentStore:
    """Build a store from (rows, dim) chunks that come in catalog order (a generator is fine).

    ``source`` records what the store was built from, so a reader can tell a stale store.
    """
    with ContentStoreBuilder(directory, item_ids, source, shard_bytes) as builder:
        written = 0
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if written + len(chunk) > len(item_ids):
                raise LearnFeaturesError(f"{directory}: {written + len(chunk)} content rows for {len(item_ids)} catalog items")
            builder.put(np.arange(written, written + len(chunk)), chunk)
            written += len(chunk)
        if written != len(item_ids):
            raise LearnFeaturesError(f"{directory}: {written} content rows for {len(item_ids)} catalog items")
        return builder.commit()


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
