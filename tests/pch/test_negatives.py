"""Negative sampling: the uniform pool, the seeded per-batch extras, and the log-q and
false-negative view the loss gets of a batch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from core_fixtures import clustered_split
from learn_features.pch.negatives import Negatives

CPU = torch.device("cpu")


def build(split, **overrides) -> Negatives:
    options = dict(uniform_from="warm", per_batch=4, seed=7, logq_correction=True, mask_false_negatives=True, device=CPU)
    options.update(overrides)
    return Negatives.build(split, **options)


def test_the_pool_is_the_warm_items_unless_the_whole_catalog_is_asked_for() -> None:
    split = clustered_split()
    split = dataclasses.replace(split, warm_items=split.warm_items & (np.arange(len(split.item_ids)) % 3 > 0))
    np.testing.assert_array_equal(build(split).pool, np.flatnonzero(split.warm_items))
    np.testing.assert_array_equal(build(split, uniform_from="catalog").pool, np.arange(len(split.item_ids)))


def test_extras_are_seeded_per_epoch_and_drawn_from_the_pool() -> None:
    split = clustered_split()
    negatives = build(split)
    first = negatives.epoch_extras(epoch=3, batches=5)
    assert len(first) == 5 and all(len(e) == 4 and np.isin(e, negatives.pool).all() for e in first)
    rng = np.random.default_rng([7, 3, 1])
    np.testing.assert_array_equal(np.stack(first), negatives.pool[rng.integers(0, len(negatives.pool), size=(5, 4))])
    assert not np.array_equal(np.stack(first), np.stack(negatives.epoch_extras(epoch=4, batches=5)))
    assert build(split, per_batch=0).epoch_extras(epoch=3, batches=5) is None


def test_log_q_is_the_expected_number_of_draws() -> None:
    split = clustered_split()
    negatives = build(split)
    counts = split.positive_counts()
    ids = torch.tensor([[0, 1, -1], [2, 0, 1]])
    lengths = torch.tensor([2, 3])
    extra_ids = torch.tensor([4, 5, 6, 7])
    candidates = negatives.candidates(ids, lengths, extra_ids, torch.zeros(4, 3))
    share = counts / counts.sum()
    expected = np.log(share[ids.clamp_min(0).numpy()] * 5)
    np.testing.assert_allclose(candidates.target_log_q.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(candidates.extra_log_q.numpy(), math.log(4 / len(negatives.pool)), rtol=1e-6)
    assert candidates.target_ids is ids and candidates.extra_ids is extra_ids


def test_plain_in_batch_negatives_carry_no_correction_and_no_mask() -> None:
    candidates = Negatives.in_batch().candidates(torch.tensor([[0, 1]]), torch.tensor([2]), torch.tensor([3]), torch.zeros(1, 3))
    assert candidates.target_log_q is None and candidates.extra_log_q is None
    assert candidates.target_ids is None and candidates.extra_ids is None and candidates.extra is not None
    assert Negatives.in_batch().epoch_extras(epoch=0, batches=3) is None
