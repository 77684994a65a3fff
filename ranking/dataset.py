"""The ranking dataset: labelled impressions (``ranking/loading.py``) split into periods
(``ranking/periods.py``), with point-in-time features (``ranking/joins.py``).

Leakage rule, applied to every row: each feature of an impression at time ``t`` is taken as of
one time ``as_of`` (``split.features_as_of``): ``min(t, cut)`` in ``"cut"`` mode, ``t`` itself in
``"impression"`` mode. Statistics and history features use events strictly before ``as_of``;
LEARN embeddings are the latest snapshot stamped at or before ``as_of``, and a snapshot stamped
T is computed from events strictly before T (LEARN's data cut, or a user-vector snapshot time).
So no feature of a row uses its own event or a later one. In ``"cut"`` mode evaluation rows see
the world frozen at the cut, as the LEARN model (trained only on pre-cut data) sees it: the
tests check that changing anything at or after the cut cannot change a single feature. In
``"impression"`` mode the tests check the stronger per-row form: changing anything at or
after a time T cannot change a feature of any row at or before T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from ranking.config import PeriodsConfig
from ranking.embeddings import EmbeddingJoiner
from ranking.history import HistoryIndex
from ranking.joins import HISTORY_COLUMNS, history_similarity, join_embeddings, point_in_time_stats
from ranking.loading import IMPRESSION_COLUMNS, validate_impressions
from ranking.periods import Periods, feature_times, resolve_periods


@dataclass
class RankingDataset:
    """Train/validation/evaluation frames with identical columns.

    Columns: ``user_id, item_id, timestamp, label, as_of`` + ``STAT_COLUMNS`` + item side
    columns (``genres``, numeric) + ``JOINED_COLUMNS`` when a joiner was given.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    periods: Periods
    item_numeric_columns: list[str]
    has_genres: bool
    has_embeddings: bool
    features_as_of: str = "cut"
    history_len: int | None = None  # the window of the history features, None without embeddings

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def build_dataset(
    impressions: pd.DataFrame,
    split: PeriodsConfig,
    history: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    joiner: EmbeddingJoiner | None = None,
    expected_model_version: str | None = None,
    history_len: int = 80,
) -> RankingDataset:
    """Assemble the labelled, split, feature-joined ranking dataset (see module docstring).

    ``history`` is all activity used for statistics (defaults to the impressions);
    ``joiner`` supplies LEARN embeddings point-in-time at each row's ``as_of``, and with them
    the item-history similarity over the user's last ``history_len`` events.
    """
    impressions = validate_impressions(impressions, "impressions")
    history = impressions if history is None else history
    periods = resolve_periods(impressions, split)
    ts = impressions["timestamp"]
    rows = impressions[(ts >= periods.train_start) & (ts <= periods.eval_end)].reset_index(drop=True)
    rows = rows[list(IMPRESSION_COLUMNS)].copy()
    rows["as_of"] = feature_times(rows["timestamp"], periods.cut, split.features_as_of)
    rows = pd.concat([rows, point_in_time_stats(history, rows, rows["as_of"])], axis=1)

    numeric_cols: list[str] = []
    has_genres = False
    if items is not None:
        dup = items["item_id"].duplicated()
        if dup.any():
            raise LearnFeaturesError(f"items: row {int(np.flatnonzero(dup)[0])}: duplicate item_id {items['item_id'][dup].iloc[0]!r}")
        has_genres = "genres" in items.columns
        numeric_cols = [c for c in items.columns if c not in ("item_id", "genres")]
        rows = rows.merge(items, on="item_id", how="left")
        if has_genres:
            rows["genres"] = rows["genres"].map(lambda g: g if isinstance(g, list) else [])

    if joiner is not None:
        rows = join_embeddings(rows, joiner, periods.cut, expected_model_version)
        rows[HISTORY_COLUMNS[0]] = history_similarity(rows, HistoryIndex.build(history), joiner, history_len)

    split_of = np.where(rows["timestamp"] < periods.valid_start, "train", np.where(rows["timestamp"] < periods.cut, "valid", "test"))
    frames = {name: rows[split_of == name].reset_index(drop=True) for name in ("train", "valid", "test")}
    return RankingDataset(
        train=frames["train"],
        valid=frames["valid"],
        test=frames["test"],
        periods=periods,
        item_numeric_columns=numeric_cols,
        has_genres=has_genres,
        has_embeddings=joiner is not None,
        features_as_of=split.features_as_of,
        history_len=history_len if joiner is not None else None,
    )
