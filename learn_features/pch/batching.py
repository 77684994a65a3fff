"""Padding variable-length item-index sequences into the towers' (B, L) layout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PAD = -1


def pad_sequences(sequences: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned (B, L) long tensor padded with -1, and the (B,) real lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    padded = np.full((len(sequences), max(int(lengths.max()), 1)), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    return torch.as_tensor(padded, device=device), torch.as_tensor(lengths, device=device)
