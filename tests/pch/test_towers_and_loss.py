"""PCH towers: causality, the dense all-action InfoNCE loss, variants, ID baseline, checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import tiny_pch_config
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.batching import PAD, pad_array
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.loss import dense_all_action_infonce, full_softmax_infonce, next_item_chance, next_item_softmax, recency_weights
from learn_features.pch.negatives import Candidates
from learn_features.pch.model import PCH, PCHConfig
from learn_features.retrieval import rank_items

CPU = torch.device("cpu")
CONTENT_DIM = 12


def content_model(variant: int = 1, seed: int = 0, **overrides) -> PCH:
    torch.manual_seed(seed)
    return PCH(tiny_pch_config(variant=variant, **overrides), content_dim=CONTENT_DIM).eval()


def id_model(num_items: int = 10, seed: int = 0, tied: bool = False) -> PCH:
    torch.manual_seed(seed)
    config = tiny_pch_config(tied_output=True, d_out=32) if tied else tiny_pch_config()
    return PCH(config, num_items=num_items).eval()


# --- causality -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["content", "ids"])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference_mode"])
def test_output_at_t_ignores_later_inputs(kind: str, grad: bool) -> None:
    """Changing inputs after position t leaves outputs at positions <= t unchanged (and changes later ones)."""
    model = content_model() if kind == "content" else id_model(num_items=50)
    gen = torch.Generator().manual_seed(1)
    if kind == "content":
        x = torch.randn(3, 7, CONTENT_DIM, generator=gen)
    else:
        x = torch.randint(0, 51, (3, 7), generator=gen)
    context = torch.enable_grad() if grad else torch.inference_mode()
    with context:
        base = model.encode(x)
        for t in range(6):
            changed = x.clone()
            if kind == "content":
                changed[:, t + 1 :] = torch.randn(changed[:, t + 1 :].shape, generator=gen) * 3
            else:
                changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 51
            out = model.encode(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-4)


def test_user_vector_is_independent_of_batch_padding() -> None:
    """A user's vector (after the last real position) is the same alone or padded in a batch."""
    model = content_model()
    inputs = ItemInputs.from_content(np.random.default_rng(0).normal(size=(20, CONTENT_DIM)), CPU)
    histories = [np.array([3, 1, 4, 1, 5, 9, 2, 6]), np.array([7]), np.array([0, 19, 18])]
    together = user_vectors(model, inputs, histories)
    for i, history in enumerate(histories):
        np.testing.assert_allclose(together[i], user_vectors(model, inputs, [history])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    with pytest.raises(LearnFeaturesError, match="empty history"):
        user_vectors(model, inputs, [np.array([1]), np.array([], dtype=np.int64)])


TOWER_ITEMS = 30  # items 20..29 have no ID slot (cold)


def tower_of_kind(kind: str, config: PCHConfig) -> tuple[PCH, ItemInputs]:
    """Towers of one input kind over TOWER_ITEMS items, and their inputs: content, IDs (plain,
    SASRec's tied output, with RecBole's input block, with its small start and no head) or both."""
    content = ItemInputs.from_content(np.random.default_rng(1).normal(size=(TOWER_ITEMS, CONTENT_DIM)), CPU)
    ids = ItemInputs.from_training_items(TOWER_ITEMS, np.arange(20), CPU)
    tied = replace(config, tied_output=True, d_out=config.d_model)
    build, inputs = {
        "content": (lambda: PCH(config, content_dim=CONTENT_DIM), content),
        "ids": (lambda: PCH(config, num_items=20), ids),
        "tied": (lambda: PCH(tied, num_items=20), ids),
        "tied_normed": (lambda: PCH(replace(tied, input_norm=True), num_items=20), ids),
        "tied_sasrec": (lambda: PCH(replace(tied, input_norm=True, init_std=0.02, output_head=False), num_items=20), ids),
        "hybrid": (lambda: PCH(config, content_dim=CONTENT_DIM, num_items=20), content.with_id_part(ids)),
    }[kind]
    return build(), inputs


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", ["content", "ids", "tied", "tied_normed", "tied_sasrec", "hybrid"])
def test_serving_path_equals_the_last_position_of_the_full_tower(kind: str, n_layers: int) -> None:
    """``user_vectors`` (each item projected once, the last layer at one position) gives the
    training path's output after each history's last real event, for every input kind,
    length and depth; and a perturbed later layer changes it (the shortcut skips no layer)."""
    torch.manual_seed(n_layers)
    n_items, config = TOWER_ITEMS, tiny_pch_config(n_layers=n_layers)
    model, inputs = tower_of_kind(kind, config)
    model.eval()
    if kind == "hybrid":
        torch.nn.init.normal_(model.input.ids.weight)  # a trained residual, not the zero start
    rng = np.random.default_rng(2)
    histories = [rng.integers(0, n_items, length) for length in [1, 2, config.max_len, *rng.integers(1, config.max_len + 1, 40)]]
    padded, lengths = pad_array(histories, config.max_len)
    with torch.inference_mode():
        full = model.last_position(model.encode(inputs.gather(torch.as_tensor(padded))), torch.as_tensor(lengths)).numpy()
    served = user_vectors(model, inputs, histories)
    np.testing.assert_allclose(served, full, atol=1e-5, rtol=0)
    with torch.no_grad():
        model.transformer.layers[-1].linear2.weight.normal_()  # (a constant shift would vanish in the final LayerNorm)
    assert not np.allclose(user_vectors(model, inputs, histories), served, atol=1e-3)


@pytest.mark.parametrize("kind", ["content", "tied_sasrec", "hybrid"])
def test_length_grouped_encode_equals_the_padded_one_at_real_positions(kind: str) -> None:
    """``encode_by_length`` (the prefixes objective's training pass) gives ``encode``'s output
    at every real position of every row, gradients reach the real inputs of every group and
    no padding; a row's length decides its group, so a wrong length would change it."""
    torch.manual_seed(0)
    n_items, config = TOWER_ITEMS, tiny_pch_config()
    model, inputs = tower_of_kind(kind, config)
    model.eval()
    rng = np.random.default_rng(3)
    histories = [rng.integers(0, n_items, length) for length in [1, 2, 3, 5, config.max_len, *rng.integers(1, config.max_len + 1, 20)]]
    padded, lengths = pad_array(histories)
    items, lengths_t = inputs.gather(torch.as_tensor(padded)), torch.as_tensor(lengths)
    full = model.encode(items)
    if items.is_floating_point():
        items = items.clone().requires_grad_()
    grouped = model.user_embeddings(items, lengths_t)
    real = torch.arange(padded.shape[1])[None, :] < lengths_t[:, None]
    torch.testing.assert_close(grouped[real], full[real].detach(), atol=1e-5, rtol=0)
    if items.is_floating_point():
        grouped[real].sum().backward()
        assert (items.grad.abs().sum(-1) > 0)[real].all() and not items.grad[~real].any()
    wrong = model.user_embeddings(inputs.gather(torch.as_tensor(padded)), torch.full_like(lengths_t, 1))
    assert not torch.allclose(wrong[real], full[real].detach(), atol=1e-3)


@pytest.mark.parametrize("kind", ["content", "tied_sasrec", "hybrid"])
def test_positions_from_the_end_serve_as_they_train_whatever_the_padding(kind: str) -> None:
    """``positions = "from_end"`` counts back from each row's real length: a history gives the
    same user vector alone (unpadded), padded in a batch on the serving path, and grouped by
    length as the prefixes objective trains it; its latest event meets position row 0 at every
    length (row n - 1 counting from the start), and an item alone is the same either way."""
    torch.manual_seed(0)
    config = replace(tiny_pch_config(), positions="from_end")
    model, inputs = tower_of_kind(kind, config)
    model.eval()
    if kind == "hybrid":
        torch.nn.init.normal_(model.input.ids.weight)  # a trained residual, not the zero start
    rng = np.random.default_rng(4)
    histories = [rng.integers(0, TOWER_ITEMS, length) for length in [1, 2, 3, config.max_len, *rng.integers(1, config.max_len + 1, 20)]]
    padded, lengths = pad_array(histories, config.max_len)
    lengths_t = torch.as_tensor(lengths)
    with torch.inference_mode():
        alone = np.stack([model.encode(inputs.gather(torch.as_tensor(h[None])))[0, -1].numpy() for h in histories])
        grouped = model.last_position(model.user_embeddings(inputs.gather(torch.as_tensor(padded)), lengths_t), lengths_t).numpy()
    np.testing.assert_allclose(user_vectors(model, inputs, histories), alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(grouped, alone, atol=1e-5, rtol=0)
    zeros, rows = torch.zeros(len(histories), config.max_len, config.d_model), torch.arange(len(histories))
    latest = model._positioned(zeros, lengths_t)[rows, lengths_t - 1]
    torch.testing.assert_close(latest, model._positioned(zeros[:, :1])[:, 0].expand_as(latest))
    from_start, _ = tower_of_kind(kind, replace(config, positions="from_start"))
    from_start.load_state_dict(model.state_dict())
    from_start.eval()
    assert not torch.allclose(from_start._positioned(zeros, lengths_t)[rows, lengths_t - 1], latest, atol=1e-3)
    with torch.inference_mode():
        items = inputs.gather(torch.arange(TOWER_ITEMS))
        torch.testing.assert_close(from_start.item_embeddings(items), model.item_embeddings(items))


def test_pad_array_layout() -> None:
    padded, lengths = pad_array([np.array([4, 5, 6]), np.array([7]), np.array([], dtype=np.int64)])
    assert padded.tolist() == [[4, 5, 6], [7, PAD, PAD], [PAD, PAD, PAD]] and lengths.tolist() == [3, 1, 0]
    assert padded.dtype == np.int64


def test_sequence_longer_than_max_len_is_refused() -> None:
    model = content_model(max_len=4)
    with pytest.raises(LearnFeaturesError, match="exceeds model.max_len 4"):
        model.encode(torch.zeros(1, 5, CONTENT_DIM))


# --- loss ------------------------------------------------------------------------------


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def reference_weights(n_b: int, alpha: float, beta: float) -> list[float]:
    """The docstring's recency weights of a user's n_b real positions, normalised to sum to one."""
    weights = [1.0] if n_b == 1 else [math.log(alpha + i * (beta - alpha) / (n_b - 1)) for i in range(n_b)]
    return [w / sum(weights) for w in weights]


def reference_loss(users, items, history_lengths, target_lengths, temperature, alpha, beta) -> float:
    """The docstring's formula, term by term in plain Python floats."""
    u, v = users.tolist(), items.tolist()
    hl, tl = history_lengths.tolist(), target_lengths.tolist()
    batch = len(u)

    total = 0.0
    for b in range(batch):
        n_b = hl[b]
        weights = reference_weights(n_b, alpha, beta)
        user_loss = 0.0
        for i in range(n_b):
            negatives = [
                math.exp(dot(u[b][i], v[other][j]) / temperature)
                for other in range(batch)
                if other != b
                for j in range(tl[other])
            ]
            pair_losses = []
            for j in range(tl[b]):
                positive = math.exp(dot(u[b][i], v[b][j]) / temperature)
                pair_losses.append(-math.log(positive / (positive + sum(negatives))))
            user_loss += weights[i] * sum(pair_losses) / len(pair_losses)
        total += user_loss
    return total / batch


def random_batch(seed: int, batch: int = 4, n: int = 5, m: int = 3, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    users = torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=gen, dtype=torch.float64), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(batch, m, dim, generator=gen, dtype=torch.float64), dim=-1)
    history_lengths = torch.tensor([5, 2, 1, 4][:batch])
    target_lengths = torch.tensor([3, 1, 2, 3][:batch])
    # Garbage (not unit, large) in padded slots: it must not reach the loss.
    for b in range(batch):
        users[b, history_lengths[b] :] = 50.0
        items[b, target_lengths[b] :] = -50.0
    return users, items, history_lengths, target_lengths


@pytest.mark.parametrize("seed, temperature, alpha, beta", [(0, 0.5, 10.0, 10000.0), (1, 0.2, 2.0, 50.0), (2, 1.0, 10.0, 10000.0)])
def test_loss_equals_reference_loop(seed: int, temperature: float, alpha: float, beta: float) -> None:
    """Vectorised loss == plain-Python loop, with variable lengths, recency weights and padding garbage."""
    users, items, hl, tl = random_batch(seed)
    got = dense_all_action_infonce(users.float(), items.float(), hl, tl, temperature, alpha, beta)
    expected = reference_loss(users, items, hl, tl, temperature, alpha, beta)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def corrected_reference_loss(users, items, hl, tl, ids, log_q, extra, extra_ids, extra_log_q, temperature, alpha, beta) -> float:
    """Sampling-bias correction and false-negative masking, term by term: every logit of an item
    loses its log q; another user's target (or an extra) whose id is one of b's own targets is
    no negative for b."""
    u, v, e = users.tolist(), items.tolist(), extra.tolist()
    hl, tl, ids, log_q = hl.tolist(), tl.tolist(), ids.tolist(), log_q.tolist()
    extra_ids, extra_log_q = extra_ids.tolist(), extra_log_q.tolist()

    total = 0.0
    for b in range(len(u)):
        own = set(ids[b][: tl[b]])
        n_b = hl[b]
        weights = reference_weights(n_b, alpha, beta)
        user_loss = 0.0
        for i in range(n_b):
            negatives = [
                math.exp(dot(u[b][i], v[o][j]) / temperature - log_q[o][j])
                for o in range(len(u)) if o != b for j in range(tl[o]) if ids[o][j] not in own
            ]
            negatives += [math.exp(dot(u[b][i], e[k]) / temperature - extra_log_q[k]) for k in range(len(e)) if extra_ids[k] not in own]
            pairs = []
            for j in range(tl[b]):
                positive = math.exp(dot(u[b][i], v[b][j]) / temperature - log_q[b][j])
                pairs.append(-math.log(positive / (positive + sum(negatives))))
            user_loss += weights[i] * sum(pairs) / len(pairs)
        total += user_loss
    return total / len(u)


@pytest.mark.parametrize("seed", [0, 1])
def test_corrected_loss_equals_reference_loop(seed: int) -> None:
    """log-q correction, false-negative masking and extra negatives == a slow reference, on a tiny
    batch where users share target items (the false negatives) and an extra is a user's own target."""
    users, items, hl, tl = random_batch(seed)
    ids = torch.tensor([[1, 2, 3], [2, -1, -1], [3, 4, -1], [5, 1, 6]])
    gen = torch.Generator().manual_seed(seed)
    log_q = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    extra = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen, dtype=torch.float64), dim=-1)
    extra_ids, extra_log_q = torch.tensor([4, 7, 8]), torch.randn(3, generator=gen, dtype=torch.float64)
    candidates = Candidates(ids, log_q.float(), extra.float(), extra_ids, extra_log_q.float())
    got = dense_all_action_infonce(users.float(), items.float(), hl, tl, 0.5, 10.0, 100.0, candidates=candidates)
    expected = corrected_reference_loss(users, items, hl, tl, ids, log_q, extra, extra_ids, extra_log_q, 0.5, 10.0, 100.0)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    plain = dense_all_action_infonce(users.float(), items.float(), hl, tl, 0.5, 10.0, 100.0)
    assert abs(got.item() - plain.item()) > 1e-3  # the corrections change the loss


