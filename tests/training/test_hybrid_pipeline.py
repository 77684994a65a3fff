"""learn_hybrid end to end on the small synthetic job: extract, train, embed (with the manifest's
``id_part``), load, `embed-items` for new catalog rows (content alone) and `--push` to Feast."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from core_fixtures import single_thread, tiny_llm_dir  # noqa: F401  (pytest fixtures)
from feast_fixtures import copy_repo
from job_fixtures import write_config, write_synthetic

from learn_features.cli import main
from learn_features.embeddings_io import read_frame
from learn_features.pch import checkpoint
from learn_features.pch.inference import item_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.pch.model import HybridInput
from learn_features.run import RunDir
from learn_features.store.candidates import ItemIndex
from learn_features.store.repo import apply_repo, open_store
from learn_features.store.serving import LearnFeatureClient
from learn_features.trained_run import TrainedRun, embed_catalog_items
from learn_features.user_vectors import UserTower

HYBRID = ["--set", 'eval.methods=["learn_hybrid","learn_v1"]', "--set", 'split.protocols=["temporal"]', "--quiet",
          "--set", "train.lr=0.03"]  # steps big enough that the few steps of this job move the ID table off zero


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> tuple[Path, list[str]]:  # noqa: F811
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("hybrid_job")
        flags = ["--config", str(write_config(root, *write_synthetic(root), tiny_llm_dir)), *HYBRID]
        assert main(["extract", *flags]) == 0
        assert main(["train", *flags, "--method", "learn_hybrid"]) == 0
        assert main(["embed", *flags, "--set", "eval.primary_method=learn_hybrid", "--set", "eval.cold_bias={learn_hybrid=0.125}"]) == 0
        return root, flags
    finally:
        torch.set_num_threads(before)


def test_embed_lists_the_items_with_an_id_part(hybrid_run) -> None:
    root, _ = hybrid_run
    run = RunDir(root / "run")
    manifest = run.read_manifest()
    payload = checkpoint.load_payload(Path(manifest["checkpoint"]))
    trained = payload["trained_item_ids"]
    assert manifest["method"] == "learn_hybrid" and payload["content_dim"] is not None and trained
    assert manifest["id_part"] == {"items": len(trained), "file": str(run.id_part_items.resolve())}
    assert pd.read_parquet(manifest["id_part"]["file"])["item_id"].tolist() == trained
    assert manifest["new_item_rule"] == {"rule": "bias", "value": 0.125, "window": 10}  # what the tables add to every new item
    assert manifest["warm_items"] == {"items": len(trained), "file": str(run.warm_items.resolve())}
    assert pd.read_parquet(run.warm_items)["item_id"].tolist() == trained  # a hybrid's warm items are those with an ID part


def test_the_published_tower_loads_with_its_slots_and_reproduces_the_vectors(hybrid_run) -> None:
    root, _ = hybrid_run
    tower = TrainedRun.load(root / "run", device="cpu")
    assert isinstance(tower.model.input, HybridInput) and tower.inputs.store is not None and tower.inputs.id_slots is not None
    published = read_frame(root / "run" / "embeddings" / "item_embeddings.parquet", "item")
    np.testing.assert_allclose(tower.item_vectors(), np.stack(published["embedding"]), rtol=0, atol=1e-6)
    users = UserTower.load(root / "run", device="cpu").embed(["x"], [["sku-1", "sku-2"]])  # embed-users, stream-users
    assert users.vectors.shape == (1, tower.model.config.d_out) and np.isfinite(users.vectors).all()


def most_trained_row(tower: TrainedRun) -> int:
    """The catalog row whose learned ID residual is largest (a few of this tiny job's items are
    never kept in the one epoch that is best: their residual is still zero)."""
    norms = tower.model.input.ids.weight.detach().norm(dim=1)
    return int(torch.argmax(norms[tower.inputs.id_slots]))


def test_new_catalog_rows_are_embedded_from_content_alone(hybrid_run) -> None:
    """A brand-new item with the text of a warm catalog row gets that row's content-alone vector;
    the warm row itself keeps its ID part, so embed-items reproduces its published vector."""
    root, _ = hybrid_run
    tower = TrainedRun.load(root / "run", device="cpu")
    row = most_trained_row(tower)
    assert tower.inputs.id_slots[row] > 0
    catalog = pd.read_parquet(root / "catalog.parquet")
    rows = pd.concat([catalog.iloc[[row]], catalog.iloc[[row]].assign(item_id="brand-new")], ignore_index=True)
    table = embed_catalog_items(root / "run", rows, device="cpu", progress=False)
    assert table.ids == [tower.item_ids[row], "brand-new"]

    published = tower.item_vectors()[row]
    no_ids = ItemInputs(store=tower.inputs.store).with_id_part(ItemInputs(id_slots=torch.zeros(len(tower.item_ids), dtype=torch.long)))
    content_alone = item_vectors(tower.model, no_ids, np.array([row]))[0]
    np.testing.assert_allclose(table.vectors[0], published, rtol=0, atol=1e-5)
    np.testing.assert_allclose(table.vectors[1], content_alone, rtol=0, atol=1e-5)
    assert np.abs(published - content_alone).max() > 1e-3, "training left the ID part at zero: the test could not tell them apart"


def test_embed_items_push_serves_a_new_item_of_a_hybrid_run(hybrid_run, tmp_path: Path, capsys, single_thread) -> None:  # noqa: F811
    root, _ = hybrid_run
    repo = copy_repo(tmp_path / "repo")
    assert main(["publish", "--run-dir", str(root / "run"), "--repo", str(repo), "-q"]) == 0
    apply_repo(open_store(repo), repo)
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0
    new = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["brand-new"], "title": ["Space Opera number 900"], "category": ["space opera"]}).to_csv(new, index=False)
    capsys.readouterr()
    assert main(["embed-items", "--run-dir", str(root / "run"), "--catalog", str(new), "--push", "--repo", str(repo), "-q"]) == 0
    version = RunDir(root / "run").read_manifest()["model_version"]
    assert f"pushed 1 items of {version} online" in capsys.readouterr().out
    assert main(["verify-online", "--repo", str(repo), "-q"]) == 0
    scored = LearnFeatureClient(repo).score("u0", ["brand-new", "sku-5"])
    assert scored.scorable.all() and scored.item_model_versions == [version, version]
    index = ItemIndex.from_published(repo)  # retrieval ranks by the run's bias, and the pushed item is new to it
    assert index.policy is not None and index.policy.rule.value == 0.125
    warm = set(pd.read_parquet(RunDir(root / "run").warm_items)["item_id"])
    assert {i for i, new in zip(index.item_ids, index.new) if not new} == warm and "brand-new" not in warm
    assert index.top_k(np.asarray(scored.user_vector), len(index)).new.sum() == len(index) - len(warm)


def test_embedding_another_method_drops_the_id_part(hybrid_run, tmp_path: Path, single_thread) -> None:  # noqa: F811
    root, flags = hybrid_run
    other = tmp_path / "run"
    shutil.copytree(root / "run", other)
    relocated = [*flags, "--run-dir", str(other), "--set", "eval.primary_method=learn_v1"]
    share = ["--set", "eval.cold_share={learn_v1=1.5}", "--set", "eval.cold_share_window=5"]
    assert main(["train", *relocated, "--method", "learn_v1"]) == 0 and main(["embed", *relocated, *share]) == 0
    run = RunDir(other)
    assert run.read_manifest()["id_part"] is None and not run.id_part_items.exists()
    assert run.read_manifest()["new_item_rule"] == {"rule": "share", "value": 1.5, "window": 5} and run.warm_items.exists()
    assert main(["embed", *relocated]) == 0 and run.read_manifest()["new_item_rule"] is None and not run.warm_items.exists()


def test_a_collaborative_part_is_published_served_and_left_out_of_new_items(hybrid_run, tmp_path: Path, single_thread) -> None:  # noqa: F811
    """``collaborative_rank`` on a trained hybrid: `train` fits the part without retraining the
    towers, `embed` publishes [towers, part] under a new model version, a user's vector scores
    an item by the towers' score plus the weighted part's, a brand-new item carries no part,
    and the wider vectors go through Feast."""
    root, flags = hybrid_run
    other = tmp_path / "run"
    shutil.copytree(root / "run", other)
    relocated = [*flags, "--run-dir", str(other), "--set", "eval.primary_method=learn_hybrid", "--set", "model_by_method.learn_hybrid.collaborative_rank=4"]
    before = RunDir(other).read_manifest()
    towers_before = checkpoint.load_payload(Path(before["checkpoint"].replace(str((root / "run").resolve()), str(other.resolve()))))["state_dict"]
    assert main(["train", *relocated, "--method", "learn_hybrid"]) == 0 and main(["embed", *relocated]) == 0
    manifest = RunDir(other).read_manifest()
    payload = checkpoint.load_payload(Path(manifest["checkpoint"]))
    assert all(torch.equal(payload["state_dict"][k], towers_before[k]) for k in towers_before)  # not retrained
    d_out = payload["model_config"]["d_out"]
    assert manifest["dim"] == d_out + 4 and manifest["model_version"] != before["model_version"]

    tower = TrainedRun.load(other, device="cpu")
    part = tower.collaborative
    published = np.stack(read_frame(other / "embeddings" / "item_embeddings.parquet", "item")["embedding"])
    np.testing.assert_allclose(tower.item_vectors(), published, rtol=0, atol=1e-6)
    histories = [np.array([0, 1, 2]), np.array([3])]
    weighted = TrainedRun(tower.payload | {"collaborative": part.with_weight(0.5).to_payload()}, tower.model, tower.inputs, tower.item_ids)
    towers_only = TrainedRun(tower.payload | {"collaborative": None}, tower.model, tower.inputs, tower.item_ids)
    slots = tower.inputs.id_slots.numpy()
    expected = towers_only.user_vectors(histories) @ towers_only.item_vectors().T + 0.5 * (
        part.with_weight(1.0).users(histories, slots) @ part.with_weight(1.0).items(slots).T)
    np.testing.assert_allclose(weighted.user_vectors(histories) @ weighted.item_vectors().T, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected - towers_only.user_vectors(histories) @ towers_only.item_vectors().T).max() > 1e-3  # the part adds something

    catalog = pd.read_parquet(root / "catalog.parquet")
    new = embed_catalog_items(other, catalog.iloc[[0]].assign(item_id="brand-new"), device="cpu", progress=False)
    assert new.vectors.shape == (1, d_out + 4) and not new.vectors[0, d_out:].any()

    repo = copy_repo(tmp_path / "repo")
    assert main(["publish", "--run-dir", str(other), "--repo", str(repo), "-q"]) == 0
    apply_repo(open_store(repo), repo)
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0 and main(["verify-online", "--repo", str(repo), "-q"]) == 0
    scored = LearnFeatureClient(repo).score("u0", ["sku-1", "sku-5"])
    assert scored.scorable.all() and scored.item_model_versions == [manifest["model_version"]] * 2
