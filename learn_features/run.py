"""A LEARN run directory: the one owner of its layout and of its manifest.

``RunDir`` names every path a run has::

    config.json, split.json                          the config and splits of the last stage run
    content/<encoder>/                               content embeddings (fp16 store), per encoder
    models/<protocol>/<method>/seed<k>/{best,last}.pt  trained towers, resumable
    embeddings/{user,item}_embeddings.parquet        the published vectors (``embed``)
    embeddings/manifest.json                         what produced them (``read_manifest``)
    embeddings/id_part_items.parquet                 hybrid towers: the items whose vectors carry an ID part
    embeddings/warm_items.parquet                    a method with a new-item rule: the items it counts as warm
    metrics[-validation].{json,md}, per_user[-validation].parquet, training_curves[-validation].png
    feast_replay/                                    the replay Feast repo (``publish --replay``)
    report/                                          the ranking report

Loading the towers a run trained is ``learn_features.trained_run``'s; this module stays free
of torch so that the store's publishing modules can name run paths without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learn_features.embeddings_io import ITEM_FILE, USER_FILE, Entity
from learn_features.errors import LearnFeaturesError

BEST = "best.pt"
LAST = "last.pt"
MANIFEST_FILE = "manifest.json"
#: What the embed step records next to the vectors, and what every reader may rely on.
MANIFEST_KEYS = ("model_version", "dim", "as_of", "created_at")
#: The JSON type of each manifest key that a reader may ask for.
MANIFEST_TYPES: dict[str, type] = {
    "model_version": str, "method": str, "dim": int, "as_of": str, "created_at": str, "checkpoint": str,
    "encoder": dict, "cache_dir": str, "users": int, "items": int, "protocol": str, "content_store": str, "history_len": int,
}


@dataclass(frozen=True)
class RunDir:
    """Every path of one run, under ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __str__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    def content(self, encoder: str) -> Path:
        """The content store of ``encoder`` ("llm", "text_encoder")."""
        return self.root / "content" / encoder

    def model(self, protocol: str, method: str, seed: int) -> Path:
        return self.root / "models" / protocol / method / f"seed{seed}"

    def best(self, protocol: str, method: str, seed: int) -> Path:
        return self.model(protocol, method, seed) / BEST

    def last(self, protocol: str, method: str, seed: int) -> Path:
        return self.model(protocol, method, seed) / LAST

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def embedding_table(self, entity: Entity) -> Path:
        return self.embeddings / (USER_FILE if entity == "user" else ITEM_FILE)

    @property
    def manifest(self) -> Path:
        return self.embeddings / MANIFEST_FILE

    @property
    def id_part_items(self) -> Path:
        """One ``item_id`` column: the published items whose vectors carry a learned ID part (the
        manifest's ``id_part``); every other item's vector is its content alone, and so is that of
        any item ``embed-items`` is given that is not on this list."""
        return self.embeddings / "id_part_items.parquet"

    @property
    def warm_items(self) -> Path:
        """One ``item_id`` column: the items with a training event, for a method with a rule for
        new items (the manifest's ``new_item_rule``, ``learn_features.new_items``); every other
        item, and every item ``embed-items`` pushes later, is new to it."""
        return self.embeddings / "warm_items.parquet"

    @staticmethod
    def _suffix(on: str) -> str:
        """Evaluation outputs of the ``test`` users carry no suffix, the ``validation`` users' ``-validation``."""
        return "" if on == "test" else f"-{on}"

    def metrics_json(self, on: str = "test") -> Path:
        return self.root / f"metrics{self._suffix(on)}.json"

    def metrics_md(self, on: str = "test") -> Path:
        return self.root / f"metrics{self._suffix(on)}.md"

    def per_user(self, on: str = "test") -> Path:
        return self.root / f"per_user{self._suffix(on)}.parquet"

    def training_curves(self, on: str = "test") -> Path:
        return self.root / f"training_curves{self._suffix(on)}.png"

    @property
    def feast_replay(self) -> Path:
        return self.root / "feast_replay"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def read_manifest(self, required: tuple[str, ...] = MANIFEST_KEYS) -> dict[str, Any]:
        """``embeddings/manifest.json``: the one reader for publishing, inference and ranking.

        Refuses a missing file, bad JSON or a missing or mistyped ``required`` key, naming the file.
        """
        path = self.manifest
        if not path.is_file():
            raise LearnFeaturesError(f"{path}: run manifest not found (run `learn-features embed` for this run first)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise LearnFeaturesError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise LearnFeaturesError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
        missing = [key for key in required if key not in manifest]
        if missing:
            raise LearnFeaturesError(f"{path}: missing key(s) {missing}")
        for key in required:
            expected = MANIFEST_TYPES.get(key)
            value = manifest[key]
            if expected is not None and not (isinstance(value, expected) and not isinstance(value, bool)):
                raise LearnFeaturesError(f"{path}: key {key!r} must be a JSON {expected.__name__}, got {value!r}")
        if "dim" in required and manifest["dim"] < 1:
            raise LearnFeaturesError(f"{path}: key 'dim' must be positive, got {manifest['dim']}")
        return manifest
