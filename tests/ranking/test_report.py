"""End to end through the ``report`` subcommand on a labelled CSV table and a LEARN run dir."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from learn_features.errors import LearnFeaturesError
from learn_features.pch.content_store import write_content_store
from ranking.cli import register
from ranking.config import load_config
from ranking.synthetic import make_world, write_learn_snapshot

CONFIG = """
seeds = [0, 1]
num_threads = 1
models = ["lgbm_baseline", "dnn_baseline", "lgbm_learn", "dnn_learn", "dnn_llm_frozen", "dnn_random"]
[data]
source = "files"
interactions = "impressions.csv"
catalog = "items.csv"
positive = "label == 1"
genres_column = "genres"
[split]
cut_quantile = 0.8
valid_fraction = 0.15
train_start = "embeddings"
features_as_of = "impression"
[embeddings]
source = "parquet"
run_dir = "run"
[lgbm]
max_rounds = 80
early_stopping_rounds = 10
[dnn]
max_epochs = 4
hidden = [32]
aux_hidden = [16]
[bootstrap]
n_resamples = 100
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learn-features")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    world = make_world(n_users=80, n_items=200, n_impressions=3000, seed=1)
    imp = world.impressions.assign(timestamp=world.impressions["timestamp"].map(lambda t: t.isoformat()))
    imp.to_csv(root / "impressions.csv", index=False)
    world.items.assign(genres=world.items["genres"].map("|".join)).to_csv(root / "items.csv", index=False)
    learn_cut = world.start + pd.Timedelta(days=30)
    write_learn_snapshot(world, root / "run" / "embeddings", learn_cut, "learn-test")
    items = sorted(world.item_latent)  # the run's item table order, which the content store follows
    content = np.random.default_rng(0).normal(size=(len(items), 24)).astype(np.float32)
    write_content_store(root / "run" / "content" / "llm", [content], items, {})
    (root / "run" / "config.json").write_text(json.dumps({"split": {"history_len": 7}}))
    (root / "run" / "embeddings" / "manifest.json").write_text(json.dumps({"as_of": learn_cut.isoformat(), "model_version": "learn-test"}))
    (root / "ranking.toml").write_text(CONFIG)
    return root, learn_cut


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--config", "--run-dir", "--out"))


