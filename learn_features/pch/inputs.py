"""What the towers read for an item: frozen content vectors, or a learned id slot.

Both are looked up by catalog index, with -1 as sequence padding. For the ID baseline only
items seen in training own a slot; every other item (cold start) maps to slot 0, the shared
"unknown item", which is exactly what an ID model can offer a new item.

Content comes from one of two places. ``content`` is a resident (n_items, dim) tensor, fine
for a small catalog or a handful of new items. ``store`` is the on-disk fp16
:class:`ContentStore`: a batch first collects the distinct items it references
(:meth:`ItemInputs.localize`, on the host), ships just those rows to the device, and looks
positions up there (:meth:`ItemInputs.lookup`), so neither host nor device ever holds the
whole catalog.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from learn_features.pch.content_store import ContentStore


@dataclass
class ItemInputs:
    content: torch.Tensor | None = None  # (n_items, content_dim) float32, resident on the device
    id_slots: torch.Tensor | None = None  # (n_items,) long, 0 = unknown
    store: ContentStore | None = None  # (n_items, content_dim) float16 on disk, read per batch

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
        if self.store is not None:
            return self.store.dim
        return None if self.content is None else int(self.content.shape[1])

    @property
    def identity(self) -> str:
        """A digest of what the towers read per item. Checkpoints resume, and model versions
        stay, only while it is unchanged: other content through old towers is another model."""
        if self.store is not None:
            return f"store:{self.store.items_sha256}:{self.store.vectors_sha256}"
        tensor = self.content if self.content is not None else self.id_slots
        if tensor is None:
            raise ValueError("ItemInputs holds neither content nor id slots")
        kind = "content" if self.content is not None else "ids"
        return f"{kind}:{hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()}"

    @property
    def num_id_slots(self) -> int | None:
        return None if self.id_slots is None else int(self.id_slots.max().item())

    def localize(self, *indices: np.ndarray) -> tuple[torch.Tensor | None, list[np.ndarray]]:
        """Host side of a store lookup: the distinct rows the index arrays use (float16, CPU)
        and the arrays re-pointed into those rows (-1 padding kept). Resident inputs need no
        rows: (None, the arrays unchanged)."""
        if self.store is None:
            return None, list(indices)
        used = np.unique(np.concatenate([i[i >= 0] for i in indices]))
        local = [np.where(i >= 0, np.searchsorted(used, i), -1) for i in indices]
        return torch.from_numpy(self.store.take(used)), local

    def lookup(self, indices: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Device side: model inputs for ``indices`` (catalog indices, or row indices into ``rows``)."""
        if rows is None:
            return self.gather(indices)
        return rows.float()[indices.clamp_min(0)]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Model inputs for catalog indices, on the device of ``indices``."""
        if self.store is not None:
            rows, (local,) = self.localize(indices.cpu().numpy())
            return self.lookup(torch.as_tensor(local, device=indices.device), rows.to(indices.device))
        safe = indices.clamp_min(0)
        if self.content is not None:
            return self.content[safe]
        return self.id_slots[safe]
