"""Padding variable-length item-index sequences into the towers' (B, L) layout, and the
training batch that carries them (plus, with a content store, the batch's content rows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from learn_features.pch.inputs import ItemInputs

PAD = -1


def pad_array(sequences: Sequence[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned (B, L) int64 array padded with -1 and the (B,) real lengths.

    L is the longest sequence unless ``length`` asks for more (ranks of one distributed batch
    pad their targets to a common length so they can be gathered).
    """
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    width = max(int(lengths.max()) if lengths.size else 0, length or 0, 1)
    padded = np.full((len(sequences), width), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    return padded, lengths


@dataclass
class Batch:
    """One training step's tensors, built on the host and moved to the device in one go.

    ``history`` and ``targets`` index the catalog (resident inputs) or, when ``rows`` is set,
    the batch's own distinct content rows (a content store), see :meth:`ItemInputs.localize`.
    """

    history: torch.Tensor  # (B, N) long
    history_lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, M) long
    target_lengths: torch.Tensor  # (B,)
    target_items: torch.Tensor  # (B, M) long: the targets' catalog indices (-1 padding), for the loss's corrections
    rows: torch.Tensor | None = None  # (R, content_dim) float16, or (R, content_dim + 1) float32 for the hybrid
    extra: torch.Tensor | None = None  # (U,) long: extra negatives (catalog indices, or row indices with ``rows``)
    extra_items: torch.Tensor | None = None  # (U,) long: their catalog indices

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        """Page-locked host memory, so the copy to the GPU can run asynchronously."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        """Tell the caching allocator these tensors (copied on a side stream) are used on ``stream``."""
        for f in fields(self):
            if getattr(self, f.name) is not None:
                getattr(self, f.name).record_stream(stream)


def make_batch(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    inputs: ItemInputs,
    target_length: int | None = None,
    extra: np.ndarray | None = None,
) -> Batch:
    """Host-side batch of (history, target) index pairs, plus optional extra negative items
    shared by the batch; with a content store, the rows they all use too."""
    history, history_lengths = pad_array([h for h, _ in pairs])
    targets, target_lengths = pad_array([t for _, t in pairs], target_length)
    extra_items = None if extra is None else np.asarray(extra, dtype=np.int64)
    arrays = [history, targets] + ([] if extra_items is None else [extra_items])
    rows, local = inputs.localize(*arrays)
    as_tensor = torch.from_numpy
    return Batch(
        as_tensor(local[0]), as_tensor(history_lengths), as_tensor(local[1]), as_tensor(target_lengths),
        as_tensor(targets), rows,
        None if extra_items is None else as_tensor(local[2]), None if extra_items is None else as_tensor(extra_items),
    )
