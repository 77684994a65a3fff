"""The hybrid's ID residual started from the training events' SVD factors (``model.id_init = "svd"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core_fixtures import tiny_pch_config
from learn_features.data.incidence import incidence_matrix
from learn_features.errors import LearnFeaturesError
from learn_features.pch.id_init import svd_init, svd_item_factors

D_MODEL = 32


def two_tastes(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """40 users: half touch only items 0-4, half only items 5-9; item 10 has no training event."""
    rng = np.random.default_rng(seed)
    histories = [rng.choice(np.arange(5) + 5 * (u % 2), size=3, replace=False) for u in range(40)]
    slots = np.zeros(11, dtype=np.int64)
    slots[:10] = np.arange(1, 11)
    return histories, slots


def started_table(histories: list[np.ndarray], slots: np.ndarray) -> torch.Tensor:
    table = torch.full((int(slots.max()) + 1, D_MODEL), 7.0)  # row 0 (no item's) must keep whatever it holds
    svd_init(table, slots, histories)
    return table


def test_two_factors_tell_the_two_tastes_apart() -> None:
    histories, _ = two_tastes()
    factors = svd_item_factors(incidence_matrix(histories, 11), 2)[:10]
    rows = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    cosine = rows @ rows.T
    same = np.equal.outer(np.arange(10) // 5, np.arange(10) // 5)
    assert cosine[same].min() > 0.9 and np.abs(cosine[~same]).max() < 1e-6  # the two tastes share no user


def test_warm_rows_are_svd_factors_at_the_content_scale() -> None:
    """At full rank the rows' Gram is (X^T X)^(1/2) up to the scale: V sqrt(S), rescaled so that
    the mean squared norm is d_model (a LayerNorm output's, the content projection's scale)."""
    histories, slots = two_tastes()
    table = started_table(histories, slots)
    rows = table[1:].double().numpy()
    x = incidence_matrix(histories, 11).toarray()[:, :10]
    eigenvalues, vectors = np.linalg.eigh(x.T @ x)
    root = vectors @ np.diag(np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T
    gram = rows @ rows.T
    np.testing.assert_allclose(gram / np.trace(gram), root / np.trace(root), atol=1e-5)
    assert float((table[1:] ** 2).sum(dim=1).mean()) == pytest.approx(D_MODEL, rel=1e-5)
    assert torch.equal(table[0], torch.full((D_MODEL,), 7.0))


def test_the_start_is_the_same_on_every_call() -> None:
    """Each rank of a distributed job computes it alone: ARPACK's start vector is seeded."""
    histories, slots = two_tastes()
    assert torch.equal(started_table(histories, slots), started_table(histories, slots))


def test_a_rank_above_the_matrix_s_is_zero_padded_and_an_empty_matrix_gives_zeros() -> None:
    histories, _ = two_tastes()
    factors = svd_item_factors(incidence_matrix(histories, 11), D_MODEL)
    assert factors.shape == (11, D_MODEL) and not factors[:, 10:].any() and factors[:, :10].any()
    assert not factors[10].any()  # the item no user touched has no factor
    assert not svd_item_factors(incidence_matrix([], 11), D_MODEL).any()


def test_id_init_is_one_of_the_registered_starts() -> None:
    assert tiny_pch_config(id_init="svd").id_init == "svd"
    with pytest.raises(LearnFeaturesError, match="model.id_init"):
        tiny_pch_config(id_init="pca")
