"""Training the PCH towers with dense all-action InfoNCE, resumably and reproducibly.

Each epoch draws random cut points inside every training user's sequence, in proportion to its
length (``coverage``: about one pass over every event per epoch): the part before the cut is
the history (last N events), the positive events among the next M are the targets. Sampling and
dropout are seeded from (seed, epoch), so a run resumed from ``last.pt`` continues exactly as an
uninterrupted one would. ``best.pt`` keeps the epoch with the best validation score (validation
windows only; test users never influence training). Every epoch records the mean loss next to
the loss of a model that scores every item alike (``chance``), so a run that learned nothing
shows it.

The objective is the dense all-action InfoNCE of ``learn_features.pch.loss`` over the negatives
of ``learn_features.pch.negatives`` (in-batch, optional uniform extras, log-q correction from the
items' share of training positives, false-negative masking), and for variant 1 the same loss
over the targets embedded alone, the path serving uses. With ``softmax = "full"`` the sampled
negatives give way to every item of the pool at every step (``full_softmax_infonce``), the
objective of a well-trained SASRec; which one a data set wants is chosen on validation users.
With ``objective = "next_item"`` (full softmax only) the windows give way to whole sequences,
cut into consecutive chunks of ``history_len + 1`` events, and every history position is scored
against the event right after it (``next_item_softmax``): SASRec's training, every event a
target once per epoch in one forward pass per chunk. ``objective = "prefixes"`` scores the same
pairs as RecBole trains SASRec, each prefix a sample of its own, scored at its last position.

A finished model is never rebuilt: ``TrainJob.finished`` reads its result (best epoch, score,
history) from ``last.pt``, which is all ``evaluate`` needs of it.

Speed (all off the CPU default path, which stays fp32 and bit-reproducible): bf16 autocast
and a fused Adam/AdamW kernel on CUDA, batches built one step ahead in a background thread
into pinned memory (``training.loader``), and optional ``torch.compile``. Attention goes
through ``scaled_dot_product_attention`` with ``is_causal`` (see ``PCH.encode``). Prefix
batches run their histories grouped by length (``LENGTH_GROUPED_OBJECTIVES``), on every
device: bench/prefix_batches.py measures it against padding to the longest.

Under ``torchrun`` (``training.distributed``) the same loop runs data-parallel: every rank
draws the same samples, takes its contiguous share of each global batch, and gathers the
other ranks' targets as negatives (``training.collectives``), so the loss and the gradients
are those of one process over the global batch; only rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from learn_features.data.split import EvalUsers, Split, TrainSequence
from learn_features.device import pick_device
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint, collaborative
from learn_features.pch.batching import Batch, make_batch
from learn_features.pch.collaborative import PAYLOAD_KEY, WEIGHTS, CollaborativePart
from learn_features.pch.id_init import ID_INITS
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.loss import dense_all_action_infonce, full_softmax_infonce, next_item_chance, next_item_softmax
from learn_features.pch.model import PCH, HybridInput, PCHConfig
from learn_features.pch.negatives import Negatives, Softmax
from learn_features.retrieval import rank_items, rank_scores, score_rankings
from learn_features.run import BEST, LAST
from training.collectives import World, gather_rows, gather_targets
from training.loader import prefetch, to_device_ahead

# Execution choices that leave the training math unchanged: toggling them still resumes last.pt.
RUNTIME_ONLY = ("prefetch", "compile", "device", "workers")  # the device counts only through the bf16/fused it allows
#: ``train.objective``: the paper's dense all-action windows, SASRec's next event at every
#: position, or the same pairs one sample per prefix (RecBole's).
Objective = Literal["all_action", "next_item", "prefixes"]
SELECT_METRIC = re.compile(r"(hit|recall|ndcg)@\d+")  # what retrieval.per_user_scores computes per K


@dataclass
class TrainConfig:
    """Paper defaults: Adam, lr 5e-5, cosine schedule with 10% warm-up."""

    lr: float = 5e-5
    epochs: int = 10
    batch_size: int = 30  # global: split over the ranks of a distributed run
    warmup_ratio: float = 0.1
    coverage: float = 1.0  # windows per user and epoch: max(1, round(coverage * (events - 1) / target_len))
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # the gradients' largest norm; 0 turns clipping off (RecBole's SASRec clips none)
    patience: int = 3  # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "auto"
    alpha: float = 10.0  # recency weights: w_i = log(alpha + i (beta - alpha) / (N - 1))
    beta: float = 10000.0
    select_metric: str = "recall@50"
    optimizer: Literal["adam", "adamw"] = "adam"  # the paper says Adam; adamw decouples weight_decay
    fused: bool = True  # fused optimizer kernel on CUDA (CPU keeps PyTorch's default kernel)
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs fp32
    prefetch: int = 1  # batches built ahead in a background thread (pinned on CUDA); 0 = inline
    compile: bool = False  # torch.compile the towers; the first steps pay for compilation
    workers: int = 1  # CPU: models trained at once, each in its own single-threaded process
    logq_correction: bool = True  # subtract log(expected draws) from every item's logit (Yi et al. 2019)
    mask_false_negatives: bool = True  # another user's target that is also one of mine is no negative
    uniform_negatives: int = 0  # extra negatives per batch drawn uniformly (mixed negatives)
    uniform_from: Literal["warm", "catalog"] = "warm"  # their pool: items with a training event, or every catalog item
    serving_loss_weight: float = 1.0  # variant 1: weight of the loss over targets embedded alone, as served
    # "sampled": in-batch (+ uniform) negatives, corrected by log-q; "full": every item of the
    # uniform_from pool is a candidate at every step (no sampling, so no log-q or extras)
    softmax: Softmax = "sampled"
    # "all_action": windows cut at random, every history position against the next target_len
    # events' positives (the paper's); "next_item": whole sequences, each position against the
    # one event after it (SASRec's); "prefixes": the same pairs, one sample per prefix (RecBole's
    # SASRec); both full softmax only
    objective: Objective = "all_action"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 2 or self.coverage <= 0:
            raise LearnFeaturesError("train.lr must be > 0, train.epochs >= 1, train.batch_size >= 2 (negatives come from other users), train.coverage > 0")
        if self.uniform_negatives < 0 or self.serving_loss_weight < 0 or self.grad_clip < 0:
            raise LearnFeaturesError("train.uniform_negatives, train.serving_loss_weight and train.grad_clip (0: no clipping) must be >= 0")
        if self.workers < 1:
            raise LearnFeaturesError(f"train.workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise LearnFeaturesError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.prefetch < 0:
            raise LearnFeaturesError(f"train.prefetch must be >= 0 (batches built ahead), got {self.prefetch}")
        if self.softmax == "full" and self.uniform_negatives:
            raise LearnFeaturesError("train.uniform_negatives samples extra negatives; train.softmax = \"full\" already scores every item, set it to 0")
        if self.objective in NEXT_EVENT_OBJECTIVES and self.softmax != "full":
            raise LearnFeaturesError(f'train.objective = "{self.objective}" scores against the whole pool: it needs train.softmax = "full"')
        if self.objective not in OBJECTIVE_SAMPLERS:
            raise LearnFeaturesError(f"train.objective must be one of {list(OBJECTIVE_SAMPLERS)}, got {self.objective!r}")
        if not SELECT_METRIC.fullmatch(self.select_metric) or int(self.select_metric.split("@")[1]) < 1:
            raise LearnFeaturesError(
                f"train.select_metric must be hit@K, recall@K or ndcg@K with K >= 1 (e.g. recall@50), got {self.select_metric!r}"
            )


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def windows_per_user(events: int, target_len: int, coverage: float) -> int:
    """Windows a user contributes per epoch: in proportion to the length of their sequence (none
    for a single event, which has no history before a target)."""
    return max(1, round(coverage * (events - 1) / target_len)) if events >= 2 else 0


def sample_epoch(train: dict[str, TrainSequence], config: TrainConfig, history_len: int, target_len: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The epoch's (history, targets) pairs for the configured objective, shuffled (seeded by epoch)."""
    return OBJECTIVE_SAMPLERS[config.objective](train, config, history_len, target_len, epoch)


