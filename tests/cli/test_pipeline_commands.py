"""End to end through the CLI: `learn-features run` on a small synthetic catalog with a tiny
random decoder, then the properties a user relies on: every method evaluated, embeddings
that honour the Parquet contract, idempotent re-runs, cold-start item embeddings, and exit
code 2 with a precise message on bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from core_fixtures import tiny_llm_dir  # noqa: F401  (pytest fixture)
from job_fixtures import write_config, write_synthetic

from learn_features.cli import main
from learn_features.config import load_config
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, read_frame
from learn_features.run import RunDir
from learn_features.trained_run import embed_catalog_items
from training.config import PipelineConfig
from training.curves import training_curves_png
from training.methods import METHODS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llm_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("job")
    interactions, catalog = write_synthetic(root)
    config = write_config(root, interactions, catalog, tiny_llm_dir)
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    return root, config


def test_run_evaluates_every_method_under_both_protocols(finished_run):
    root, _ = finished_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"temporal", "leave_one_out"}
    table = (root / "run" / "metrics.md").read_text()
    for protocol, block in metrics["protocols"].items():
        methods = block["methods"]
        assert set(methods) == set(METHODS)
        for name, values in methods.items():
            for key in ("recall@50", "ndcg@50", "hit@10", "recall@200"):
                assert 0.0 <= values[key] <= 1.0, (protocol, name, key)
            assert values["users"] > 0
            for subset in ("warm_items", "tail_items", "cold_items"):
                assert subset in values and "recall@50" in values[subset]
            assert set(values["paired"]) == {"learn_v1"} - {name}  # paired against the reference, never itself
            if name != "learn_v1":
                assert set(values["paired"]["learn_v1"]) >= {"recall@50", "ndcg@50"}
        for name in ("learn_v1", "id_baseline", "llm_frozen"):
            diagnostics = methods[name]["diagnostics"]
            assert 0 < diagnostics["item_effective_rank"] <= diagnostics["dim"]
        assert methods["learn_v1"]["training"][0]["final_loss"] < methods["learn_v1"]["training"][0]["final_chance_loss"] * 1.5
        assert f"## Protocol: {protocol}" in table
        assert block["references"] == ["learn_v1"] and block["tail_share"] == 0.2
    for heading in ("All target items", "Warm target items", "Tail target items", "Cold-start target items"):
        assert f"### {heading}" in table and f"### {heading.replace('All target items', 'Paired difference')}" in table
    assert all(f"| {name} |" in table for name in METHODS)
    curves = root / "run" / "training_curves.png"
    assert curves.read_bytes().startswith(b"\x89PNG") and "`training_curves.png`" in table


def test_training_curves_draw_only_trained_methods() -> None:
    history = [{"epoch": e, "loss": 2.0 / e, "chance_loss": 2.0, "val_recall@50": 0.1 * e} for e in (1, 2, 3)]
    trained = {"training": [{"history": history, "best_epoch": 3, "best_validation": 0.3}]}
    assert training_curves_png({"temporal": {"methods": {"popularity": {"training": []}}}}) is None
    png = training_curves_png({"temporal": {"methods": {"learn_v1": trained, "popularity": {"training": []}}}})
    assert png is not None and png.startswith(b"\x89PNG")


def test_per_user_scores_recompute_the_paired_differences(finished_run):
    """per_user.parquet holds every user's score, so a paired comparison needs no retraining."""
    root, _ = finished_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())["protocols"]["temporal"]["methods"]
    per_user = pd.read_parquet(root / "run" / "per_user.parquet")
    rows = per_user[(per_user["protocol"] == "temporal") & (per_user["subset"] == "all")]
    mine = rows[rows["method"] == "popularity"].set_index("user_id")["recall@50"]
    reference = rows[rows["method"] == "learn_v1"].set_index("user_id")["recall@50"]
    assert mine.index.equals(reference.index)
    assert (mine - reference).mean() == pytest.approx(metrics["popularity"]["paired"]["learn_v1"]["recall@50"]["delta"])
    assert mine.mean() == pytest.approx(metrics["popularity"]["recall@50"])
    assert {"all", "warm_items", "tail_items"} <= set(per_user["subset"])
    tail = per_user[(per_user["protocol"] == "temporal") & (per_user["subset"] == "tail_items") & (per_user["method"] == "popularity")]
    assert tail["recall@50"].mean() == pytest.approx(metrics["popularity"]["tail_items"]["recall@50"])


