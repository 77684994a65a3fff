"""train_towers: reproducible, resumable, skips finished work, and learns on clustered data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import cluster_content, clustered_split, tiny_pch_config
from learn_features.data.split import EvalUsers, Split, TrainSequence
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.collaborative import WEIGHTS, CollaborativePart
from learn_features.pch.id_init import svd_init
from learn_features.pch.inference import user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH, PCHConfig
from training import trainer
from training.collectives import World
from training.trainer import BEST, LAST, TrainConfig, TrainJob, sample_epoch, train_towers, validation_score, windows_per_user

N_ITEMS = 120
HISTORY_LEN, TARGET_LEN = 8, 4
MODEL = tiny_pch_config(max_len=8)
TRAIN = TrainConfig(
    lr=3e-3, epochs=6, batch_size=8, coverage=2.0, patience=10, seed=0, device="cpu", select_metric="recall@10"
)


@pytest.fixture(scope="module")
def data() -> tuple[Split, ItemInputs]:
    """150 users in 6 item clusters; content = cluster centroid + heavy noise (signal, not a giveaway)."""
    split = clustered_split(n_users=150, n_items=N_ITEMS, history_len=HISTORY_LEN, target_len=TARGET_LEN)
    inputs = ItemInputs.from_content(cluster_content(n_items=N_ITEMS, noise=2.0), torch.device("cpu"))
    return split, inputs


def run(out_dir: Path, data: tuple[Split, ItemInputs], config: TrainConfig = TRAIN, **kwargs) -> trainer.TrainResult:
    split, inputs = data
    return train_towers(TrainJob(out_dir, MODEL, config, split, inputs, HISTORY_LEN, TARGET_LEN, "learn_v1", **kwargs), progress=False)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_payload(path)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture
def loss_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts training steps (optimizer steps)."""
    calls: list[int] = []
    original = trainer.train_step

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting)
    return calls


