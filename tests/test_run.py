"""The run directory: every path named in one place, and TrainedRun refusing a run whose parts
do not belong together (a checkpoint retrained after embed, another method, another catalog)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from core_fixtures import tiny_pch_config

from learn_features.embeddings_io import EmbeddingTable, write_table
from learn_features.errors import LearnFeaturesError
from learn_features.pch import checkpoint
from learn_features.pch.content_store import write_content_store
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import PCH
from learn_features.run import RunDir
from learn_features.trained_run import TrainedRun

CPU = torch.device("cpu")
ITEMS = [f"i{k}" for k in range(12)]
CONTENT_DIM = 8


def test_run_dir_names_every_path(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    assert run.root == tmp_path and str(run) == str(tmp_path)
    assert run.config == tmp_path / "config.json" and run.split == tmp_path / "split.json"
    assert run.content("llm") == tmp_path / "content" / "llm"
    assert run.model("temporal", "learn_v1", 2) == tmp_path / "models" / "temporal" / "learn_v1" / "seed2"
    assert run.best("temporal", "learn_v1", 2).name == "best.pt" and run.last("temporal", "learn_v1", 2).name == "last.pt"
    assert run.embedding_table("user") == tmp_path / "embeddings" / "user_embeddings.parquet"
    assert run.embedding_table("item") == tmp_path / "embeddings" / "item_embeddings.parquet"
    assert run.manifest == tmp_path / "embeddings" / "manifest.json"
    assert run.id_part_items == tmp_path / "embeddings" / "id_part_items.parquet"
    assert [p.name for p in (run.metrics_json(), run.metrics_md(), run.per_user(), run.training_curves())] == [
        "metrics.json", "metrics.md", "per_user.parquet", "training_curves.png"]
    assert [p.name for p in (run.metrics_json("validation"), run.per_user("validation"))] == [
        "metrics-validation.json", "per_user-validation.parquet"]
    assert run.feast_replay == tmp_path / "feast_replay" and run.report == tmp_path / "report"


def test_read_manifest_refuses_missing_and_mistyped_keys(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(LearnFeaturesError, match="run manifest not found"):
        run.read_manifest()
    run.embeddings.mkdir()
    run.manifest.write_text(json.dumps({"model_version": "v", "dim": "64", "as_of": "t"}))
    with pytest.raises(LearnFeaturesError, match=r"missing key\(s\) \['created_at'\]"):
        run.read_manifest()
    with pytest.raises(LearnFeaturesError, match="key 'dim' must be a JSON int"):
        run.read_manifest(required=("dim",))


def published_run(root: Path, method: str = "learn_v1", seed: int = 0) -> RunDir:
    """A run as `embed` leaves it: best.pt, content store, item table and manifest, consistent."""
    run = RunDir(root)
    torch.manual_seed(seed)
    model = PCH(tiny_pch_config(max_len=8), content_dim=CONTENT_DIM)
    payload = checkpoint.model_payload(model, CONTENT_DIM, None, {"method": method})
    best = run.best("temporal", method, 0)
    best.parent.mkdir(parents=True)
    checkpoint.save(best, payload)
    content = np.random.default_rng(seed).normal(size=(len(ITEMS), CONTENT_DIM))
    store = write_content_store(run.content("llm"), [content], ITEMS, {})
    version = checkpoint.model_version(payload, method, ItemInputs(store=store).identity)
    as_of = pd.Timestamp("2020-01-01", tz="UTC")
    vectors = np.zeros((len(ITEMS), model.config.d_out), np.float32)
    write_table(EmbeddingTable("item", ITEMS, vectors, as_of, version), run.embedding_table("item"))
    manifest = {"model_version": version, "method": method, "dim": model.config.d_out, "as_of": as_of.isoformat(),
                "created_at": as_of.isoformat(), "checkpoint": str(best), "content_store": str(run.content("llm")), "history_len": 8}
    run.manifest.write_text(json.dumps(manifest))
    return run


def edit_manifest(run: RunDir, **changes: object) -> None:
    run.manifest.write_text(json.dumps({**json.loads(run.manifest.read_text()), **changes}))


def test_trained_run_loads_a_consistent_run(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    trained = TrainedRun.load(run.root, "cpu")
    assert trained.item_ids == ITEMS and trained.model_version == run.read_manifest()["model_version"]
    assert trained.inputs.store is not None and trained.item_vectors().shape == (len(ITEMS), trained.model.config.d_out)
    assert trained.user_vectors([np.array([0, 3, 5])]).shape == (1, trained.model.config.d_out)


def test_trained_run_refuses_a_checkpoint_retrained_after_embed(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    other = published_run(tmp_path / "other", seed=1)
    checkpoint.save(run.best("temporal", "learn_v1", 0), checkpoint.load_payload(other.best("temporal", "learn_v1", 0)))
    with pytest.raises(LearnFeaturesError, match="retrained or its content rebuilt after `embed`"):
        TrainedRun.load(run.root, "cpu")


def test_trained_run_refuses_a_manifest_of_another_method_or_dim(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    edit_manifest(run, method="learn_v3")
    with pytest.raises(LearnFeaturesError, match="holds method 'learn_v1', the manifest says 'learn_v3'"):
        TrainedRun.load(run.root, "cpu")
    edit_manifest(run, method="learn_v1", dim=999)
    with pytest.raises(LearnFeaturesError, match="the manifest says dim 999"):
        TrainedRun.load(run.root, "cpu")


def test_trained_run_refuses_a_content_store_of_another_catalog(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    write_content_store(run.content("llm"), [np.zeros((3, CONTENT_DIM))], ["x", "y", "z"], {})
    with pytest.raises(LearnFeaturesError, match="holds another catalog than the run's item embeddings"):
        TrainedRun.load(run.root, "cpu")


def test_of_checkpoint_refuses_inputs_of_another_content_dimension(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    inputs = ItemInputs.from_content(np.zeros((len(ITEMS), CONTENT_DIM + 1)), CPU)
    with pytest.raises(LearnFeaturesError, match=f"trained on {CONTENT_DIM}-d content"):
        TrainedRun.of_checkpoint(run.best("temporal", "learn_v1", 0), inputs, ITEMS, CPU)


def test_of_checkpoint_refuses_inputs_with_or_without_id_slots_other_than_its_towers(tmp_path: Path) -> None:
    run = published_run(tmp_path)
    content = ItemInputs.from_content(np.zeros((len(ITEMS), CONTENT_DIM)), CPU)
    hybrid = content.with_id_part(ItemInputs.from_training_items(len(ITEMS), np.arange(4), CPU))
    with pytest.raises(LearnFeaturesError, match="the checkpoint's towers read no item ID slots, its item inputs have them"):
        TrainedRun.of_checkpoint(run.best("temporal", "learn_v1", 0), hybrid, ITEMS, CPU)
    path = tmp_path / "hybrid.pt"
    model = PCH(tiny_pch_config(), content_dim=CONTENT_DIM, num_items=4)
    checkpoint.save(path, checkpoint.model_payload(model, CONTENT_DIM, ITEMS[:4], {"method": "learn_hybrid"}))
    with pytest.raises(LearnFeaturesError, match="the checkpoint's towers read item ID slots, its item inputs have none"):
        TrainedRun.of_checkpoint(path, content, ITEMS, CPU)
    assert TrainedRun.of_checkpoint(path, hybrid, ITEMS, CPU).item_vectors().shape == (len(ITEMS), tiny_pch_config().d_out)
