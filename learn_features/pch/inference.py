"""Computing LEARN vectors with trained towers: users from history, items from text alone.

``embed_catalog_items`` is the cold-start path used by ``embed-items``: it needs nothing but
the run's ``embeddings/manifest.json`` (written by ``embed``), which names the checkpoint,
the encoder settings and the cache, so new catalog rows get vectors from the same LLM and
the same tower that produced the published ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from learn_features.cex.extractor import ContentExtractor, EncoderConfig
from learn_features.cex.prompt import render_prompts
from learn_features.data.tables import validate_catalog
from learn_features.config import from_dict
from learn_features.embeddings_io import EmbeddingTable, read_run_manifest, run_manifest_path
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
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


def embed_catalog_items(run_dir: Path, catalog: pd.DataFrame, device: str = "auto", progress: bool = True) -> EmbeddingTable:
    """Item vectors for (new) catalog rows from their text alone, stamped with the run's model version."""
    manifest = read_run_manifest(run_dir, required=("model_version", "checkpoint", "encoder", "cache_dir"))
    catalog = validate_catalog(catalog, "new catalog rows")
    payload = checkpoint.load_payload(Path(manifest["checkpoint"]))
    try:
        encoder = from_dict(EncoderConfig, {**manifest["encoder"], "device": device}, "encoder")
    except LearnFeaturesError as exc:
        raise LearnFeaturesError(f"{run_manifest_path(run_dir)}: {exc}") from None
    extractor = ContentExtractor(encoder, manifest["cache_dir"])
    model = checkpoint.build_model(payload, extractor.device)
    ids = catalog["item_id"].tolist()
    if payload["trained_item_ids"] is not None:
        inputs = checkpoint.id_inputs_for(payload, ids, extractor.device)
    else:
        content = extractor.embed_texts(render_prompts(catalog, encoder.prompt_template), progress)
        # Rounded as the run's fp16 content store rounds it, so a pushed vector equals the
        # published one for the same text.
        inputs = ItemInputs.from_content(content.astype(np.float16).astype(np.float32), extractor.device)
    vectors = item_vectors(model, inputs, np.arange(len(ids)))
    return EmbeddingTable("item", ids, vectors, pd.Timestamp.now(tz="UTC"), manifest["model_version"])