def steps_per_epoch(split: Split, config: TrainConfig) -> int:
    windows = sum(windows_per_user(len(seq), TARGET_LEN, config.coverage) for seq in split.train.values())
    return int(np.ceil(windows / config.batch_size))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, trainer.TrainResult]:
    """One uninterrupted seeded run that the other tests compare against."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference")
        return out, run(out, data)
    finally:
        torch.set_num_threads(before)


def test_seeded_runs_are_bit_identical(reference, data, tmp_path: Path, single_thread) -> None:
    """Same seed, same data, CPU: best.pt and last.pt weights and the whole history match exactly."""
    ref_dir, ref_result = reference
    result = run(tmp_path, data)
    assert_same_weights(tmp_path / BEST, ref_dir / BEST)
    assert_same_weights(tmp_path / LAST, ref_dir / LAST)
    assert result.history == ref_result.history and result.best_epoch == ref_result.best_epoch
    other_seed = run(tmp_path / "seed1", data, dataclasses.replace(TRAIN, seed=1, epochs=1))
    assert not torch.equal(weights(tmp_path / "seed1" / LAST)["head.weight"], weights(ref_dir / BEST)["head.weight"])
    assert other_seed.best_checkpoint.exists()


def test_interrupted_run_resumes_to_identical_weights(
    reference, data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread
) -> None:
    """Ctrl-C in the middle of epoch 3, then a plain re-run: it resumes from last.pt (epoch 2)
    and finishes with the weights, best checkpoint and history of the uninterrupted run."""
    ref_dir, ref_result = reference
    per_epoch = steps_per_epoch(data[0], TRAIN)
    original = trainer.train_step
    calls: list[int] = []

    def interrupt_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * per_epoch + 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, data)
    saved = checkpoint.load_payload(tmp_path / LAST)
    assert saved["state"]["epoch"] == 1 and len(saved["state"]["history"]) == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

    resumed_steps: list[int] = []

    def counting(*args, **kwargs):
        resumed_steps.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting)
    result = run(tmp_path, data)
    assert len(resumed_steps) == (TRAIN.epochs - 2) * per_epoch  # epochs 1-2 not redone
    assert_same_weights(tmp_path / LAST, ref_dir / LAST)
    assert_same_weights(tmp_path / BEST, ref_dir / BEST)
    assert result.history == ref_result.history and result.best_epoch == ref_result.best_epoch


def test_finished_run_does_no_training_steps(reference, data, loss_calls, single_thread) -> None:
    ref_dir, ref_result = reference
    last_bytes, best_bytes = (ref_dir / LAST).read_bytes(), (ref_dir / BEST).read_bytes()
    result = run(ref_dir, data)
    assert loss_calls == []
    assert (ref_dir / LAST).read_bytes() == last_bytes and (ref_dir / BEST).read_bytes() == best_bytes
    assert (result.best_epoch, result.best_score, result.history) == (ref_result.best_epoch, ref_result.best_score, ref_result.history)


def test_changed_configuration_retrains_from_scratch(reference, data, tmp_path: Path, loss_calls, single_thread) -> None:
    """A last.pt from another configuration is not resumed (its fingerprint differs)."""
    ref_dir, _ = reference
    (tmp_path / LAST).write_bytes((ref_dir / LAST).read_bytes())
    changed = dataclasses.replace(TRAIN, lr=1e-3, epochs=1)
    run(tmp_path, data, changed)
    assert len(loss_calls) > 0 and checkpoint.load_payload(tmp_path / LAST)["state"]["epoch"] == 0


def test_the_objectives_never_resume_each_other(data) -> None:
    """A sampled-softmax last.pt is no resume point for a full-softmax job, nor an all-action
    one for a next-item one, nor the reverse."""
    split, inputs = data
    job = TrainJob(Path("unused"), MODEL, TRAIN, split, inputs, HISTORY_LEN, TARGET_LEN, "learn_v1")
    full = dataclasses.replace(job, train=dataclasses.replace(TRAIN, softmax="full"))
    next_item = dataclasses.replace(job, train=dataclasses.replace(TRAIN, softmax="full", objective="next_item"))
    prefixes = dataclasses.replace(job, train=dataclasses.replace(TRAIN, softmax="full", objective="prefixes"))
    cpu = torch.device("cpu")
    assert len({job.fingerprint(cpu), full.fingerprint(cpu), next_item.fingerprint(cpu), prefixes.fingerprint(cpu)}) == 4


def test_changed_content_retrains_from_scratch(reference, data, tmp_path: Path, loss_calls, single_thread) -> None:
    """A finished last.pt trained on other content (e.g. a new prompt template) is not reused."""
    ref_dir, _ = reference
    (tmp_path / LAST).write_bytes((ref_dir / LAST).read_bytes())
    split, inputs = data
    other = ItemInputs.from_content(inputs.content.cpu().numpy() * 1.5, torch.device("cpu"))
    run(tmp_path, (split, other))
    assert len(loss_calls) > 0


def test_validation_score_improves_over_random_init(reference, data) -> None:
    """On clustered data the selected model beats the untrained towers on validation users."""
    split, inputs = data
    _, result = reference
    torch.manual_seed(TRAIN.seed)
    untrained = PCH(MODEL, content_dim=inputs.content_dim)
    initial = validation_score(untrained, inputs, split.val, len(split.item_ids), TRAIN.select_metric)
    assert result.best_score >= initial + 0.1 and result.best_score >= 1.5 * initial
    best = checkpoint.load_payload(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch and best["val_score"] == result.best_score
    rebuilt = checkpoint.build_model(best, torch.device("cpu"))
    assert validation_score(rebuilt, inputs, split.val, len(split.item_ids), TRAIN.select_metric) == pytest.approx(result.best_score)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(h["loss"] < h["chance_loss"] for h in result.history[1:]), result.history


def test_positions_from_the_end_train_under_prefixes_and_come_back_from_the_checkpoint(data, tmp_path: Path, single_thread) -> None:
    """``model.positions = "from_end"`` trains under the prefixes objective (loss below chance,
    above the untrained towers), is its own fingerprint, and ``best.pt`` rebuilds towers that
    count from the end: they score what training recorded, which the same weights read from
    the start do not."""
    # the towers learn each row's length only where the trainer runs histories grouped by length
    assert set(trainer.LAST_POSITION_OBJECTIVES) <= set(trainer.LENGTH_GROUPED_OBJECTIVES)
    split, inputs = data
    model = dataclasses.replace(MODEL, positions="from_end")
    config = dataclasses.replace(TRAIN, softmax="full", objective="prefixes", epochs=12, patience=12)
    job = TrainJob(tmp_path, model, config, split, inputs, HISTORY_LEN, TARGET_LEN, "learn_v1")
    cpu = torch.device("cpu")
    assert job.fingerprint(cpu) != dataclasses.replace(job, model=MODEL).fingerprint(cpu)
    result = train_towers(job, progress=False)
    torch.manual_seed(0)
    initial = validation_score(PCH(model, content_dim=inputs.content_dim), inputs, split.val, len(split.item_ids), TRAIN.select_metric)
    assert result.best_score >= initial + 0.1, (result.best_score, initial)
    assert all(h["loss"] < h["chance_loss"] for h in result.history[1:]), result.history
    best = checkpoint.load_payload(result.best_checkpoint)
    rebuilt = checkpoint.build_model(best, cpu)
    assert rebuilt.config.positions == "from_end"
    assert validation_score(rebuilt, inputs, split.val, len(split.item_ids), TRAIN.select_metric) == pytest.approx(result.best_score)
    read_from_start = PCH(MODEL, content_dim=inputs.content_dim)
    read_from_start.load_state_dict(best["state_dict"])
    vectors = user_vectors(rebuilt, inputs, split.val.histories)
    assert not np.allclose(user_vectors(read_from_start.eval(), inputs, split.val.histories), vectors, atol=1e-3)


@pytest.mark.parametrize("objective", ["all_action", "next_item", "prefixes"])
@pytest.mark.parametrize("kind", ["content", "ids", "tied", "tied_sasrec"])
def test_full_softmax_learns(data, tmp_path: Path, kind: str, objective: str, single_thread) -> None:
    """train.softmax = "full" (every warm item a candidate at every step) trains content and ID
    towers, SASRec's tied output among them (also with RecBole's input block, small layers, no
    head and no clipping), under every objective: the loss falls below chance and the selected
    model beats the untrained towers."""
    split, content = data
    trained = np.flatnonzero(split.warm_items)
    inputs = content if kind == "content" else ItemInputs.from_training_items(len(split.item_ids), trained, torch.device("cpu"))
    ids = None if kind == "content" else [split.item_ids[i] for i in trained]
    # raw dot products are SASRec's scores: temperature 1
    model = dataclasses.replace(MODEL, tied_output=True, d_out=MODEL.d_model, temperature=1.0) if kind.startswith("tied") else MODEL
    # a short sequence is one chunk, about a quarter of the windows coverage 2 draws: 3x the epochs
    config = dataclasses.replace(TRAIN, softmax="full", objective=objective, epochs=4 if objective == "all_action" else 12, patience=12)
    if kind == "tied_sasrec":
        model = dataclasses.replace(model, input_norm=True, init_std=0.02, output_head=False)
        config = dataclasses.replace(config, grad_clip=0.0)
    result = train_towers(TrainJob(tmp_path, model, config, split, inputs, HISTORY_LEN, TARGET_LEN, "learn_v1", ids), progress=False)
    torch.manual_seed(0)
    untrained = PCH(model, content_dim=inputs.content_dim, num_items=inputs.num_id_slots)
    initial = validation_score(untrained, inputs, split.val, len(split.item_ids), TRAIN.select_metric)
    assert result.best_score >= initial + 0.1, (result.best_score, initial)
    assert all(h["loss"] < h["chance_loss"] for h in result.history[1:]), result.history
    # chance: every pool item scored alike, log(pool size) up to the masked own targets
    assert result.history[0]["chance_loss"] == pytest.approx(np.log(split.warm_items.sum()), rel=0.05)


def test_test_users_do_not_influence_training(reference, data, tmp_path: Path, single_thread) -> None:
    """Scrambling every test user's history and targets leaves the trained weights unchanged."""
    split, inputs = data
    rng = np.random.default_rng(5)
    scrambled_test = EvalUsers(
        split.test.user_ids,
        [rng.integers(0, N_ITEMS, len(h)) for h in split.test.histories],
        [rng.integers(0, N_ITEMS, len(t)) for t in split.test.targets],
        [rng.integers(0, N_ITEMS, len(e)) for e in split.test.exclude],
        list(rng.integers(0, 10**9, len(split.test))),
    )
    scrambled = dataclasses.replace(split, test=scrambled_test)
    run(tmp_path, (scrambled, inputs), dataclasses.replace(TRAIN, epochs=2))
    ref_dir = tmp_path / "ref"
    run(ref_dir, data, dataclasses.replace(TRAIN, epochs=2))
    assert_same_weights(tmp_path / LAST, ref_dir / LAST)


