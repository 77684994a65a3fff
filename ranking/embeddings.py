"""Point-in-time join of LEARN embeddings onto impressions.

The ranking dataset only sees embeddings through an ``EmbeddingJoiner``: a callable taking
an entity frame (``user_id``, ``item_id`` strings, ``event_timestamp`` UTC, extra columns)
and returning the same rows plus ``user_embedding``/``item_embedding`` (float32 arrays, or
None when no embedding existed yet) and ``user_model_version``/``item_model_version``.
That is the contract of the Feast integration's ``historical_learn_features``; the Parquet
joiner implements the same rule (latest embedding with ``event_timestamp <= `` the row's
timestamp) so tests and Feast-less runs get identical semantics.

The caller decides *which* timestamp each row is joined at; the ranking dataset passes
``min(impression time, cut)`` so nothing published after the cut can ever be read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.embeddings_io import Entity, id_column, read_frame
from learn_features.errors import LearnFeaturesError

EmbeddingJoiner = Callable[[pd.DataFrame], pd.DataFrame]
JOINED_COLUMNS = ("user_embedding", "item_embedding", "user_model_version", "item_model_version")


class ParquetEmbeddingJoiner:
    """Join from snapshot files written by ``embeddings_io.write_table``.

    Each file is one snapshot (one timestamp per row, ids unique); several files per entity
    give the ranker the history of snapshots, exactly like an offline Feast source would.
    """

    def __init__(
        self, user_paths: Sequence[str | Path], item_paths: Sequence[str | Path], max_age: pd.Timedelta | None = None
    ) -> None:
        if not user_paths or not item_paths:
            raise LearnFeaturesError("parquet embeddings: need at least one user and one item embedding file")
        self.user_snapshots = _load_snapshots(user_paths, "user")
        self.item_snapshots = _load_snapshots(item_paths, "item")
        self.max_age = max_age

    def __call__(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        out = entity_df.copy()
        sides: tuple[tuple[Entity, pd.DataFrame], ...] = (("user", self.user_snapshots), ("item", self.item_snapshots))
        for entity, snapshots in sides:
            vectors, versions = point_in_time(out, snapshots, entity, self.max_age)
            out[f"{entity}_embedding"] = vectors
            out[f"{entity}_model_version"] = versions
        return out


def _load_snapshots(paths: Sequence[str | Path], entity: Entity) -> pd.DataFrame:
    frames = [read_frame(p, entity).assign(_source=str(p)) for p in paths]
    snap = pd.concat(frames, ignore_index=True)
    key = id_column(entity)
    dims = snap["embedding"].map(len).unique()
    if len(dims) > 1:
        raise LearnFeaturesError(f"{entity} embedding files {list(map(str, paths))}: mixed dimensions {sorted(dims)}")
    dup = snap.duplicated([key, "event_timestamp"], keep=False)
    if dup.any():
        row = snap[dup].iloc[0]
        raise LearnFeaturesError(
            f"{row['_source']}: {key} {row[key]!r} has two embeddings at {row['event_timestamp']} across files; "
            "point-in-time lookup would be ambiguous"
        )
    snap["event_timestamp"] = snap["event_timestamp"].astype("datetime64[ns, UTC]")
    return snap.drop(columns="_source")


def point_in_time(
    entity_df: pd.DataFrame, snapshots: pd.DataFrame, entity: Entity, max_age: pd.Timedelta | None = None
) -> tuple[list, list]:
    """For each row, the latest snapshot of its entity with ``event_timestamp <= row time``
    (and, with ``max_age``, no older than that: the rule of a Feast view with a TTL).

    Returns (vectors, model_versions) aligned with ``entity_df`` rows; None where no snapshot
    qualifies. ``merge_asof`` needs both sides sorted by time, so rows are sorted and put
    back in their original order afterwards.
    """
    key = id_column(entity)
    left = pd.DataFrame(
        {
            key: entity_df[key].astype("string").reset_index(drop=True),
            "event_timestamp": pd.to_datetime(entity_df["event_timestamp"], utc=True)
            .astype("datetime64[ns, UTC]")
            .reset_index(drop=True),
            "_pos": np.arange(len(entity_df)),
        }
    )
    right = snapshots[[key, "event_timestamp", "embedding", "model_version"]].sort_values("event_timestamp", kind="mergesort")
    merged = pd.merge_asof(
        left.sort_values("event_timestamp", kind="mergesort"),
        right,
        on="event_timestamp",
        by=key,
        direction="backward",
        allow_exact_matches=True,
        tolerance=max_age,
    ).sort_values("_pos")
    vectors = [v if isinstance(v, np.ndarray) else None for v in merged["embedding"]]
    versions = [None if pd.isna(v) else str(v) for v in merged["model_version"]]
    return vectors, versions


class FeastEmbeddingJoiner:
    """Join through Feast's ``get_historical_features`` via the Feast integration module."""

    def __init__(self, repo_path: str | Path) -> None:
        self.repo_path = Path(repo_path)
        if not self.repo_path.exists():
            raise LearnFeaturesError(f"{self.repo_path}: Feast repository not found")

    def __call__(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        # Imported here so the ranking package (and its Parquet path) works without Feast set up.
        try:
            from learn_features.store.historical import historical_learn_features
        except ImportError as exc:
            raise LearnFeaturesError(
                "embeddings.source='feast' needs learn_features.store.historical.historical_learn_features, "
                f"which is not importable ({exc}); use embeddings.source='parquet' instead"
            ) from exc
        return historical_learn_features(self.repo_path, entity_df)
