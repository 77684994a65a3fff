"""A small LEARN job for CLI tests: synthetic interactions and catalog files plus a TOML config
that runs the whole pipeline in seconds with the tiny random decoder of ``core_fixtures``.

Users each favour one genre; the first half is active only before the cut, the rest on both
sides, so every split role and every method has data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ["space opera", "romantic comedy", "crime thriller", "nature documentary"]


def write_synthetic(root: Path, users: int = 48, items: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Users each favour one genre; the first half is active only before the cut, the rest on both sides."""
    rng = np.random.default_rng(seed)
    catalog = pd.DataFrame(
        {
            "item_id": [f"sku-{i}" for i in range(items)],
            "title": [f"{GENRES[i % 4].title()} number {i}" for i in range(items)],
            "category": [GENRES[i % 4] for i in range(items)],
        }
    )
    rows = []
    for u in range(users):
        genre = u % 4
        pool = [i for i in range(items) if i % 4 == genre]
        start, end = (0, 70) if u < users // 2 else (30, 100)
        for day, item in zip(np.sort(rng.uniform(start, end, 10)), rng.choice(pool, 10, replace=False)):
            rows.append({"user_id": f"u{u}", "item_id": f"sku-{item}", "timestamp": int(1_600_000_000 + day * 86400)})
    catalog_path, interactions_path = root / "catalog.parquet", root / "interactions.csv"
    catalog.to_parquet(catalog_path)
    pd.DataFrame(rows).to_csv(interactions_path, index=False)
    return interactions_path, catalog_path


def write_config(root: Path, interactions: Path, catalog: Path, model_dir: Path) -> Path:
    config = root / "job.toml"
    config.write_text(
        f"""
run_dir = "{root / 'run'}"
cache_dir = "{root / 'cache'}"
[data]
source = "files"
interactions = "{interactions}"
catalog = "{catalog}"
[split]
protocols = ["temporal", "leave_one_out"]
cut_quantile = 0.6
history_len = 8
target_len = 4
val_fraction = 0.2
[llm]
model = "{model_dir}"
chunk_size = 16
# fp32 on every host: "auto" follows the CPU, and the processes that torchrun and
# train.workers start do not see conftest's pinned probes
dtype = "float32"
[text_encoder]
model = "{model_dir}"
pooling = "last"
dtype = "float32"
[model]
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
d_out = 8
max_len = 8
[train]
lr = 3e-3
epochs = 2
batch_size = 8
"""
    )
    return config
