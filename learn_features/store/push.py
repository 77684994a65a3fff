"""Pushing cold-start item embeddings straight to the online store.

A new catalog item gets its vector from text alone (the trained item tower over its LLM
content embedding), so it can be ranked before the next training run or batch
materialization. Rows go through the repo's PushSource with ``FeatureStore.push``, then
are recorded as a ``push`` publication so that training joins see them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from learn_features.embeddings_io import EmbeddingTable, validate_frame
from learn_features.errors import LearnFeaturesError
from learn_features.store.commit import EntityVectors, commit_publication
from learn_features.store.ledger import Publication, active_publication, next_publish_time, publish_lock
from learn_features.store.materialize import record_loaded, store_key
from learn_features.store.repo import FIELDS, ITEM_PUSH_SOURCE, open_applied_store, require_vector_dim, resolve_config, store_errors


def push_frame(table: EmbeddingTable, pushed_at: pd.Timestamp) -> pd.DataFrame:
    """A PushSource's row format for ``table``'s entity: Feast feature names, one shared event time."""
    fields = FIELDS[table.entity]
    return pd.DataFrame(
        {
            fields.join_key: [str(i) for i in table.ids],
            fields.embedding: list(table.vectors.astype(np.float32)),
            fields.model_version: table.model_version,
            "event_timestamp": pd.Series([pushed_at] * len(table.ids), dtype="datetime64[us, UTC]"),
        }
    )


def catalog_rows(catalog: pd.DataFrame) -> pa.Table:
    """Catalog rows as the Arrow table a push keeps; converted before anything is pushed, so a
    column that Parquet cannot hold fails the push instead of its record."""
    try:
        return pa.Table.from_pandas(catalog, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise LearnFeaturesError(f"catalog rows cannot be kept as Parquet ({exc}); give each column a single type") from None


def record_push(
    repo_path: str | Path, table: EmbeddingTable, published_at: pd.Timestamp, catalog: pa.Table | None = None
) -> Publication:
    """Keep pushed cold-start items in the offline store too, for point-in-time training joins.

    Call under ``publish_lock`` with the time the rows were pushed online. ``catalog``, the
    rows the vectors were embedded from, lets a later model version re-embed these items
    (``published.stale_pushed_items``) when a rollout leaves them behind.
    """
    vectors = EntityVectors.sorted(table.ids, table.vectors.astype(np.float32))
    return commit_publication(repo_path, "push", table.model_version, {"item": vectors}, published_at, "push", catalog=catalog)


def push_item_embeddings(
    repo_path: str | Path, table: EmbeddingTable, config: str | Path | None = None, catalog: pd.DataFrame | None = None
) -> Publication:
    """Validate item vectors, push them online, then record them offline.

    Refuses vectors of any model version other than the active (latest published) one,
    since every user vector online belongs to that version. The online write happens
    first: if the store is unreachable nothing is recorded, and a retry writes no
    duplicate offline rows. ``catalog``, the rows the vectors came from, is recorded with
    them so that a later rollout can re-embed these items (``embed-items --repush-stale``).
    The publication counts as loaded into this config's online store
    (``learn-features materialize`` loads it into the others).
    """
    if table.entity != "item":
        raise LearnFeaturesError(f"push_item_embeddings: expected item embeddings, got {table.entity}")
    validate_frame(table.to_frame(), "item", "pushed item embeddings", table.dim)
    rows = None if catalog is None else catalog_rows(catalog)
    config_path = resolve_config(repo_path, config)
    with publish_lock(repo_path):
        active = active_publication(repo_path)
        if active is None:
            raise LearnFeaturesError(f"{repo_path}: nothing published yet; run `learn-features publish` before pushing items")
        if table.model_version != active.model_version or table.dim != active.dim:
            raise LearnFeaturesError(
                f"pushed items are model_version {table.model_version!r} (dim {table.dim}) but the active "
                f"publication {active.publication_id} is {active.model_version!r} (dim {active.dim}); "
                "publish the new run first, then push with it"
            )
        pushed_at = next_publish_time(repo_path)
        store = open_applied_store(repo_path, config_path)
        require_vector_dim(store, config_path, table.dim, "this push")
        with store_errors("pushing items to the online store", config_path):
            from feast.data_source import PushMode

            store.push(ITEM_PUSH_SOURCE, push_frame(table, pushed_at), to=PushMode.ONLINE)
        publication = record_push(repo_path, table, pushed_at, rows)
        record_loaded(repo_path, store_key(repo_path, config_path, store), [publication])
        return publication