def test_patience_stops_training(data, tmp_path: Path, single_thread) -> None:
    """With a learning rate too small to change the ranking, training stops after ``patience`` flat epochs."""
    config = dataclasses.replace(TRAIN, lr=1e-12, epochs=6, patience=2)
    result = run(tmp_path, data, config)
    assert result.best_epoch == 1 and len(result.history) == 3


def test_id_baseline_checkpoint_carries_its_item_ids(data, tmp_path: Path, single_thread) -> None:
    split, _ = data
    trained = np.flatnonzero(split.warm_items)
    inputs = ItemInputs.from_training_items(len(split.item_ids), trained, torch.device("cpu"))
    ids = [split.item_ids[i] for i in trained]
    result = train_towers(
        TrainJob(tmp_path, MODEL, dataclasses.replace(TRAIN, epochs=1), split, inputs, HISTORY_LEN, TARGET_LEN, "id_baseline", ids), progress=False
    )
    payload = checkpoint.load_payload(result.best_checkpoint)
    assert payload["trained_item_ids"] == ids and payload["content_dim"] is None
    model = checkpoint.build_model(payload, torch.device("cpu"))
    rebuilt_inputs = checkpoint.id_inputs_for(payload, split.item_ids, torch.device("cpu"))
    assert torch.equal(rebuilt_inputs.id_slots, inputs.id_slots)
    assert model.input.num_embeddings == len(ids) + 1


