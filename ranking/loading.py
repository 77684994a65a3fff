"""The ranking's labelled impressions and item side tables, read through the library's data readers.

The interactions and the catalog come from ``learn_features.data.sources``, the readers LEARN
trains on, so the ranker and LEARN see the same rows, ids and UTC times. Here they become
labels (``data.positive`` / ``data.negative``) and item side features (genres, numeric columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from learn_features.data.config import DataConfig
from learn_features.data.labels import LabelRule
from learn_features.data.sources import data_source
from learn_features.data.tables import LoadReport, check_items_in_catalog, parse_timestamps, require_columns
from learn_features.errors import LearnFeaturesError
from ranking.metrics import check_labels

IMPRESSION_COLUMNS = ("user_id", "item_id", "timestamp", "label")


def validate_impressions(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Normalise a generic impressions table, or raise naming the column/row at fault."""
    missing = [c for c in IMPRESSION_COLUMNS if c not in df.columns]
    if missing:
        raise LearnFeaturesError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
    out = df.reset_index(drop=True).copy()
    for col in ("user_id", "item_id"):
        empty = out[col].isna()
        if empty.any():
            raise LearnFeaturesError(f"{source}: row {int(np.flatnonzero(empty)[0])}: {col} is empty")
        out[col] = out[col].astype("string")
    # The library's rules (unix seconds, ISO strings or datetimes; naive = UTC), so the ranker
    # and LEARN read one timestamp column the same way. One unit (ns) keeps the joins exact.
    out["timestamp"] = parse_timestamps(out["timestamp"], source).astype("datetime64[ns, UTC]")
    out["label"] = check_labels(out["label"].to_numpy(), source)
    return out


def labelled_impressions(
    interactions: pd.DataFrame, positive: LabelRule, negative: LabelRule | None, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated interactions as (impressions, history), labelled by rules.

    ``history`` holds every row: all of it is user/item activity for the history statistics
    and the tiers, with ``label`` 1 where ``positive`` holds. ``impressions`` are the rows a
    rule labels: 1 where ``positive`` holds, 0 where ``negative`` holds (every other row
    when ``negative`` is None). A row that matches neither is activity but not an impression
    (a 3.5 rating between "rating >= 4" and "rating <= 3"); a row that matches both is an error.
    """
    pos = positive.matches(interactions, source)
    if negative is None:
        neg = ~pos
    else:
        neg = negative.matches(interactions, source)
        both = np.flatnonzero(pos & neg)
        if both.size:
            raise LearnFeaturesError(
                f"{source}: {both.size} row(s) match both the positive rule {positive.text!r} and the negative rule "
                f"{negative.text!r} (first: row {int(both[0]) + 1}); make the rules exclusive"
            )
    history = validate_impressions(interactions.assign(label=pos.astype(np.int8)), source)
    return history[pos | neg].reset_index(drop=True), history


def load_data(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(impressions, history, items) for a ``DataConfig``: the source's interactions in its row
    order, labelled by ``data.positive`` and ``data.negative``, and the side table of its catalog
    (None without one)."""
    reader = data_source(cfg.source)
    interactions_path, catalog_path = reader.paths(cfg)
    interactions = reader.interactions(cfg)
    catalog = reader.catalog(cfg, LoadReport())
    if catalog is not None:
        check_items_in_catalog(interactions, catalog, str(interactions_path))
    positive, negative = cfg.conversion_rules()
    impressions, history = labelled_impressions(interactions, positive, negative, str(interactions_path))
    if catalog is None:
        return impressions, history, None
    genres_column, separator = reader.genres(cfg)
    return impressions, history, side_items(catalog, genres_column, separator, str(catalog_path))


def side_items(df: pd.DataFrame, genres_column: str | None, separator: str, source: str) -> pd.DataFrame:
    """Item side table: ``item_id``, ``genres`` (a list, from ``genres_column`` split on
    ``separator``) and every numeric column (a column whose every non-empty cell is a number)."""
    require_columns(df, ("item_id", *([genres_column] if genres_column else [])), source)
    out = pd.DataFrame({"item_id": df["item_id"].astype(str).astype("string")})
    if genres_column:
        out["genres"] = df[genres_column].fillna("").map(lambda v: _split_genres(v, separator))
    numeric = {c: _as_numbers(df[c]) for c in df.columns if c not in ("item_id", genres_column)}
    return out.assign(**{c: v for c, v in numeric.items() if v is not None})


def _split_genres(value: str, separator: str = "|") -> list[str]:
    genres = (g.strip() for g in str(value).split(separator))
    return [g for g in genres if g and g != "(no genres listed)"]


def _as_numbers(column: pd.Series) -> pd.Series | None:
    """The column as numbers if every non-empty cell is one, else None (a text column, not a feature).

    ``read_table`` gives CSV cells as strings (ids must stay exact), so numeric item features
    are recognised here, by the same rule pandas' own CSV type inference uses.
    """
    if pd.api.types.is_numeric_dtype(column):
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    filled = column.notna() & (column.astype("string").str.strip() != "")  # a blank string is an empty cell
    return numbers if numbers.notna().sum() == filled.sum() else None
