"""Labelled impressions, time periods and point-in-time features for the ranking experiment.

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
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.data.movielens import YEAR_SUFFIX, load_movielens_ratings
from learn_features.data.split import parse_time
from learn_features.data.labels import LabelRule
from learn_features.data.tables import load_generic, parse_timestamps, read_table, require_columns, validate_interactions
from learn_features.errors import LearnFeaturesError
from ranking.config import DataConfig, SplitConfig
from ranking.embeddings import JOINED_COLUMNS, EmbeddingJoiner
from ranking.features import row_cosine
from ranking.history import HistoryIndex
from ranking.metrics import check_labels

IMPRESSION_COLUMNS = ("user_id", "item_id", "timestamp", "label")
STAT_COLUMNS = ("user_n", "user_pos", "item_n", "item_pos")
#: Point-in-time history features of rows with LEARN embeddings (``history_similarity``).
HISTORY_COLUMNS = ("learn_history_cosine",)


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


def movielens_impressions(
    ratings_path: str | Path, positive_min_rating: float = 4.0, negative_max_rating: float = 3.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens ratings as (impressions, history), labelled ``rating >= positive_min_rating``
    (conversion) and ``rating <= negative_max_rating`` (non-conversion).

    The ratings are read by the library's MovieLens reader, the one LEARN trains on.
    """
    if negative_max_rating >= positive_min_rating:
        raise LearnFeaturesError(
            f"data: negative_max_rating {negative_max_rating} must be below positive_min_rating {positive_min_rating}"
        )
    rules = LabelRule.parse(f"rating >= {positive_min_rating}"), LabelRule.parse(f"rating <= {negative_max_rating}")
    return labelled_impressions(load_movielens_ratings(ratings_path), *rules, str(ratings_path))


def movielens_items(movies_path: str | Path) -> pd.DataFrame:
    """Item side table: ``item_id``, ``genres`` (list of str) and release ``year`` from the title.

    Read with the library's reader and year pattern, as LEARN's catalog is, so both see the
    same ids and years.
    """
    raw = read_table(movies_path)
    require_columns(raw, ("movieId", "title", "genres"), f"{movies_path} (MovieLens movies)")
    return pd.DataFrame(
        {
            "item_id": raw["movieId"].astype(str).astype("string"),
            "genres": raw["genres"].fillna("").map(_split_genres),
            "year": raw["title"].fillna("").str.extract(YEAR_SUFFIX)[0].astype(float),
        }
    )


def _split_genres(value: str, separator: str = "|") -> list[str]:
    genres = (g.strip() for g in str(value).split(separator))
    return [g for g in genres if g and g != "(no genres listed)"]


def side_items(df: pd.DataFrame, genres_column: str | None, separator: str, source: str) -> pd.DataFrame:
    """Item side table: ``item_id``, ``genres`` (a list, from ``genres_column`` split on
    ``separator``) and every numeric column (a column whose every non-empty cell is a number)."""
    require_columns(df, ("item_id", *([genres_column] if genres_column else [])), source)
    out = pd.DataFrame({"item_id": df["item_id"].astype(str).astype("string")})
    if genres_column:
        out["genres"] = df[genres_column].fillna("").map(lambda v: _split_genres(v, separator))
    numeric = {c: _as_numbers(df[c]) for c in df.columns if c not in ("item_id", genres_column)}
    return out.assign(**{c: v for c, v in numeric.items() if v is not None})


def generic_items(path: str | Path) -> pd.DataFrame:
    """Item side table for the generic path: ``item_id``, optional pipe-separated ``genres``,
    any other numeric columns used as-is."""
    df = read_table(path)
    return side_items(df, "genres" if "genres" in df.columns else None, "|", str(path))


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


