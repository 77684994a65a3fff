"""The shipped pipeline configs: the default job (`make run`) is a subset of the full comparison
(`make benchmark`), with every setting that shapes a row the same, so that the default job's rows
are rows of the benchmark (same method, protocol and seed)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from learn_features.config import load_config
from training.config import PipelineConfig
from training.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
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
