"""Point-in-time features of the ranking rows: statistics, LEARN embeddings, item-history similarity.

Statistics and history features use events strictly before a row's ``as_of``; LEARN
embeddings are the latest snapshot stamped at or before ``as_of``, and a snapshot stamped T is
computed from events strictly before T (LEARN's data cut, or a user-vector snapshot time). So
no feature of a row uses its own event or a later one (docs/ranking.md, "Periods and the
leakage rule").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from ranking.embeddings import JOINED_COLUMNS, EmbeddingJoiner
from ranking.features import row_cosine
from ranking.history import HistoryIndex

STAT_COLUMNS = ("user_n", "user_pos", "item_n", "item_pos")
#: Point-in-time history features of rows with LEARN embeddings (``history_similarity``).
HISTORY_COLUMNS = ("learn_history_cosine",)


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


def join_embeddings(
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
