"""The towers a run trained, loaded with the item inputs they read: the one way to load a trained tower.

``TrainedRun.load`` takes the run's published model (``embeddings/manifest.json`` names its
checkpoint and content) and checks that checkpoint, manifest, item table and content store
belong together, so a model retrained after ``embed``, or content rebuilt for another catalog,
is refused instead of serving vectors under the wrong model version. With new catalog rows it
embeds their text with the run's encoder (``embed_catalog_items``, the cold-start path of
``embed-items``). ``TrainedRun.of_checkpoint`` is the same for a model the pipeline has just
trained, over the inputs it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from learn_features.cex.extractor import ContentExtractor, EncoderConfig
from learn_features.cex.prompt import render_prompts
from learn_features.config import from_dict
from learn_features.data.tables import validate_catalog
from learn_features.device import pick_device
from learn_features.embeddings_io import EmbeddingTable, read_frame
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.collaborative import CollaborativePart, vector_dim
from learn_features.pch.content_store import ContentStore, items_digest
from learn_features.pch.inference import input_table, item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH
from learn_features.run import RunDir

#: What loading the published tower needs from the manifest: over the run's own catalog, or
#: over new catalog rows embedded by the run's encoder.
TOWER_KEYS = ("model_version", "method", "dim", "checkpoint")
RUN_CATALOG_KEYS = ("content_store", "history_len")
NEW_ITEMS_KEYS = ("encoder", "cache_dir")


@dataclass
class TrainedRun:
    """A trained tower with the item inputs it reads: histories in, user vectors out; items in, item vectors out."""

    payload: dict[str, Any]  # the checkpoint (weights, model config, input kind)
    model: PCH
    inputs: ItemInputs
    item_ids: list[str]  # the items ``inputs`` covers, in index order
    manifest: dict[str, Any] = field(default_factory=dict)  # the run manifest; empty for a model not published yet
    _input_table: torch.Tensor | None = field(default=None, init=False, repr=False)  # built on first use, kept for later calls

    @classmethod
    def of_checkpoint(cls, path: Path, inputs: ItemInputs, item_ids: list[str], device: torch.device) -> TrainedRun:
        """A model the pipeline trained (``best.pt``), over the item inputs it was trained on."""
        payload = checkpoint.load_payload(path)
        _require_inputs(payload, inputs, str(path))
        return cls(payload, checkpoint.build_model(payload, device), inputs, item_ids)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", catalog: pd.DataFrame | None = None, progress: bool = False) -> TrainedRun:
        """The run's published tower (``embeddings/manifest.json``), over the run's catalog, or
        with ``catalog`` over those (new) rows, their content embedded by the run's encoder."""
        run = RunDir(run_dir)
        where = run.manifest
        manifest = run.read_manifest(TOWER_KEYS + (RUN_CATALOG_KEYS if catalog is None else NEW_ITEMS_KEYS))
        if catalog is not None:
            catalog = validate_catalog(catalog, "new catalog rows")
        payload = checkpoint.load_payload(Path(manifest["checkpoint"]))
        if payload.get("method") != manifest["method"]:
            raise LearnFeaturesError(
                f"{where}: the checkpoint {manifest['checkpoint']} holds method {payload.get('method')!r}, the manifest says "
                f"{manifest['method']!r}; re-run `learn-features embed` for this run"
            )
        if vector_dim(payload) != manifest["dim"]:
            raise LearnFeaturesError(
                f"{where}: the checkpoint {manifest['checkpoint']} gives {vector_dim(payload)}-d vectors, the manifest "
                f"says dim {manifest['dim']}; re-run `learn-features embed` for this run"
            )
        if catalog is None:
            item_ids = read_frame(run.embedding_table("item"), "item")["item_id"].astype(str).tolist()
            torch_device = pick_device(device)
            inputs = _run_inputs(payload, manifest, item_ids, torch_device, where)
            version = checkpoint.model_version(payload, manifest["method"], inputs.identity)
            if version != manifest["model_version"]:
                raise LearnFeaturesError(
                    f"{where}: the checkpoint {manifest['checkpoint']} over the run's content is model version {version}, the "
                    f"manifest says {manifest['model_version']}: it was retrained or its content rebuilt after `embed`; "
                    "re-run `learn-features embed` for this run"
                )
        else:
            item_ids = catalog["item_id"].tolist()
            inputs, torch_device = _new_item_inputs(payload, manifest, catalog, device, where, progress)
        _require_inputs(payload, inputs, str(where))
        return cls(payload, checkpoint.build_model(payload, torch_device), inputs, item_ids, manifest)

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def collaborative(self) -> CollaborativePart | None:
        """The collaborative part published beside the towers' output (None for most towers)."""
        return CollaborativePart.of_payload(self.payload)

    def user_vectors(self, histories: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """(U, d) vectors after each history (catalog indices of ``item_ids``)."""
        if self._input_table is None:
            self._input_table = input_table(self.model, self.inputs)
        vectors = user_vectors(self.model, self.inputs, histories, progress=progress, table=self._input_table)
        part = self.collaborative
        return vectors if part is None else np.hstack([vectors, part.users(histories, self._slots())])

    def item_vectors(self) -> np.ndarray:
        """(len(item_ids), d) vectors, each item through the item tower alone."""
        vectors = item_vectors(self.model, self.inputs, np.arange(len(self.item_ids)))
        part = self.collaborative
        return vectors if part is None else np.hstack([vectors, part.items(self._slots())])

    def _slots(self) -> np.ndarray:
        """Each of ``item_ids``' ID slot (0: none), what the collaborative part is indexed by."""
        return self.inputs.id_slots.cpu().numpy()  # type: ignore[union-attr]  # a part exists only beside ID slots


def _require_inputs(payload: dict[str, Any], inputs: ItemInputs, where: str) -> None:
    """The item inputs are the kind the checkpoint's towers read: content of their dimension, ID slots, or both."""
    if payload["content_dim"] != inputs.content_dim:
        raise LearnFeaturesError(
            f"{where}: the checkpoint was trained on {payload['content_dim']}-d content, its item inputs have "
            f"{inputs.content_dim}; retrain or re-extract with the run's encoder"
        )
    if (payload["trained_item_ids"] is None) != (inputs.id_slots is None):
        reads, given = ("no item ID slots", "have them") if payload["trained_item_ids"] is None else ("item ID slots", "have none")
        raise LearnFeaturesError(f"{where}: the checkpoint's towers read {reads}, its item inputs {given}")


def _run_inputs(payload: dict[str, Any], manifest: dict[str, Any], item_ids: list[str], device: torch.device, where: Path) -> ItemInputs:
    """The inputs of the run's own catalog: ID slots, the content store the manifest names, or
    both (hybrid)."""
    if payload["content_dim"] is None:
        return checkpoint.id_inputs_for(payload, item_ids, device)
    store_dir = Path(manifest["content_store"])
    if not store_dir.is_dir():
        raise LearnFeaturesError(f"{where}: content store {store_dir} not found; re-run `learn-features extract` for this run")
    store = ContentStore(store_dir)
    if store.items_sha256 != items_digest(item_ids):
        raise LearnFeaturesError(f"{where}: the content store {store_dir} holds another catalog than the run's item embeddings")
    return checkpoint.content_inputs_for(payload, ItemInputs(store=store), item_ids)


def _new_item_inputs(payload: dict[str, Any], manifest: dict[str, Any], catalog: pd.DataFrame, device: str, where: Path,
                     progress: bool) -> tuple[ItemInputs, torch.device]:
    """The inputs of new catalog rows: ID slots (unknown items share slot 0), or their text
    through the run's encoder and cache, rounded as the run's fp16 content store rounds it, so
    that a pushed vector equals the published one for the same text. A hybrid adds the ID slot
    of each row the model trained on; a brand-new item has none (slot 0): content alone."""
    try:
        encoder = from_dict(EncoderConfig, {**manifest["encoder"], "device": device}, "encoder")
    except LearnFeaturesError as exc:
        raise LearnFeaturesError(f"{where}: {exc}") from None
    extractor = ContentExtractor(encoder, manifest["cache_dir"])
    item_ids = catalog["item_id"].tolist()
    if payload["content_dim"] is None:
        return checkpoint.id_inputs_for(payload, item_ids, extractor.device), extractor.device
    content = extractor.embed_texts(render_prompts(catalog, encoder.prompt_template), progress)
    inputs = ItemInputs.from_content(content.astype(np.float16).astype(np.float32), extractor.device)
    return checkpoint.content_inputs_for(payload, inputs, item_ids), extractor.device


def embed_catalog_items(run_dir: str | Path, catalog: pd.DataFrame, device: str = "auto", progress: bool = True) -> EmbeddingTable:
    """Item vectors for (new) catalog rows from their text alone, stamped with the run's model
    version: the cold-start path of ``embed-items``, from the same encoder and tower that
    produced the published vectors."""
    trained = TrainedRun.load(run_dir, device, catalog, progress)
    return EmbeddingTable("item", trained.item_ids, trained.item_vectors(), pd.Timestamp.now(tz="UTC"), trained.model_version)
