"""``learn-features materialize``: load the publications an online store lacks, whatever their age.

Why not plain ``feast materialize-incremental``: the LEARN views never expire (TTL 0, see
``store.repo.EMBEDDING_TTL``), and for such a view Feast starts the first incremental
window 52 weeks before now. A publication stamped earlier (``publish --event-time as-of``
of a 2016 model, or any publication older than a year materialized into a new Redis)
loads nothing, and every command exits 0. Later windows start at the previous end, so
they are only right for publications stamped after the store's last materialization.

This command chooses the window from the publications themselves and leaves the loading
to Feast's own ``FeatureStore.materialize(start, end)``. A small ledger,
``data/materialized.json``, records which publication ids were loaded into which online
store: a store is named by its feature_store YAML and a hash of that YAML's
``online_store`` section, so pointing a config at a new server makes everything pending
for it. A re-run loads only pending publications (window: the earliest pending event time
to now, or 1 µs past the latest pending one); ``full=True`` reloads everything, e.g. into
a flushed Redis. The ledger is written atomically under the repo's publish lock, which is
held for the whole run, so no publication can appear half-way through a window.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from learn_features.atomic import write_json_atomic
from learn_features.errors import LearnFeaturesError
from learn_features.store.ledger import ONE_MICROSECOND, Publication, list_publications, publish_lock
from learn_features.store.repo import FIELDS, open_applied_store, require_vector_dim, resolve_config, store_errors

if TYPE_CHECKING:
    from feast import FeatureStore

LEDGER_FILE = Path("data") / "materialized.json"


@dataclass(frozen=True)
class MaterializeResult:
    """What one run loaded: the publications and the window (None when nothing was pending)."""

    store: str
    loaded: list[Publication]
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None


def store_key(repo_path: str | Path, config_path: Path, store: FeatureStore) -> str:
    """``<YAML>#<hash of its online_store section>``: one ledger entry per online store."""
    section = store.config.online_store.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]
    repo = Path(repo_path).resolve()
    name = config_path.relative_to(repo) if config_path.is_relative_to(repo) else config_path
    return f"{name}#{digest}"


def _read_ledger(repo_path: str | Path) -> dict[str, Any]:
    path = Path(repo_path) / LEDGER_FILE
    if not path.exists():
        return {"stores": {}}
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ledger.get("stores"), dict):
            raise ValueError("no 'stores' object")
        for name, entry in ledger["stores"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("publications", []), list):
                raise ValueError(f"store {name!r} has no list of publications")
    except (OSError, ValueError, AttributeError) as exc:
        raise LearnFeaturesError(f"{path}: unreadable materialization ledger ({exc}); delete it and run `learn-features materialize --full`") from None
    return ledger


def loaded_publications(repo_path: str | Path, key: str) -> set[str]:
    """Ids of the publications the ledger says are in the online store ``key``."""
    return set(_read_ledger(repo_path)["stores"].get(key, {}).get("publications", []))


def record_loaded(repo_path: str | Path, key: str, publications: list[Publication]) -> None:
    """Add ``publications`` to the ledger entry of store ``key``. Call under ``publish_lock``."""
    ledger = _read_ledger(repo_path)
    entry = ledger["stores"].setdefault(key, {"publications": []})
    entry["publications"] = sorted(set(entry["publications"]) | {p.publication_id for p in publications})
    entry["updated_at"] = pd.Timestamp.now(tz="UTC").isoformat()
    write_json_atomic(Path(repo_path) / LEDGER_FILE, ledger)


def _prepare_ray_engine(store: FeatureStore) -> None:
    """Start Feast's Ray engine, then keep its pandas batches Arrow-backed, or it writes nothing.

    Feast 0.67 starts Ray with ``enable_arrow_backed_pandas_conversion = False``, so a batch
    carries each vector as a numpy array, and Ray 2.58 turns a column of numpy arrays back
    into its own tensor type between steps. Feast's vector-length check (run for the
    vector-indexed embedding fields, ``store.repo`` and ``feature_repo/learn_repo.py``)
    refuses that type, and the engine's write step only logs the error: every row is lost
    and ``feast materialize`` exits 0. With the conversion on, the vectors stay Arrow lists
    end to end. Ray's data context travels with each job to its workers, local or cluster.
    """
    if getattr(store.config.batch_engine, "type", None) != "ray.engine":
        return
    from feast.infra.ray_initializer import ensure_ray_initialized
    from ray.data import DataContext

    ensure_ray_initialized(store.config.batch_engine)
    DataContext.get_current().enable_arrow_backed_pandas_conversion = True


def materialize_publications(
    repo_path: str | Path,
    config: str | Path | None = None,
    full: bool = False,
    end: pd.Timestamp | None = None,
    quiet: bool = False,
) -> MaterializeResult:
    """Load the publications pending for the config's online store (all of them with ``full``).

    ``end`` (UTC) leaves publications stamped after it pending. Feast's progress output is
    dropped when ``quiet``.
    """
    config_path = resolve_config(repo_path, config)
    with publish_lock(repo_path):
        publications = list_publications(repo_path)
        if not publications:
            raise LearnFeaturesError(f"{repo_path}: nothing is published; run `learn-features publish` first")
        store = open_applied_store(repo_path, config_path)
        key = store_key(repo_path, config_path, store)
        loaded = loaded_publications(repo_path, key)
        if end is not None:
            newer = [p for p in publications if p.publication_id in loaded and p.published_at > end]
            if newer:
                # Feast writes each entity's latest row *within the window*, over what the store holds.
                raise LearnFeaturesError(
                    f"--end {end.isoformat()} is before {newer[-1].publication_id} ({newer[-1].published_at.isoformat()}), "
                    "which this online store already holds: materializing up to --end would write older vectors over it. "
                    "Give a later --end, or none"
                )
        done = set() if full else loaded
        pending = [p for p in publications if p.publication_id not in done and (end is None or p.published_at <= end)]
        if not pending:
            return MaterializeResult(key, [])
        for pub in pending:
            require_vector_dim(store, config_path, pub.dim, f"publication {pub.publication_id}")
        start = min(p.first_event_time for p in pending)
        stop = end if end is not None else max(pd.Timestamp.now(tz="UTC"), pending[-1].published_at + ONE_MICROSECOND)
        views = [fields.view for fields in FIELDS.values()]
        output = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())) if quiet else ()
        with store_errors("materializing into the online store", config_path), contextlib.ExitStack() as stack:
            for redirect in output:
                stack.enter_context(redirect)
            _prepare_ray_engine(store)
            store.materialize(start.to_pydatetime(), stop.to_pydatetime(), feature_views=views)
        record_loaded(repo_path, key, pending)
    return MaterializeResult(key, pending, start, stop)
