"""Writing finished chunks to the cache without making the model wait.

The compute loop hands each finished chunk to a background thread and moves on to the next
batches; the thread waits for the chunk's device-to-host copy, then writes the shard file
(atomically, see ``EmbeddingCache.write_shard``). The queue is bounded, so a disk slower
than the model holds the loop back instead of piling chunks up in memory: at most
``depth + 2`` chunks (queued, being written, being computed) exist at once.

Leaving the ``with`` block, normally or by an exception such as Ctrl-C, first finishes
every queued write, so an interrupted run keeps every chunk it had finished. A failed write
stops the loop at its next ``submit`` and is raised from there (or on exit).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from learn_features.cex.cache import EmbeddingCache

WRITE_QUEUE_DEPTH = 2
_STOP = object()


@dataclass
class HostCopy:
    """Vectors on their way to host memory; ``numpy()`` waits for the copy, not the caller."""

    tensor: torch.Tensor
    done: torch.cuda.Event | None = None

    @classmethod
    def start(cls, vectors: torch.Tensor) -> HostCopy:
        """On CUDA, an asynchronous copy into pinned memory, so the compute thread does not sync."""
        if vectors.device.type != "cuda":
            return cls(vectors.cpu())
        host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
        host.copy_(vectors, non_blocking=True)  # runs on the source GPU's current stream
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(vectors.device))
        return cls(host, done)

    def numpy(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.tensor.numpy()


class ShardWriter:
    """Background writer of cache shards, used as a context manager around the compute loop."""

    def __init__(self, cache: EmbeddingCache, depth: int = WRITE_QUEUE_DEPTH):
        self._cache = cache
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._written: list[tuple[Path, list[str]]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cex-shard-writer", daemon=True)

    def __enter__(self) -> ShardWriter:
        self._thread.start()
        return self

    def submit(self, keys: list[str], vectors: HostCopy) -> None:
        """Queue one chunk; blocks only while the queue is full. Raises an earlier write's error."""
        if self._error is not None:
            raise self._error
        self._queue.put((keys, vectors))

    def _run(self) -> None:
        # Keeps draining after a failure so that submit() never blocks on a dead writer.
        while (item := self._queue.get()) is not _STOP:
            if self._error is None:
                keys, vectors = item
                try:
                    self._written.append((self._cache.write_shard(keys, vectors.numpy()), keys))
                except BaseException as exc:  # handed to the compute thread, which re-raises it
                    self._error = exc

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        for shard, keys in self._written:  # registered here, on the caller's thread: no shared index
            self._cache.register(shard, keys)
        if exc_type is None and self._error is not None:
            raise self._error
