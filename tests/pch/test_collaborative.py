"""The collaborative part of a hybrid's vectors: PureSVD's score inside one inner product."""

from __future__ import annotations

import numpy as np
import pytest

from core_fixtures import clustered_split
from learn_features.data.incidence import incidence_matrix
from learn_features.pch import checkpoint
from learn_features.pch.collaborative import PAYLOAD_KEY, WEIGHTS, CollaborativePart, stale, vector_dim
from learn_features.pch.id_init import truncated_svd

RANK = 6


@pytest.fixture(scope="module")
def fitted() -> tuple[CollaborativePart, np.ndarray, list[np.ndarray], np.ndarray]:
    split = clustered_split(n_users=80, n_items=40)
    warm = np.flatnonzero(split.warm_items)
    slots = np.zeros(len(split.item_ids), np.int64)
    slots[warm] = np.arange(1, len(warm) + 1)
    slots_cold = slots.copy()
    slots_cold[warm[:3]] = 0  # three catalog items the model never trained on
    histories = [sequence.items for sequence in split.train.values()]
    return CollaborativePart.fit(slots, histories, RANK), slots, histories, slots_cold


def test_factors_are_the_svd_rows_of_items_with_a_slot_and_zero_elsewhere(fitted) -> None:
    part, slots, histories, _ = fitted
    _, vectors = truncated_svd(incidence_matrix(histories, len(slots)), RANK)
    warm = np.flatnonzero(slots > 0)
    assert part.factors.shape == (len(warm) + 1, RANK) and not part.factors[0].any()
    scale = np.sqrt((vectors[warm] ** 2).sum(axis=1).mean())
    np.testing.assert_allclose(part.factors[slots[warm]], vectors[warm] / scale, rtol=1e-5, atol=1e-6)
    assert np.mean((part.factors[1:] ** 2).sum(axis=1)) == pytest.approx(1.0, rel=1e-5)


def test_the_inner_product_is_the_weight_times_pure_svds_score(fitted) -> None:
    """user . item = w * (h V) . V_i / |h V|: PureSVD's ranking of every user, scaled by w."""
    part, slots, histories, _ = fitted
    weighted = part.with_weight(0.3)
    scores = weighted.users(histories[:10], slots) @ weighted.items(slots).T
    folded = np.stack([part.factors[slots[h]].sum(axis=0) for h in histories[:10]])
    expected = 0.3 * (folded / np.linalg.norm(folded, axis=1, keepdims=True)) @ part.factors[slots].T
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(weighted.users(histories[:10], slots), axis=1), np.sqrt(0.3), rtol=1e-5)
    assert not part.with_weight(0.0).users(histories[:3], slots).any() and not part.with_weight(0.0).items(slots).any()


def test_an_item_without_a_slot_has_no_part_and_adds_nothing_to_a_user(fitted) -> None:
    part, slots, histories, slots_cold = fitted
    cold = np.flatnonzero((slots > 0) & (slots_cold == 0))
    assert not part.items(slots_cold)[cold].any()
    history = histories[0]
    with_cold = part.users([np.concatenate([history, cold])], slots_cold)
    np.testing.assert_allclose(with_cold, part.users([history], slots_cold), rtol=1e-6)


def test_the_payload_round_trips_and_sets_the_published_width_and_version(fitted) -> None:
    part, _, _, _ = fitted
    payload = {"state_dict": {}, "model_config": {"d_out": 16}}
    assert vector_dim(payload) == 16 and CollaborativePart.of_payload(payload) is None
    bare = checkpoint.model_version(payload, "learn_hybrid", "inputs")
    versions = set()
    for weight in (0.1, 0.2):
        payload[PAYLOAD_KEY] = part.with_weight(weight).to_payload()
        back = CollaborativePart.of_payload(payload)
        assert back.weight == weight and np.array_equal(back.factors, part.factors)
        assert vector_dim(payload) == 16 + RANK
        versions.add(checkpoint.model_version(payload, "learn_hybrid", "inputs"))
    assert len(versions | {bare}) == 3  # another part or weight publishes another model version


def test_a_part_is_stale_when_missing_of_another_rank_or_grid_or_present_at_rank_0(fitted) -> None:
    part, _, _, _ = fitted
    bare = {"model_config": {"d_out": 16}}
    current = {**bare, PAYLOAD_KEY: {**part.to_payload(), "grid": list(WEIGHTS)}}
    older_grid = {**bare, PAYLOAD_KEY: {**part.to_payload(), "grid": list(WEIGHTS[:-1])}}
    assert not stale(bare, 0) and not stale(current, RANK)
    assert stale(bare, RANK) and stale(current, 0) and stale(current, 2 * RANK) and stale(older_grid, RANK)