def files_data(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(impressions, history, items) from LEARN's own input tables (``data.source = "files"``),
    read by LEARN's loader, so the ranker and LEARN see the same rows, ids and times."""
    if cfg.items:
        dataset = load_generic(cfg.interactions, cfg.items)
        interactions, catalog = dataset.interactions, dataset.catalog
    else:
        interactions, catalog = validate_interactions(read_table(cfg.interactions), cfg.interactions), None
    positive, negative = cfg.label_rules()
    impressions, history = labelled_impressions(interactions, positive, negative, cfg.interactions)
    items = None if catalog is None else side_items(catalog, cfg.genres_column, cfg.genres_separator, str(cfg.items))
    return impressions, history, items


def load_data(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(impressions, history, items) for a ``DataConfig``."""
    if cfg.format == "movielens":
        impressions, history = movielens_impressions(cfg.interactions, cfg.positive_min_rating, cfg.negative_max_rating)
        items = movielens_items(cfg.items) if cfg.items else None
    elif cfg.format == "files":
        return files_data(cfg)
    else:
        impressions = validate_impressions(read_table(cfg.interactions), cfg.interactions)
        history = impressions
        items = generic_items(cfg.items) if cfg.items else None
    return impressions, history, items


@dataclass(frozen=True)
class Periods:
    """Half-open periods: train [train_start, valid_start), valid [valid_start, cut), eval [cut, eval_end]."""

    train_start: pd.Timestamp
    valid_start: pd.Timestamp
    cut: pd.Timestamp
    eval_end: pd.Timestamp

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.__dict__.items()}


def resolve_periods(impressions: pd.DataFrame, cfg: SplitConfig) -> Periods:
    ts = impressions["timestamp"]
    if ts.empty:
        raise LearnFeaturesError("impressions: no rows")
    cut = parse_time(cfg.cut, "split.cut") if cfg.cut else ts.quantile(cfg.cut_quantile)
    train_start = parse_time(cfg.train_start, "split.train_start") if cfg.train_start else ts.min()
    eval_end = parse_time(cfg.eval_end, "split.eval_end") if cfg.eval_end else ts.max()
    before = ts[(ts >= train_start) & (ts < cut)]
    if before.empty:
        raise LearnFeaturesError(f"split: no impressions in [{train_start}, {cut}); move the cut or train_start")
    valid_start = before.quantile(1.0 - cfg.valid_fraction)
    periods = Periods(train_start, valid_start, cut, eval_end)
    counts = {
        "train": int(((ts >= train_start) & (ts < valid_start)).sum()),
        "validation": int(((ts >= valid_start) & (ts < cut)).sum()),
        "evaluation": int(((ts >= cut) & (ts <= eval_end)).sum()),
    }
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise LearnFeaturesError(f"split: period(s) {empty} have no impressions ({periods.to_dict()})")
    return periods


def point_in_time_stats(history: pd.DataFrame, rows: pd.DataFrame, as_of: pd.Series) -> pd.DataFrame:
    """Per row: the user's and item's interaction and positive counts strictly before ``as_of``.

    Vectorised with one sort per entity: history and query times share a dense time rank, the
    history is sorted by (entity, rank), and a ``searchsorted`` of each query's
    (entity, rank) key counts the earlier events; cumulative positive sums give positives.
    """
    t_hist = history["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    t_query = as_of.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    all_times, inverse = np.unique(np.r_[t_hist, t_query], return_inverse=True)
    rank_hist, rank_query = inverse[: len(t_hist)], inverse[len(t_hist) :]
    stride = np.int64(len(all_times) + 1)
    labels = history["label"].to_numpy(dtype=np.float64) if "label" in history else np.zeros(len(history))
    out: dict[str, np.ndarray] = {}
    for entity in ("user", "item"):
        key = f"{entity}_id"
        codes, uniques = pd.factorize(pd.concat([history[key], rows[key]], ignore_index=True).astype("string"))
        c_hist, c_query = codes[: len(history)].astype(np.int64), codes[len(history) :].astype(np.int64)
        composite = c_hist * stride + rank_hist
        order = np.argsort(composite, kind="mergesort")
        sorted_comp = composite[order]
        cum_pos = np.r_[0.0, np.cumsum(labels[order])]
        end = np.searchsorted(sorted_comp, c_query * stride + rank_query, side="left")
        start = np.searchsorted(sorted_comp, c_query * stride, side="left")
        out[f"{entity}_n"] = (end - start).astype(np.int64)
        out[f"{entity}_pos"] = (cum_pos[end] - cum_pos[start]).astype(np.int64)
    return pd.DataFrame(out, index=rows.index)[list(STAT_COLUMNS)]


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
    split: SplitConfig,
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
        rows = _join_embeddings(rows, joiner, periods.cut, expected_model_version)
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


def feature_times(timestamps: pd.Series, cut: pd.Timestamp, mode: str) -> pd.Series:
    """Each row's ``as_of``: the impression time, clamped to the cut in ``"cut"`` mode."""
    return timestamps.where(timestamps < cut, cut) if mode == "cut" else timestamps.copy()


def history_similarity(rows: pd.DataFrame, index: HistoryIndex, joiner: EmbeddingJoiner, history_len: int) -> np.ndarray:
    """Cosine between a row's LEARN item vector and the mean LEARN item vector of its user's
    last ``history_len`` events strictly before ``as_of`` (NaN without either).

    Unlike the user vector, this needs no user snapshot: item vectors exist for every catalog
    item from the model's publication on, so its coverage does not depend on when a user
    arrived. History items read the vectors of the model version the row's own item vector
    comes from (visible at ``as_of``, or the row would have none): an item vector is a
    function of the item's text and the model alone, so within one version it does not
    change with time. Each version's vectors are read through the joiner once, as of the
    latest row that sees that version.
    """
    out = np.full(len(rows), np.nan)
    has_item = rows["item_embedding"].notna().to_numpy()
    versions = rows["item_model_version"].to_numpy(dtype=object)
    history_items = pd.unique(pd.Series(index.item_ids, dtype=object))
    for version in sorted({v for v in versions[has_item]}):
        mine = np.flatnonzero(has_item & (versions == version))
        sub = rows.iloc[mine]
        found = _item_vectors(joiner, history_items, sub["as_of"].max(), version)
        if found is None:
            continue
        lookup, matrix = found
        position = lookup.get_indexer(index.item_ids)
        event_vectors = np.where(position[:, None] >= 0, matrix[np.maximum(position, 0)], 0.0)
        means, used = index.last_n_mean(sub["user_id"], sub["as_of"], event_vectors, position >= 0, history_len)
        out[mine] = row_cosine(means, np.stack(sub["item_embedding"].to_numpy()).astype(np.float64), used > 0)
    return out


def _item_vectors(joiner: EmbeddingJoiner, item_ids: np.ndarray, at: pd.Timestamp, version: str) -> tuple[pd.Index, np.ndarray] | None:
    """(ids, vectors) of ``version`` among ``item_ids``, read through the joiner as of ``at``; None if none."""
    entity = pd.DataFrame({"user_id": "", "item_id": item_ids, "event_timestamp": at, "ranking_row": np.arange(len(item_ids))})
    table = joiner(entity).sort_values("ranking_row")
    keep = (table["item_model_version"] == version).to_numpy() & table["item_embedding"].notna().to_numpy()
    if not keep.any():
        return None
    vectors = np.stack(table["item_embedding"].to_numpy()[keep]).astype(np.float64)
    return pd.Index(table["item_id"].astype(str).to_numpy()[keep]), vectors



def _join_embeddings(
    rows: pd.DataFrame, joiner: EmbeddingJoiner, cut: pd.Timestamp, expected_model_version: str | None
) -> pd.DataFrame:
    entity_df = pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "item_id": rows["item_id"],
            "event_timestamp": rows["as_of"],
            "ranking_row": np.arange(len(rows)),
        }
    )
    joined = joiner(entity_df)
    missing = [c for c in (*JOINED_COLUMNS, "ranking_row") if c not in joined.columns]
    if missing:
        raise LearnFeaturesError(f"embedding join returned no column(s) {missing}")
    # Feast does not promise row order; the row key restores it and proves no row was lost.
    joined = joined.sort_values("ranking_row").reset_index(drop=True)
    if len(joined) != len(rows) or not np.array_equal(joined["ranking_row"].to_numpy(), np.arange(len(rows))):
        raise LearnFeaturesError(f"embedding join returned {len(joined)} rows for {len(rows)} impressions")
    out = rows.copy()
    for entity in ("user", "item"):
        vectors = [None if _absent(v) else np.asarray(v, dtype=np.float32) for v in joined[f"{entity}_embedding"]]
        versions = [None if _absent(v) else str(v) for v in joined[f"{entity}_model_version"]]
        _check_vectors(vectors, entity)
        out[f"{entity}_embedding"] = vectors
        out[f"{entity}_model_version"] = versions
        if expected_model_version is not None:
            bad = [i for i, v in enumerate(versions) if v is not None and v != expected_model_version]
            if bad:
                i = bad[0]
                raise LearnFeaturesError(
                    f"impression row {i} (user {out['user_id'][i]!r}, item {out['item_id'][i]!r}, as of {out['as_of'][i]}): "
                    f"{entity} embedding from model version {versions[i]!r}, expected {expected_model_version!r} "
                    f"(trained before the cut {cut})"
                )
    return out


def _absent(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return bool(value is pd.NA)


def _check_vectors(vectors: list[np.ndarray | None], entity: str) -> None:
    dims = {v.shape for v in vectors if v is not None}
    if len(dims) > 1:
        raise LearnFeaturesError(f"{entity} embeddings from the join have mixed shapes {sorted(dims)}")
    for i, v in enumerate(vectors):
        if v is not None and not np.isfinite(v).all():
            raise LearnFeaturesError(f"impression row {i}: joined {entity} embedding has NaN or inf")
