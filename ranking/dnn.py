"""DNN rankers: the paper's ID-embedding baseline and the LEARN ranker of its Fig. 5.

Main tower (both models): learned user/item ID embeddings + standardised side features ->
MLP -> CVR logit, trained with BCE.

LEARN ranker: an auxiliary network takes the LEARN user and item embeddings (plus a flag
per side saying whether the embedding existed point-in-time) through MLP layers to a
*fusion embedding*, which has its own CVR head and BCE loss. The main tower's input is the
concatenation of the ID embeddings, side features, the fusion embedding and the raw LEARN
embeddings. Total loss = main BCE + ``aux_weight`` * auxiliary BCE. The auxiliary loss
gives the fusion layers a direct supervised signal from the LEARN inputs alone, so they
learn a useful projection even while the ID embeddings dominate the main loss; the main
loss still back-propagates into the fusion layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ranking.config import DNNConfig
from ranking.features import FeatureSpec, Featurized, dnn_inputs
from ranking.metrics import grouped_auc, logloss


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AuxiliaryCVRNet(nn.Module):
    """LEARN user/item embeddings -> fusion embedding, with its own CVR head."""

    def __init__(self, learn_dim: int, hidden: list[int], fusion_dim: int, dropout: float) -> None:
        super().__init__()
        width = 3 * learn_dim + 2
        self.body = _mlp([width, *hidden], dropout)
        self.fusion = nn.Sequential(nn.Linear(hidden[-1] if hidden else width, fusion_dim), nn.ReLU())
        self.head = nn.Linear(fusion_dim, 1)

    def forward(self, user_emb: torch.Tensor, item_emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fusion = self.fusion(self.body(torch.cat([user_emb, item_emb, user_emb * item_emb, mask], dim=1)))
        return fusion, self.head(fusion).squeeze(1)


class RankerNet(nn.Module):
    """Main tower, optionally fed by ``AuxiliaryCVRNet`` (``learn_dim`` not None)."""

    def __init__(self, n_users: int, n_items: int, n_dense: int, cfg: DNNConfig, learn_dim: int | None) -> None:
        super().__init__()
        self.user_id = nn.Embedding(n_users + 1, cfg.id_dim)  # row 0: ids unseen in training
        self.item_id = nn.Embedding(n_items + 1, cfg.id_dim)
        self.aux = AuxiliaryCVRNet(learn_dim, cfg.aux_hidden, cfg.fusion_dim, cfg.dropout) if learn_dim else None
        width = 2 * cfg.id_dim + n_dense + ((cfg.fusion_dim + 2 * learn_dim + 2) if learn_dim else 0)
        self.tower = _mlp([width, *cfg.hidden], cfg.dropout)
        self.head = nn.Linear(cfg.hidden[-1] if cfg.hidden else width, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = [self.user_id(batch["user_idx"]), self.item_id(batch["item_idx"]), batch["dense"]]
        aux_logit = None
        if self.aux is not None:
            fusion, aux_logit = self.aux(batch["user_emb"], batch["item_emb"], batch["emb_mask"])
            parts += [fusion, batch["user_emb"], batch["item_emb"], batch["emb_mask"]]
        return self.head(self.tower(torch.cat(parts, dim=1))).squeeze(1), aux_logit


@dataclass
class LossParts:
    main: torch.Tensor
    aux: torch.Tensor | None
    total: torch.Tensor


def ranking_loss(net: RankerNet, batch: dict[str, torch.Tensor], labels: torch.Tensor, aux_weight: float) -> LossParts:
    """Main BCE, plus ``aux_weight`` times the auxiliary CVR BCE when the net has one."""
    bce = nn.functional.binary_cross_entropy_with_logits
    main_logit, aux_logit = net(batch)
    main = bce(main_logit, labels)
    if aux_logit is None:
        return LossParts(main, None, main)
    aux = bce(aux_logit, labels)
    return LossParts(main, aux, main + aux_weight * aux)


class DNNRanker:
    """Trains ``RankerNet`` with Adam and early stopping on validation logloss.

    ``vectors`` names what the auxiliary network reads: ``"learn"``, a control's vectors
    (``ranking/controls.py``), or None for the ID baseline without one.
    """

    def __init__(self, cfg: DNNConfig, spec: FeatureSpec, vectors: str | None, seed: int, num_threads: int) -> None:
        self.cfg = cfg
        self.spec = spec
        self.vectors = vectors
        self.seed = seed
        self.num_threads = num_threads
        torch.manual_seed(seed)
        self.net = RankerNet(
            len(spec.user_vocab), len(spec.item_vocab), len(spec.dense_names), cfg, spec.learn_dim if vectors else None
        )
        self.history: list[dict[str, float | None]] = []
        self.best_iteration = 0  # the kept epoch, 1-based once fitted; 0 keeps the initial weights

    def tensors(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        return dnn_tensors(frame, self.spec, self.vectors)

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> DNNRanker:
        return self.fit_featurized(Featurized.of(train, self.tensors(train)), Featurized.of(valid, self.tensors(valid)))

    def fit_featurized(self, train: Featurized[dict[str, torch.Tensor]], valid: Featurized[dict[str, torch.Tensor]]) -> DNNRanker:
        """``fit`` on periods featurized by ``tensors`` (once per arm, for every seed); the
        tensors are only read (batches are copies), so every seed may share them."""
        torch.set_num_threads(self.num_threads)
        torch.manual_seed(self.seed)
        x_train, x_valid = train.inputs, valid.inputs
        y_train = torch.from_numpy(np.asarray(train.labels, dtype=np.float32))
        y_valid = valid.labels
        valid_users = valid.users
        opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        best_loss, best_state, stale = float("inf"), copy.deepcopy(self.net.state_dict()), 0
        for epoch in range(self.cfg.max_epochs):
            self.net.train()
            order = torch.randperm(len(y_train), generator=gen)
            total = 0.0
            for start in range(0, len(order), self.cfg.batch_size):
                idx = order[start : start + self.cfg.batch_size]
                # index_select copies the same rows as ``v[idx]`` (bit for bit) without advanced
                # indexing's overhead, which was 6% of the report's profile.
                batch = {k: torch.index_select(v, 0, idx) for k, v in x_train.items()}
                loss = ranking_loss(self.net, batch, torch.index_select(y_train, 0, idx), self.cfg.aux_weight)
                opt.zero_grad()
                loss.total.backward()
                opt.step()
                total += loss.total.item() * len(idx)
            scores = self.predict_inputs(x_valid)
            valid_loss = logloss(y_valid, scores, "DNN validation")
            # Recorded for the learning curves only; early stopping reads the logloss.
            valid_uauc = grouped_auc(y_valid, scores, valid_users, "DNN validation").uauc
            self.history.append({"epoch": epoch + 1, "train_loss": total / len(order), "valid_logloss": valid_loss, "valid_uauc": valid_uauc})
            if valid_loss < best_loss - 1e-6:
                best_loss, best_state, stale, self.best_iteration = valid_loss, copy.deepcopy(self.net.state_dict()), 0, epoch + 1
            else:
                stale += 1
                if stale >= self.cfg.patience:
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    @torch.no_grad()
    def predict_inputs(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        """``predict`` on rows featurized by ``tensors``."""
        self.net.eval()
        logits, _ = self.net(x)
        return torch.sigmoid(logits).double().numpy()

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_inputs(self.tensors(frame))


def dnn_tensors(frame: pd.DataFrame, spec: FeatureSpec, vectors: str | None) -> dict[str, torch.Tensor]:
    """``dnn_inputs`` as tensors: what ``DNNRanker`` reads, a function of the rows, spec and vectors only."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dnn_inputs(frame, spec, vectors).items()}
