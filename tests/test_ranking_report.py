"""End to end through the ``report`` subcommand on a generic CSV table and a LEARN run dir."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from learn_features.errors import LearnFeaturesError
from ranking.cli import register
from ranking.config import load_config
from ranking.synthetic import make_world, write_learn_snapshot

CONFIG = """
seed = 0
num_threads = 1
[data]
interactions = "impressions.csv"
items = "items.csv"
format = "generic"
[split]
cut_quantile = 0.8
valid_fraction = 0.15
train_start = "embeddings"
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
    assert [r["model"] for r in report["headline"]] == ["dnn_baseline", "dnn_learn", "lgbm_baseline", "lgbm_learn"]
    assert all(0.0 < r["auc"] < 1.0 for r in report["headline"])
    # Training starts at the LEARN snapshot, so every training row can see an item embedding.
    assert pd.Timestamp(report["periods"]["train_start"]) == learn_cut
    assert report["fingerprint"]["splits"]["train"]["item_embedding_coverage"] == 1.0
    assert report["fingerprint"]["learn_model_data_cut"] == learn_cut.isoformat()
    assert len(report["fingerprint"]["files_sha256"]) == 4
    tiers = {(t["pair"], t["dimension"], t["tier"]): t for t in report["tiers"]}
    assert len(tiers) == 14
    assert abs(sum(t["share"] for (p, d, _), t in tiers.items() if p == "dnn" and d == "user") - 1.0) < 1e-9
    for t in tiers.values():
        if t["n_impressions"] == 0:  # an empty tier is reported with a message, not NaN
            assert t["note"] == "no evaluation impressions in this tier" and t["auc"] is None
        elif t["uauc"] is not None:
            assert t["uauc"]["ci_low_pp"] <= t["uauc"]["delta_pp"] <= t["uauc"]["ci_high_pp"]
            assert t["wuauc"].keys() == t["uauc"].keys()
            assert t["wuauc"]["ci_low_pp"] <= t["wuauc"]["delta_pp"] <= t["wuauc"]["ci_high_pp"]
    # Table 6's WUAUC interval is the "all" tier's: same bootstrap, same rows, same difference.
    for r in report["headline"]:
        if r["model"].endswith("_baseline"):
            assert r["delta_wuauc_ci_pp"] is None
            continue
        wuauc = tiers[r["model"].split("_")[0], "all", "all"]["wuauc"]
        assert r["delta_wuauc_pp"] == pytest.approx(wuauc["delta_pp"])
        assert r["delta_wuauc_ci_pp"] == [wuauc["ci_low_pp"], wuauc["ci_high_pp"]]

    html = (root / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "<th>WUAUC LEARN</th><th>ΔWUAUC pp [95% CI]</th>" in html
    md = (root / "out" / "report.md").read_text()
    assert "Table 6" in md and "Table 7" in md and "(plots/calibration.png)" in md
    assert "| UAUC base | UAUC LEARN | ΔUAUC pp [95% CI] | WUAUC base | WUAUC LEARN | ΔWUAUC pp [95% CI] | Note |" in md
    assert (root / "out" / "plots" / "tier_deltas_dnn.png").stat().st_size > 1000


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
    path.write_text('[data]\ninteractions = "x.csv"\n[split]\ncut_quantile = 0.9\nvalid_fracton = 0.1\n')
    with pytest.raises(LearnFeaturesError, match=r"unknown key\(s\) \['valid_fracton'\]"):
        load_config(path)
    path.write_text('models = ["lgbm_baseline"]\n[data]\ninteractions = "x.csv"\n[embeddings]\nsource = "none"\n')
    config = load_config(path)
    assert config.data.interactions == str(tmp_path / "x.csv")
    path.write_text('[data]\ninteractions = "x.csv"\n[embeddings]\nsource = "none"\n')
    with pytest.raises(LearnFeaturesError, match="LEARN models are requested"):
        load_config(path)
