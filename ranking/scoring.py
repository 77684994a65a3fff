"""Online scoring with a trained ranker from explicit feature vectors.

Offline, a ranker scores rows of the ranking dataset; online, a service has a user id, the
user's LEARN vector and the candidates' LEARN vectors (read from the online store through
``LearnFeatureClient``) plus the id/statistics features from its own feature service.
``score_candidates`` assembles exactly the row layout the offline path uses and calls the
same ``predict``, so "online score == offline score for the same inputs" is a property of
the feature values alone, which is what the serving check verifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from ranking.joins import STAT_COLUMNS


class Ranker(Protocol):
    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


def candidate_frame(
    user_id: str,
    user_vector: np.ndarray | None,
    item_ids: Sequence[str],
    item_vectors: Sequence[np.ndarray | None],
    id_features: pd.DataFrame,
) -> pd.DataFrame:
    """One row per candidate in the ranking-dataset layout.

    ``id_features`` has one row per candidate (same order) with ``STAT_COLUMNS``, the item
    side columns the ranker was trained with (e.g. ``genres``, ``year``) and, for LightGBM +
    LEARN, ``HISTORY_COLUMNS``. A vector of None means the entity has no LEARN embedding
    (cold start), as in the offline join.
    """
    n = len(item_ids)
    if len(item_vectors) != n or len(id_features) != n:
        raise LearnFeaturesError(
            f"score_candidates: {n} item ids, {len(item_vectors)} item vectors and {len(id_features)} feature rows must match"
        )
    missing = [c for c in STAT_COLUMNS if c not in id_features.columns]
    if missing:
        raise LearnFeaturesError(f"score_candidates: id_features lacks column(s) {missing}")
    frame = id_features.reset_index(drop=True).copy()
    frame["user_id"] = pd.Series([str(user_id)] * n, dtype="string")
    frame["item_id"] = pd.Series([str(i) for i in item_ids], dtype="string")
    user_vec = None if user_vector is None else np.asarray(user_vector, dtype=np.float32)
    frame["user_embedding"] = [user_vec] * n
    frame["item_embedding"] = [None if v is None else np.asarray(v, dtype=np.float32) for v in item_vectors]
    return frame


def score_candidates(
    ranker: Ranker,
    user_id: str,
    user_vector: np.ndarray | None,
    item_ids: Sequence[str],
    item_vectors: Sequence[np.ndarray | None],
    id_features: pd.DataFrame,
) -> np.ndarray:
    """Conversion probabilities for ``item_ids`` shown to ``user_id`` (see ``candidate_frame``)."""
    return ranker.predict(candidate_frame(user_id, user_vector, item_ids, item_vectors, id_features))
