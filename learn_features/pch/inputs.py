"""What the towers read for an item: frozen content vectors, a learned id slot, or both.

All are looked up by catalog index, with -1 as sequence padding. For the ID baseline only
items seen in training own a slot; every other item (cold start) maps to slot 0, the shared
"unknown item", which is exactly what an ID model can offer a new item.

The hybrid reads both (:meth:`ItemInputs.with_id_part`): each item's content vector with its
ID slot appended as one last float channel, slot 0 meaning "no ID part" (``HybridInput``).
float32 holds every integer below 2**24 exactly, fp16 only those up to 2048, so hybrid rows are
float32 even when the content comes from the fp16 store.

Content comes from one of two places. ``content`` is a resident (n_items, dim) tensor, fine
for a small catalog or a handful of new items. ``store`` is the on-disk fp16
:class:`ContentStore`: a batch first collects the distinct items it references
(:meth:`ItemInputs.localize`, on the host), ships just those rows to the device, and looks
positions up there (:meth:`ItemInputs.lookup`), so neither host nor device ever holds the
whole catalog.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from learn_features.errors import LearnFeaturesError
from learn_features.pch.content_store import ContentStore

#: Slots a float32 channel carries exactly (every integer up to 2**24).
MAX_HYBRID_SLOTS = 2**24


@dataclass
class ItemInputs:
    content: torch.Tensor | None = None  # (n_items, content_dim) float32, resident on the device
    id_slots: torch.Tensor | None = None  # (n_items,) long, 0 = unknown; on the host beside a store
    store: ContentStore | None = None  # (n_items, content_dim) float16 on disk, read per batch

    @classmethod
    def from_content(cls, vectors: np.ndarray, device: torch.device) -> "ItemInputs":
        return cls(content=torch.as_tensor(vectors, dtype=torch.float32, device=device))

    @classmethod
    def from_training_items(cls, n_items: int, trained: np.ndarray, device: torch.device) -> "ItemInputs":
        slots = np.zeros(n_items, dtype=np.int64)
        slots[np.unique(trained)] = np.arange(1, np.unique(trained).size + 1)
        return cls(id_slots=torch.as_tensor(slots, device=device))

    def with_id_part(self, ids: "ItemInputs") -> "ItemInputs":
        """These content inputs plus the ID slots of ``ids`` (same items, same order): the hybrid's inputs.

        Beside a store the slots stay on the host, where :meth:`localize` appends them to the
        batch's rows; beside resident content they go to its device.
        """
        if ids.id_slots is None or self.content_dim is None:
            raise ValueError("with_id_part joins content inputs and ID-slot inputs")
        rows = len(self)
        if len(ids.id_slots) != rows:
            raise ValueError(f"{len(ids.id_slots)} ID slots for {rows} content rows")
        if ids.num_id_slots >= MAX_HYBRID_SLOTS:  # type: ignore[operator]
            raise LearnFeaturesError(
                f"the hybrid carries an item's ID slot in a float32 channel, exact below {MAX_HYBRID_SLOTS}; "
                f"this split has {ids.num_id_slots} items with a training event"
            )
        device = torch.device("cpu") if self.store is not None else self.content.device  # type: ignore[union-attr]
        return replace(self, id_slots=ids.id_slots.to(device))

    def __len__(self) -> int:
        """How many catalog items these inputs cover."""
        if self.store is not None:
            return len(self.store)
        return int(self.content.shape[0]) if self.content is not None else len(self.id_slots)  # type: ignore[arg-type]

    @property
    def content_dim(self) -> int | None:
        """The content's dimension (a hybrid's rows carry one channel more, the slot)."""
        if self.store is not None:
            return self.store.dim
        return None if self.content is None else int(self.content.shape[1])

    @property
    def identity(self) -> str:
        """A digest of what the towers read per item. Checkpoints resume, and model versions
        stay, only while it is unchanged: other content through old towers is another model,
        and so are other ID slots (a hybrid's covers both)."""
        parts = []
        if self.store is not None:
            parts.append(f"store:{self.store.items_sha256}:{self.store.vectors_sha256}")
        elif self.content is not None:
            parts.append(f"content:{_sha256(self.content)}")
        if self.id_slots is not None:
            parts.append(f"ids:{_sha256(self.id_slots)}")
        if not parts:
            raise ValueError("ItemInputs holds neither content nor id slots")
        return "+".join(parts)

    @property
    def id_part(self) -> bool:
        """Whether these are a hybrid's inputs: content plus ID slots."""
        return self.content_dim is not None and self.id_slots is not None

    @property
    def num_id_slots(self) -> int | None:
        return None if self.id_slots is None else int(self.id_slots.max().item())

    def localize(self, *indices: np.ndarray) -> tuple[torch.Tensor | None, list[np.ndarray]]:
        """Host side of a store lookup: the distinct rows the index arrays use (CPU: float16, or
        float32 with the slot channel for the hybrid) and the arrays re-pointed into those rows
        (-1 padding kept). Resident inputs need no rows: (None, the arrays unchanged)."""
        if self.store is None:
            return None, list(indices)
        used = np.unique(np.concatenate([i[i >= 0] for i in indices]))
        local = [np.where(i >= 0, np.searchsorted(used, i), -1) for i in indices]
        slots = None if self.id_slots is None else self.id_slots[torch.from_numpy(used)]
        return _with_slots(torch.from_numpy(self.store.take(used)), slots), local

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
            return _with_slots(self.content[safe], None if self.id_slots is None else self.id_slots[safe])
        return self.id_slots[safe]


def _with_slots(content: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
    """Content rows as they are, or, with ``slots``, as float32 with each row's slot appended."""
    if slots is None:
        return content
    return torch.cat([content.float(), slots.to(torch.float32).unsqueeze(-1)], dim=-1)


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()
