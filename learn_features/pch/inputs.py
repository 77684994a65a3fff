"""What the towers read for an item: frozen content vectors, or a learned id slot.

Both are looked up by catalog index, with -1 as sequence padding. For the ID baseline only
items seen in training own a slot; every other item (cold start) maps to slot 0, the shared
"unknown item", which is exactly what an ID model can offer a new item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ItemInputs:
    content: torch.Tensor | None = None  # (n_items, content_dim) float32
    id_slots: torch.Tensor | None = None  # (n_items,) long, 0 = unknown

    @classmethod
    def from_content(cls, vectors: np.ndarray, device: torch.device) -> "ItemInputs":
        return cls(content=torch.as_tensor(vectors, dtype=torch.float32, device=device))

    @classmethod
    def from_training_items(cls, n_items: int, trained: np.ndarray, device: torch.device) -> "ItemInputs":
        slots = np.zeros(n_items, dtype=np.int64)
        slots[np.unique(trained)] = np.arange(1, np.unique(trained).size + 1)
        return cls(id_slots=torch.as_tensor(slots, device=device))

    @property
    def content_dim(self) -> int | None:
        return None if self.content is None else int(self.content.shape[1])

    @property
    def num_id_slots(self) -> int | None:
        return None if self.id_slots is None else int(self.id_slots.max().item())

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        safe = indices.clamp_min(0)
        if self.content is not None:
            return self.content[safe]
        return self.id_slots[safe]
