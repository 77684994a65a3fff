"""Which torch device a component runs on: the one choice CEX, the trainer and inference share."""

from __future__ import annotations

import torch

from learn_features.errors import LearnFeaturesError


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit ``cuda[:N]`` without CUDA is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LearnFeaturesError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)
