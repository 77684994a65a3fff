"""A per-run replay copy of the Feast repo, for point-in-time joins over historical impressions.

A ranker trained offline on past impressions (MovieLens' 2016-2018, or last quarter's
traffic) must see each LEARN vector as of the data cut of the model that produced it, not
as of the day it was published. The live repo cannot hold such rows: its publications must
move forward in time (materialize-incremental and Redis ignore older rows), and a second
model version replayed at an earlier time would sit in the past of the live one.

So a replay goes into its own repo, ``<run>/feast_replay/``: the live repo's definitions and
default store config, with the run's vectors published at the run's ``as_of`` and the
registry applied, ready for ``get_historical_features``. It belongs to that run alone, so a
re-trained model simply rebuilds it, and re-running with the same vectors is a no-op.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from learn_features.atomic import file_lock
from learn_features.errors import LearnFeaturesError
from learn_features.run import RunDir
from learn_features.store.ledger import list_publications
from learn_features.store.publish import PublishResult, publish_run, run_model_version

LOCK_NAME = ".feast_replay.lock"
#: What a replay repo copies from the live one: the definitions and the embedded-default store.
DEFINITION_FILES = (".feastignore", "feature_store.yaml", "learn_repo.py")


def _copy_definitions(source_repo: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in DEFINITION_FILES:
        source = source_repo / name
        if not source.is_file():
            raise LearnFeaturesError(f"{source}: not found; --repo must be a LEARN feature repo (see feature_repo/)")
        shutil.copyfile(source, dest / name)


def publish_replay(run_dir: str | Path, source_repo: str | Path) -> PublishResult:
    """Publish the run's vectors as of its data cut into ``<run>/feast_replay`` and apply it."""
    from learn_features.store.repo import apply_repo, open_store  # Feast import: seconds

    dest = RunDir(run_dir).feast_replay
    with file_lock(Path(run_dir) / LOCK_NAME):  # a concurrent replay must not delete what this one writes
        _copy_definitions(Path(source_repo), dest)
        version = run_model_version(run_dir)
        if any(pub.model_version != version for pub in list_publications(dest)):
            # The run was re-trained: its old replay is another model's history. Start over.
            shutil.rmtree(dest / "data")
        result = publish_run(run_dir, dest, event_time="as-of")
        apply_repo(open_store(dest), dest)
    return result