def hybrid_inputs(data) -> tuple[ItemInputs, list[str]]:
    split, content = data
    trained = np.flatnonzero(split.warm_items)
    ids = ItemInputs.from_training_items(len(split.item_ids), trained, torch.device("cpu"))
    return content.with_id_part(ids), [split.item_ids[i] for i in trained]


def test_hybrid_training_is_seeded_and_its_checkpoint_carries_content_and_ids(data, tmp_path: Path, single_thread) -> None:
    """The ID dropout draws from the seeded torch generator: two runs give the same weights."""
    split, _ = data
    inputs, ids = hybrid_inputs(data)
    one_epoch = dataclasses.replace(TRAIN, epochs=1)
    results = [
        train_towers(TrainJob(tmp_path / name, MODEL, one_epoch, split, inputs, HISTORY_LEN, TARGET_LEN, "learn_hybrid", ids), progress=False)
        for name in ("a", "b")
    ]
    assert_same_weights(results[0].best_checkpoint, results[1].best_checkpoint)
    payload = checkpoint.load_payload(results[0].best_checkpoint)
    assert payload["trained_item_ids"] == ids and payload["content_dim"] == inputs.content_dim
    table = checkpoint.build_model(payload, torch.device("cpu")).input.ids.weight
    assert table.shape[0] == len(ids) + 1 and table[1:].abs().sum() > 0 and not table[0].any()


