"""``learn-features publish``: a run's user and item embeddings as one full publication.

Rules, all enforced here (the ledger's time rule applies too, see ``store.ledger``):

* Re-publishing the active version with the same vectors and new-item rule is a no-op
  (idempotent). A version already published with *different* vectors is refused: a version
  string must name one set of vectors, or user and item vectors of "the same" version could
  mix. The same vectors with another new-item rule (``eval.cold_bias`` / ``eval.cold_share``
  changed, then ``embed`` again) are a new publication, whose rule retrieval then applies.
* Re-publishing an older version (same vectors) is a rollback: a new publication that is
  newer than everything else.
* Replays of history (vectors stamped at the run's data cut) go to a per-run copy of the
  repo, not here: see ``store.replay``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learn_features.embeddings_io import Entity, frame_to_matrix, id_column, read_frame
from learn_features.data.tables import read_item_list
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule, NewItemsPolicy
from learn_features.run import RunDir
from learn_features.store.commit import EntityVectors, commit_publication, publication_digest
from learn_features.store.ledger import Publication, list_publications, next_publish_time, publish_lock
from learn_features.store.published import publication_policy


@dataclass(frozen=True)
class PublishResult:
    publication: Publication
    created: bool


def _load_run_table(path: Path, entity: Entity, model_version: str, dim: int) -> EntityVectors:
    df = read_frame(path, entity)
    if df.empty:
        # It would become the active version with nothing to serve: every user unscorable,
        # and every later push of items refused against it.
        raise LearnFeaturesError(f"{path}: no {entity} rows; a full publication needs the {entity} vectors of the run")
    matrix = frame_to_matrix(df).reshape(len(df), -1)
    if matrix.shape[1] != dim:
        raise LearnFeaturesError(
            f"{path}: row 0 ({id_column(entity)}={df[id_column(entity)].iloc[0]!r}): "
            f"embedding has length {matrix.shape[1]}, the run manifest says dim {dim}"
        )
    wrong = np.flatnonzero(df["model_version"].astype(str).to_numpy() != model_version)
    if wrong.size:
        row = int(wrong[0])
        raise LearnFeaturesError(
            f"{path}: row {row} ({id_column(entity)}={df[id_column(entity)].iloc[row]!r}): "
            f"model_version {df['model_version'].iloc[row]!r} differs from the run manifest's {model_version!r}"
        )
    return EntityVectors.sorted(df[id_column(entity)].astype(str).to_numpy(), matrix)


def run_policy(run: Path, manifest: dict) -> NewItemsPolicy | None:
    """The primary method's new-item rule and warm items the run's manifest records, or None."""
    rule = NewItemRule.from_record(manifest.get("new_item_rule"), str(RunDir(run).manifest))
    if rule is None:
        return None
    warm = RunDir(run).warm_items
    if not warm.is_file():
        raise LearnFeaturesError(f"{RunDir(run).manifest}: names a new-item rule but {warm} is missing; run `learn-features embed` again")
    return NewItemsPolicy(rule, read_item_list(warm))


def run_model_version(run_dir: str | Path) -> str:
    """The model version a run's embed step stamped on its vectors (its manifest's)."""
    return str(RunDir(run_dir).read_manifest()["model_version"])


def parse_event_time(value: str, as_of: object) -> pd.Timestamp | None:
    """``now`` → None (publish time), ``as-of`` → the run's as_of, else an ISO time with zone."""
    if value == "now":
        return None
    text = str(as_of) if value == "as-of" else value
    try:
        ts = pd.Timestamp(text)
    except ValueError as exc:
        raise LearnFeaturesError(f"--event-time {value!r}: not an ISO timestamp ({exc})") from exc
    if ts.tzinfo is None:
        raise LearnFeaturesError(f"--event-time {text!r}: timestamp has no timezone; add Z or +00:00")
    return ts.tz_convert("UTC").floor("us")


def publish_run(run_dir: str | Path, repo_path: str | Path, event_time: str = "now") -> PublishResult:
    """Publish a run's user and item embeddings as one full publication.

    Everything is validated before anything is written, so bad input leaves the offline
    sources (and hence what later materializations load) untouched.
    """
    run = Path(run_dir)
    manifest = RunDir(run).read_manifest()
    version, dim = str(manifest["model_version"]), int(manifest["dim"])  # type: ignore[call-overload]
    tables = {
        "user": _load_run_table(RunDir(run).embedding_table("user"), "user", version, dim),
        "item": _load_run_table(RunDir(run).embedding_table("item"), "item", version, dim),
    }
    policy = run_policy(run, manifest)
    requested = parse_event_time(event_time, manifest["as_of"])
    digest = publication_digest(version, tables)
    with publish_lock(repo_path):
        pubs = list_publications(repo_path)
        full = [p for p in pubs if p.kind == "full"]
        if full and full[-1].model_version == version and full[-1].digest == digest and publication_policy(full[-1]) == policy:
            return PublishResult(full[-1], created=False)
        clash = next((p for p in full if p.model_version == version and p.digest != digest), None)
        if clash is not None:
            raise LearnFeaturesError(
                f"{run}: model_version {version!r} was already published with different vectors "
                f"({clash.publication_id}); give the new model a new version"
            )
        published_at = next_publish_time(repo_path, requested)
        pub = commit_publication(repo_path, "full", version, tables, published_at, str(run.resolve()), digest, new_items=policy)
    return PublishResult(pub, created=True)
