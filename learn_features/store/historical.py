"""Point-in-time-correct LEARN features for ranker training data.

Each impression gets the user and item vectors that were published at or before its
timestamp (Feast ``get_historical_features`` over the DuckDB offline store, looking back
at most the views' TTL), never a vector published later. The same version rule as
online serving applies: a row whose user and item vectors come from different model
versions gets neither vector and is flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from learn_features.store.repo import ITEM, RANKER_SERVICE, USER, open_applied_store, resolve_config, store_errors

ROW = "__learn_row"
MISMATCH = "learn_version_mismatch"
OUTPUT_COLUMNS = (USER.embedding, ITEM.embedding, USER.model_version, ITEM.model_version, MISMATCH)


def _validate_entity_df(entity_df: pd.DataFrame) -> pd.DataFrame:
    """Keys and UTC microsecond timestamps for Feast; errors name the column and row."""
    missing = [c for c in (USER.join_key, ITEM.join_key, "event_timestamp") if c not in entity_df.columns]
    if missing:
        raise LearnFeaturesError(f"entity_df: missing column(s) {missing}; found {list(entity_df.columns)}")
    taken = [c for c in (*OUTPUT_COLUMNS, ROW) if c in entity_df.columns]
    if taken:
        raise LearnFeaturesError(f"entity_df: column(s) {taken} would be overwritten by LEARN features; rename them")
    ts = entity_df["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise LearnFeaturesError(f"entity_df: column event_timestamp must be timezone-aware (UTC); got {ts.dtype}")
    keys = pd.DataFrame(index=range(len(entity_df)))
    for col in (USER.join_key, ITEM.join_key):
        values = entity_df[col]
        bad = np.flatnonzero(~values.map(lambda v: isinstance(v, str)).to_numpy())
        if bad.size:
            row = int(bad[0])
            raise LearnFeaturesError(f"entity_df: row {row}: {col} must be a string, got {values.iloc[row]!r}")
        keys[col] = values.to_numpy(dtype=object)
    if ts.isna().any():
        raise LearnFeaturesError(f"entity_df: row {int(np.flatnonzero(ts.isna())[0])}: event_timestamp is empty")
    keys["event_timestamp"] = ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").to_numpy()
    keys[ROW] = np.arange(len(entity_df), dtype=np.int64)
    return keys


def _as_vectors(column: pd.Series) -> list[np.ndarray | None]:
    return [None if v is None or (np.isscalar(v) and pd.isna(v)) else np.asarray(v, dtype=np.float32) for v in column]


def _as_versions(column: pd.Series) -> list[str | None]:
    return [None if v is None or (np.isscalar(v) and pd.isna(v)) else str(v) for v in column]


def historical_learn_features(
    repo_path: str | Path,
    entity_df: pd.DataFrame,
    config: str | Path | None = None,
    model_version: str | None = None,
) -> pd.DataFrame:
    """``entity_df`` (``user_id``, ``item_id``, UTC ``event_timestamp``, any extras) plus LEARN features.

    Adds ``user_embedding`` and ``item_embedding`` (float32 arrays, None when absent),
    ``user_model_version``, ``item_model_version`` and ``learn_version_mismatch``. Rows
    come back in the input order with the input index. A mismatched row (the two
    versions differ, or one differs from ``model_version`` when given) has both vectors
    set to None; its version columns still say what was found.
    """
    keys = _validate_entity_df(entity_df)
    config_path = resolve_config(repo_path, config)
    store = open_applied_store(repo_path, config_path)
    with store_errors("reading historical features", config_path):
        service = store.get_feature_service(RANKER_SERVICE)
        joined = store.get_historical_features(entity_df=keys, features=service).to_df()
    if len(joined) != len(keys):
        raise LearnFeaturesError(f"offline store returned {len(joined)} rows for {len(keys)} entity rows")
    joined = joined.sort_values(ROW).reset_index(drop=True)

    user_vecs, item_vecs = _as_vectors(joined[USER.embedding]), _as_vectors(joined[ITEM.embedding])
    user_vers, item_vers = _as_versions(joined[USER.model_version]), _as_versions(joined[ITEM.model_version])
    mismatch = np.zeros(len(joined), dtype=bool)
    for i, (uv, iv) in enumerate(zip(user_vers, item_vers)):
        found = [v for v in (uv, iv) if v is not None]
        mismatch[i] = len(set(found)) > 1 or (model_version is not None and any(v != model_version for v in found))
        if mismatch[i]:
            user_vecs[i] = item_vecs[i] = None

    out = entity_df.copy()
    out[USER.embedding] = pd.Series(user_vecs, index=out.index, dtype=object)
    out[ITEM.embedding] = pd.Series(item_vecs, index=out.index, dtype=object)
    out[USER.model_version] = pd.Series(user_vers, index=out.index, dtype=object)
    out[ITEM.model_version] = pd.Series(item_vers, index=out.index, dtype=object)
    out[MISMATCH] = mismatch
    return out
