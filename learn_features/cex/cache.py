"""On-disk content-embedding cache, keyed by (model fingerprint, prompt template, item text).

Layout: ``<root>/<namespace>/shard-*.npz``, each shard holding ``keys`` (hex digests) and
``vectors`` (float32). A shard is written atomically once a chunk of items is embedded, so an
interrupted extraction keeps every finished chunk and a re-run embeds only what is missing.
Items whose text (or the template, or the model) changed get new keys, so they re-embed;
stale vectors are simply never looked up again.
"""

from __future__ import annotations

import hashlib
import uuid
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
    """Append-only shard store; reading loads every shard of the namespace once."""

    def __init__(self, root: str | Path, namespace: str):
        safe = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.directory = Path(root) / safe
        self._index: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.directory.glob("shard-*.npz")):
                with np.load(shard) as data:
                    self._index.update(zip(data["keys"].tolist(), data["vectors"]))
        return self._index

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def get_many(self, keys: list[str]) -> np.ndarray:
        index = self._load()
        return np.stack([index[k] for k in keys]).astype(np.float32)

    def put_many(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        target = self.directory / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.asarray(keys), vectors=vectors)
        self._load().update(zip(keys, vectors))
