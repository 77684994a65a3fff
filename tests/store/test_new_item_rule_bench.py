"""bench/new_item_rule.py runs end to end at smoke size; its output's shape is checked, never its timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from core_fixtures import load_script

REPO = Path(__file__).resolve().parents[2]


def test_new_item_rule_bench_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(monkeypatch, REPO / "bench" / "new_item_rule.py")
    monkeypatch.setattr(sys, "argv", ["new_item_rule.py", "--items", "500", "--queries", "20", "--k", "10", "--repeats", "1"])
    bench.main()
    out = capsys.readouterr().out
    assert out.startswith("500 items x 64,") and "1.00x the time of no rule" in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["no", "bias", "share"]
