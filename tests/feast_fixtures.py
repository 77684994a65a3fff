"""Shared helpers for the Feast tests: throwaway repo copies, synthetic runs, server configs.

Every test works on its own copy of ``feature_repo/`` under tmp_path, so the checked-in
repo's data and registry are never touched, and on its own Redis key prefix (the Feast
project name) or Postgres schema, dropped afterwards.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from learn_features.atomic import write_json_atomic
from learn_features.data.tables import write_item_list
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, EmbeddingTable, write_table
from learn_features.new_items import NewItemRule
from learn_features.run import RunDir

REPO_SRC = Path(__file__).resolve().parents[1] / "feature_repo"
REPO_FILES = (
    ".feastignore", "feature_store.yaml", "feature_store.redis.yaml", "feature_store.postgres.yaml", "feature_store.ray.yaml",
    "feature_store.milvus.yaml", "learn_repo.py",
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def copy_repo(dest: Path) -> Path:
    """The checked-in repo's definitions and configs, without its data."""
    dest.mkdir(parents=True)
    for name in REPO_FILES:
        shutil.copy(REPO_SRC / name, dest / name)
    return dest


def unique_name(prefix: str = "learn_t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class SyntheticRun:
    run_dir: Path
    model_version: str
    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]


def write_run(
    run_dir: Path,
    model_version: str,
    n_users: int,
    n_items: int,
    dim: int,
    seed: int,
    as_of: str = "2026-01-01T00:00:00+00:00",
    item_ids: list[str] | None = None,
) -> SyntheticRun:
    """A run folder as the embed step leaves it: two embedding files and the manifest."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(as_of)
    users = [f"u{i}" for i in range(n_users)]
    items = item_ids if item_ids is not None else [f"i{i}" for i in range(n_items)]
    uvec = rng.standard_normal((len(users), dim)).astype(np.float32)
    ivec = rng.standard_normal((len(items), dim)).astype(np.float32)
    emb = run_dir / "embeddings"
    write_table(EmbeddingTable("user", users, uvec, ts, model_version), emb / USER_FILE)
    write_table(EmbeddingTable("item", items, ivec, ts, model_version), emb / ITEM_FILE)
    write_json_atomic(
        emb / "manifest.json",
        {"model_version": model_version, "dim": dim, "as_of": ts.isoformat(), "created_at": pd.Timestamp.now(tz="UTC").isoformat()},
    )
    return SyntheticRun(run_dir, model_version, dict(zip(users, uvec)), dict(zip(items, ivec)))


def with_new_item_rule(run: SyntheticRun, rule: NewItemRule, warm_ids: list[str]) -> SyntheticRun:
    """``run`` as `embed` leaves a method with a new-item rule: the rule in the manifest, the
    items it counts warm in ``embeddings/warm_items.parquet``."""
    run_dir = RunDir(run.run_dir)
    write_item_list(run_dir.warm_items, warm_ids)
    manifest = run_dir.read_manifest()
    write_json_atomic(run_dir.manifest, {**manifest, "new_item_rule": rule.record(), "warm_items": {"items": len(warm_ids)}})
    return run


def write_config(repo: Path, base: str, name: str, changes: dict[str, Any]) -> str:
    """Derive a config from a checked-in one, overriding (nested) keys; returns its file name."""
    config = yaml.safe_load((repo / base).read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / name).write_text(yaml.safe_dump(config))
    return name


def redis_config(repo: Path, project: str, port: int = REDIS_PORT) -> str:
    """The Redis config under its own project name, which Feast appends to every key."""
    return write_config(
        repo,
        "feature_store.redis.yaml",
        f"feature_store.{project}.yaml",
        {"project": project, "online_store.connection_string": f"{REDIS_HOST}:{port}", "registry": f"data/registry_{project}.db"},
    )


def drop_redis_project(project: str) -> int:
    import redis

    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    keys = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


def postgres_config(repo: Path, project: str, schema: str) -> str:
    """The Postgres config with registry and online tables in a schema of their own."""
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    return write_config(
        repo,
        "feature_store.postgres.yaml",
        f"feature_store.{project}.yaml",
        {"project": project, "registry.path": url, "online_store.db_schema": schema},
    )


def drop_postgres_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def publication_files(repo: Path) -> list[str]:
    """Every file of every publication under data/offline, relative, for before/after comparisons
    (the zero-row schema files under data/offline/_schema are no publication)."""
    root = repo / "data" / "offline"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return [f for f in files if not f.startswith("_schema/")]


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "embeddings" / "manifest.json").read_text())
