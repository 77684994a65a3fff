"""Feast definitions for LEARN user and item embeddings.

Rows reach the offline sources only through ``learn-features publish`` (whole model
versions) and ``learn-features embed-items --push`` (cold-start items), which write one
directory per publication under ``data/offline/``. Every row carries its model version:
the serving client and the training join refuse to combine a user and an item vector of
different versions (see docs/feast.md, "Model versions and rollout").

The view tags record the dimension and model version of the latest full publication;
run ``feast apply`` after each publish so the registry shows them. Importing this file
(which ``feast apply`` does) also writes the zero-row schema files under
``data/offline/_schema/``, so the sources' globs match a file, and Feast can materialize,
before anything is published.

The FileSource paths are absolute (see ``offline_glob``) and the registry keeps them: after
copying or moving this folder, run ``feast apply`` in the new place.
"""

from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, String

from learn_features.store.commit import ensure_offline_schema
from learn_features.store.ledger import active_publication
from learn_features.store.repo import (
    EMBEDDING_TTL,
    ITEM,
    ITEM_PUSH_SOURCE,
    ITEM_SEARCH_METRIC,
    RANKER_SERVICE,
    USER,
    USER_PUSH_SOURCE,
    offline_glob,
)

REPO = Path(__file__).resolve().parent
OWNER = "learn-features"
ensure_offline_schema(REPO)
_active = active_publication(REPO)
TAGS = {
    "pipeline": "learn",
    "model_version": _active.model_version if _active else "unpublished",
    "dim": str(_active.dim) if _active else "unpublished",
}

user = Entity(
    name="user",
    join_keys=[USER.join_key],
    value_type=ValueType.STRING,
    description="A user of the recommender; ids are strings.",
    owner=OWNER,
)
item = Entity(
    name="item",
    join_keys=[ITEM.join_key],
    value_type=ValueType.STRING,
    description="A catalog item; ids are strings.",
    owner=OWNER,
)

learn_user_embeddings_source = FileSource(
    name="learn_user_embeddings",
    path=offline_glob(REPO, "user"),
    timestamp_field="event_timestamp",
    description="Published LEARN user embeddings, one Parquet file per publication.",
    owner=OWNER,
)
learn_item_embeddings_source = FileSource(
    name="learn_item_embeddings",
    path=offline_glob(REPO, "item"),
    timestamp_field="event_timestamp",
    description="Published LEARN item embeddings, including pushed cold-start items.",
    owner=OWNER,
)
learn_user_push = PushSource(
    name=USER_PUSH_SOURCE,
    batch_source=learn_user_embeddings_source,
    description="User vectors recomputed from the latest history (learn-features stream-users), pushed online at once.",
    owner=OWNER,
)
learn_item_push = PushSource(
    name=ITEM_PUSH_SOURCE,
    batch_source=learn_item_embeddings_source,
    description="Cold-start items embedded from text, pushed online without a batch run.",
    owner=OWNER,
)

learn_user_embedding = FeatureView(
    name=USER.view,
    entities=[user],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(name=USER.join_key, dtype=String),
        # Vector-indexed only because Feast's Milvus store (0.67) maps every float list to a
        # vector column but writes an unindexed one as a string, which Milvus refuses.
        Field(name=USER.embedding, dtype=Array(Float32), description="LEARN user tower output.",
              vector_index=True, vector_search_metric=ITEM_SEARCH_METRIC),
        Field(name=USER.model_version, dtype=String, description="Model version that produced the vector."),
    ],
    source=learn_user_push,
    online=True,
    owner=OWNER,
    description="LEARN user embedding (PCH user tower over the user's content history).",
    tags=TAGS,
)
learn_item_embedding = FeatureView(
    name=ITEM.view,
    entities=[item],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(name=ITEM.join_key, dtype=String),
        # Vector-indexed for stores with vector search (Milvus: feature_store.milvus.yaml), by
        # inner product, the score the ranker and `LearnFeatureClient.score` use; stores
        # without it (SQLite, Redis, Postgres as configured here) ignore the index.
        Field(name=ITEM.embedding, dtype=Array(Float32), description="LEARN item tower output.",
              vector_index=True, vector_search_metric=ITEM_SEARCH_METRIC),
        Field(name=ITEM.model_version, dtype=String, description="Model version that produced the vector."),
    ],
    source=learn_item_push,
    online=True,
    owner=OWNER,
    description="LEARN item embedding (PCH item tower over LLM content embeddings).",
    tags=TAGS,
)

learn_ranker = FeatureService(
    name=RANKER_SERVICE,
    features=[learn_user_embedding, learn_item_embedding],
    owner=OWNER,
    description="What a ranker reads: one user vector and its candidates' vectors.",
)
