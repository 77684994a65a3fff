"""Keeping the device busy: host batches prepared ahead in a thread, copies overlapped with compute.

Building a batch is host work: padding, and with a content store, reading the batch's rows
from memory-mapped shards (at batch 512 x 120 positions x 4096 dims that is up to ~500 MB of
fp16). :func:`prefetch` runs it in a background thread, ``depth`` batches ahead, into pinned
memory when the device is a GPU. :func:`to_device_ahead` then issues batch k+1's copy on a
side CUDA stream while step k computes. numpy's gather releases the GIL, so the thread runs
in parallel with the training loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

from learn_features.pch.batching import Batch

T = TypeVar("T")
_END = object()


def _put(box: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Blocking put that gives up once the consumer has gone (so the thread can exit)."""
    while not stop.is_set():
        try:
            box.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` produced by a background thread, up to ``depth`` ahead; ``depth`` 0 is inline.

    Use it under ``contextlib.closing`` so an exception in the training loop (or Ctrl-C) stops
    the thread at once; an exception in the producer is re-raised in the consumer.
    """
    if depth == 0:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(box, item, stop):
                    return
            _put(box, _END, stop)
        except BaseException as error:  # handed to the consumer, which re-raises it
            _put(box, error, stop)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while (item := box.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def to_device_ahead(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Batches on ``device``. On a GPU, batch k+1's (pinned, non-blocking) copy runs on a side
    stream while the caller computes step k; elsewhere this is a plain ``.to(device)``."""
    if device.type != "cuda":
        yield from (batch.to(device) for batch in batches)
        return
    copy_stream = torch.cuda.Stream(device)

    def start_copy(batch: Batch | None) -> Batch | None:
        if batch is None:
            return None
        with torch.cuda.stream(copy_stream):
            return batch.to(device, non_blocking=True)

    upcoming = iter(batches)
    pending = start_copy(next(upcoming, None))
    while pending is not None:
        compute_stream = torch.cuda.current_stream(device)
        compute_stream.wait_stream(copy_stream)
        pending.record_stream(compute_stream)
        current, pending = pending, start_copy(next(upcoming, None))
        yield current
