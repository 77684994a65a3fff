"""Workers of a spawned pool end when their parent is killed, instead of training on as orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The parent learns its worker's pid from the worker itself, then blocks on a job that would
# run for ten minutes: what `learn-features run` does while its workers train.
PARENT = """
import os, time
from training.workers import spawn_pool
pool = spawn_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 600).result()
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie: an orphan reparented to a pid 1 that does not reap stays a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_worker_exits_when_its_parent_is_killed(sig: signal.Signals) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        time.sleep(1.0)  # the worker is now inside its long job
        assert _running(worker)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), f"worker {worker} outlived its parent (signal {sig.name})"
    finally:
        parent.kill()
        if "worker" in locals() and _running(worker):
            os.kill(worker, signal.SIGKILL)