def full_softmax_reference_loss(users, pool, hl, targets, tl, temperature, alpha, beta) -> float:
    """The full softmax, term by term: for each real history position and each own target, the
    target against every pool item that is not one of the user's targets."""
    u, p = users.tolist(), pool.tolist()
    hl, tl, targets = hl.tolist(), tl.tolist(), targets.tolist()

    total = 0.0
    for b in range(len(u)):
        own = set(targets[b][: tl[b]])
        n_b = hl[b]
        weights = reference_weights(n_b, alpha, beta)
        user_loss = 0.0
        for i in range(n_b):
            negatives = sum(math.exp(dot(u[b][i], p[k]) / temperature) for k in range(len(p)) if k not in own)
            pairs = []
            for j in range(tl[b]):
                positive = math.exp(dot(u[b][i], p[targets[b][j]]) / temperature)
                pairs.append(-math.log(positive / (positive + negatives)))
            user_loss += weights[i] * sum(pairs) / len(pairs)
        total += user_loss
    return total / len(u)


@pytest.mark.parametrize("seed, temperature", [(0, 0.5), (1, 0.1)])
def test_full_softmax_equals_reference_loop(seed: int, temperature: float) -> None:
    """The full-catalog objective == a slow reference on a tiny batch: users share targets, one
    user has several, and padded target slots hold garbage positions."""
    users, _, hl, tl = random_batch(seed)
    gen = torch.Generator().manual_seed(seed + 10)
    pool = torch.nn.functional.normalize(torch.randn(9, 6, generator=gen, dtype=torch.float64), dim=-1)
    targets = torch.tensor([[1, 2, 3], [2, 7, 0], [3, 4, 8], [5, 1, 6]])  # beyond target_lengths: padding
    got = full_softmax_infonce(users.float(), pool.float(), hl, targets, tl, temperature, 10.0, 100.0)
    expected = full_softmax_reference_loss(users, pool, hl, targets, tl, temperature, 10.0, 100.0)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    halves = [full_softmax_infonce(users[s].float(), pool.float(), hl[s], targets[s], tl[s], temperature, 10.0, 100.0, global_batch=4)
              for s in (slice(0, 2), slice(2, 4))]
    assert (halves[0] + halves[1]).item() == pytest.approx(got.item(), rel=1e-5)  # ranks' shares add up


