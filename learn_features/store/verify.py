"""After a materialization: does the online store serve what the repo published?

Why a separate check: a materialize that exits 0 is not proof that the rows are online.
Feast's Ray compute engine catches a failed online write inside its workers and only logs
it, so a job can "succeed" with nothing written; a partly failed job, an online store
pointed at the wrong database or a wiped Redis look the same from the ranking side. This
reads a sample of the active publication's ids back through the serving client and
compares version and vector bytes with what was published.

It also reads back every pushed item whose latest published vector belongs to another
model version (``store.published.stale_pushed_items``): after a rollout these stay online
with the old version, unscorable, until ``embed-items --repush-stale --push`` embeds them
again with the active run. They fail the check, with that fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError
from learn_features.store.ledger import active_publication
from learn_features.store.published import read_published, stale_pushed_items
from learn_features.store.repo import FIELDS, resolve_config
from learn_features.store.serving import LearnFeatureClient

READ_BATCH = 1_000  # ids per online read: bounds one request and its response in memory


@dataclass
class OnlineCheck:
    """How many sampled ids of one entity were served as published, and how the rest failed."""

    entity: Entity
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    other_version: list[str] = field(default_factory=list)
    other_vector: list[str] = field(default_factory=list)
    label: str = ""  # what the ids are, when not the active publication's users or items
    fix: str = ""  # how to repair a failure, printed with it

    @property
    def ok(self) -> bool:
        return not (self.missing or self.other_version or self.other_vector)

    def __str__(self) -> str:
        what = self.label or self.entity
        if self.ok:
            return f"{what}: {self.checked} sampled ids served as published"
        parts = [f"{name} {len(ids)} (e.g. {ids[0]!r})" for name, ids in
                 (("missing", self.missing), ("other version", self.other_version), ("other vector", self.other_vector)) if ids]
        return f"{what}: {self.checked} sampled ids, FAILED: " + ", ".join(parts) + (f"; fix: {self.fix}" if self.fix else "")


def verify_online(repo_path: str | Path, config: str | Path | None = None, sample: int = 10_000,
                  seed: int = 0) -> tuple[str, list[OnlineCheck]]:
    """Check up to ``sample`` random users and items of the active publication online.

    Returns the model version checked and one ``OnlineCheck`` per entity. Vectors must come
    back bit for bit: both sides are float32 written by this package.
    """
    if sample < 1:
        raise LearnFeaturesError(f"--sample must be at least 1, got {sample}")
    config_path = resolve_config(repo_path, config)  # the repo and its config exist, before anything else
    publication = active_publication(repo_path)
    if publication is None:
        raise LearnFeaturesError(f"{repo_path}: nothing is published; run `learn-features publish` first")
    version = publication.model_version
    client = LearnFeatureClient(repo_path, config=config_path)
    rng = np.random.default_rng(seed)
    checks = []
    for entity in ("user", "item"):
        published = read_published(repo_path, entity, version)
        picks = np.sort(rng.choice(len(published.ids), size=min(sample, len(published.ids)), replace=False))
        checks.append(_check_online(client, OnlineCheck(entity), [str(published.ids[row]) for row in picks], version, published.vectors[picks]))
    stale = sorted(stale_pushed_items(repo_path, version))
    if stale:
        picks = np.sort(rng.choice(len(stale), size=min(sample, len(stale)), replace=False))
        flag = "" if config is None else f" -f {config}"
        check = OnlineCheck(
            "item",
            label=f"items pushed under an older version ({len(stale)} not in {version})",
            fix=f"learn-features embed-items --run-dir {publication.source} --repush-stale --push --repo {repo_path}{flag}",
        )
        checks.append(_check_online(client, check, [stale[i] for i in picks], version))
    return version, checks


def _check_online(client: LearnFeatureClient, check: OnlineCheck, ids: list[str], version: str,
                  vectors: np.ndarray | None = None) -> OnlineCheck:
    """Read ``ids`` online in batches; each must be present, of ``version`` and (given ``vectors``) equal."""
    check.checked = len(ids)
    for start in range(0, len(ids), READ_BATCH):
        batch = ids[start : start + READ_BATCH]
        online = client.read(FIELDS[check.entity], batch)
        for offset, (entity_id, vector, served) in enumerate(zip(batch, online.vectors, online.versions)):
            if vector is None:
                check.missing.append(entity_id)
            elif served != version:
                check.other_version.append(entity_id)
            elif vectors is not None and vector.tobytes() != vectors[start + offset].tobytes():
                check.other_vector.append(entity_id)
    return check