def sample_windows(train: dict[str, TrainSequence], config: TrainConfig, history_len: int, target_len: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(history, targets) windows: a cut c, the last N events before it, the positives among the next M.

    Cuts are drawn among the positions whose next M events hold a positive, so every window
    has a target.
    """
    rng = np.random.default_rng([config.seed, epoch])
    samples = []
    for user in sorted(train):
        seq = train[user]
        positives = np.r_[0, np.cumsum(seq.positive)]
        starts = np.arange(1, len(seq))
        cuts = starts[positives[np.minimum(starts + target_len, len(seq))] > positives[starts]]
        if not len(cuts):
            continue
        for cut in rng.choice(cuts, size=windows_per_user(len(seq), target_len, config.coverage)):
            window = slice(cut, cut + target_len)
            samples.append((seq.items[max(0, cut - history_len) : cut], seq.items[window][seq.positive[window]]))
    return [samples[i] for i in rng.permutation(len(samples))]


def sample_sequences(train: dict[str, TrainSequence], config: TrainConfig, history_len: int, target_len: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(history, next events) chunks for ``next_item``: every sequence cut from its end into
    consecutive chunks of ``history_len + 1`` events that overlap by one, so that every event
    but a user's first is the next event of exactly one history position. The pair's second
    array holds, per history position, the event after it, or -1 where that is no positive.
    Chunks without a positive are left out; only their order is random."""
    rng = np.random.default_rng([config.seed, epoch])
    samples = []
    for user in sorted(train):
        seq = train[user]
        for end in range(len(seq), 1, -history_len):
            chunk = slice(max(0, end - history_len - 1), end)
            items, positive = seq.items[chunk], seq.positive[chunk]
            if positive[1:].any():
                samples.append((items[:-1], np.where(positive[1:], items[1:], -1)))
    return [samples[i] for i in rng.permutation(len(samples))]


def sample_prefixes(train: dict[str, TrainSequence], config: TrainConfig, history_len: int, target_len: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prefix, next event) pairs for ``prefixes``: every positive event after a user's first is
    the target of one sample, the last ``history_len`` events before it, scored at its last
    position only (the second array is -1 elsewhere). This is how RecBole trains SASRec: the
    same (history, next event) pairs as ``next_item``, but each its own forward pass, so each
    gets its own dropout masks where ``next_item`` shares one pass, and one set of masks, over
    a whole chunk. Its batches mix short and long prefixes, so they run grouped by length
    (``LENGTH_GROUPED_OBJECTIVES``) rather than all padded to the longest."""
    rng = np.random.default_rng([config.seed, epoch])
    samples = []
    for user in sorted(train):
        seq = train[user]
        for end in np.flatnonzero(seq.positive[1:]) + 1:
            history = seq.items[max(0, end - history_len) : end]
            samples.append((history, np.r_[np.full(len(history) - 1, -1, dtype=seq.items.dtype), seq.items[end]]))
    return [samples[i] for i in rng.permutation(len(samples))]


#: How each ``train.objective`` draws an epoch's (history, targets) pairs.
OBJECTIVE_SAMPLERS = {"all_action": sample_windows, "next_item": sample_sequences, "prefixes": sample_prefixes}
#: The objectives whose pairs are (history, event after each position), scored by ``next_item_softmax``.
NEXT_EVENT_OBJECTIVES = ("next_item", "prefixes")
#: The objectives whose histories run grouped by length (``PCH.encode_by_length``): a prefix
#: batch mixes one-event prefixes with 50-event ones. Windows and chunks are mostly full, so
#: the others keep one pass, and with it the random draws their published runs were made with.
LENGTH_GROUPED_OBJECTIVES = ("prefixes",)
#: The objectives that score each history at its last position alone, the only ones that can
#: train towers with ``model.positions = "from_end"`` (every earlier position's input would
#: say how many events follow it, which serving never knows). They must run grouped by length
#: too: that is what hands the towers each row's real length.
LAST_POSITION_OBJECTIVES = ("prefixes",)


def epoch_pairs(train: dict[str, TrainSequence], config: TrainConfig, history_len: int, target_len: int) -> int:
    """How many pairs an epoch draws, which sizes the learning-rate schedule: the windows of
    ``windows_per_user`` (as every all-action run has counted them), or the chunk count, which
    is the same every epoch."""
    if config.objective == "all_action":
        return sum(windows_per_user(len(seq), target_len, config.coverage) for seq in train.values())
    return len(sample_epoch(train, config, history_len, target_len, 0))


def validation_score(model: PCH, inputs: ItemInputs, users: EvalUsers, n_items: int, metric: str) -> float:
    depth = int(metric.split("@")[1])
    model.eval()
    ranked = rank_items(user_vectors(model, inputs, users.histories), item_vectors(model, inputs, np.arange(n_items)), users.exclude, depth)
    return score_rankings(ranked, users.targets, (depth,))[metric]


def validation_score_of_scores(scores: np.ndarray, users: EvalUsers, metric: str, depth: int) -> float:
    """The same validation metric for a method given as a dense (users x items) score matrix."""
    return score_rankings(rank_scores(scores, users.exclude, depth), users.targets, (depth,))[metric]


def fit_collaborative_part(job: TrainJob, device: torch.device, progress: bool = False) -> None:
    """Give a finished ``best.pt`` the collaborative part (``learn_features.pch.collaborative``)
    that its model config asks for, or none at rank 0: factors from the training events, and
    the weight of ``WEIGHTS`` under which the towers' score plus the part's scores the
    validation users best (the smaller on a tie; 0 without validation users). The towers'
    weights are not touched, so this runs after training, and again only when the part is
    stale (``TrainJob.stale_part_payload``)."""
    payload = job.stale_part_payload()
    if payload is None:
        return
    best = job.out_dir / BEST
    if job.model.collaborative_rank == 0:  # asked for none: the published vectors are the towers' alone
        del payload[PAYLOAD_KEY]
        checkpoint.save(best, payload)
        return
    slots = job.inputs.id_slots.cpu().numpy()
    part = CollaborativePart.fit(slots, [sequence.items for sequence in job.split.train.values()], job.model.collaborative_rank)
    users, scores = job.split.val, {}
    if len(users):
        model = checkpoint.build_model(payload, device)
        towers = user_vectors(model, job.inputs, users.histories) @ item_vectors(model, job.inputs, np.arange(len(slots))).T
        shared = part.users(users.histories, slots) @ part.items(slots).T
        metric = job.train.select_metric
        scores = {w: validation_score_of_scores(towers + w * shared, users, metric, int(metric.split("@")[1])) for w in WEIGHTS}
    weight = max(scores, key=scores.__getitem__) if scores else 0.0
    payload[PAYLOAD_KEY] = {**part.with_weight(weight).to_payload(), "grid": list(WEIGHTS), "validation": {str(w): s for w, s in scores.items()}}
    checkpoint.save(best, payload)
    if progress and scores:
        tqdm.write(f"[{job.method}] collaborative part, rank {part.rank}: weight {weight:g}, validation {job.train.select_metric} "
                   f"{scores[weight]:.4f} (towers alone {scores[0.0]:.4f})")


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the paper's) or AdamW; on CUDA the fused kernel updates all parameters in one launch."""
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = {"fused": True} if config.fused and device.type == "cuda" else {}
    return optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fused)