def next_item_reference_loss(users, pool, hl, next_rows, temperature) -> float:
    """SASRec's objective, term by term: each real position with a next event pays
    -log softmax over the pool of that event; a user's positions are averaged, then users."""
    u, p, hl, next_rows = users.tolist(), pool.tolist(), hl.tolist(), next_rows.tolist()
    per_user = []
    for b in range(len(u)):
        terms = []
        for i in range(hl[b]):
            if next_rows[b][i] < 0:
                continue
            scores = [dot(u[b][i], p[k]) / temperature for k in range(len(p))]
            terms.append(math.log(sum(math.exp(s) for s in scores)) - scores[next_rows[b][i]])
        per_user.append(sum(terms) / len(terms))
    return sum(per_user) / len(per_user)


@pytest.mark.parametrize("seed, temperature", [(0, 0.5), (1, 0.1)])
def test_next_item_softmax_equals_reference_loop(seed: int, temperature: float) -> None:
    """The next-event objective == a slow reference: holes (-1: the next event is no positive)
    and padded positions (garbage rows past the history, out-of-range pool rows) pay nothing."""
    users, _, hl, _ = random_batch(seed)
    gen = torch.Generator().manual_seed(seed + 20)
    pool = torch.nn.functional.normalize(torch.randn(9, 6, generator=gen, dtype=torch.float64), dim=-1)
    next_rows = torch.tensor([[1, -1, 3, 3, 8], [2, 7, 99, 99, 99], [0, 99, 99, 99, 99], [-1, 4, 5, 6, 99]])
    got = next_item_softmax(users.float(), pool.float(), hl, next_rows.where(next_rows < 9, -1), temperature)
    expected = next_item_reference_loss(users, pool, hl, next_rows, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    halves = [next_item_softmax(users[s].float(), pool.float(), hl[s], next_rows[s].where(next_rows[s] < 9, -1), temperature, global_batch=4)
              for s in (slice(0, 2), slice(2, 4))]
    assert (halves[0] + halves[1]).item() == pytest.approx(got.item(), rel=1e-5)  # ranks' shares add up
    flat = next_item_softmax(torch.zeros_like(users[:, :, :1]).float(), torch.zeros(9, 1), hl, next_rows.where(next_rows < 9, -1), temperature)
    assert flat.item() == pytest.approx(next_item_chance(9, 4).item()) == pytest.approx(math.log(9))
    assert sum(next_item_chance(9, 2, global_batch=4).item() for _ in range(2)) == pytest.approx(math.log(9))


def test_false_negative_masking_removes_shared_targets() -> None:
    """Two users with the same single target: masked, neither is the other's negative (loss 0);
    unmasked, each pays for the other's copy."""
    users = torch.nn.functional.normalize(torch.ones(2, 1, 4), dim=-1)
    items = users.clone()
    lengths = torch.ones(2, dtype=torch.long)
    ids = torch.tensor([[9], [9]])
    masked = dense_all_action_infonce(users, items, lengths, lengths, 0.1, candidates=Candidates(target_ids=ids))
    assert masked.item() == 0.0
    unmasked = dense_all_action_infonce(users, items, lengths, lengths, 0.1)
    assert unmasked.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_loss_with_a_single_user_has_no_negatives() -> None:
    """A batch of one has no negatives: every pair's loss is -log(1) = 0 (not NaN)."""
    users, items, hl, tl = random_batch(0, batch=1)
    loss = dense_all_action_infonce(users.float(), items.float(), hl, tl, 0.1)
    assert loss.item() == 0.0


def test_loss_gradient_flows_to_real_positions_only() -> None:
    users, items, hl, tl = random_batch(3)
    users, items = users.float().requires_grad_(), items.float().requires_grad_()
    dense_all_action_infonce(users, items, hl, tl, 0.5).backward()
    for b in range(len(hl)):
        assert users.grad[b, hl[b] :].abs().sum() == 0 and users.grad[b, : hl[b]].abs().sum() > 0
        assert items.grad[b, tl[b] :].abs().sum() == 0 and items.grad[b, : tl[b]].abs().sum() > 0


def test_recency_weights() -> None:
    """Rows sum to one, zero on padding, strictly increasing with position; a length-1 row is [1, 0, ...]."""
    lengths = torch.tensor([6, 3, 1, 2])
    weights = recency_weights(lengths, 6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    for row, n in zip(weights, lengths.tolist()):
        assert (row[n:] == 0).all() and (row[:n] > 0).all()
        assert (row[1:n] > row[: n - 1]).all()
    assert weights[2].tolist() == [1.0, 0, 0, 0, 0, 0]
    # The newest position gets log(beta) / sum: check the un-normalised endpoints of row 0.
    expected = torch.log(torch.tensor([10.0 + i * (10000.0 - 10.0) / 5 for i in range(6)]))
    torch.testing.assert_close(weights[0], expected / expected.sum())


# --- training signal --------------------------------------------------------------------


def test_tiny_model_overfits_disjoint_users(single_thread) -> None:
    """8 users with 6 disjoint items each: the loss collapses, and after the first 3 items the
    user's other 3 items are exactly the top 3 of the whole 48-item gallery."""
    torch.manual_seed(0)
    n_users, per_user = 8, 6
    inputs = ItemInputs(content=torch.randn(n_users * per_user, CONTENT_DIM))
    sequences = torch.arange(n_users * per_user).view(n_users, per_user)
    model = PCH(tiny_pch_config(variant=2, dropout=0.0, max_len=8), content_dim=CONTENT_DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(200):
        cut = 1 + step % (per_user - 1)  # every item is a target at some step
        history, targets = sequences[:, :cut], sequences[:, cut:]
        loss = dense_all_action_infonce(
            model.user_embeddings(inputs.gather(history)),
            model.target_embeddings(inputs.gather(targets)),
            torch.full((n_users,), cut),
            torch.full((n_users,), per_user - cut),
            0.1,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.05 * np.mean(losses[:5]), (losses[:5], losses[-5:])

    model.eval()
    histories = [s[:3].numpy() for s in sequences]
    users = user_vectors(model, inputs, histories)
    items = item_vectors(model, inputs, np.arange(n_users * per_user))
    ranked = rank_items(users, items, histories, depth=3)
    for user in range(n_users):
        assert set(ranked[user].tolist()) == set(sequences[user, 3:].tolist()), user


# --- variants --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_variant_shapes_and_unit_norm(variant: int) -> None:
    model = content_model(variant)
    x = torch.randn(2, 5, CONTENT_DIM)
    users, targets = model.user_embeddings(x), model.target_embeddings(x[:, :4])
    items = model.item_embeddings(x[0])
    assert users.shape == (2, 5, 16) and targets.shape == (2, 4, 16) and items.shape == (5, 16)
    for out in (users, targets, items):
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(out.shape[:-1]))
    assert (model.raw_item_head is not None) == (variant == 3)


def test_variant1_targets_are_a_causal_sequence() -> None:
    """Variant 1: the first target equals the item alone, later ones depend on earlier targets."""
    model = content_model(1)
    x = torch.randn(2, 4, CONTENT_DIM)
    targets, alone = model.target_embeddings(x), model.item_embeddings(x.flatten(0, 1)).view(2, 4, -1)
    torch.testing.assert_close(targets[:, 0], alone[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(targets[:, 1:], alone[:, 1:], atol=1e-4)


@pytest.mark.parametrize("variant", [2, 3])
def test_variant2_and_3_targets_are_items_alone(variant: int) -> None:
    model = content_model(variant)
    x = torch.randn(3, 4, CONTENT_DIM)
    targets = model.target_embeddings(x)
    for b in range(3):
        for j in range(4):
            torch.testing.assert_close(targets[b, j], model.item_embeddings(x[b, j : j + 1])[0], atol=1e-6, rtol=0)
    if variant == 3:  # the raw content through one linear map, nothing else
        expected = torch.nn.functional.normalize(x @ model.raw_item_head.weight.T + model.raw_item_head.bias, dim=-1)
        torch.testing.assert_close(targets, expected)


def test_variant3_with_ids_is_refused() -> None:
    with pytest.raises(LearnFeaturesError, match="variant 3"):
        PCH(tiny_pch_config(variant=3), num_items=10)
    with pytest.raises(LearnFeaturesError, match="variant 3 uses raw content embeddings; the hybrid's ID part would bypass it"):
        PCH(tiny_pch_config(variant=3), content_dim=4, num_items=4)
    with pytest.raises(ValueError, match="give content_dim"):
        PCH(tiny_pch_config())
    with pytest.raises(LearnFeaturesError, match="model.variant"):
        tiny_pch_config(variant=4)
    with pytest.raises(LearnFeaturesError, match="divisible"):
        tiny_pch_config(d_model=30)


# --- ID baseline -----------------------------------------------------------------------


def test_id_baseline_cold_items_share_the_unknown_embedding() -> None:
    """Items without a trained slot all map to slot 0 and get one identical vector; trained ones differ."""
    trained = np.array([1, 3, 3, 5, 7, 8])
    inputs = ItemInputs.from_training_items(10, trained, CPU)
    assert inputs.id_slots.tolist() == [0, 1, 0, 2, 0, 3, 0, 4, 5, 0] and inputs.num_id_slots == 5
    model = id_model(num_items=inputs.num_id_slots)
    vectors = item_vectors(model, inputs, np.arange(10))
    cold = [0, 2, 4, 6, 9]
    for i in cold[1:]:  # same input; only float rounding across batch rows may differ
        np.testing.assert_allclose(vectors[i], vectors[cold[0]], atol=1e-6, rtol=0)
    warm = vectors[[1, 3, 5, 7, 8]]
    distances = np.linalg.norm(warm[:, None] - np.vstack([warm, vectors[:1]])[None], axis=-1)
    assert (distances + np.eye(5, 6) * 10 > 1e-4).all()


def test_tied_output_scores_items_by_their_rows_of_the_input_table() -> None:
    """SASRec's output layer: an item's vector is its (unnormalised) row of the very table the
    user tower reads, for targets and served items alike, so a row moved by training moves both
    the item and every history holding it; users are unnormalised too."""
    inputs = ItemInputs.from_training_items(10, np.array([1, 3, 5, 7, 8]), CPU)
    model = id_model(num_items=inputs.num_id_slots, tied=True)
    table = model.input.table.weight
    slots = inputs.id_slots
    items = torch.as_tensor(item_vectors(model, inputs, np.arange(10)))
    torch.testing.assert_close(items, table[slots].detach())
    targets = model.target_embeddings(slots[None, [1, 3, 5]])
    torch.testing.assert_close(targets[0], table[slots[[1, 3, 5]]])
    norms = items.norm(dim=-1)
    assert 0.3 < norms.mean() < 3.0 and norms.std() > 0.01  # about unit rows at init, not normalised
    history = [np.array([1, 3])]
    users = user_vectors(model, inputs, history)
    assert abs(np.linalg.norm(users[0]) - 1.0) > 1e-3
    shift = torch.linspace(-1.0, 1.0, 32)  # (a constant shift would vanish in the towers' LayerNorms)
    with torch.no_grad():
        table[slots[3]] += shift
    assert not np.allclose(user_vectors(model, inputs, history), users, atol=1e-4)
    moved = torch.as_tensor(item_vectors(model, inputs, np.arange(10)))
    torch.testing.assert_close(moved[3] - items[3], shift)
    torch.testing.assert_close(moved[[0, 1, 5]], items[[0, 1, 5]])


def test_input_dropout_acts_in_training_only() -> None:
    """model.input_dropout zeroes coordinates of the towers' inputs while training; served
    vectors (eval mode) are the exact towers."""
    torch.manual_seed(0)
    ids = torch.randint(1, 6, (4, 5))
    plain = PCH(tiny_pch_config(dropout=0.0), num_items=5)
    dropped = PCH(tiny_pch_config(dropout=0.0, input_dropout=0.5), num_items=5)
    dropped.load_state_dict(plain.state_dict())
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.encode(ids), plain.encode(ids))
    dropped.train()
    assert not torch.allclose(dropped.encode(ids), plain.encode(ids), atol=1e-3)
    with pytest.raises(LearnFeaturesError, match="model.input_dropout"):
        tiny_pch_config(input_dropout=1.0)


def test_input_norm_puts_every_input_at_unit_scale_whatever_the_rows() -> None:
    """model.input_norm (RecBole's SASRec input block): small unscaled rows at init, and item
    plus position normalised before the layers, so a row grown tenfold enters at the same scale."""
    torch.manual_seed(0)
    model = PCH(tiny_pch_config(tied_output=True, d_out=32, dropout=0.0, input_norm=True), num_items=5).eval()
    assert model.input.table.weight.std() < 0.05 and model.input.scale == 1.0
    ids = torch.randint(1, 6, (3, 4))
    inputs = model._positioned(model.input(ids))
    torch.testing.assert_close(inputs.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs.std(-1, unbiased=False), torch.ones(3, 4), atol=2e-2, rtol=0)  # (LayerNorm eps)
    with torch.no_grad():
        model.input.table.weight.mul_(10.0)
    grown = model._positioned(model.input(ids))
    torch.testing.assert_close(grown.std(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    plain = PCH(tiny_pch_config(tied_output=True, d_out=32), num_items=5)
    assert plain.input_norm is None and plain.input.scale == 32**0.5
    with pytest.raises(LearnFeaturesError, match="model.input_norm .* needs model.tied_output"):
        tiny_pch_config(input_norm=True)


def test_init_std_starts_every_linear_map_of_the_layers_small_with_zero_biases() -> None:
    torch.manual_seed(0)
    model = PCH(tiny_pch_config(d_model=64, d_ff=256, init_std=0.02), content_dim=CONTENT_DIM)
    layer = model.transformer.layers[0]
    for weight in (layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight):
        assert abs(weight.std().item() - 0.02) < 0.002
    for bias in (layer.self_attn.in_proj_bias, layer.self_attn.out_proj.bias, layer.linear1.bias, layer.linear2.bias):
        assert not bias.any()
    default = PCH(tiny_pch_config(d_model=64, d_ff=256), content_dim=CONTENT_DIM).transformer.layers[0]
    assert default.linear1.weight.std() > 0.03, "without init_std the layers keep PyTorch's defaults"


def test_without_a_head_tied_towers_start_each_user_at_their_last_items_row() -> None:
    """output_head = false (SASRec's read-out): at the start a user's highest-scored item is
    the last one of their history, so training begins from item-to-item similarities; through
    a random head it almost never is."""
    def share_last_item_first(**options) -> float:
        torch.manual_seed(0)
        config = tiny_pch_config(tied_output=True, d_out=32, dropout=0.0, input_norm=True, n_layers=2, **options)
        model = PCH(config, num_items=50).eval()
        ids = torch.randint(1, 51, (64, 8))
        with torch.no_grad():
            users = model.last_position(model.encode(ids), torch.full((64,), 8))
            best = (users @ model.input.table.weight[1:].T).argmax(1) + 1
        return (best == ids[:, -1]).float().mean().item()

    assert share_last_item_first(init_std=0.02, output_head=False) > 0.9
    assert share_last_item_first(init_std=0.02) < 0.1


def test_init_std_and_output_head_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(LearnFeaturesError, match="model.init_std must be a positive number"):
        tiny_pch_config(init_std=0.0)
    with pytest.raises(LearnFeaturesError, match=r"model.output_head = false .* model.d_out \(16\) must equal model.d_model \(32\)"):
        tiny_pch_config(output_head=False)
    assert not any("head" in name for name, _ in PCH(tiny_pch_config(d_out=32, output_head=False), content_dim=CONTENT_DIM).named_parameters())


def test_tied_output_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(LearnFeaturesError, match=r"model.d_out \(16\) must equal model.d_model \(32\)"):
        tiny_pch_config(tied_output=True)
    with pytest.raises(LearnFeaturesError, match="only the ID baseline"):
        PCH(tiny_pch_config(tied_output=True, d_out=32), content_dim=CONTENT_DIM)
    with pytest.raises(LearnFeaturesError, match="only the ID baseline"):
        PCH(tiny_pch_config(tied_output=True, d_out=32), content_dim=CONTENT_DIM, num_items=5)


def test_id_inputs_for_new_catalog_map_unknown_ids_to_slot_zero() -> None:
    model = id_model(num_items=3)
    payload = checkpoint.model_payload(model, None, ["a", "b", "c"], {})
    inputs = checkpoint.id_inputs_for(payload, ["c", "new", "a", "b", "other"], CPU)
    assert inputs.id_slots.tolist() == [3, 0, 1, 2, 0]


# --- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["v1", "v3", "ids", "tied", "hybrid"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, kind: str) -> None:
    if kind in ("ids", "tied"):
        model, ids = id_model(num_items=6, seed=3, tied=kind == "tied"), [f"i{k}" for k in range(6)]
        inputs = ItemInputs(id_slots=torch.arange(8) % 7)
        payload = checkpoint.model_payload(model, None, ids, {"method": "id_baseline"})
    elif kind == "hybrid":  # the weight noise below also moves its ID table off zero
        torch.manual_seed(3)
        model, ids = PCH(tiny_pch_config(), content_dim=CONTENT_DIM, num_items=6).eval(), [f"i{k}" for k in range(6)]
        content = ItemInputs.from_content(np.random.default_rng(0).normal(size=(8, CONTENT_DIM)), CPU)
        inputs = content.with_id_part(ItemInputs(id_slots=torch.arange(8) % 7))
        payload = checkpoint.model_payload(model, CONTENT_DIM, ids, {"method": "learn_hybrid"})
    else:
        model = content_model(int(kind[1]), seed=3)
        inputs = ItemInputs.from_content(np.random.default_rng(0).normal(size=(8, CONTENT_DIM)), CPU)
        payload = checkpoint.model_payload(model, CONTENT_DIM, None, {"method": kind})
    # Perturb the weights away from init so a model rebuilt from scratch would not match by luck.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    payload = checkpoint.model_payload(model, payload["content_dim"], payload["trained_item_ids"], {"method": kind})
    path = tmp_path / "best.pt"
    checkpoint.save(path, payload)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    loaded = checkpoint.load_payload(path)
    rebuilt = checkpoint.build_model(loaded, CPU)
    assert not rebuilt.training and loaded["method"] == kind
    histories = [np.array([0, 1, 2]), np.array([5]), np.array([7, 6])]
    assert np.array_equal(user_vectors(rebuilt, inputs, histories), user_vectors(model, inputs, histories))
    assert np.array_equal(item_vectors(rebuilt, inputs, np.arange(8)), item_vectors(model, inputs, np.arange(8)))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LearnFeaturesError, match="checkpoint not found"):
        checkpoint.load_payload(tmp_path / "best.pt")


def test_model_version_tracks_the_weights_and_their_inputs(tmp_path: Path) -> None:
    """Same weights and inputs (even after a save/load) -> same version; any change -> a new one."""
    model = content_model(seed=5)
    payload = checkpoint.model_payload(model, CONTENT_DIM, None, {})
    version = checkpoint.model_version(payload, "learn_v1", "content:a")
    assert version.startswith("learn_v1-") and len(version) == len("learn_v1-") + 12
    assert checkpoint.model_version(checkpoint.model_payload(content_model(seed=5), CONTENT_DIM, None, {}), "learn_v1", "content:a") == version
    checkpoint.save(tmp_path / "m.pt", payload)
    assert checkpoint.model_version(checkpoint.load_payload(tmp_path / "m.pt"), "learn_v1", "content:a") == version
    assert checkpoint.model_version(payload, "learn_v2", "content:a").split("-")[1] == version.split("-")[1]
    with torch.no_grad():
        model.head.bias[0] += 1e-6
    changed = checkpoint.model_version(checkpoint.model_payload(model, CONTENT_DIM, None, {}), "learn_v1", "content:a")
    assert changed != version
    assert checkpoint.model_version(checkpoint.model_payload(content_model(seed=6), CONTENT_DIM, None, {}), "learn_v1", "content:a") != version
    assert checkpoint.model_version(payload, "learn_v1", "content:b") != version  # same weights, new content
