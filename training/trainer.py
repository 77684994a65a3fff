"""Training the PCH towers with dense all-action InfoNCE, resumably and reproducibly.

Each epoch draws ``samples_per_user`` random cut points inside every training user's past
sequence: the part before the cut is the history (last N), the part after it the target
(first M). Sampling and dropout are seeded from (seed, epoch), so a run resumed from
``last.pt`` continues exactly as an uninterrupted one would. ``best.pt`` keeps the epoch with
the best validation score (validation users only; test users never influence training).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from learn_features.cex.model_loading import pick_device
from learn_features.data.split import EvalUsers, Split
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.batching import pad_sequences
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.loss import dense_all_action_infonce
from learn_features.pch.model import PCH, PCHConfig
from learn_features.retrieval import rank_items, score_rankings

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainConfig:
    """Paper defaults: Adam, lr 5e-5, cosine schedule with 10% warm-up."""

    lr: float = 5e-5
    epochs: int = 10
    batch_size: int = 30
    warmup_ratio: float = 0.1
    samples_per_user: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    patience: int = 3  # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "auto"
    alpha: float = 10.0  # recency weights: w_i = log(alpha + i (beta - alpha) / (N - 1))
    beta: float = 10000.0
    select_metric: str = "recall@50"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 2 or self.samples_per_user < 1:
            raise LearnFeaturesError("train.lr must be > 0, train.epochs >= 1, train.batch_size >= 2 (negatives come from other users), train.samples_per_user >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise LearnFeaturesError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def sample_epoch(train: dict[str, np.ndarray], config: TrainConfig, history_len: int, target_len: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng([config.seed, epoch])
    samples = []
    for user in sorted(train):
        seq = train[user]
        for cut in rng.integers(1, len(seq), size=config.samples_per_user):
            samples.append((seq[max(0, cut - history_len) : cut], seq[cut : cut + target_len]))
    return [samples[i] for i in rng.permutation(len(samples))]


def validation_score(model: PCH, inputs: ItemInputs, users: EvalUsers, n_items: int, metric: str) -> float:
    depth = int(metric.split("@")[1])
    model.eval()
    ranked = rank_items(user_vectors(model, inputs, users.histories), item_vectors(model, inputs, np.arange(n_items)), users.exclude, depth)
    return score_rankings(ranked, users.targets, (depth,))[metric]


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_towers(
    out_dir: Path,
    model_config: PCHConfig,
    config: TrainConfig,
    split: Split,
    inputs: ItemInputs,
    history_len: int,
    target_len: int,
    method: str,
    trained_item_ids: list[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume, or skip if finished) and return where the best model is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    fingerprint = _fingerprint(asdict(model_config), asdict(config), split.summary(), method, history_len, target_len)
    torch.manual_seed(config.seed)
    model = PCH(model_config, content_dim=inputs.content_dim, num_items=inputs.num_id_slots).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(split.train) * config.samples_per_user / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    state = {"epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}

    last_path = out_dir / LAST
    if last_path.exists():
        saved = checkpoint.load_payload(last_path)
        if saved["fingerprint"] == fingerprint:
            model.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["state"]
        else:
            tqdm.write(f"[{method}] configuration or data changed since {last_path}; training from scratch")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_items = len(split.item_ids)
    for epoch in range(state["epoch"] + 1, config.epochs):
        if state["bad_epochs"] >= config.patience:
            break
        torch.manual_seed(config.seed * 100_003 + epoch)
        model.train()
        samples = sample_epoch(split.train, config, history_len, target_len, epoch)
        losses = []
        for start in tqdm(range(0, len(samples), config.batch_size), desc=f"[{method}] epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False):
            batch = samples[start : start + config.batch_size]
            if len(batch) < 2:
                continue  # a lone user has no in-batch negatives
            history, history_lengths = pad_sequences([h for h, _ in batch], device)
            targets, target_lengths = pad_sequences([t for _, t in batch], device)
            with autocast:
                users = model.user_embeddings(inputs.gather(history))
                items = model.target_embeddings(inputs.gather(targets))
            loss = dense_all_action_infonce(
                users.float(), items.float(), history_lengths, target_lengths, model_config.temperature, config.alpha, config.beta
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        score = validation_score(model, inputs, split.val, n_items, config.select_metric) if len(split.val) else -mean_loss
        state["history"].append({"epoch": epoch + 1, "loss": mean_loss, f"val_{config.select_metric}": score})
        if progress:
            tqdm.write(f"[{method}] epoch {epoch + 1}: loss {mean_loss:.4f}, validation {config.select_metric} {score:.4f}")
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            extra = {"method": method, "epoch": epoch + 1, "val_score": score, "fingerprint": fingerprint}
            checkpoint.save(out_dir / BEST, checkpoint.model_payload(model, inputs.content_dim, trained_item_ids, extra))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        checkpoint.save(
            last_path,
            {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "fingerprint": fingerprint,
            },
        )
    return TrainResult(out_dir / BEST, state["best_epoch"], state["best_score"], state["history"])