def test_the_collaborative_part_is_fitted_after_training_and_chosen_on_validation(data, tmp_path: Path, single_thread, loss_calls) -> None:
    """``model.collaborative_rank``: the towers train as without it (same fingerprint, same
    weights); ``best.pt`` then carries the part with the weight that scored the validation
    users best, whose 0 is the towers' own score; a finished job whose part is missing (or
    present at rank 0) is mended without a training step."""
    split, _ = data
    inputs, ids = hybrid_inputs(data)
    one_epoch = dataclasses.replace(TRAIN, epochs=1)

    def job(name: str, rank: int) -> TrainJob:
        return TrainJob(tmp_path / name, dataclasses.replace(MODEL, collaborative_rank=rank), one_epoch, split, inputs, HISTORY_LEN, TARGET_LEN,
                        "learn_hybrid", ids)

    cpu = torch.device("cpu")
    assert job("a", 0).fingerprint(cpu) == job("a", 8).fingerprint(cpu)
    plain, with_part = train_towers(job("plain", 0), progress=False), train_towers(job("part", 8), progress=False)
    assert_same_weights(plain.best_checkpoint, with_part.best_checkpoint)
    assert CollaborativePart.of_payload(checkpoint.load_payload(plain.best_checkpoint)) is None
    payload = checkpoint.load_payload(with_part.best_checkpoint)
    part, scores = CollaborativePart.of_payload(payload), payload["collaborative"]["validation"]
    assert part.rank == 8 and list(scores) == [str(w) for w in WEIGHTS]
    assert part.weight == max(WEIGHTS, key=lambda w: scores[str(w)])
    assert scores["0.0"] == pytest.approx(with_part.best_score, abs=1e-9)
    assert job("part", 8).finished() is not None and job("part", 16).finished() is None  # another rank: fitted again
    assert payload["collaborative"]["grid"] == list(WEIGHTS)

    del payload["collaborative"]
    checkpoint.save(with_part.best_checkpoint, payload)
    assert job("part", 8).finished() is None
    steps = len(loss_calls)
    train_towers(job("part", 8), progress=False)
    again = CollaborativePart.of_payload(checkpoint.load_payload(with_part.best_checkpoint))
    assert len(loss_calls) == steps and again.weight == part.weight and np.array_equal(again.factors, part.factors)

    assert job("part", 0).finished() is None  # rank 0 asks for none: the part is taken out again
    train_towers(job("part", 0), progress=False)
    assert len(loss_calls) == steps and CollaborativePart.of_payload(checkpoint.load_payload(with_part.best_checkpoint)) is None
    assert job("part", 0).finished() is not None
    assert_same_weights(plain.best_checkpoint, with_part.best_checkpoint)


def test_finished_towers_without_an_id_part_never_read_their_best_checkpoint(data, tmp_path: Path, single_thread, monkeypatch) -> None:
    """``evaluate`` asks every model whether it is finished; only a hybrid can carry a
    collaborative part, so only its ``best.pt`` is read for it."""
    split, content = data
    job = TrainJob(tmp_path / "v1", MODEL, dataclasses.replace(TRAIN, epochs=1), split, content, HISTORY_LEN, TARGET_LEN, "learn_v1")
    train_towers(job, progress=False)
    read = []
    load = checkpoint.load_payload
    monkeypatch.setattr(checkpoint, "load_payload", lambda path: read.append(path.name) or load(path))
    assert job.finished() is not None and read == ["last.pt"]


