"""Ranking config loading: the library's checks, the shipped MovieLens config, ``report --set``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from learn_features.config import from_dict
from learn_features.config import load_config as load_library_config
from learn_features.data.movielens import load_movielens_ratings
from learn_features.data.split import SplitConfig
from learn_features.data.split import resolve_cut_time
from learn_features.errors import LearnFeaturesError
from ranking.cli import register, report_config
from ranking.config import EmbeddingConfig, load_config
from ranking.loading import load_data
from ranking.periods import resolve_periods
from ranking.experiment import expected_model_version, feast_repo_for, history_len

REPO = Path(__file__).resolve().parents[2]
MOVIELENS_CONFIG = REPO / "ranking" / "configs" / "movielens.toml"


@dataclass
class _Inner:
    mode: Literal["fast", "exact"] = "fast"
    maybe: Literal["on"] | None = None


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)


def test_literal_values_must_be_one_of_the_choices(tmp_path):
    assert from_dict(_Outer, {"inner": {"mode": "exact", "maybe": "on"}}, "").inner == _Inner("exact", "on")
    assert from_dict(_Outer, {"inner": {"maybe": None}}, "").inner.maybe is None
    with pytest.raises(LearnFeaturesError, match=r"^inner\.mode: 'slow' is not one of \['fast', 'exact'\]$"):
        from_dict(_Outer, {"inner": {"mode": "slow"}}, "")
    path = tmp_path / "c.toml"
    path.write_text('[inner]\nmode = "exact"\n')
    with pytest.raises(LearnFeaturesError, match=r"c\.toml: inner\.mode: 1 is not one of \['fast', 'exact'\]"):
        load_library_config(_Outer, path, ["inner.mode=1"])


def test_shipped_movielens_config_resolves_against_its_folder(monkeypatch):
    config = load_config(MOVIELENS_CONFIG)
    data = REPO / "data" / "ml-latest-small"
    assert Path(config.data.movielens_dir) == data and (data / "ratings.csv").is_file()
    assert (config.data.source, config.data.positive, config.data.negative) == ("movielens", "rating >= 4", "rating <= 3")
    assert config.embeddings.feast_repo is None  # the run's replay repo
    assert Path(feast_repo_for(config.embeddings)) == REPO / "runs" / "movielens" / "feast_replay"
    assert Path(config.embeddings.run_dir) == REPO / "runs" / "movielens"
    assert (config.embeddings.source, config.embeddings.expected_model_version) == ("feast", "run")
    assert config.split.train_start == "embeddings"
    monkeypatch.chdir(REPO)  # from the repository root, the "../../" folds away
    assert load_config("ranking/configs/movielens.toml").data.movielens_dir == "data/ml-latest-small"


def test_shipped_movielens_split_follows_the_learn_run():
    """With training from the default LEARN run's data cut, the periods are in order
    (train < validation < evaluation, LEARN cut <= ranking cut) and none is small."""
    config = load_config(MOVIELENS_CONFIG)
    learn_split = tomllib.loads((REPO / "training" / "configs" / "movielens.toml").read_text())["split"]
    learn_cut = resolve_cut_time(
        load_movielens_ratings(Path(config.data.movielens_dir) / "ratings.csv"), SplitConfig(cut_quantile=learn_split["cut_quantile"])
    )
    impressions, _, _ = load_data(config.data)
    periods = resolve_periods(impressions, dataclasses.replace(config.split, train_start=learn_cut.isoformat()))
    assert learn_cut == periods.train_start < periods.valid_start < periods.cut < periods.eval_end
    ts = impressions["timestamp"]
    counts = [
        ((ts >= periods.train_start) & (ts < periods.valid_start)).sum(),
        ((ts >= periods.valid_start) & (ts < periods.cut)).sum(),
        ((ts >= periods.cut) & (ts <= periods.eval_end)).sum(),
    ]
    assert min(counts) >= 2000, counts


def _report_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="learn-features")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["report", "--config", str(MOVIELENS_CONFIG), "--out", "out", *argv])


def test_report_set_overrides_the_config():
    config = report_config(
        _report_args(
            "--set", "split.valid_fraction=0.2",
            "--set", 'models=["lgbm_baseline"]',
            "--set", "embeddings.source=none",
            "--set", "data.movielens_dir=elsewhere",
        )
    )  # fmt: skip
    assert config.split.valid_fraction == 0.2 and config.models == ["lgbm_baseline"]
    assert config.embeddings.source == "none"
    assert config.data.movielens_dir == "elsewhere"  # a command-line path is relative to the working directory
    assert config.embeddings.run_dir == str(REPO / "runs" / "movielens")  # the file's: to the file

    config = report_config(_report_args("--run-dir", "runs/other", "--set", 'embeddings.user_paths=["u.parquet"]'))
    assert (config.embeddings.run_dir, config.embeddings.user_paths) == ("runs/other", [])  # --run-dir wins

    with pytest.raises(LearnFeaturesError, match=r"movielens\.toml: embeddings\.source: 'parket' is not one of"):
        report_config(_report_args("--set", "embeddings.source=parket"))
    with pytest.raises(LearnFeaturesError, match=r"unknown key\(s\) \['valid_fracton'\]"):
        report_config(_report_args("--set", "split.valid_fracton=0.2"))
    with pytest.raises(LearnFeaturesError, match="LEARN models are requested"):
        report_config(_report_args("--set", "embeddings.source=none"))


def test_expected_model_version_from_the_run_manifest(tmp_path):
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "manifest.json").write_text(json.dumps({"as_of": "2016-03-22T08:26:11Z", "model_version": "learn_v1-abc"}))
    assert expected_model_version(EmbeddingConfig(run_dir=str(tmp_path), expected_model_version="run")) == "learn_v1-abc"
    assert expected_model_version(EmbeddingConfig(run_dir=str(tmp_path), expected_model_version="v2")) == "v2"
    assert expected_model_version(EmbeddingConfig(run_dir=str(tmp_path))) is None
    with pytest.raises(LearnFeaturesError, match=r"expected_model_version='run' needs embeddings\.run_dir"):
        expected_model_version(EmbeddingConfig(run_dir=str(tmp_path / "missing"), expected_model_version="run"))


def test_new_keys_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(LearnFeaturesError, match=r"movielens\.toml: split\.features_as_of: 'now' is not one of \['cut', 'impression'\]"):
        report_config(_report_args("--set", "split.features_as_of=now"))
    with pytest.raises(LearnFeaturesError, match=r"config seeds: need one or more distinct seeds, got \[1, 1\]"):
        report_config(_report_args("--set", "seeds=[1, 1]"))
    with pytest.raises(LearnFeaturesError, match=r"unknown key\(s\) \['seed'\]"):  # replaced by seeds
        report_config(_report_args("--set", "seed=3"))
    config = load_config(MOVIELENS_CONFIG)
    assert config.seeds == [0, 1, 2, 3, 4] and config.split.features_as_of == "impression"
    assert {"dnn_llm_frozen", "dnn_random"} <= set(config.models)


def test_history_window_comes_from_the_run_config(tmp_path):
    assert history_len(EmbeddingConfig(history_len=12)) == (12, "embeddings.history_len")
    assert history_len(EmbeddingConfig(run_dir=str(tmp_path)))[0] == 80  # no config.json: LEARN's default, said so
    (tmp_path / "config.json").write_text(json.dumps({"split": {"history_len": 30}}))
    assert history_len(EmbeddingConfig(run_dir=str(tmp_path))) == (30, str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text(json.dumps({"split": {"history_len": "long"}}))
    with pytest.raises(LearnFeaturesError, match=r"config\.json: split\.history_len must be a positive integer, got 'long'"):
        history_len(EmbeddingConfig(run_dir=str(tmp_path)))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LearnFeaturesError, match=r"config\.json: no readable split\.history_len"):
        history_len(EmbeddingConfig(run_dir=str(tmp_path)))


def test_every_arm_reference_exists_and_is_judged():
    from ranking.arms import ARMS, ARMS_BY_NAME, MODEL_PAIRS

    for arm in ARMS:
        for other in (arm.reference, arm.control_of):
            assert other is None or other in ARMS_BY_NAME, (arm.name, other)
        if arm.reference is not None:
            assert (arm.reference, arm.name) in MODEL_PAIRS
            assert ARMS_BY_NAME[arm.reference].ranker == arm.ranker  # differs by its vectors only
    # the report's comparisons, in its order (report.json "comparisons" and the tier tables)
    assert MODEL_PAIRS == (
        ("dnn_baseline", "dnn_learn"), ("lgbm_baseline", "lgbm_learn"), ("dnn_baseline", "dnn_llm_frozen"),
        ("dnn_baseline", "dnn_random"), ("dnn_llm_frozen", "dnn_learn"), ("dnn_random", "dnn_learn"),
    )  # fmt: skip


def test_adding_an_arm_spec_adds_an_arm(monkeypatch):
    from ranking.arms import ARMS, ARMS_BY_NAME, ArmSpec, model_pairs, report_order
    from ranking.config import ExperimentConfig

    extra = ArmSpec("lgbm_random", "LightGBM + random vectors (control)", "lgbm", "random", "lgbm_baseline", "lgbm_learn")
    arms = (*ARMS, extra)
    assert report_order(arms)[-1] == "lgbm_random" and report_order(arms)[:-1] == report_order(ARMS)
    assert set(model_pairs(arms)) - set(model_pairs(ARMS)) == {("lgbm_baseline", "lgbm_random"), ("lgbm_random", "lgbm_learn")}
    data = load_config(MOVIELENS_CONFIG).data
    with pytest.raises(LearnFeaturesError, match=r"unknown model\(s\) \['lgbm_random'\]"):
        ExperimentConfig(data, models=["lgbm_baseline", "lgbm_random"])
    monkeypatch.setitem(ARMS_BY_NAME, "lgbm_random", extra)
    assert ExperimentConfig(data, models=["lgbm_baseline", "lgbm_random"]).models == ["lgbm_baseline", "lgbm_random"]


def test_every_arm_spec_has_a_ranker_and_its_vectors_a_builder() -> None:
    """An arm is buildable from its spec alone: its ranker is registered, and a control's
    vectors have a registered way to join the dataset."""
    from ranking.arms import ARMS
    from ranking.experiment import CONTROL_VECTORS, RANKERS

    assert {arm.ranker for arm in ARMS} <= set(RANKERS)
    assert {arm.vectors for arm in ARMS} - {None, "learn"} == set(CONTROL_VECTORS)
