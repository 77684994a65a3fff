"""The few collective operations data-parallel PCH training needs, and the identity on one process.

The trainer calls these unconditionally; with no process group they do nothing, so the
single-process path stays exactly what it was.

Negatives across ranks: the dense all-action InfoNCE takes every other user's targets in the
batch as negatives, so each rank gathers all ranks' target embeddings
(:func:`gather_targets`). Forward is the usual ``gathered = all_gather(detached);
gathered[rank] = local``. Backward additionally all-reduces the gradient of the gathered
tensor before keeping this rank's slice. Without that, this rank's targets would get no
gradient from the other ranks' users, for whom they are negatives, and the update would not
be the one-process update. That all-reduce moves B x M x d_out floats (~5 MB at batch 512),
which is small next to DDP's own gradient all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> "World":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def part(self, batch: list[T]) -> list[T]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        base, extra = divmod(len(batch), self.size)
        start = self.rank * base + min(self.rank, extra)
        return batch[start : start + base + (self.rank < extra)]

    def slot(self, global_batch: int) -> int:
        """Rows per rank in a gathered batch: every rank pads its part to this many."""
        return math.ceil(global_batch / self.size)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. a validation score only rank 0 computed)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


class _GatherWithLocalGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, local.contiguous())
        ctx.rows, ctx.rank = local.shape[0], dist.get_rank()
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def gather_targets(
    world: World, items: torch.Tensor, target_lengths: torch.Tensor, global_batch: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(every user's target embeddings, their lengths, the index of this rank's first user).

    Each rank pads its (B_r, M, D) part to ``world.slot(global_batch)`` rows with length-0
    targets (never negatives), since all_gather needs equal shapes; M is already common.
    """
    if world.size == 1:
        return items, target_lengths, 0
    slot = world.slot(global_batch)
    padding = slot - items.shape[0]
    items = F.pad(items, (0, 0, 0, 0, 0, padding))
    lengths = F.pad(target_lengths, (0, padding))
    all_lengths = [torch.empty_like(lengths) for _ in range(world.size)]
    dist.all_gather(all_lengths, lengths)
    return _GatherWithLocalGrad.apply(items), torch.cat(all_lengths), world.rank * slot


def gather_rows(world: World, rows: torch.Tensor, global_batch: int, fill: int = -1) -> torch.Tensor:
    """Every rank's (B_r, ...) rows, padded to the rank slot with ``fill`` like ``gather_targets``
    pads its targets, so row k lines up with the k-th gathered target row. No gradient."""
    if world.size == 1:
        return rows
    padding = world.slot(global_batch) - rows.shape[0]
    rows = F.pad(rows, (0, 0) * (rows.dim() - 1) + (0, padding), value=fill)
    pieces = [torch.empty_like(rows) for _ in range(world.size)]
    dist.all_gather(pieces, rows.contiguous())
    return torch.cat(pieces)
