"""Saving and loading trained towers, with what is needed to rebuild them without the run.

A checkpoint carries the model config and its input kind (content dimension, the ordered item
ids that own an ID slot, or both for the hybrid), so serving code can rebuild the exact model
from one file.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learn_features.atomic import atomic_path
from learn_features.errors import LearnFeaturesError
from learn_features.pch import collaborative
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH, PCHConfig


def save(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path: Path) -> dict[str, Any]:
    """A checkpoint's payload, read with ``weights_only=True``: tensors and plain data only.

    A run folder may come from someone else, and a full unpickle would run any code its
    ``.pt`` files carry. Everything this package saves (weights, model config, Adam and
    LambdaLR state, training state) is tensors, dicts, lists, str, int, float, bool and
    None, which torch's weights-only unpickler accepts; anything else (another format, a
    file cut short, a payload with code) is refused, naming the file, and never executed.
    """
    if not path.exists():
        raise LearnFeaturesError(f"{path}: checkpoint not found; run `learn-features train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...: torch raises many types
        raise LearnFeaturesError(
            f"{path}: refused to load this checkpoint: it is not a learn-features checkpoint of tensors and plain "
            f"data (truncated, another format, or objects that would run code on load: {_reason(exc)}); "
            "retrain with `learn-features train` rather than trusting it"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise LearnFeaturesError(f"{path}: not a learn-features checkpoint (no state_dict); retrain with `learn-features train`")
    return payload


def _reason(exc: Exception) -> str:
    """The line of torch's error that says what was refused (e.g. ``Unsupported global: GLOBAL io.open``)."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". Please")[0] if lines else type(exc).__name__


def model_payload(
    model: PCH, content_dim: int | None, trained_item_ids: list[str] | None, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": asdict(model.config),
        "content_dim": content_dim,
        "trained_item_ids": trained_item_ids,
        **extra,
    }


def build_model(payload: dict[str, Any], device: torch.device) -> PCH:
    """The checkpoint's towers, in eval mode: LEARN, the ID baseline, or the hybrid when it has both inputs."""
    config = PCHConfig(**payload["model_config"])
    ids = payload["trained_item_ids"]
    model = PCH(config, content_dim=payload["content_dim"], num_items=None if ids is None else len(ids))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def id_inputs_for(payload: dict[str, Any], item_ids: list[str], device: torch.device) -> ItemInputs:
    """ID slots for an arbitrary catalog, from the ids the model was trained on."""
    slot_of = {item: slot for slot, item in enumerate(payload["trained_item_ids"], start=1)}
    slots = np.array([slot_of.get(item, 0) for item in item_ids], dtype=np.int64)
    return ItemInputs(id_slots=torch.as_tensor(slots, device=device))


def content_inputs_for(payload: dict[str, Any], content: ItemInputs, item_ids: list[str]) -> ItemInputs:
    """Content inputs of ``item_ids`` as the checkpoint's content towers read them: as they are
    (LEARN), or with each item's ID slot (hybrid), slot 0 and so content alone for an item the
    model never trained on."""
    if payload["trained_item_ids"] is None:
        return content
    return content.with_id_part(id_inputs_for(payload, item_ids, torch.device("cpu")))


def model_version(payload: dict[str, Any], method: str, inputs_identity: str) -> str:
    """Hash of the weights (and of a collaborative part) and of the item inputs they read
    (``ItemInputs.identity``).

    The same trained model over the same content always publishes under the same version;
    new content (a changed prompt, new catalog items) gives new item vectors and so a new
    version, even when the weights come out bit-identical.
    """
    digest = hashlib.sha256(inputs_identity.encode())
    for name, tensor in sorted(payload["state_dict"].items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    part = payload.get(collaborative.PAYLOAD_KEY)
    if part is not None:  # the published vectors carry it: another part or weight is another version
        digest.update(part["factors"].numpy().tobytes())
        digest.update(repr(float(part["weight"])).encode())
    return f"{method}-{digest.hexdigest()[:12]}"
