"""Vectors for the DNN control arms: is it LEARN's information, or any vector per user and item?

A lift of DNN + LEARN over the ID baseline could come from the LEARN vectors' information, or
merely from giving the auxiliary network *some* dense vector per user and item (an extra
input, extra capacity, a presence flag that marks users with history). The control arms feed
the same ``AuxiliaryCVRNet`` other vectors that differ from LEARN's in information only:

* ``llm_frozen``: the frozen LLM's content vectors (the run's content store, ``content/llm``),
  each row L2-normalised, then reduced by PCA to the LEARN dimension (PCA, fitted on the
  training period's items only, centres them, as the retrieval ``llm_frozen`` baseline
  centres on warm items). An item's vector is its own
  content; a user's is the mean content of their last N events strictly before the row's
  ``as_of`` (N = the LEARN run's history window), as the LEARN user tower reads a history.
* ``random``: a fixed random vector per user id and per item id, drawn from a hash of the id
  and ``controls.random_seed`` (not the ranking seed), so it is the same in every split,
  seed and run.

Both are L2-normalised, as LEARN's towers' outputs are, and present only where the LEARN
arm's vector is present (rows, users and items alike), so the coverage pattern and the
presence flags the network sees are LEARN's. ``llm_frozen`` is also absent where it cannot be
computed (a user whose history has no catalog item, an item outside the run's catalog); LEARN
has no vector there either, since its vectors come from the same histories and catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.embeddings_io import read_frame
from learn_features.errors import LearnFeaturesError
from learn_features.pch.content_store import ContentStore, items_digest
from learn_features.retrieval import unit_rows
from learn_features.run import RunDir
from ranking.dataset import RankingDataset
from ranking.features import exact_pca, pca_transform, present
from ranking.history import HistoryIndex

SPLITS = ("train", "valid", "test")


def _masked(vectors: np.ndarray, mask: np.ndarray) -> list[np.ndarray | None]:
    return [v.astype(np.float32) if keep else None for v, keep in zip(vectors, mask)]


def load_content(store_dir: str | Path, run_dir: str | Path) -> tuple[pd.Index, np.ndarray]:
    """(item ids, L2-normalised float32 content vectors) of a content store aligned to the run's item table."""
    item_path = RunDir(run_dir).embedding_table("item")
    ids = read_frame(item_path, "item")["item_id"].astype(str).tolist()
    store = ContentStore(store_dir)
    if store.items_sha256 != items_digest(ids):
        raise LearnFeaturesError(f"{store_dir}: content store rows are not aligned to {item_path} (another catalog or order)")
    return pd.Index(ids), unit_rows(store.take(np.arange(len(store))).astype(np.float32))


def with_llm_frozen(
    dataset: RankingDataset, history: HistoryIndex, item_ids: pd.Index, content: np.ndarray, dim: int
) -> RankingDataset:
    """The dataset plus ``user_llm_frozen``/``item_llm_frozen`` (see module docstring)."""
    train_items = item_ids.get_indexer(pd.unique(dataset.train["item_id"].astype(str)))
    train_items = np.sort(train_items[train_items >= 0])
    if len(train_items) < dim:
        raise LearnFeaturesError(
            f"frozen-LLM control: {len(train_items)} training items with content, fewer than the LEARN dimension {dim} "
            "that PCA must reduce to"
        )
    pca = exact_pca(content[train_items], dim)
    projected = pca_transform(pca, content).astype(np.float64)
    position = item_ids.get_indexer(history.item_ids)
    events = np.where(position[:, None] >= 0, projected[np.maximum(position, 0)], 0.0)

    def add(frame: pd.DataFrame) -> pd.DataFrame:
        user_present, item_present = present(frame, "user_embedding"), present(frame, "item_embedding")
        users, used = history.last_n_mean(frame["user_id"], frame["as_of"], events, position >= 0, _history_len(dataset))
        item_pos = item_ids.get_indexer(frame["item_id"].astype(str))
        items = projected[np.maximum(item_pos, 0)]
        return frame.assign(
            user_llm_frozen=_masked(unit_rows(users), user_present & (used > 0)),
            item_llm_frozen=_masked(unit_rows(items), item_present & (item_pos >= 0)),
        )

    return _replace_frames(dataset, add)


def random_unit_vectors(ids: pd.Series, entity: str, dim: int, seed: int) -> np.ndarray:
    """One fixed random unit vector per id: a function of (seed, entity, id) only."""
    cache: dict[str, np.ndarray] = {}
    for key in pd.unique(ids.astype(str)):
        digest = hashlib.sha256(f"{entity}\x00{key}".encode()).digest()
        rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
        cache[key] = unit_rows(rng.standard_normal((1, dim)))[0]
    return np.stack([cache[k] for k in ids.astype(str)]) if len(ids) else np.zeros((0, dim))


def with_random(dataset: RankingDataset, dim: int, seed: int) -> RankingDataset:
    """The dataset plus ``user_random``/``item_random`` (see module docstring)."""

    def add(frame: pd.DataFrame) -> pd.DataFrame:
        user_present, item_present = present(frame, "user_embedding"), present(frame, "item_embedding")
        return frame.assign(
            user_random=_masked(random_unit_vectors(frame["user_id"], "user", dim, seed), user_present),
            item_random=_masked(random_unit_vectors(frame["item_id"], "item", dim, seed), item_present),
        )

    return _replace_frames(dataset, add)


def _history_len(dataset: RankingDataset) -> int:
    if dataset.history_len is None:
        raise LearnFeaturesError("control arms need a dataset built with LEARN embeddings")
    return dataset.history_len


def _replace_frames(dataset: RankingDataset, add: Callable[[pd.DataFrame], pd.DataFrame]) -> RankingDataset:
    return dataclasses.replace(dataset, **{name: add(dataset.split(name)) for name in SPLITS})
