"""The hybrid towers (learn_hybrid): content plus a learned ID residual that cold items never read,
dropped at random in training; their inputs (content + slot channel) resident and from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core_fixtures import tiny_pch_config
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.content_store import write_content_store
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH, HybridInput

CPU = torch.device("cpu")
CONTENT_DIM, N_ITEMS = 12, 10
WARM = np.array([1, 3, 5, 7, 8])  # items with a training event: slots 1..5
COLD = np.array([0, 2, 4, 6, 9])


def hybrid_model(seed: int = 0, **overrides) -> PCH:
    torch.manual_seed(seed)
    return PCH(tiny_pch_config(**overrides), content_dim=CONTENT_DIM, num_items=len(WARM)).eval()


def content() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_ITEMS, CONTENT_DIM)).astype(np.float32)


def hybrid_inputs(device: torch.device = CPU) -> ItemInputs:
    return ItemInputs.from_content(content(), device).with_id_part(ItemInputs.from_training_items(N_ITEMS, WARM, device))


def content_twin(model: PCH) -> PCH:
    """The LEARN towers with the hybrid's weights, its ID table left out."""
    learn = PCH(model.config, content_dim=CONTENT_DIM).eval()
    state = {k.replace("input.content.", "input."): v for k, v in model.state_dict().items() if not k.startswith("input.ids.")}
    learn.load_state_dict(state)
    return learn


def test_the_id_table_starts_at_zero_so_the_hybrid_starts_as_the_content_model() -> None:
    model = hybrid_model()
    assert isinstance(model.input, HybridInput) and model.input.ids.num_embeddings == len(WARM) + 1
    assert torch.equal(model.input.ids.weight, torch.zeros_like(model.input.ids.weight))
    learn, items = content_twin(model), np.arange(N_ITEMS)
    learn_inputs = ItemInputs.from_content(content(), CPU)
    # equal up to rounding: the hybrid's linear map reads a strided slice (its rows carry the slot)
    same = {"rtol": 0, "atol": 1e-6}
    np.testing.assert_allclose(item_vectors(model, hybrid_inputs(), items), item_vectors(learn, learn_inputs, items), **same)
    with torch.no_grad():
        model.input.ids.weight.normal_()
    np.testing.assert_allclose(item_vectors(model, hybrid_inputs(), COLD), item_vectors(learn, learn_inputs, COLD), **same)
    assert not np.allclose(item_vectors(model, hybrid_inputs(), WARM), item_vectors(learn, learn_inputs, WARM), **same)


def test_cold_items_and_cold_histories_read_no_id_parameter() -> None:
    """Noise over the WHOLE ID table, row 0 included, even NaN in row 0: a cold item's vector and a
    user vector over cold items only keep every bit; a warm item's vector moves."""
    model, inputs = hybrid_model(), hybrid_inputs()
    cold_history = [COLD[[0, 2, 4]], COLD[[1]]]
    before = item_vectors(model, inputs, np.arange(N_ITEMS)), user_vectors(model, inputs, cold_history)
    with torch.no_grad():
        model.input.ids.weight.add_(torch.randn_like(model.input.ids.weight))
        noisy = item_vectors(model, inputs, np.arange(N_ITEMS)), user_vectors(model, inputs, cold_history)
        model.input.ids.weight[0] = float("nan")
        poisoned = item_vectors(model, inputs, np.arange(N_ITEMS)), user_vectors(model, inputs, cold_history)
    for items, users in (noisy, poisoned):
        np.testing.assert_array_equal(items[COLD], before[0][COLD])
        np.testing.assert_array_equal(users, before[1])
    assert (np.abs(noisy[0][WARM] - before[0][WARM]).max(axis=1) > 1e-3).all()
    np.testing.assert_array_equal(poisoned[0][WARM], noisy[0][WARM])  # row 0 belongs to no item


def test_cold_items_send_no_gradient_to_the_id_table() -> None:
    model = hybrid_model(id_dropout=0.0).train()
    inputs = hybrid_inputs()
    model.user_embeddings(inputs.gather(torch.as_tensor(COLD[None]))).sum().backward()
    assert torch.equal(model.input.ids.weight.grad, torch.zeros_like(model.input.ids.weight))
    model.zero_grad()
    model.user_embeddings(inputs.gather(torch.as_tensor(WARM[None]))).sum().backward()
    assert model.input.ids.weight.grad[1:].abs().sum(dim=1).gt(0).all() and not model.input.ids.weight.grad[0].any()


def kept_share(layer: HybridInput, rows: torch.Tensor) -> float:
    """The share of occurrences whose output carries the ID residual."""
    content = layer.content(rows[:, :-1])
    return (layer(rows) != content).any(dim=-1).float().mean().item()


@pytest.mark.parametrize(("id_dropout", "low", "high"), [(0.0, 1.0, 1.0), (0.5, 0.47, 0.53), (0.999, 0.0, 0.003)])
def test_id_dropout_drops_the_residual_per_occurrence_in_training_only(id_dropout: float, low: float, high: float) -> None:
    torch.manual_seed(0)
    layer = HybridInput(CONTENT_DIM, 3, 8, id_dropout)
    with torch.no_grad():
        layer.ids.weight.normal_()
    slots = torch.randint(1, 4, (4000, 1)).float()  # every occurrence warm
    rows = torch.cat([torch.randn(4000, CONTENT_DIM), slots], dim=1)
    with torch.no_grad():
        assert low <= kept_share(layer.train(), rows) <= high
        assert kept_share(layer.eval(), rows) == 1.0  # serving never drops
        cold = rows.clone()
        cold[:, -1] = 0
        assert kept_share(layer.train(), cold) == kept_share(layer.eval(), cold) == 0.0


