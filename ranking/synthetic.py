"""A small synthetic world with a planted LEARN signal, for tests and pipeline smoke runs.

Users and items have latent taste vectors; the conversion probability depends on their dot
product plus popularity biases. The "LEARN" embeddings are noisy copies of the latents, so a
ranker that uses them well should beat the ID baseline, especially on items and users with
little history. Nothing here is a quality result: it only shows the machinery can learn a
signal that is known to be there, and lets tests fail when it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, write_table
from learn_features.retrieval import unit_rows

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")


@dataclass
class SyntheticWorld:
    impressions: pd.DataFrame  # user_id, item_id, timestamp, label
    items: pd.DataFrame  # item_id, genres, year
    user_latent: dict[str, np.ndarray]
    item_latent: dict[str, np.ndarray]
    start: pd.Timestamp
    end: pd.Timestamp


def make_world(
    n_users: int = 150,
    n_items: int = 400,
    n_impressions: int = 6000,
    dim: int = 8,
    days: int = 100,
    seed: int = 0,
) -> SyntheticWorld:
    """Impressions spread uniformly over ``days``; items enter the catalog over time, so the
    last days contain items never seen before (cold-start items)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2021-01-01", tz="UTC")
    user_lat = unit_rows(rng.normal(size=(n_users, dim)))
    item_lat = unit_rows(rng.normal(size=(n_items, dim)))
    item_bias = rng.normal(0, 0.3, n_items)
    item_birth = np.sort(rng.uniform(0, days * 0.95, n_items))  # day an item becomes available
    user_activity = rng.pareto(1.5, n_users) + 0.2

    t = np.sort(rng.uniform(0, days, n_impressions))
    users = rng.choice(n_users, n_impressions, p=user_activity / user_activity.sum())
    items = np.empty(n_impressions, dtype=np.int64)
    for k in range(n_impressions):
        available = int(np.searchsorted(item_birth, t[k], side="right"))
        items[k] = rng.integers(0, max(available, 1))
    logit = 3.0 * (user_lat[users] * item_lat[items]).sum(axis=1) + item_bias[items]
    labels = (rng.random(n_impressions) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    user_ids = [f"u{i}" for i in range(n_users)]
    item_ids = [f"i{i}" for i in range(n_items)]
    impressions = pd.DataFrame(
        {
            "user_id": pd.Series([user_ids[u] for u in users], dtype="string"),
            "item_id": pd.Series([item_ids[i] for i in items], dtype="string"),
            "timestamp": start + pd.to_timedelta(t, unit="D"),
            "label": labels,
        }
    )
    # Genres follow the dominant latent coordinate, a weak content signal the baseline can use.
    genres = [[GENRES[int(np.argmax(v[: len(GENRES)]))]] for v in item_lat]
    items_df = pd.DataFrame(
        {
            "item_id": pd.Series(item_ids, dtype="string"),
            "genres": genres,
            "year": rng.integers(1980, 2021, n_items).astype(float),
        }
    )
    return SyntheticWorld(
        impressions=impressions,
        items=items_df,
        user_latent=dict(zip(user_ids, user_lat)),
        item_latent=dict(zip(item_ids, item_lat)),
        start=start,
        end=start + pd.Timedelta(days=days),
    )


def write_learn_snapshot(
    world: SyntheticWorld,
    out_dir: str | Path,
    as_of: pd.Timestamp,
    model_version: str,
    noise: float = 0.3,
    seed: int = 0,
    user_ids: list[str] | None = None,
) -> tuple[Path, Path]:
    """Write planted "LEARN" embeddings (latent + Gaussian noise) stamped ``as_of``.

    Every item gets a vector (LEARN's item tower needs only content); users default to those
    with an impression before ``as_of`` (the user tower needs a history).
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    if user_ids is None:
        before = world.impressions[world.impressions["timestamp"] < as_of]
        user_ids = sorted(before["user_id"].unique().tolist())
    item_ids = sorted(world.item_latent)
    dim = len(next(iter(world.item_latent.values())))

    def noisy(latents: list[np.ndarray]) -> np.ndarray:
        mat = np.stack(latents) if latents else np.zeros((0, dim))
        return (mat + rng.normal(0, noise, mat.shape)).astype(np.float32)

    users = EmbeddingTable("user", user_ids, noisy([world.user_latent[u] for u in user_ids]), as_of, model_version)
    items = EmbeddingTable("item", item_ids, noisy([world.item_latent[i] for i in item_ids]), as_of, model_version)
    return write_table(users, out_dir / USER_FILE), write_table(items, out_dir / ITEM_FILE)
