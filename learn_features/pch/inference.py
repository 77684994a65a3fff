"""Computing LEARN vectors with trained towers: users from history, items through the item tower alone.

Loading a trained tower with its inputs is ``learn_features.trained_run.TrainedRun``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from learn_features.errors import LearnFeaturesError
from learn_features.pch.batching import pad_array
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH


@torch.inference_mode()
def user_vectors(model: PCH, inputs: ItemInputs, histories: Sequence[np.ndarray], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """The tower's output after each user's whole history, (U, d_out).

    Every call runs the same shape, ``batch_size`` rows of ``model.config.max_len`` positions
    (short batches are filled with copies of their last row, histories padded at the end,
    which the causal mask keeps out of every real position). CPU matrix kernels round
    differently for different shapes, so this makes a user's vector the same bits whichever
    other users share the call: a streamed refresh of one user equals the batch recompute.
    """
    if any(len(h) == 0 for h in histories):
        raise LearnFeaturesError("a user with an empty history has no LEARN user embedding")
    device = next(model.parameters()).device
    out = np.zeros((len(histories), model.config.d_out), np.float32)
    for start in tqdm(range(0, len(histories), batch_size), desc="user vectors", unit="batch", disable=not progress):
        chunk = list(histories[start : start + batch_size])
        filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
        padded, lengths = pad_array(filled, model.config.max_len)
        indices, lengths = torch.as_tensor(padded, device=device), torch.as_tensor(lengths, device=device)
        vectors = model.last_position(model.user_embeddings(inputs.gather(indices)), lengths).float().cpu().numpy()
        out[start : start + len(chunk)] = vectors[: len(chunk)]
    return out


@torch.inference_mode()
def item_vectors(model: PCH, inputs: ItemInputs, items: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Each item alone through the item tower, (K, d_out)."""
    device = next(model.parameters()).device
    out = [
        model.item_embeddings(inputs.gather(torch.as_tensor(items[s : s + batch_size], device=device))).float().cpu()
        for s in range(0, len(items), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.d_out), np.float32)
