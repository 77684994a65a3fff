"""Reading what was published: the vectors in effect per id and time, a version's new-item rule,
and pushed items left stale.

Every reader of published vectors goes through here, so that "the row an online store
serves" and "the row a point-in-time join returns" are computed one way: among the rows
of one model version, per id, the latest event time wins, and a later publication wins a
tie of times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from learn_features.data.tables import read_item_list, read_parquet, read_table
from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemsPolicy
from learn_features.store.commit import EntityVectors, flat_values
from learn_features.store.ledger import Publication, list_publications
from learn_features.store.repo import FIELDS, OFFLINE_DIR


@dataclass(frozen=True)
class PublishedRows:
    """Every published row of one entity and model version: ids, event times (µs) and vectors,
    in publication order (a later publication's row wins a tie of times)."""

    ids: np.ndarray
    times_us: np.ndarray
    vectors: np.ndarray

    def latest(self) -> EntityVectors:
        """Per id, the row with the latest event time: what an online store that loaded them all serves."""
        order = pd.DataFrame({"id": self.ids, "t": self.times_us}).sort_values("t", kind="stable").drop_duplicates("id", keep="last")
        rows = order.index.to_numpy()
        return EntityVectors(self.ids[rows], self.vectors[rows], self.times_us[rows])

    def in_effect(self, ids: np.ndarray, times_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each (id, time): whether a row at or before that time exists, and its vector (the
        row a point-in-time join returns then)."""
        query = pd.DataFrame({"id": ids, "t": times_us, "q": np.arange(len(ids))}).sort_values("t", kind="stable")
        table = pd.DataFrame({"id": self.ids, "t": self.times_us, "row": np.arange(len(self.ids))}).sort_values("t", kind="stable")
        found = pd.merge_asof(query, table, on="t", by="id", direction="backward").sort_values("q")
        rows = found["row"].to_numpy()
        present = ~np.isnan(rows)
        vectors = np.zeros((len(ids), self.vectors.shape[1]), np.float32)
        vectors[present] = self.vectors[rows[present].astype(np.int64)]
        return present, vectors


def published_rows(repo_path: str | Path, entity: Entity, model_version: str) -> PublishedRows:
    """Every row of ``entity`` published under ``model_version`` (see ``PublishedRows``)."""
    return PublishedRowsReader(repo_path, entity).rows(model_version)


class PublishedRowsReader:
    """``published_rows`` for a long-lived writer such as the stream, which commits a
    publication per batch and checks every batch against all rows before it.

    A committed publication never changes (it appears by one atomic rename, its folder name
    carries its digest, and nothing rewrites it), so each one is read once and kept: a call
    reads only the publications added since the last, and a stream does not slow down as its
    own publications pile up.
    """

    def __init__(self, repo_path: str | Path, entity: Entity) -> None:
        self.repo_path, self.entity = Path(repo_path), entity
        self._read: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rows(self, model_version: str) -> PublishedRows:
        parts = [self._publication(pub) for pub in list_publications(self.repo_path)
                 if pub.model_version == model_version and pub.parquet(self.entity) is not None]
        if not parts:
            return PublishedRows(np.zeros(0, dtype=object), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
        ids, times, vectors = zip(*parts)
        return PublishedRows(np.concatenate(ids), np.concatenate(times), np.concatenate(vectors).astype(np.float32, copy=False))

    def _publication(self, pub: Publication) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if pub.path not in self._read:
            names = FIELDS[self.entity]
            tbl = read_parquet(pub.parquet(self.entity), columns=[names.join_key, names.embedding, "event_timestamp"])  # type: ignore[arg-type]
            ids = np.asarray(tbl.column(names.join_key).to_pylist(), dtype=object)
            times = tbl.column("event_timestamp").cast(pa.int64()).to_numpy()
            self._read[pub.path] = ids, times, flat_values(tbl.column(names.embedding)).reshape(len(ids), pub.dim)
        return self._read[pub.path]


def read_published(repo_path: str | Path, entity: Entity, model_version: str) -> EntityVectors:
    """The latest published vector per id among all publications of ``model_version``: the
    row with the latest event time (rows of one time: the later publication), which is the
    row an online store that loaded them all serves."""
    rows = published_rows(repo_path, entity, model_version)
    if not len(rows.ids):
        raise LearnFeaturesError(f"{Path(repo_path) / OFFLINE_DIR}: no published {entity} embeddings for {model_version!r}")
    return rows.latest()


def publication_policy(pub: Publication) -> NewItemsPolicy | None:
    """The new-item rule a full publication carries, with its warm items; None for none."""
    if pub.new_item_rule is None:
        return None
    return NewItemsPolicy(pub.new_item_rule, read_item_list(pub.warm_items))  # type: ignore[arg-type]


@dataclass(frozen=True)
class VersionItems:
    """What retrieval needs of one model version's items beyond their vectors: its new-item
    rule, and the published ids that rule counts as new (the run's items off its warm list and
    every pushed item). ``key`` names the publications it was read from."""

    key: tuple[str, ...]
    policy: NewItemsPolicy | None
    new_ids: list[str]


def version_items(repo_path: str | Path, model_version: str, known: VersionItems | None = None) -> VersionItems:
    """``VersionItems`` of ``model_version``; ``known`` is returned as is while no full or push
    publication of the version has been added since it was read (a serving client's cache)."""
    pubs = [p for p in list_publications(repo_path) if p.model_version == model_version and p.kind in ("full", "push")]
    key = tuple(p.publication_id for p in pubs)
    if known is not None and known.key == key:
        return known
    full = [p for p in pubs if p.kind == "full"]
    policy = publication_policy(full[-1]) if full else None
    new = [] if policy is None else sorted({i for p in pubs for i in _item_ids(p)} - policy.warm_ids)
    return VersionItems(key, policy, new)


def _item_ids(pub: Publication) -> list[str]:
    path = pub.parquet("item")
    return [] if path is None else read_parquet(path, columns=[FIELDS["item"].join_key]).column(0).to_pylist()


def stale_pushed_items(repo_path: str | Path, model_version: str) -> dict[str, Publication]:
    """Pushed items whose latest published vector is not of ``model_version``, each mapped to
    the latest push publication that holds it (and so its catalog row).

    Online stores keep the latest row per item, so these are the pushed items served with
    another model's vector: after a rollout, every item pushed under the old version that
    the new run's catalog does not contain. The serving client flags them
    ``version_mismatch`` and cannot score them until they are pushed again with the active run.
    """
    with_items = [p for p in list_publications(repo_path) if p.parquet("item") is not None]
    pushed: dict[str, Publication] = {}
    for pub in with_items:
        if pub.kind == "push":
            pushed.update(dict.fromkeys(_item_ids(pub), pub))
    latest_version: dict[str, str] = {}
    for pub in with_items:
        latest_version.update((i, pub.model_version) for i in _item_ids(pub) if i in pushed)
    return {i: pushed[i] for i, version in latest_version.items() if version != model_version}


def stale_catalog_rows(repo_path: str | Path, model_version: str) -> pd.DataFrame:
    """The recorded catalog rows of every ``stale_pushed_items`` item, ready to embed again."""
    stale = stale_pushed_items(repo_path, model_version)
    by_pub: dict[Path, tuple[Publication, set[str]]] = {}
    for item, pub in stale.items():
        by_pub.setdefault(pub.path, (pub, set()))[1].add(item)
    unrecorded = [pub.publication_id for pub, _ in by_pub.values() if pub.catalog is None]
    if unrecorded:
        raise LearnFeaturesError(
            f"{Path(repo_path) / OFFLINE_DIR}: push publication(s) {unrecorded} hold no catalog rows (pushed before "
            "learn-features kept them); run `embed-items --catalog FILE --push` with those items' rows instead"
        )
    frames = []
    for pub, items in by_pub.values():
        rows = read_table(pub.catalog)  # type: ignore[arg-type]
        frames.append(rows[rows["item_id"].astype(str).isin(items)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"item_id": []})
