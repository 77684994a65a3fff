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
def input_table(model: PCH, inputs: ItemInputs, batch_size: int = 4096) -> torch.Tensor:
    """Every catalog item through the tower's input layer, (n_items, d_model), on the model's device.

    The input layer (content projection, ID embedding, or the hybrid's sum of both) acts on
    each item alone, so a history's inputs are rows of this table: projecting each item once
    instead of once per history position saves most of the tower's work outside the
    transformer. It holds n_items x d_model floats, less than the content it is computed from
    (content_dim >= d_model). Call it on a model in eval mode, as every caller does: in
    training the hybrid's input drops ID parts at random.
    """
    device = next(model.parameters()).device
    n_items = len(inputs)
    rows = [model.input(inputs.gather(torch.arange(s, min(s + batch_size, n_items), device=device))).float() for s in range(0, n_items, batch_size)]
    return torch.cat(rows) if rows else torch.zeros((0, model.config.d_model), device=device)


@torch.inference_mode()
def user_vectors(model: PCH, inputs: ItemInputs, histories: Sequence[np.ndarray], batch_size: int = 32, progress: bool = False,
                 table: torch.Tensor | None = None) -> np.ndarray:
    """The tower's output after each user's whole history, (U, d_out).

    ``table`` is ``input_table(model, inputs)``, computed here when not given; a caller that
    embeds users again and again (the stream) keeps one. The transformer runs through
    ``PCH.last_output``, which computes the last layer at the one position retrieval reads.

    Every call runs the same shape, ``batch_size`` rows of ``model.config.max_len`` positions
    (short batches are filled with copies of their last row, histories padded at the end,
    which the causal mask and ``last_output``'s key mask keep out of every real position). CPU
    matrix kernels round differently for different shapes, so this makes a user's vector the
    same bits whichever other users share the call: a streamed refresh of one user equals the
    batch recompute.
    """
    if any(len(h) == 0 for h in histories):
        raise LearnFeaturesError("a user with an empty history has no LEARN user embedding")
    table = input_table(model, inputs) if table is None else table
    out = np.zeros((len(histories), model.config.d_out), np.float32)
    for start in tqdm(range(0, len(histories), batch_size), desc="user vectors", unit="batch", disable=not progress):
        chunk = list(histories[start : start + batch_size])
        filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
        padded, lengths = pad_array(filled, model.config.max_len)
        indices = torch.as_tensor(padded, device=table.device).clamp_min(0)  # padding reads row 0, masked out
        vectors = model.last_output(table[indices], torch.as_tensor(lengths, device=table.device)).float().cpu().numpy()
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
