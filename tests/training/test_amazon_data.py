"""The shipped Amazon data, read as the benchmark reads it (``prepare`` with
``training/configs/amazon-scientific.toml``), reproduces UniSRec's released split.

``data/amazon-scientific/test_targets.csv`` was derived from the raw file with plain csv (each
user's last event in file order), independently of the project's loader; here the raw
sequences are read the same independent way. Our leave-one-out protocol evaluates no user
whose target already occurs earlier in their own sequence (recommending an item the user
already has is not the task), so exactly those users are missing, and every other user's
target is the released one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from learn_features.config import load_config
from learn_features.data.split import EvalUsers, Split
from training.config import PipelineConfig
from training.pipeline import Prepared, prepare

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "amazon-scientific"
CONFIG = ROOT / "training" / "configs" / "amazon-scientific.toml"


@pytest.fixture(scope="module")
def amazon() -> Prepared:
    return prepare(load_config(PipelineConfig, CONFIG))


@pytest.fixture(scope="module")
def sequences() -> dict[str, list[str]]:
    """Each user's item ids in the file order of interactions.csv (plain csv, not the loader)."""
    out: dict[str, list[str]] = {}
    with open(DATA / "interactions.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            out.setdefault(row["user_id"], []).append(row["item_id"])
    return out


def _targets(split: Split, users: EvalUsers) -> dict[str, str]:
    assert all(len(t) == 1 for t in users.targets)  # leave-one-out: one target per user
    return {user: split.item_ids[int(t[0])] for user, t in zip(users.user_ids, users.targets)}


def test_the_test_targets_are_the_released_ones_but_for_repeated_items(amazon: Prepared, sequences: dict[str, list[str]]) -> None:
    split = amazon.splits["leave_one_out"]
    with open(DATA / "test_targets.csv", newline="", encoding="utf-8") as handle:
        released = {row["user_id"]: row["item_id"] for row in csv.DictReader(handle)}
    assert len(released) == len(sequences) == 8442
    ours = _targets(split, split.test)
    repeats = {user for user, items in sequences.items() if items[-1] in items[:-1]}
    assert set(released) - set(ours) == repeats and len(repeats) == 50
    assert ours == {user: item for user, item in released.items() if user not in repeats}
    # History: the events before the target, the last split.history_len (50) of them.
    catalog = split.item_ids
    for user, history in zip(split.test.user_ids, split.test.histories):
        assert [catalog[i] for i in history] == sequences[user][:-1][-50:]


def test_the_validation_targets_are_the_second_to_last_events(amazon: Prepared, sequences: dict[str, list[str]]) -> None:
    split = amazon.splits["leave_one_out"]
    repeats = {user for user, items in sequences.items() if items[-2] in items[:-2]}
    assert len(repeats) == 54
    assert _targets(split, split.val) == {user: items[-2] for user, items in sequences.items() if user not in repeats}


def test_the_published_figures_travel_with_the_data(amazon: Prepared) -> None:
    same = [row for row in amazon.published if row.split == "same"]
    assert [(row.method, row.values["ndcg@10"], row.values["recall@10"]) for row in same] == [
        ("VQ-Rec", 0.0643, 0.1211), ("SASRec", 0.0553, 0.1080), ("UniSRec (text only)", 0.0641, 0.1188), ("UniSRec (text + ID)", 0.0634, 0.1235)
    ]
    assert {row.method for row in amazon.published if row.split == "other"} == {"LEARN (official code)", "SASRec"}
