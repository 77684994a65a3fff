"""On-disk content-embedding cache, keyed by (model fingerprint, prompt template, settings, item text).

The settings are pooling, length, special tokens and the compute dtype, so fp32 and bf16
vectors of the same text never share a key.

Layout: ``<root>/<namespace>/shard-*.npz``, each shard holding ``keys`` (hex digests) and
``vectors`` (float32). A shard is written atomically once a chunk of items is embedded, so an
interrupted extraction keeps every finished chunk and a re-run embeds only what is missing.
Items whose text (or the template, or the model) changed get new keys, so they re-embed;
stale vectors are simply never looked up again.

Opening the cache reads only the keys of each shard; vectors are read when asked for, one
shard file at a time. A worker of a sharded extraction over a large catalog therefore does
not hold the whole cache in memory just to learn what is missing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from learn_features.atomic import atomic_path


def cache_key(model_fingerprint: str, template: str, settings: str, text: str) -> str:
    digest = hashlib.sha256()
    for part in (model_fingerprint, template, settings, text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class EmbeddingCache:
    """Append-only shard store: an index of key -> (shard file, row), vectors read on demand."""

    def __init__(self, root: str | Path, namespace: str):
        safe = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.directory = Path(root) / safe
        self._where: dict[str, tuple[Path, int]] | None = None

    def _index(self) -> dict[str, tuple[Path, int]]:
        if self._where is None:
            self._where = {}
            for shard in sorted(self.directory.glob("shard-*.npz")):
                with np.load(shard) as data:
                    self._where.update((key, (shard, row)) for row, key in enumerate(data["keys"].tolist()))
        return self._where

    def __contains__(self, key: str) -> bool:
        return key in self._index()

    def __len__(self) -> int:
        return len(self._index())

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Vectors for ``keys`` in order (KeyError for a missing one), reading each shard file once."""
        out = np.zeros((len(keys), 0), np.float32)
        for positions, vectors in self.scatter(keys):
            if not out.shape[1]:
                out = np.empty((len(keys), vectors.shape[1]), np.float32)
            out[positions] = vectors
        return out

    def scatter(self, keys: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in ``keys``, their vectors), one cache shard file at a time.

        Why by shard: shards hold length-sorted chunks, so any catalog-ordered slice touches
        nearly every shard; reading each shard once and scattering its rows keeps a large
        assembly at one shard in memory and one pass over the cache. KeyError for a missing key.
        """
        index = self._index()
        files: dict[Path, int] = {}
        shard_of = np.empty(len(keys), dtype=np.int64)
        row_of = np.empty(len(keys), dtype=np.int64)
        for position, key in enumerate(keys):
            shard, row = index[key]
            shard_of[position] = files.setdefault(shard, len(files))
            row_of[position] = row
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(files) + 1))
        for number, shard in enumerate(files):
            positions = order[bounds[number] : bounds[number + 1]]
            with np.load(shard) as data:
                yield positions, data["vectors"][row_of[positions]]

    def write_shard(self, keys: list[str], vectors: np.ndarray) -> Path:
        """Write one shard file atomically; touches no in-memory state, so any thread may call it."""
        target = self.directory / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.asarray(keys), vectors=np.asarray(vectors, dtype=np.float32))
        return target

    def register(self, shard: Path, keys: list[str]) -> None:
        """Make a shard written by ``write_shard`` visible to lookups."""
        self._index().update((key, (shard, row)) for row, key in enumerate(keys))