def test_report_end_to_end(workdir, capsys):
    root, learn_cut = workdir
    args = _parser().parse_args(["report", "--config", str(root / "ranking.toml"), "--out", str(root / "out")])
    assert args.func(args) == 0
    assert "report.html" in capsys.readouterr().out

    report = json.loads((root / "out" / "report.json").read_text())
    arms = ["dnn_baseline", "dnn_learn", "dnn_llm_frozen", "dnn_random", "lgbm_baseline", "lgbm_learn"]
    assert [r["model"] for r in report["headline"]] == arms
    assert report["features_as_of"] == "impression"
    assert report["fingerprint"]["history_len"] == {"value": 7, "from": str(root / "run" / "config.json")}
    for name in arms:
        arm = report["arms"][name]
        assert [m["name"] for m in arm["per_seed"]] == [name, name] and arm["seeds"] == [0, 1]
        uaucs = [m["uauc"] for m in arm["per_seed"]]
        assert arm["uauc_over_seeds"]["mean"] == pytest.approx(np.mean(uaucs))
        assert arm["uauc_over_seeds"]["sd"] == pytest.approx(np.std(uaucs, ddof=1))
        assert all(0.0 < m["auc"] < 1.0 for m in arm["per_seed"])
        curves = arm["validation_curves"]
        assert len(curves) == 2 and all(curve and "valid_logloss" in curve[0] for curve in curves)
        if name.startswith("dnn"):  # the DNN curves also carry validation UAUC, and the kept epoch is on them
            assert all("valid_uauc" in e for e in curves[0])
            assert [m["best_iteration"] for m in arm["per_seed"]] == [min(c, key=lambda e: e["valid_logloss"])["epoch"] for c in curves]
    # Training starts at the LEARN snapshot, so every training row can see an item embedding.
    assert pd.Timestamp(report["periods"]["train_start"]) == learn_cut
    assert report["fingerprint"]["splits"]["train"]["item_embedding_coverage"] == 1.0
    assert report["fingerprint"]["learn_model_data_cut"] == learn_cut.isoformat()
    assert len(report["fingerprint"]["files_sha256"]) == 4
    for split, cov in report["coverage"].items():  # the controls have LEARN's coverage, in every split
        assert cov["item_embedding_rows"] == 1.0 and cov["feature learn_item_pc0"] == 1.0
        assert cov["user_random_rows"] == cov["user_llm_frozen_rows"] == cov["user_embedding_rows"] == cov["feature learn_cosine"]
        assert 0.0 < cov["feature learn_history_cosine"] <= 1.0 and cov["users_with_history"] <= cov["users"]

    comparisons = {(c["reference"], c["arm"]): c for c in report["comparisons"]}
    assert list(comparisons) == [("dnn_baseline", "dnn_learn"), ("lgbm_baseline", "lgbm_learn"), ("dnn_baseline", "dnn_llm_frozen"),
                                 ("dnn_baseline", "dnn_random"), ("dnn_llm_frozen", "dnn_learn"), ("dnn_random", "dnn_learn")]  # fmt: skip
    for (ref, arm), c in comparisons.items():
        for metric in ("uauc", "wuauc"):
            per_seed = [100 * (a[metric] - r[metric]) for r, a in zip(report["arms"][ref]["per_seed"], report["arms"][arm]["per_seed"])]
            assert c["seed_paired"][metric]["deltas_pp"] == pytest.approx(per_seed)
            assert c["verdict"][metric]["result"] in ("lift", "worse", "not shown")
            boot = c["bootstrap"][metric]
            averaged = 100 * (report["arms"][arm]["seed_averaged"][metric] - report["arms"][ref]["seed_averaged"][metric])
            assert boot["delta_pp"] == pytest.approx(averaged)  # the bootstrap reads the seed-averaged predictions

    tiers = {(t["arm"], t["dimension"], t["tier"]): t for t in report["tiers"]}
    assert len(tiers) == 4 * 7 and {t["reference"] for t in report["tiers"]} == {"dnn_baseline", "lgbm_baseline"}
    assert abs(sum(t["share"] for (a, d, _), t in tiers.items() if a == "dnn_learn" and d == "user") - 1.0) < 1e-9
    for t in tiers.values():
        if t["n_impressions"] == 0:  # an empty tier is reported with a message, not NaN
            assert t["note"] == "no evaluation impressions in this tier" and t["auc"] is None
        elif t["uauc"] is not None:
            assert t["uauc"]["ci_low_pp"] <= t["uauc"]["delta_pp"] <= t["uauc"]["ci_high_pp"]
            assert t["wuauc"].keys() == t["uauc"].keys()
            assert t["wuauc"]["ci_low_pp"] <= t["wuauc"]["delta_pp"] <= t["wuauc"]["ci_high_pp"]
    for (ref, arm), c in comparisons.items():  # a pair's "all" tier row is its comparison's bootstrap: same draws, same rows
        if ref.endswith("_baseline"):
            assert tiers[arm, "all", "all"]["reference"] == ref
            assert tiers[arm, "all", "all"]["uauc"] == c["bootstrap"]["uauc"]
    assert any(line.startswith("Does DNN + LEARN beat both control arms?") for line in report["answers"])

    html = (root / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 4 + 6 + 2  # seed-paired, tiers, learning curves, calibration + scores
    assert "<th>WUAUC arm</th><th>ΔWUAUC pp [95% CI]</th>" in html
    md = (root / "out" / "report.md").read_text()
    assert "Table 6" in md and "Table 7" in md and "(plots/calibration.png)" in md and "## Answers" in md
    assert "(plots/curves_dnn_learn.png)" in md and "Coverage per split" in md
    assert "| UAUC base | UAUC arm | ΔUAUC pp [95% CI] | WUAUC base | WUAUC arm | ΔWUAUC pp [95% CI] | Note |" in md
    assert (root / "out" / "plots" / "tier_deltas_dnn_learn.png").stat().st_size > 1000


def test_tiers_and_bootstrap_read_the_seed_averaged_predictions(workdir):
    from ranking.experiment import run_ranking_experiment, train_models

    root, _ = workdir
    config = load_config(root / "ranking.toml", ['models=["lgbm_baseline", "dnn_learn"]', "dnn.max_epochs=2"])
    results = run_ranking_experiment(config)
    test = results.dataset.test
    for name in config.models:
        expected = np.mean([train_models(results.dataset, config, seed)[name].predict(test) for seed in config.seeds], axis=0)
        np.testing.assert_array_equal(results.predictions[name].to_numpy(), expected)
    assert results.arms["dnn_learn"].per_seed[0].uauc != results.arms["dnn_learn"].per_seed[1].uauc  # the seeds differ


def test_learn_model_trained_past_the_cut_is_refused(workdir, tmp_path):
    root, _ = workdir
    config = load_config(root / "ranking.toml")
    manifest = root / "run" / "embeddings" / "manifest.json"
    original = manifest.read_text()
    try:
        manifest.write_text(json.dumps({"as_of": "2030-01-01T00:00:00+00:00"}))
        from ranking.experiment import run_ranking_experiment

        config.models = ["lgbm_baseline", "lgbm_learn"]
        with pytest.raises(LearnFeaturesError, match="after the ranking cut"):
            run_ranking_experiment(config)
    finally:
        manifest.write_text(original)


def test_config_rejects_unknown_keys_and_resolves_paths(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nsource = "files"\ninteractions = "x.csv"\npositive = "label == 1"\n[split]\ncut_quantile = 0.9\nvalid_fracton = 0.1\n')
    with pytest.raises(LearnFeaturesError, match=r"unknown key\(s\) \['valid_fracton'\]"):
        load_config(path)
    path.write_text('models = ["lgbm_baseline"]\n[data]\nsource = "files"\ninteractions = "x.csv"\npositive = "label == 1"\n[embeddings]\nsource = "none"\n')
    config = load_config(path)
    assert config.data.interactions == str(tmp_path / "x.csv")
    path.write_text('[data]\nsource = "files"\ninteractions = "x.csv"\npositive = "label == 1"\n[embeddings]\nsource = "none"\n')
    with pytest.raises(LearnFeaturesError, match="LEARN models are requested"):
        load_config(path)