def test_id_dropout_is_in_the_fingerprint_of_hybrid_towers_only(data) -> None:
    """Changing model.id_dropout retrains the hybrid, never towers it cannot affect."""
    split, content = data
    hybrid, _ = hybrid_inputs(data)
    ids = ItemInputs(id_slots=hybrid.id_slots)

    def fingerprint(inputs: ItemInputs, id_dropout: float) -> str:
        model = dataclasses.replace(MODEL, id_dropout=id_dropout)
        return TrainJob(Path("unused"), model, TRAIN, split, inputs, HISTORY_LEN, TARGET_LEN, "m").fingerprint(torch.device("cpu"))

    assert fingerprint(hybrid, 0.5) != fingerprint(hybrid, 0.2)
    assert fingerprint(content, 0.5) == fingerprint(content, 0.2) and fingerprint(ids, 0.5) == fingerprint(ids, 0.2)


def test_a_hybrid_starts_from_its_id_init_which_is_in_its_fingerprint_only(data) -> None:
    """``model.id_init = "svd"`` writes the warm items' SVD factors into the ID table before the
    first step ("zeros" leaves it at zero); it retrains the hybrid, never towers without an ID part."""
    split, content = data
    hybrid, _ = hybrid_inputs(data)
    cpu = torch.device("cpu")

    def job(inputs: ItemInputs, id_init: str) -> TrainJob:
        return TrainJob(Path("unused"), dataclasses.replace(MODEL, id_init=id_init), TRAIN, split, inputs, HISTORY_LEN, TARGET_LEN, "m")

    zeros = trainer.build_parts(job(hybrid, "zeros"), cpu, World()).model.input.ids.weight
    started = trainer.build_parts(job(hybrid, "svd"), cpu, World()).model.input.ids.weight
    expected = torch.zeros_like(started)
    svd_init(expected, hybrid.id_slots.numpy(), [sequence.items for sequence in split.train.values()])
    assert not zeros.any() and started[1:].any() and torch.equal(started, expected)
    assert job(hybrid, "zeros").fingerprint(cpu) != job(hybrid, "svd").fingerprint(cpu)
    assert job(content, "zeros").fingerprint(cpu) == job(content, "svd").fingerprint(cpu)


def test_tied_output_input_dropout_input_norm_init_and_head_retrain(data) -> None:
    """SASRec's tied output, the input dropout, the input block, the layers' small start and the
    read-out without a head change the towers' math: a last.pt trained without them (or with
    another rate or std) is no resume point."""
    split, _ = data
    ids = ItemInputs.from_training_items(len(split.item_ids), np.flatnonzero(split.warm_items), torch.device("cpu"))
    tied = dataclasses.replace(MODEL, tied_output=True, d_out=MODEL.d_model)
    models = [tied, dataclasses.replace(tied, tied_output=False), dataclasses.replace(tied, input_dropout=0.5), dataclasses.replace(tied, input_dropout=0.2)]
    models.append(dataclasses.replace(tied, input_norm=True))
    models += [dataclasses.replace(tied, init_std=0.02), dataclasses.replace(tied, init_std=0.01), dataclasses.replace(tied, output_head=False)]
    prints = {TrainJob(Path("unused"), m, TRAIN, split, ids, HISTORY_LEN, TARGET_LEN, "id_baseline").fingerprint(torch.device("cpu")) for m in models}
    assert len(prints) == len(models)


# What the fingerprint of a run at the library's defaults is made of. Runs trained before a
# setting existed must keep their fingerprint, or every finished model re-trains once (as
# happened when model.input_norm was added): a new field of PCHConfig or TrainConfig belongs
# in TrainJob.settings' list of settings dropped at their old default, or, when it really
# changes the math of every old run, here, knowing that those runs re-train once.
PINNED_MODEL_FIELDS = {"d_ff", "d_model", "d_out", "dropout", "max_len", "n_heads", "n_layers", "temperature", "variant"}
PINNED_TRAIN_FIELDS = {
    "alpha", "batch_size", "beta", "bf16", "coverage", "epochs", "fused", "grad_clip", "logq_correction", "lr",
    "mask_false_negatives", "optimizer", "patience", "seed", "select_metric", "serving_loss_weight", "uniform_from",
    "uniform_negatives", "warmup_ratio", "weight_decay",
}