def test_published_embeddings_follow_the_contract(finished_run):
    root, _ = finished_run
    manifest = RunDir(root / "run").read_manifest()
    users = read_frame(root / "run" / "embeddings" / USER_FILE, "user")
    items = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    assert len(items) == 64 and users["user_id"].str.startswith("u").all()
    assert set(users["model_version"]) == set(items["model_version"]) == {manifest["model_version"]}
    assert {len(v) for v in items["embedding"]} == {manifest["dim"]} == {8}
    assert str(items["event_timestamp"].dt.tz) == "UTC"


def test_rerun_is_idempotent(finished_run):
    root, config = finished_run
    before = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    shards = sorted((root / "cache").rglob("shard-*.npz"))
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    after = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    assert sorted((root / "cache").rglob("shard-*.npz")) == shards, "a re-run must not re-embed cached items"
    assert (before["model_version"] == after["model_version"]).all()
    np.testing.assert_array_equal(np.stack(before["embedding"]), np.stack(after["embedding"]))


def test_cold_start_item_gets_an_embedding_from_text_alone(finished_run):
    root, _ = finished_run
    new_items = pd.DataFrame({"item_id": ["brand-new"], "title": ["Space Opera number 999"], "category": ["space opera"]})
    table = embed_catalog_items(root / "run", new_items, device="cpu")
    manifest = RunDir(root / "run").read_manifest()
    assert table.ids == ["brand-new"] and table.model_version == manifest["model_version"]
    assert table.vectors.shape == (1, manifest["dim"]) and np.isfinite(table.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, rtol=1e-5)


def test_bad_input_exits_2_naming_file_and_field(tmp_path, capsys, tiny_llm_dir):  # noqa: F811
    interactions, catalog = write_synthetic(tmp_path)
    pd.read_csv(interactions).drop(columns=["timestamp"]).to_csv(interactions, index=False)
    config = write_config(tmp_path, interactions, catalog, tiny_llm_dir)
    assert main(["extract", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(interactions) in err and "timestamp" in err


def test_unknown_config_key_exits_2(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlearning_rate = 0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "learning_rate" in err


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


TOML_COMMANDS = ["extract", "train", "embed", "evaluate", "run", "embed-users", "stream-users", "report"]
FEAST_COMMANDS = ["materialize", "verify-online", "embed-items", "stream-users"]


@pytest.mark.parametrize("command", [*TOML_COMMANDS, *FEAST_COMMANDS, "publish"])
def test_flags_mean_the_same_on_every_subcommand(command, capsys):
    """-q/--quiet everywhere; -c/--config is always the TOML job config; -f/--feature-store-yaml
    (Feast's own flag name) picks the Feast YAML on every command that talks to a store."""
    text = _help(command, capsys)
    assert "-q, --quiet" in text
    assert ("-c CONFIG, --config CONFIG" in text) == (command in TOML_COMMANDS)
    assert ("-f FEATURE_STORE_YAML, --feature-store-yaml FEATURE_STORE_YAML" in text) == (command in FEAST_COMMANDS)


def test_any_eval_ks_works_with_an_interval_for_each(finished_run, tmp_path):
    """Cut-offs without 50 (the old headline) evaluate, with intervals for every recall@K and ndcg@K."""
    root, config = finished_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), "--set", "eval.ks=[5, 20]", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for block in metrics["protocols"].values():
        for values in block["methods"].values():
            assert "recall@50" not in values and set(values["ci95"]) == {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}
            low, high = values["ci95"]["recall@20"]
            assert low <= values["recall@20"] <= high
    lines = (run / "metrics.md").read_text().splitlines()
    header = lines[lines.index("### All target items") + 2]
    assert header == "| method | users | recall@5 | ndcg@5 | recall@20 | ndcg@20 |"


def test_rank_seen_leaves_the_users_own_items_in_the_ranking(finished_run, tmp_path):
    """eval.rank_seen scores as RecBole's sequential evaluation does: a user's own (popular)
    items then take places in popularity's ranking, so no target ranks higher and some lower."""
    root, config = finished_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    methods = '--set=eval.methods=["learn_v1","popularity"]'
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), methods, "--quiet"]) == 0
    removed = json.loads((run / "metrics.json").read_text())["protocols"]
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), methods, "--set", "eval.rank_seen=true", "--quiet"]) == 0
    ranked = json.loads((run / "metrics.json").read_text())["protocols"]
    for protocol, block in ranked.items():
        assert block["rank_seen"] and not removed[protocol]["rank_seen"]
        before, after = removed[protocol]["methods"]["popularity"], block["methods"]["popularity"]
        recalls = [k for k in after if k.startswith("recall@")]
        assert all(after[k] <= before[k] for k in recalls)
        assert any(after[k] < before[k] for k in recalls)
    assert "Items the user already has stay in the ranking" in (run / "metrics.md").read_text()


