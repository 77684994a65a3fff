"""After a materialization: does the online store serve what the repo published?

Why a separate check: a materialize that exits 0 is not proof that the rows are online.
Feast's Ray compute engine catches a failed online write inside its workers and only logs
it, so a job can "succeed" with nothing written; a partly failed job, an online store
pointed at the wrong database or a wiped Redis look the same from the ranking side. This
reads a sample of the active publication's ids back through the serving client and
compares version and vector bytes with what was published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learn_features.embeddings_io import Entity
from learn_features.errors import LearnFeaturesError
from learn_features.feast_publish import active_publication, read_published
from learn_features.feast_repo import FIELDS
from learn_features.serving import LearnFeatureClient

READ_BATCH = 1_000  # ids per online read: bounds one request and its response in memory


@dataclass
class OnlineCheck:
    """How many sampled ids of one entity were served as published, and how the rest failed."""

    entity: Entity
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    other_version: list[str] = field(default_factory=list)
    other_vector: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.other_version or self.other_vector)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.entity}: {self.checked} sampled ids served as published"
        parts = [f"{name} {len(ids)} (e.g. {ids[0]!r})" for name, ids in
                 (("missing", self.missing), ("other version", self.other_version), ("other vector", self.other_vector)) if ids]
        return f"{self.entity}: {self.checked} sampled ids, FAILED: " + ", ".join(parts)


def verify_online(repo_path: str | Path, config: str | Path | None = None, sample: int = 10_000,
                  seed: int = 0) -> tuple[str, list[OnlineCheck]]:
    """Check up to ``sample`` random users and items of the active publication online.

    Returns the model version checked and one ``OnlineCheck`` per entity. Vectors must come
    back bit for bit: both sides are float32 written by this package.
    """
    if sample < 1:
        raise LearnFeaturesError(f"--sample must be at least 1, got {sample}")
    publication = active_publication(repo_path)
    if publication is None:
        raise LearnFeaturesError(f"{repo_path}: nothing is published; run `learn-features publish` first")
    client = LearnFeatureClient(repo_path, config=config)
    rng = np.random.default_rng(seed)
    checks = []
    for entity in ("user", "item"):
        published = read_published(repo_path, entity, publication.model_version)
        picks = np.sort(rng.choice(len(published.ids), size=min(sample, len(published.ids)), replace=False))
        check = OnlineCheck(entity, checked=len(picks))
        for start in range(0, len(picks), READ_BATCH):
            rows = picks[start : start + READ_BATCH]
            ids = [str(published.ids[row]) for row in rows]
            online = client.read(FIELDS[entity], ids)
            for entity_id, row, vector, version in zip(ids, rows, online.vectors, online.versions):
                if vector is None:
                    check.missing.append(entity_id)
                elif version != publication.model_version:
                    check.other_version.append(entity_id)
                elif vector.tobytes() != published.vectors[row].tobytes():
                    check.other_vector.append(entity_id)
        checks.append(check)
    return publication.model_version, checks