def test_a_new_setting_at_its_default_leaves_old_runs_fingerprints_alone(data) -> None:
    split, inputs = data
    job = TrainJob(Path("unused"), PCHConfig(), TrainConfig(), split, inputs, HISTORY_LEN, TARGET_LEN, "learn_v1")
    model, math_config = job.settings(torch.device("cpu"))
    assert set(model) == PINNED_MODEL_FIELDS, "a model setting at its default changes every existing run's fingerprint"
    assert set(math_config) == PINNED_TRAIN_FIELDS, "a training setting at its default changes every existing run's fingerprint"


def test_sample_epoch_draws_windows_in_proportion_to_length(data) -> None:
    """A user gives max(1, round(coverage x (events - 1) / M)) windows: the last N events before a
    cut and the positives among the next M, contiguous in their sequence."""
    split, _ = data
    config = dataclasses.replace(TRAIN, coverage=3.0)
    samples = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=0)
    assert len(samples) == sum(windows_per_user(len(s), TARGET_LEN, 3.0) for s in split.train.values())
    assert windows_per_user(41, 4, 1.0) == 10 and windows_per_user(2, 4, 1.0) == 1
    sequences = [s.items.tolist() for s in split.train.values()]
    for history, target in samples:
        assert 1 <= len(history) <= HISTORY_LEN and 1 <= len(target) <= TARGET_LEN
        joined = history.tolist() + target.tolist()
        assert any(
            seq[i : i + len(joined)] == joined and (len(history) == HISTORY_LEN or i == 0)
            for seq in sequences
            for i in range(len(seq))
        )
    again = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=0)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(samples, again))
    other = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=1)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(samples, other))


def test_sample_epoch_targets_are_positives_only() -> None:
    """Non-positive events are history, never targets; windows without a positive are never drawn."""
    items = np.arange(10)
    positive = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    train = {"u": TrainSequence(items, positive, np.arange(10))}
    samples = sample_epoch(train, dataclasses.replace(TRAIN, coverage=20.0), 4, 3, epoch=0)
    assert samples and all(target.tolist() == [8] for _, target in samples)
    assert {len(history) for history, _ in samples} <= {4}  # cuts at 6, 7 or 8: four events of history


def test_next_item_chunks_make_every_later_event_the_next_event_of_one_position(data) -> None:
    """objective = "next_item": each sequence is cut from its end into chunks of history_len + 1
    consecutive events; the history is a chunk's first history_len, and each position's next
    event is the event after it, -1 where that is no positive. Over a user's chunks every
    positive but the first event is a next event exactly once, after the event it follows;
    only the order varies by epoch."""
    split, _ = data
    config = dataclasses.replace(TRAIN, softmax="full", objective="next_item")
    samples = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=0)
    seen: dict[tuple[int, int], int] = {}  # (item, item before it) -> how often it was a next event
    for history, following in samples:
        assert 1 <= len(history) <= HISTORY_LEN and len(following) == len(history) and (following >= 0).any()
        for position, item in enumerate(following.tolist()):
            if item >= 0:
                seen[(item, int(history[position]))] = seen.get((item, int(history[position])), 0) + 1
    expected: dict[tuple[int, int], int] = {}
    for s in split.train.values():
        for i in range(1, len(s.items)):
            if s.positive[i]:
                expected[(int(s.items[i]), int(s.items[i - 1]))] = expected.get((int(s.items[i]), int(s.items[i - 1])), 0) + 1
    assert seen == expected
    items = np.arange(11)
    positive = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 1], dtype=bool)
    chunks = sample_epoch({"u": TrainSequence(items, positive, np.arange(11))}, config, 4, 1, epoch=0)
    assert sorted((h.tolist(), f.tolist()) for h, f in chunks) == [  # chunks [0..2], [2..6], [6..10]
        ([0, 1], [-1, 2]), ([2, 3, 4, 5], [3, -1, -1, -1]), ([6, 7, 8, 9], [-1, 8, -1, 10]),
    ]
    other = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=1)
    assert sorted(map(lambda p: p[0].tolist(), other)) == sorted(map(lambda p: p[0].tolist(), samples))


