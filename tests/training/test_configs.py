"""The shipped pipeline configs: the default job (`make run`) is a subset of the full comparison
(`make benchmark`), with every setting that shapes a row the same, so that the default job's rows
are rows of the benchmark (same method, protocol and seed); the Amazon benchmark is the
published protocol on the shipped Amazon data."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from learn_features.config import load_config
from learn_features.data.movielens import load_movielens_catalog
from learn_features.errors import LearnFeaturesError
from learn_features.pch.inputs import ItemInputs
from training.config import PipelineConfig
from training.methods import METHODS
from training.pipeline import prepare, train_job

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "training" / "configs"
#: What may differ: where the run goes, and which rows (methods, protocols, seeds) it computes.
ROW_SELECTION = {("run_dir",), ("split", "protocols"), ("eval", "methods"), ("eval", "seeds")}


def _without(tree: dict, keys: set[tuple[str, ...]]) -> dict:
    out = {k: v for k, v in tree.items() if (k,) not in keys}
    for section in {k[0] for k in keys if len(k) == 2}:
        out[section] = {k: v for k, v in tree[section].items() if (section, k) not in keys}
    return out


def test_the_default_job_is_a_subset_of_the_benchmark_with_the_same_settings() -> None:
    default = load_config(PipelineConfig, CONFIGS / "movielens.toml")
    benchmark = load_config(PipelineConfig, CONFIGS / "movielens-benchmark.toml")
    assert _without(asdict(default), ROW_SELECTION) == _without(asdict(benchmark), ROW_SELECTION)
    assert set(default.split.protocols) <= set(benchmark.split.protocols)
    assert default.split.primary_protocol == benchmark.split.primary_protocol == "temporal"
    assert set(default.eval.methods) <= set(benchmark.eval.methods)
    assert default.train.seed == benchmark.train.seed and default.eval.seeds <= benchmark.eval.seeds


def test_the_benchmark_runs_every_method_under_both_protocols_over_seeds() -> None:
    benchmark = load_config(PipelineConfig, CONFIGS / "movielens-benchmark.toml")
    assert benchmark.eval.methods == list(METHODS)
    assert set(benchmark.split.protocols) == {"temporal", "leave_one_out"}
    assert benchmark.eval.seeds >= 3


def test_the_default_job_trains_learn_v1_once_beside_the_baselines_a_claim_needs() -> None:
    default = load_config(PipelineConfig, CONFIGS / "movielens.toml")
    assert default.split.protocols == ["temporal"] and default.eval.seeds == 1
    trained = [m for m in default.eval.methods if METHODS[m].trained]
    assert trained == ["learn_v1", "id_baseline"]
    assert {"popularity", "item_knn", "llm_frozen"} <= set(default.eval.methods)


def test_the_amazon_benchmark_is_the_published_protocol_on_the_shipped_data() -> None:
    """Leave-one-out with histories cut to 50, ordered by the (fake, per-user) dates, every
    method but popularity_recent (whose window reads dates), paired against both LEARN
    defaults, and every tower trained as RecBole trains SASRec (the full softmax, one sample
    per prefix in batches of 2,048, the small start without a head, twice its width; chosen on
    validation), all at the same settings but for the hybrids' ID dropout 0.8 and temperature
    0.04, positions counted from the end for learn_hybrid and learn_v1 (and learn_v2, its
    twin under the full softmax) and the ID baseline's SASRec settings (also chosen there),
    with the MovieLens benchmark's towers otherwise but for dropout 0.2, and its encoders (the
    LLM in fp32, the content its README table was computed on)."""
    amazon = load_config(PipelineConfig, CONFIGS / "amazon-scientific.toml")
    benchmark = load_config(PipelineConfig, CONFIGS / "movielens-benchmark.toml")
    data = ROOT / "data" / "amazon-scientific"
    assert amazon.data.source == "files" and amazon.data.order == "timestamp" and amazon.data.positive is None
    assert Path(str(amazon.data.interactions)).resolve() == data / "interactions.csv"
    assert Path(str(amazon.data.catalog)).resolve() == data / "catalog.csv"
    assert Path(amazon.run_dir).resolve() == ROOT / "runs" / "amazon-scientific"
    assert amazon.split.protocols == ["leave_one_out"] and amazon.split.history_len == 50
    assert amazon.eval.methods == [m for m in METHODS if m != "popularity_recent"]
    assert amazon.eval.seeds == 3 and amazon.eval.ks == [10, 20, 50]
    assert amazon.eval.references == ["learn_v1", "learn_hybrid", "text_encoder"] and amazon.eval.tail_share == 0.2
    assert amazon.train.softmax == "full" and amazon.train.uniform_negatives == 0 and amazon.train.select_metric == "recall@10"
    trained = [m for m in METHODS if METHODS[m].trained]
    recipe = {"objective": "prefixes", "batch_size": 2048, "lr": 1e-3, "warmup_ratio": 0.0, "grad_clip": 0.0}  # RecBole's SASRec training
    assert {k: v for k, v in asdict(amazon.train).items() if k in recipe} == recipe and list(amazon.train_by_method) == ["id_baseline"]
    assert all(amazon.train_for(m) == amazon.train for m in trained if m != "id_baseline")
    assert amazon.train_for("id_baseline") == replace(amazon.train, epochs=100, patience=10)
    sasrec = amazon.model_for("id_baseline")  # SASRec's output layer, width and regularisers, on the ID baseline only
    assert list(amazon.model_by_method) == ["learn_hybrid", "text_hybrid", "learn_v1", "learn_v2", "id_baseline"]
    assert sasrec.tied_output and sasrec.temperature == 1.0
    assert sasrec.input_dropout > 0 and sasrec.input_norm and sasrec.d_model == sasrec.d_out == 64
    hybrid = replace(amazon.model, id_dropout=0.8, temperature=0.04, positions="from_end")
    assert amazon.model_for("text_hybrid") == hybrid and amazon.model_for("learn_hybrid") == replace(hybrid, collaborative_rank=256)
    assert amazon.model_for("learn_v1") == amazon.model_for("learn_v2") == replace(amazon.model, positions="from_end")
    assert all(amazon.model_for(m) == amazon.model for m in trained if m not in amazon.model_by_method)  # learn_v3, text_encoder
    towers = {"init_std": 0.02, "output_head": False, "d_model": 128, "d_out": 128, "d_ff": 256}  # RecBole's start, twice its width
    assert asdict(amazon.model) == {**asdict(benchmark.model), "max_len": 50, "dropout": 0.2, **towers}
    assert asdict(amazon.llm) == {**asdict(benchmark.llm), "dtype": "float32"} and asdict(amazon.text_encoder) == asdict(benchmark.text_encoder)


def test_the_amazon_config_names_its_two_data_files_as_the_lines_to_change() -> None:
    """Another Amazon category is these two lines (the header says so): they must stay explicit."""
    text = (CONFIGS / "amazon-scientific.toml").read_text(encoding="utf-8")
    assert {"interactions", "catalog"} <= set(tomllib.loads(text)["data"])
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert "data.interactions" in header and "data.catalog" in header


NEXT_ITEM_ID_BASELINE = ['train_by_method.id_baseline.softmax="full"', 'train_by_method.id_baseline.objective="next_item"',
                         "train_by_method.id_baseline.uniform_negatives=0", "train_by_method.id_baseline.batch_size=32"]


def test_a_trained_method_can_have_its_own_training_settings() -> None:
    """[train_by_method.<method>] is laid over [train] for that method's jobs only (their
    fingerprint included); every other method trains with [train] as it is."""
    config = load_config(PipelineConfig, CONFIGS / "movielens.toml", NEXT_ITEM_ID_BASELINE)
    own = config.train_for("id_baseline")
    assert (own.objective, own.softmax, own.uniform_negatives, own.batch_size) == ("next_item", "full", 0, 32)
    assert asdict(own) == {**asdict(config.train), "objective": "next_item", "softmax": "full", "uniform_negatives": 0, "batch_size": 32}
    assert config.train_for("learn_v1") == config.train
    prep = prepare(config)
    inputs = ItemInputs.from_training_items(len(prep.splits["temporal"].item_ids), np.arange(3), torch.device("cpu"))
    jobs = {m: train_job(prep, "temporal", m, 1, inputs) for m in ("id_baseline", "learn_v1")}
    assert (jobs["id_baseline"].train.objective, jobs["id_baseline"].train.seed) == ("next_item", 1)
    assert jobs["learn_v1"].train == replace(config.train, seed=1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train_by_method.popularity.lr=1e-3", "train_by_method.popularity: not a trained method"),
        ("train_by_method.sasrec.lr=1e-3", "train_by_method.sasrec: not a trained method"),
        ("train_by_method.id_baseline.seed=3", r"train_by_method.id_baseline: \['seed'\] are shared by every method"),
        ("train_by_method.id_baseline.learning_rate=1e-3", r"train_by_method.id_baseline: unknown key\(s\) \['learning_rate'\]"),
        ('train_by_method.id_baseline.epochs="many"', "train_by_method.id_baseline.epochs: expected int"),
        ('train_by_method.id_baseline.objective="next_item"', "train.objective = \"next_item\" .* needs train.softmax = \"full\""),
        ("train_by_method.id_baseline=3", "train_by_method.id_baseline: expected a table"),
    ],
)
def test_bad_per_method_training_settings_are_refused_naming_the_table(override: str, message: str) -> None:
    with pytest.raises(LearnFeaturesError, match=message):
        load_config(PipelineConfig, CONFIGS / "movielens.toml", [override])


def test_a_trained_method_can_have_its_own_towers() -> None:
    """[model_by_method.<method>] is laid over [model] for that method's jobs only, under the
    method's own variant; SASRec's tied output is the ID baseline's alone."""
    d_model = load_config(PipelineConfig, CONFIGS / "movielens.toml").model.d_model
    tied = ["model_by_method.id_baseline.tied_output=true", "model_by_method.id_baseline.temperature=1.0", f"model_by_method.id_baseline.d_out={d_model}"]
    config = load_config(PipelineConfig, CONFIGS / "movielens.toml", tied)
    assert config.model_for("id_baseline").tied_output and config.model_for("id_baseline").temperature == 1.0
    assert config.model_for("learn_v1") == config.model
    prep = prepare(config)
    inputs = ItemInputs.from_training_items(len(prep.splits["temporal"].item_ids), np.arange(3), torch.device("cpu"))
    jobs = {m: train_job(prep, "temporal", m, 0, inputs) for m in ("id_baseline", "learn_v1", "learn_v3")}
    assert jobs["id_baseline"].model == replace(config.model_for("id_baseline"), variant=METHODS["id_baseline"].variant)
    assert jobs["learn_v1"].model == replace(config.model, variant=1) and jobs["learn_v3"].model == replace(config.model, variant=3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model_by_method.item_knn.d_model=32"], "model_by_method.item_knn: not a trained method"),
        (["model_by_method.learn_v2.variant=1"], r"model_by_method.learn_v2: \['variant'\] are the method's own"),
        (["model_by_method.id_baseline.width=3"], r"model_by_method.id_baseline: unknown key\(s\) \['width'\]"),
        (["model_by_method.id_baseline.tied_output=true", "model_by_method.id_baseline.d_out=32"],
         r"model.d_out \(32\) must equal model.d_model \(64\)"),
        (["model_by_method.id_baseline.max_len=8"], r"model_by_method.id_baseline.max_len \(8\) must cover"),
        (["model.tied_output=true"], "learn_v1 reads content: set it for the ID baseline alone"),
        (['model.positions="latest"'], r"model.positions must be one of \['from_end', 'from_start'\]"),
        # the MovieLens configs train on windows (all-action), which score every position
        (['model_by_method.learn_hybrid.positions="from_end"'], r'model.positions = "from_end" \(learn_hybrid\) needs a train.objective'),
        (["model_by_method.learn_v1.collaborative_rank=8"], r"model.collaborative_rank \(learn_v1\): the collaborative part is indexed"),
        (["model_by_method.learn_hybrid.collaborative_rank=-1"], "model.collaborative_rank must be 0"),
    ],
)
def test_bad_per_method_towers_are_refused_naming_the_table(overrides: list[str], message: str) -> None:
    with pytest.raises(LearnFeaturesError, match=message):
        load_config(PipelineConfig, CONFIGS / "movielens.toml", overrides)


