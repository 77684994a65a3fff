"""bench/device_check.sh, the prepared GPU call, runs its steps on the CPU at toy sizes.

A device lease is short, so the script must not fail on a typo there: its smoke mode runs the
same step machinery here. Timings are not looked at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"


def test_the_bench_part_runs_every_step_and_writes_its_results(tmp_path: Path) -> None:
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "run", "bench"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "device_check-bench.log").read_text()
    exits = [line for line in log.splitlines() if line.startswith("== ") and ": exit " in line]
    assert [line.split(":")[0] for line in exits] == ["== environment", "== extract", "== train-bench"]
    assert all(": exit 0 " in line for line in exits), log[-3000:]
    assert json.loads((tmp_path / "extract.json").read_text()) and json.loads((tmp_path / "train.json").read_text())


def test_an_unknown_part_is_refused_with_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "run", "everything"], cwd=ROOT, env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
