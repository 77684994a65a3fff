"""bench/prefix_batches.py runs end to end on CPU; only its bookkeeping is checked, never its timings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import load_script
from learn_features.config import load_config
from training.config import PipelineConfig
from training.pipeline import prepare

REPO = Path(__file__).resolve().parents[2]


def test_prefix_batches_bench_smoke(single_thread, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways run the trainer's steps on the shipped Amazon split; grouping runs fewer history
    slots and leaves the trainer's setting as it found it; both start alike (close losses)."""
    bench = load_script(monkeypatch, REPO / "bench" / "prefix_batches.py")
    prep = prepare(load_config(PipelineConfig, REPO / "training" / "configs" / "amazon-scientific.toml"))
    before = bench.trainer.LENGTH_GROUPED_OBJECTIVES
    padded, grouped = (bench.run(prep, "learn_hybrid", mode, 2, 64) for mode in ("padded", "grouped"))
    assert bench.trainer.LENGTH_GROUPED_OBJECTIVES == before == ("prefixes",)
    assert 0 < grouped.slots < padded.slots
    assert grouped.loss == pytest.approx(padded.loss, abs=0.2)
    # the per-method tables go too: positions counted from the end need the prefixes objective
    next_item = replace(prep, config=replace(prep.config, train=replace(prep.config.train, objective="next_item"), model_by_method={}))
    with pytest.raises(SystemExit, match="not 'prefixes'"):
        bench.run(next_item, "text_encoder", "padded", 1, 64)