def test_split_until_runs_the_benchmark_one_period_earlier() -> None:
    """`--set split.until=<the benchmark's cut>` is the benchmark one period earlier: only the
    events before the cut, only the movies rated by then, and its own temporal cut at the same
    quantile of those events, with tags only from before that earlier cut."""
    config = CONFIGS / "movielens-benchmark.toml"
    real = prepare(load_config(PipelineConfig, config, ['split.protocols=["temporal"]']))
    cut = real.splits["temporal"].cut_time
    earlier = prepare(load_config(PipelineConfig, config, ['split.protocols=["temporal"]', f'split.until="{cut.isoformat()}"']))
    events = earlier.dataset.interactions
    assert events["timestamp"].max() < cut and len(events) == int((real.dataset.interactions["timestamp"] < cut).sum())
    assert set(earlier.dataset.catalog["item_id"]) == set(events["item_id"]) and len(earlier.dataset.catalog) < len(real.dataset.catalog)
    split = earlier.splits["temporal"]
    ordered = events["timestamp"].sort_values().reset_index(drop=True)
    assert split.cut_time == ordered.iloc[int(0.6 * (len(ordered) - 1))] < cut
    assert split.summary()["test_cold_targets"] > 0  # the earlier window has new movies of its own
    tagged_then = load_movielens_catalog(ROOT / "data" / "ml-latest-small", tags_before=split.cut_time)
    pd.testing.assert_frame_equal(earlier.dataset.catalog, tagged_then[tagged_then["item_id"].isin(events["item_id"])].reset_index(drop=True))