def step_module(model: PCH, config: TrainConfig, device: torch.device, world: World) -> nn.Module:
    """What the training forward runs through: DDP when there are several ranks, then torch.compile.

    Checkpoints and validation use ``model`` itself, so state dicts never carry wrapper prefixes.
    """
    module: nn.Module = model
    if world.size > 1:
        module = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
    return torch.compile(module) if config.compile else module


def global_batches(samples: list[tuple[np.ndarray, np.ndarray]], batch_size: int, world: World) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The epoch's batches; a lone user has no in-batch negatives, and every rank needs a user."""
    batches = [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
    return [batch for batch in batches if len(batch) >= max(2, world.size)]


def host_batches(
    batches: list[list[tuple[np.ndarray, np.ndarray]]], inputs: ItemInputs, world: World, pin: bool, extras: list[np.ndarray] | None = None
) -> Iterator[Batch]:
    """This rank's part of each global batch, built on the host (run ahead by ``prefetch``).

    Targets are padded to the global batch's longest so that ranks can gather them; the extra
    negatives are the whole batch's, on every rank.
    """
    for k, batch in enumerate(batches):
        host = make_batch(world.part(batch), inputs, max(len(t) for _, t in batch), None if extras is None else extras[k])
        yield host.pin_memory() if pin else host


@dataclass
class TrainJob:
    """One model to train and where it is kept. Everything but ``out_dir`` and the runtime-only
    options goes into the fingerprint that decides whether ``last.pt`` can be resumed."""

    out_dir: Path
    model: PCHConfig
    train: TrainConfig
    split: Split
    inputs: ItemInputs
    history_len: int
    target_len: int
    method: str
    trained_item_ids: list[str] | None = None  # ID and hybrid towers: the items that own a slot, saved with the model

    def fingerprint(self, device: torch.device) -> str:
        """Who trained ``last.pt``: a hash of every setting and input that changes the towers' math.

        A ``last.pt`` with another fingerprint is no resume point, so a run re-trains every
        model whose fingerprint changes. A setting added later must therefore leave the
        fingerprint alone at the value that reproduces the old math (``settings``), or every
        user's finished models re-train once (tests/training/test_trainer.py pins the fields).
        """
        model, math_config = self.settings(device)
        return _fingerprint(model, math_config, self.split.summary(), self.method, self.history_len, self.target_len, self.inputs.identity)

    def settings(self, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model and training settings that go into the fingerprint, without those that
        only came after runs trained under their old default."""
        config = self.train
        math_config = {k: v for k, v in asdict(config).items() if k not in RUNTIME_ONLY}
        math_config.update(bf16=config.bf16 and device.type == "cuda", fused=config.fused and device.type == "cuda")
        if config.softmax == "sampled":  # the objective of every run before train.softmax existed: they still resume
            del math_config["softmax"]
        if config.objective == "all_action":  # likewise for runs from before train.objective
            del math_config["objective"]
        model = asdict(self.model)
        del model["collaborative_rank"]  # fitted after training (fit_collaborative_part): the towers train the same
        if not self.inputs.id_part:  # only a hybrid has an ID part: other towers resume whatever id_dropout and id_init say
            del model["id_dropout"], model["id_init"]
        for key, before in (("tied_output", False), ("input_dropout", 0.0), ("input_norm", False), ("id_init", "zeros"), ("init_std", None), ("output_head", True), ("positions", "from_start")):  # runs from before these settings still resume
            if model.get(key, before) == before:
                model.pop(key, None)
        return model, math_config

    def resumable(self, fingerprint: str) -> dict[str, Any] | None:
        """``last.pt`` when it was written by this very job (same fingerprint), else None."""
        last = self.out_dir / LAST
        if not last.exists():
            return None
        saved = checkpoint.load_payload(last)
        return saved if saved["fingerprint"] == fingerprint else None

    def done(self, state: dict[str, Any]) -> bool:
        """Whether training from ``state`` has nothing left: every epoch run, or patience used up."""
        return state["epoch"] + 1 >= self.train.epochs or state["bad_epochs"] >= self.train.patience

    def result(self, state: dict[str, Any]) -> TrainResult:
        return TrainResult(self.out_dir / BEST, state["best_epoch"], state["best_score"], state["history"])

    def finished(self) -> TrainResult | None:
        """The result of a finished model, read from its ``last.pt`` without building anything;
        None when it is missing, unfinished, was trained under other settings or data, or its
        collaborative part is not the one its model config asks for."""
        saved = self.resumable(self.fingerprint(pick_device(self.train.device)))
        if saved is None or not self.done(saved["state"]) or self.stale_part_payload() is not None:
            return None
        return self.result(saved["state"])

    def stale_part_payload(self) -> dict[str, Any] | None:
        """``best.pt`` when its collaborative part is not the one ``model.collaborative_rank``
        asks for (``pch.collaborative.stale``), else None. Towers without an ID part never
        carry one, so their checkpoint is not read."""
        best = self.out_dir / BEST
        if not self.inputs.id_part or not best.exists():
            return None
        payload = checkpoint.load_payload(best)
        return payload if collaborative.stale(payload, self.model.collaborative_rank) else None


@dataclass
class StepParts:
    """What every optimizer step of one run uses; only the batch changes from step to step."""

    module: nn.Module  # what the forward runs through (``step_module``)
    model: PCH
    inputs: ItemInputs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    world: World
    autocast: torch.autocast
    negatives: Negatives = field(default_factory=Negatives.in_batch)
    serving_weight: float = 0.0  # > 0 only for variant 1: weight of the loss over targets embedded alone


def train_step(parts: StepParts, batch: Batch, global_size: int) -> tuple[float, float]:
    """One optimizer step on this rank's part of a global batch of ``global_size`` users.

    Returns (the batch loss, the loss a model scoring every item alike would have on it).
    """
    inputs, world, model, config = parts.inputs, parts.world, parts.model, parts.config
    extra = None if batch.extra is None else inputs.lookup(batch.extra, batch.rows)
    if parts.negatives.full:
        return _full_softmax_step(parts, batch, extra, global_size)
    with parts.autocast:
        users, items, served, extra = parts.module(
            inputs.lookup(batch.history, batch.rows), inputs.lookup(batch.targets, batch.rows), extra, parts.serving_weight > 0
        )
    all_items, all_lengths, first_user = gather_targets(world, items.float(), batch.target_lengths, global_size)
    candidates = parts.negatives.candidates(
        gather_rows(world, batch.target_items, global_size), all_lengths, batch.extra_items, None if extra is None else extra.float()
    )
    loss_of = partial(
        dense_all_action_infonce, history_lengths=batch.history_lengths, target_lengths=all_lengths, temperature=model.config.temperature,
        alpha=config.alpha, beta=config.beta, first_user=first_user, global_batch=None if world.size == 1 else global_size, candidates=candidates,
    )
    loss = loss_of(users.float(), all_items)
    if served is not None:
        all_served, _, _ = gather_targets(world, served.float(), batch.target_lengths, global_size)
        loss = loss + parts.serving_weight * loss_of(users.float(), all_served)
    with torch.no_grad():  # the same loss for scores that are all equal: the chance level
        flat = torch.zeros_like(users[:, :1].float())
        chance = loss_of(flat, torch.zeros_like(all_items), history_lengths=torch.ones_like(batch.history_lengths))
        if served is not None:
            chance = chance * (1.0 + parts.serving_weight)
    return _update(parts, loss, chance)


def _full_softmax_step(parts: StepParts, batch: Batch, pool_inputs: torch.Tensor, global_size: int) -> tuple[float, float]:
    """``train_step`` under the full softmax: every pool item (the batch's extras) against every
    history position, for the window's targets (all-action) or the one next event (next-item).
    Each rank embeds the whole pool itself, so nothing is gathered."""
    world, model, config = parts.world, parts.model, parts.config
    lengths = batch.history_lengths if config.objective in LENGTH_GROUPED_OBJECTIVES else None
    with parts.autocast:
        users, _, _, pool = parts.module(parts.inputs.lookup(batch.history, batch.rows), None, pool_inputs, False, lengths)
    global_batch = None if world.size == 1 else global_size
    if config.objective in NEXT_EVENT_OBJECTIVES:
        next_positions = parts.negatives.pool_positions(batch.target_items)
        loss = next_item_softmax(users.float(), pool.float(), batch.history_lengths, next_positions, model.config.temperature, global_batch)
        return _update(parts, loss, next_item_chance(pool.shape[0], users.shape[0], global_batch))
    loss_of = partial(
        full_softmax_infonce, history_lengths=batch.history_lengths, target_positions=parts.negatives.pool_positions(batch.target_items),
        target_lengths=batch.target_lengths, temperature=model.config.temperature, alpha=config.alpha, beta=config.beta,
        global_batch=global_batch,
    )
    loss = loss_of(users.float(), pool.float())
    with torch.no_grad():
        chance = loss_of(torch.zeros_like(users[:, :1].float()), torch.zeros_like(pool.float()), history_lengths=torch.ones_like(batch.history_lengths))
    return _update(parts, loss, chance)


def _update(parts: StepParts, loss: torch.Tensor, chance: torch.Tensor) -> tuple[float, float]:
    """The optimizer step on ``loss``; returns (the batch loss, its chance level), summed over ranks."""
    world = parts.world
    parts.optimizer.zero_grad(set_to_none=True)
    (loss * world.size).backward()  # DDP averages gradients over ranks; the ranks' loss shares must add up instead
    if parts.config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.config.grad_clip)
    parts.optimizer.step()
    parts.scheduler.step()
    return world.sum(loss.detach()).item(), world.sum(chance).item()


def epoch_score(model: PCH, inputs: ItemInputs, split: Split, config: TrainConfig, mean_loss: float, world: World) -> float:
    """Validation score (computed by rank 0, shared so every rank takes the same early-stopping decision)."""
    if not len(split.val):
        return -mean_loss
    score = validation_score(model, inputs, split.val, len(split.item_ids), config.select_metric) if world.rank == 0 else None
    return world.broadcast(score)


def build_parts(job: TrainJob, device: torch.device, world: World) -> StepParts:
    """A fresh model (seeded), its optimizer, cosine schedule and negatives: the state of epoch 0."""
    config = job.train
    torch.manual_seed(config.seed)
    model = PCH(job.model, content_dim=job.inputs.content_dim, num_items=job.inputs.num_id_slots).to(device)
    if isinstance(model.input, HybridInput):
        histories = [sequence.items for sequence in job.split.train.values()]
        ID_INITS[job.model.id_init](model.input.ids.weight, job.inputs.id_slots.cpu().numpy(), histories)
    optimizer = build_optimizer(model, config, device)
    negatives = Negatives.build(
        job.split, uniform_from=config.uniform_from, per_batch=config.uniform_negatives, seed=config.seed,
        logq_correction=config.logq_correction, mask_false_negatives=config.mask_false_negatives, device=device,
        softmax=config.softmax,
    )
    total_steps = math.ceil(epoch_pairs(job.split.train, config, job.history_len, job.target_len) / config.batch_size) * config.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    # the full softmax scores targets through the serving path already
    serving_weight = config.serving_loss_weight if job.model.variant == 1 and config.softmax == "sampled" else 0.0
    return StepParts(model, model, job.inputs, optimizer, scheduler, config, world, autocast, negatives, serving_weight)


def run_epoch(job: TrainJob, parts: StepParts, epoch: int, device: torch.device, progress: bool) -> tuple[float, float]:
    """One epoch's steps; returns (mean loss, mean chance loss)."""
    config, world = job.train, parts.world
    torch.manual_seed((config.seed * 100_003 + epoch) * world.size + world.rank)  # own dropout per rank
    parts.model.train()
    batches = global_batches(sample_epoch(job.split.train, config, job.history_len, job.target_len, epoch), config.batch_size, world)
    extras = parts.negatives.epoch_extras(epoch, len(batches))
    losses, chances = [], []
    with closing(prefetch(host_batches(batches, job.inputs, world, device.type == "cuda", extras), config.prefetch)) as ready:
        steps = zip((len(b) for b in batches), to_device_ahead(ready, device))
        desc = f"[{job.method}] epoch {epoch + 1}/{config.epochs}"
        for global_size, batch in tqdm(steps, total=len(batches), desc=desc, disable=not progress, leave=False):
            loss, chance = train_step(parts, batch, global_size)
            losses.append(loss)
            chances.append(chance)
    return float(np.mean(losses)) if losses else float("nan"), float(np.mean(chances)) if chances else float("nan")


def train_towers(job: TrainJob, progress: bool = True) -> TrainResult:
    """Train (or resume, or skip if finished) and return where the best model is.

    Runs data-parallel when a torch.distributed process group is initialised (torchrun).
    """
    world = World.current()
    lead = world.rank == 0
    job.out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(job.train.device)
    fingerprint = job.fingerprint(device)
    saved = job.resumable(fingerprint)
    if saved is not None and job.done(saved["state"]):
        if lead:
            fit_collaborative_part(job, device, progress)
        world.barrier()
        return job.result(saved["state"])
    parts = build_parts(job, device, world)
    config, model = job.train, parts.model
    state = {"epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
    elif (job.out_dir / LAST).exists() and lead:
        tqdm.write(f"[{job.method}] configuration or data changed since {job.out_dir / LAST}; training from scratch")
    parts.module = step_module(model, config, device, world)
    for epoch in range(state["epoch"] + 1, config.epochs):
        if state["bad_epochs"] >= config.patience:
            break
        mean_loss, mean_chance = run_epoch(job, parts, epoch, device, progress and lead)
        score = epoch_score(model, job.inputs, job.split, config, mean_loss, world)
        state["history"].append({"epoch": epoch + 1, "loss": mean_loss, "chance_loss": mean_chance, f"val_{config.select_metric}": score})
        if progress and lead:
            tqdm.write(
                f"[{job.method}] epoch {epoch + 1}: loss {mean_loss:.4f} (chance {mean_chance:.4f}), validation {config.select_metric} {score:.4f}"
            )
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            extra = {"method": job.method, "epoch": epoch + 1, "val_score": score, "fingerprint": fingerprint}
            if lead:
                checkpoint.save(job.out_dir / BEST, checkpoint.model_payload(model, job.inputs.content_dim, job.trained_item_ids, extra))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if lead:
            last = {"optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(), "state": state}
            checkpoint.save(job.out_dir / LAST, {"state_dict": model.state_dict(), **last, "fingerprint": fingerprint})
    if lead:
        fit_collaborative_part(job, device, progress)
    world.barrier()  # no rank moves on before rank 0 has written the checkpoints
    return job.result(state)
