"""Where a training batch's negatives come from, and what the loss must know about them.

The loss (``learn_features.pch.loss``) only does the math over the candidates it is given;
this module owns the sampling side, as generative-recommenders keeps its negatives sampler
apart from its loss:

- **In-batch negatives**: every other user's targets. They are drawn in proportion to
  popularity, so each logit is lowered by log q, the log of the item's expected number of
  draws among the candidates (Yi et al., RecSys 2019): ``targets x share of training
  positives`` for an in-batch item.
- **Uniform extras** ("mixed negatives"): ``per_batch`` items per batch, drawn uniformly from
  the pool, shared by the whole batch (the same on every rank). An extra is expected
  ``extras / pool size`` times. The pool is by default the items with a training event
  (``uniform_from = "warm"``): an item without one is, under the temporal protocol, mostly an
  item that did not exist yet at training time; drawing it would both use the future catalog
  and teach the towers to push new items down, the cold-start items LEARN is meant to serve.
- **False negatives**: another user's target (or an extra) that is also one of b's own
  targets is masked, which needs the candidates' catalog ids.

Or no sampling at all (``softmax = "full"``): every item of the pool is a candidate of every
pair at every step (``learn_features.pch.loss.full_softmax_infonce``). It fits in memory for
catalogs of thousands to tens of thousands of items, and it is what makes an ID model as
strong as a well-trained SASRec. The pool is then the batch's "extras", so a content store
ships its rows with the batch as it ships any extra's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from learn_features.data.split import Split

#: ``train.softmax``: sampled candidates (in-batch and uniform extras), or every pool item.
Softmax = Literal["sampled", "full"]


@dataclass
class Candidates:
    """What the loss needs to know about items beyond their embeddings; all optional.

    ``target_ids`` (G, M) are the gathered targets' catalog indices (-1 padding) and
    ``target_log_q`` (G, M) their log expected draw counts. ``extra`` (U, D) are negatives shared
    by every user, with ``extra_ids`` (U,) and ``extra_log_q`` (U,).
    """

    target_ids: torch.Tensor | None = None
    target_log_q: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    extra_ids: torch.Tensor | None = None
    extra_log_q: torch.Tensor | None = None


@dataclass
class Negatives:
    """One training run's negative sampling: the uniform pool and draws, log q, masking."""

    pool: np.ndarray  # catalog indices the uniform extras are drawn from
    per_batch: int  # uniform extras per batch; 0: in-batch negatives only
    seed: int
    log_share: torch.Tensor | None  # (n_items,) log of each item's share of training positives; None: no log-q
    mask_false_negatives: bool
    pool_position: torch.Tensor | None = None  # full softmax: (n_items,) each item's row in the pool, -1 outside

    @classmethod
    def in_batch(cls) -> Negatives:
        """Plain in-batch negatives: no extras, no log-q correction, no masking."""
        return cls(np.zeros(0, dtype=np.int64), 0, 0, None, False)

    @classmethod
    def build(cls, split: Split, *, uniform_from: Literal["warm", "catalog"], per_batch: int, seed: int,
              logq_correction: bool, mask_false_negatives: bool, device: torch.device, softmax: Softmax = "sampled") -> Negatives:
        pool = np.arange(len(split.item_ids)) if uniform_from == "catalog" else np.flatnonzero(split.warm_items)
        if softmax == "full":
            position = np.full(len(split.item_ids), -1, dtype=np.int64)
            position[pool] = np.arange(len(pool))
            return cls(pool, len(pool), seed, None, True, torch.as_tensor(position, device=device))
        log_share = None
        if logq_correction:
            counts = split.positive_counts()
            with np.errstate(divide="ignore"):
                log_share = torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32, device=device)
        return cls(pool, per_batch, seed, log_share, mask_false_negatives)

    @property
    def full(self) -> bool:
        """Whether every pool item is a candidate at every step (the full softmax)."""
        return self.pool_position is not None

    def pool_positions(self, items: torch.Tensor) -> torch.Tensor:
        """Full softmax: the pool rows of catalog indices ``items``, -1 (padding, no target) kept."""
        return torch.where(items >= 0, self.pool_position[items.clamp_min(0)], -1)  # type: ignore[index]

    def epoch_extras(self, epoch: int, batches: int) -> list[np.ndarray] | None:
        """Each batch's extras for ``epoch``: uniformly drawn (seeded, the same on every rank),
        the whole pool under the full softmax, or None."""
        if self.full:
            return [self.pool] * batches
        if not self.per_batch:
            return None
        rng = np.random.default_rng([self.seed, epoch, 1])
        return list(self.pool[rng.integers(0, len(self.pool), size=(batches, self.per_batch))])

    def candidates(self, target_ids: torch.Tensor, target_lengths: torch.Tensor, extra_ids: torch.Tensor | None,
                   extra: torch.Tensor | None) -> Candidates:
        """The loss's view of the gathered batch: ids for masking, log q for correction."""
        target_log_q = extra_log_q = None
        if self.log_share is not None:
            drawn = target_lengths.sum().clamp_min(1).float()
            target_log_q = self.log_share[target_ids.clamp_min(0)] + torch.log(drawn)
            if extra_ids is not None:
                extra_log_q = torch.full(extra_ids.shape, math.log(len(extra_ids) / len(self.pool)), device=extra_ids.device)
        mask = self.mask_false_negatives
        return Candidates(
            target_ids=target_ids if mask else None, target_log_q=target_log_q,
            extra=extra, extra_ids=extra_ids if mask else None, extra_log_q=extra_log_q,
        )
