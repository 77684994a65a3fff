"""Names, layout and loading of the LEARN Feast repo (``feature_repo/``).

The repo's definitions (``feature_repo/learn_repo.py``), the serving client, the training
join and the publisher all refer to the same views and fields, so their names live here
once. This module does not import Feast at import time: ``import feast`` costs 6-9 s
(it pulls in torch), and the publisher and the repo definitions' helpers must stay cheap.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError

if TYPE_CHECKING:
    from feast import FeatureStore

PROJECT = "learn_features"
DEFINITIONS_FILE = "learn_repo.py"
DEFAULT_CONFIG = "feature_store.yaml"

USER_VIEW = "learn_user_embedding"
ITEM_VIEW = "learn_item_embedding"
ITEM_PUSH_SOURCE = "learn_item_push"
USER_PUSH_SOURCE = "learn_user_push"
RANKER_SERVICE = "learn_ranker"
# Feast's name for the item view's vector-search metric: inner product, the ranker's score.
# LEARN vectors are unit length, so it orders items as cosine does; an ID tower with SASRec's
# tied output (model.tied_output) is served the raw dot product it was trained on.
ITEM_SEARCH_METRIC = "IP"

# Feast view TTL of the embeddings: 0, which Feast reads as "never expires". A LEARN vector
# stays valid until a newer publication replaces it, and a TTL would silently null it in
# point-in-time joins of impressions more than one TTL after the publication (a replay of
# months of ranker training data). Age is a serving policy instead: see STALE_AFTER.
EMBEDDING_TTL = timedelta(0)

# The serving client flags (but still scores) vectors older than this by default.
# LEARN vectors describe content and long-term taste, so they age slowly; a model should
# be retrained well within this window.
STALE_AFTER = timedelta(days=180)

# Published Parquet lives in one directory per publication under this folder (see
# store.ledger). The FileSources glob over it, so a publication appears in the offline
# store in one atomic directory rename.
OFFLINE_DIR = Path("data") / "offline"


@dataclass(frozen=True)
class EntityFields:
    """Column and feature names for one entity kind.

    The feature names carry the entity prefix (``user_embedding``, not ``embedding``)
    because the ranker's FeatureService serves both views in one response, where equal
    names would collide (Feast's FeatureNameCollisionError).
    """

    entity: Entity
    join_key: str
    embedding: str
    model_version: str
    view: str
    parquet_name: str


USER = EntityFields("user", "user_id", "user_embedding", "user_model_version", USER_VIEW, "user.parquet")
ITEM = EntityFields("item", "item_id", "item_embedding", "item_model_version", ITEM_VIEW, "item.parquet")
FIELDS: dict[Entity, EntityFields] = {"user": USER, "item": ITEM}


def offline_glob(repo_path: str | Path, entity: Entity) -> str:
    """Absolute glob of one entity's published Parquet files.

    Absolute because Feast's DuckDB store hands FileSource paths to DuckDB unresolved,
    i.e. relative to the process's working directory rather than to the repo.
    """
    return str(Path(repo_path).resolve() / OFFLINE_DIR / "*" / FIELDS[entity].parquet_name)


def resolve_config(repo_path: str | Path, config: str | Path | None = None) -> Path:
    """The feature_store YAML to use: ``config`` relative to the repo, else the default one."""
    repo = Path(repo_path)
    if not repo.is_dir():
        raise LearnFeaturesError(f"{repo}: Feast repo folder not found")
    path = Path(config) if config is not None else Path(DEFAULT_CONFIG)
    if not path.is_absolute():
        path = repo / path
    if not path.is_file():
        raise LearnFeaturesError(f"{path}: Feast config not found")
    return path.resolve()


def open_store(repo_path: str | Path, config: str | Path | None = None) -> FeatureStore:
    """A FeatureStore for the repo and config, with user-facing errors for bad paths."""
    from feast import FeatureStore

    fs_yaml = resolve_config(repo_path, config)
    try:
        return FeatureStore(repo_path=str(Path(repo_path).resolve()), fs_yaml_file=fs_yaml)
    except Exception as exc:  # Feast raises pydantic/yaml errors of many types for bad configs
        raise LearnFeaturesError(f"{fs_yaml}: cannot load Feast config: {exc}") from exc


def open_applied_store(repo_path: str | Path, config: str | Path | None = None) -> FeatureStore:
    """``open_store`` for commands that read or load data: the registry must hold this repo's views.

    The FileSources' paths are absolute (see ``offline_glob``) and the registry keeps them as
    they were at ``feast apply``. A repo copied or moved to another folder therefore reads
    the *old* folder's publications until ``feast apply`` runs in the new one: silently
    stale data while the old folder exists, a DuckDB error once it is gone. Refused here,
    with the fix.
    """
    config_path = resolve_config(repo_path, config)
    store = open_store(repo_path, config_path)
    with store_errors("reading the Feast registry", config_path):
        views = {fields.entity: store.get_feature_view(fields.view) for fields in FIELDS.values()}
    repo = Path(repo_path).resolve()
    for entity, view in views.items():
        registered, expected = view.batch_source.path, offline_glob(repo, entity)
        if registered != expected:
            raise LearnFeaturesError(
                f"{config_path}: the registry points at {registered}, not at this repo's {expected} "
                f"(was the repo copied or moved?); run `feast apply` in {repo}"
            )
    return store


def load_definitions(repo_path: str | Path) -> list[Any]:
    """Import the repo's definitions file and return the Feast objects it declares.

    This is what ``feast apply`` does, minus two things that break when one process
    handles several repo copies (tests, benchmarks): it changes the working directory,
    and it imports the file under a fixed module name, so a second copy would get the
    first copy's cached module and therefore its paths.
    """
    from feast import Entity as FeastEntity
    from feast import FeatureService, FeatureView
    from feast.data_source import DataSource

    path = Path(repo_path).resolve() / DEFINITIONS_FILE
    if not path.is_file():
        raise LearnFeaturesError(f"{path}: Feast definitions file not found")
    name = f"_learn_repo_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    kinds = (FeastEntity, DataSource, FeatureView, FeatureService)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


def apply_repo(store: FeatureStore, repo_path: str | Path) -> None:
    """Register the repo's definitions and create their online tables (``feast apply``)."""
    store.apply(load_definitions(repo_path))


def _store_error_types() -> tuple[type[BaseException], ...]:
    """Failures that come from outside this process: servers, files, an unapplied registry."""
    from feast.errors import FeastError

    types: list[type[BaseException]] = [FeastError, OSError, sqlite3.Error]
    try:
        from redis.exceptions import RedisError

        types.append(RedisError)
    except ImportError:
        pass
    try:
        from psycopg import Error as PsycopgError

        types.append(PsycopgError)
    except ImportError:
        pass
    try:
        from sqlalchemy.exc import SQLAlchemyError

        types.append(SQLAlchemyError)
    except ImportError:
        pass
    try:
        from pymilvus.exceptions import MilvusException

        types.append(MilvusException)
    except ImportError:
        pass
    return tuple(types)


def vector_search_dim(store: FeatureStore) -> int | None:
    """The vector dimension the config's online store searches (Milvus: ``embedding_dim``), or
    None for a store without vector search (SQLite, Redis and Postgres as configured here)."""
    online = store.config.online_store
    return getattr(online, "embedding_dim", None) if getattr(online, "vector_enabled", False) else None


def require_vector_dim(store: FeatureStore, config_path: Path, dim: int, what: str) -> None:
    """Refuse ``dim``-d vectors for a vector store configured for another dimension, before
    the store itself refuses them half-way through a load."""
    configured = vector_search_dim(store)
    if configured is not None and configured != dim:
        raise LearnFeaturesError(
            f"{config_path}: online_store.embedding_dim is {configured}, but {what} has {dim}-d vectors; set "
            f"embedding_dim: {dim}, then `feast -f {config_path.name} teardown` and `feast -f {config_path.name} apply` "
            "(a vector collection's dimension is fixed when it is created)"
        )


@contextmanager
def store_errors(action: str, config_path: Path) -> Iterator[None]:
    """Turn an unreachable store or unapplied repo into one line naming the config at fault."""
    from feast.errors import FeastObjectNotFoundException

    try:
        yield
    except _store_error_types() as exc:
        hint = "; run `feast apply` in the repo first" if isinstance(exc, FeastObjectNotFoundException) else ""
        raise LearnFeaturesError(f"{config_path}: {action} failed: {type(exc).__name__}: {exc}{hint}") from exc