@pytest.mark.parametrize("id_dropout", [1.0, -0.1, 1.5])
def test_id_dropout_must_be_a_probability_below_one(id_dropout: float) -> None:
    with pytest.raises(LearnFeaturesError, match=r"model.id_dropout must be in \[0, 1\)"):
        tiny_pch_config(id_dropout=id_dropout)


def test_hybrid_inputs_carry_the_slot_as_the_last_channel(tmp_path: Path) -> None:
    """Resident content and the fp16 store give the same rows (content, then the slot), through
    gather and through the trainer's localize + lookup."""
    vectors = content().astype(np.float16)
    ids = ItemInputs.from_training_items(N_ITEMS, WARM, CPU)
    store = write_content_store(tmp_path / "store", [vectors], [f"i{k}" for k in range(N_ITEMS)], {})
    resident = ItemInputs.from_content(vectors.astype(np.float32), CPU).with_id_part(ids)
    stored = ItemInputs(store=store).with_id_part(ids)
    assert resident.content_dim == stored.content_dim == CONTENT_DIM and resident.num_id_slots == stored.num_id_slots == 5
    history, targets = np.array([[3, 9, -1], [0, 8, 1]]), np.array([[7], [2]])
    expected = torch.cat([torch.from_numpy(vectors.astype(np.float32)), ids.id_slots.float()[:, None]], dim=1)[torch.as_tensor(history).clamp_min(0)]
    for inputs in (resident, stored):
        torch.testing.assert_close(inputs.gather(torch.as_tensor(history)), expected, rtol=0, atol=0)
    rows, (local_history, local_targets) = stored.localize(history, targets)
    assert rows.dtype == torch.float32 and rows.shape == (7, CONTENT_DIM + 1)
    torch.testing.assert_close(stored.lookup(torch.as_tensor(local_history), rows), expected, rtol=0, atol=0)
    torch.testing.assert_close(stored.lookup(torch.as_tensor(local_targets), rows), resident.gather(torch.as_tensor(targets)), rtol=0, atol=0)
    assert ItemInputs(store=store).localize(history)[0].dtype == torch.float16  # LEARN rows stay fp16


def test_identity_covers_both_content_and_slots(tmp_path: Path) -> None:
    vectors = content()
    base = ItemInputs.from_content(vectors, CPU)
    hybrid = hybrid_inputs()
    other_slots = base.with_id_part(ItemInputs.from_training_items(N_ITEMS, WARM[:-1], CPU))
    other_content = ItemInputs.from_content(vectors + 1, CPU).with_id_part(ItemInputs.from_training_items(N_ITEMS, WARM, CPU))
    identities = {base.identity, hybrid.identity, other_slots.identity, other_content.identity}
    assert len(identities) == 4 and hybrid_inputs().identity == hybrid.identity
    assert base.identity.startswith("content:") and "+ids:" not in base.identity  # LEARN's versions are unchanged
    store = write_content_store(tmp_path / "store", [vectors.astype(np.float16)], [f"i{k}" for k in range(N_ITEMS)], {})
    ids = ItemInputs.from_training_items(N_ITEMS, WARM, CPU)
    assert ItemInputs(store=store).with_id_part(ids).identity == f"{ItemInputs(store=store).identity}+{ids.identity}"


def test_with_id_part_refuses_mismatched_or_unrepresentable_slots() -> None:
    base = ItemInputs.from_content(content(), CPU)
    with pytest.raises(ValueError, match="9 ID slots for 10 content rows"):
        base.with_id_part(ItemInputs.from_training_items(N_ITEMS - 1, WARM, CPU))
    with pytest.raises(ValueError, match="joins content inputs and ID-slot inputs"):
        base.with_id_part(base)
    too_many = ItemInputs(id_slots=torch.full((N_ITEMS,), 2**24))
    with pytest.raises(LearnFeaturesError, match="exact below 16777216"):
        base.with_id_part(too_many)


def test_a_hybrid_checkpoint_serves_new_items_from_content_alone() -> None:
    """Over a new catalog a known item keeps its slot and a new one gets slot 0: the content-alone vector."""
    model = hybrid_model(seed=2)
    with torch.no_grad():
        model.input.ids.weight.normal_()
    trained = [f"i{k}" for k in WARM]
    payload = checkpoint.model_payload(model, CONTENT_DIM, trained, {"method": "learn_hybrid"})
    rebuilt = checkpoint.build_model(payload, CPU)
    assert isinstance(rebuilt.input, HybridInput)
    new_catalog = ["i3", "brand-new", "i8"]
    rows = content()[[3, 9, 8]]
    inputs = checkpoint.content_inputs_for(payload, ItemInputs.from_content(rows, CPU), new_catalog)
    assert inputs.id_slots.tolist() == [2, 0, 5]
    vectors = item_vectors(rebuilt, inputs, np.arange(3))
    content_alone = item_vectors(rebuilt, ItemInputs.from_content(rows, CPU).with_id_part(ItemInputs(id_slots=torch.zeros(3, dtype=torch.long))), np.arange(3))
    np.testing.assert_array_equal(vectors[1], content_alone[1])
    np.testing.assert_allclose(vectors[[0, 2]], item_vectors(model, hybrid_inputs(), np.array([3, 8])), rtol=0, atol=1e-6)
    assert (np.abs(vectors[[0, 2]] - content_alone[[0, 2]]).max(axis=1) > 1e-3).all()
    learn = checkpoint.model_payload(PCH(tiny_pch_config(), content_dim=CONTENT_DIM), CONTENT_DIM, None, {})
    assert checkpoint.content_inputs_for(learn, ItemInputs.from_content(rows, CPU), new_catalog).id_slots is None