def test_prefixes_are_the_next_item_pairs_one_sample_each(data) -> None:
    """objective = "prefixes" (RecBole's SASRec training): every positive event after a user's
    first is the target of exactly one sample, scored at its last position after the
    history_len events before it; the pairs are next_item's, one forward pass each."""
    split, _ = data
    config = dataclasses.replace(TRAIN, softmax="full", objective="prefixes")
    samples = sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=0)
    chunks = sample_epoch(split.train, dataclasses.replace(config, objective="next_item"), HISTORY_LEN, TARGET_LEN, epoch=0)
    pairs = lambda pairs_of: sorted((int(f[i]), int(h[i])) for h, f in pairs_of for i in np.flatnonzero(f >= 0))  # noqa: E731
    assert pairs(samples) == pairs(chunks)
    assert len(samples) == sum(int(s.positive[1:].sum()) for s in split.train.values())
    for history, following in samples:
        assert 1 <= len(history) <= HISTORY_LEN and (following[:-1] == -1).all() and following[-1] >= 0
    items = np.arange(7)
    positive = np.array([1, 1, 0, 1, 1, 0, 1], dtype=bool)
    got = sample_epoch({"u": TrainSequence(items, positive, np.arange(7))}, config, 3, 1, epoch=0)
    assert sorted((h.tolist(), f.tolist()) for h, f in got) == [
        ([0], [1]), ([0, 1, 2], [-1, -1, 3]), ([1, 2, 3], [-1, -1, 4]), ([3, 4, 5], [-1, -1, 6]),
    ]


@pytest.mark.parametrize("objective", ["next_item", "prefixes"])
def test_only_prefix_batches_run_grouped_by_length(data, tmp_path: Path, objective: str, monkeypatch: pytest.MonkeyPatch, single_thread) -> None:
    """A prefix batch mixes short and long histories, so its histories go through
    ``PCH.encode_by_length`` with their real lengths; next_item's chunks keep one padded pass
    (and the random draws of the runs made before)."""
    split, _ = data
    inputs = ItemInputs.from_training_items(len(split.item_ids), np.flatnonzero(split.warm_items), torch.device("cpu"))
    seen: list[torch.Tensor] = []
    grouped = PCH.encode_by_length
    monkeypatch.setattr(PCH, "encode_by_length", lambda self, items, lengths: seen.append(lengths) or grouped(self, items, lengths))
    config = dataclasses.replace(TRAIN, softmax="full", objective=objective, epochs=1)
    ids = [split.item_ids[i] for i in np.flatnonzero(split.warm_items)]
    train_towers(TrainJob(tmp_path, MODEL, config, split, inputs, HISTORY_LEN, TARGET_LEN, "id_baseline", ids), progress=False)
    if objective == "next_item":
        assert not seen
        return
    batches = trainer.global_batches(sample_epoch(split.train, config, HISTORY_LEN, TARGET_LEN, epoch=0), config.batch_size, World())
    assert [sorted(lengths.tolist()) for lengths in seen] == [sorted(len(history) for history, _ in batch) for batch in batches]
    assert len(set(torch.cat(seen).tolist())) > 1  # the fixture's prefixes differ in length


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 1}, {"lr": 0.0}, {"epochs": 0}, {"warmup_ratio": 1.0}, {"coverage": 0.0}, {"select_metric": "recall"},
     {"select_metric": "mrr@10"}, {"uniform_negatives": -1}, {"softmax": "full", "uniform_negatives": 8},
     {"objective": "next_item"}, {"objective": "prefixes"}, {"softmax": "full", "objective": "next_items"},
     {"grad_clip": -1.0}],
)
def test_train_config_validation(kwargs: dict) -> None:
    with pytest.raises(LearnFeaturesError):
        TrainConfig(**kwargs)