def test_evaluate_reads_finished_models_and_trains_only_new_seeds(finished_run, tmp_path, monkeypatch):
    """evaluate builds no model, optimiser or negatives for a finished model: its history comes
    from last.pt. Adding a seed trains that seed's models only."""
    from training import trainer

    root, config = finished_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    built: list[str] = []
    original = trainer.build_parts
    monkeypatch.setattr(trainer, "build_parts", lambda job, *a: built.append(str(job.out_dir.relative_to(run))) or original(job, *a))
    methods = '--set=eval.methods=["learn_v1","popularity"]'
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), methods, "--quiet"]) == 0
    assert built == []
    before = json.loads((root / "run" / "metrics.json").read_text())["protocols"]["temporal"]["methods"]["learn_v1"]["training"]
    after = json.loads((run / "metrics.json").read_text())["protocols"]["temporal"]["methods"]["learn_v1"]["training"]
    assert after == before
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), methods, "--seeds", "2", "--quiet"]) == 0
    assert built == ["models/temporal/learn_v1/seed1", "models/leave_one_out/learn_v1/seed1"]
    assert len(json.loads((run / "metrics.json").read_text())["protocols"]["temporal"]["methods"]["learn_v1"]["training"]) == 2


def test_paths_in_a_config_file_resolve_against_its_folder(tmp_path, monkeypatch, tiny_llm_dir):  # noqa: F811
    """Written in the file: relative to the file's folder, from any working directory.
    Given on the command line (--run-dir, --set): relative to the working directory."""
    project = tmp_path / "project"
    for folder in ("data", "configs"):
        (project / folder).mkdir(parents=True)
    interactions, catalog = write_synthetic(project / "data")
    config = write_config(project / "configs", interactions, catalog, tiny_llm_dir)
    text = config.read_text().replace(str(project / "configs" / "run"), "../runs/job").replace(str(project / "configs" / "cache"), "../cache")
    text = text.replace(str(interactions), "../data/interactions.csv").replace(str(catalog), "../data/catalog.parquet")
    config.write_text(text.replace(str(tiny_llm_dir), os.path.relpath(tiny_llm_dir, config.parent)))
    assert "/" + tmp_path.name not in config.read_text()  # nothing absolute is left in the file
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "--config", str(config), "--quiet"]) == 0
    recorded = json.loads((project / "runs" / "job" / "config.json").read_text())
    assert recorded["data"]["interactions"] == str(interactions) and recorded["llm"]["model"] == str(tiny_llm_dir)
    assert recorded["cache_dir"] == str(project / "cache")
    assert main(["extract", "--config", str(config), "--run-dir", "here", "--set", 'data.catalog="project/data/catalog.parquet"', "--quiet"]) == 0
    recorded = json.loads((tmp_path / "here" / "config.json").read_text())
    assert (recorded["run_dir"], recorded["data"]["catalog"]) == ("here", "project/data/catalog.parquet")


def test_shipped_training_config_resolves_against_its_folder(monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    config = load_config(PipelineConfig, repo / "training" / "configs" / "movielens.toml")
    assert (config.run_dir, config.cache_dir) == (str(repo / "runs" / "movielens"), str(repo / ".cache" / "learn-features"))
    assert (Path(config.data.movielens_dir) / "ratings.csv").is_file() and config.llm.model == "shipped:smollm2"
    monkeypatch.chdir(repo)  # `make run`: from the repository root the outputs stay where they were
    config = load_config(PipelineConfig, "training/configs/movielens.toml")
    assert (config.run_dir, config.cache_dir, config.data.movielens_dir) == ("runs/movielens", ".cache/learn-features", "data/ml-latest-small")


def test_embed_items_reproduces_the_published_vector_of_a_catalog_row(finished_run, tmp_path):
    """`embed-items` on a row of the run's own catalog CSV gives the vector `embed` published:
    same reader (cells stay strings), same prompt, same fp16 content rounding."""
    root, _ = finished_run
    catalog = pd.read_parquet(root / "catalog.parquet")
    row = tmp_path / "row.csv"
    catalog.iloc[[5]].to_csv(row, index=False)
    out = tmp_path / "vec.parquet"
    assert main(["embed-items", "--run-dir", str(root / "run"), "--catalog", str(row), "--output", str(out)]) == 0
    item = catalog["item_id"].iloc[5]
    published = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    want = published.loc[published["item_id"] == item, "embedding"].iloc[0]
    got = read_frame(out, "item")["embedding"].iloc[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
