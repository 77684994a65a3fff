"""Spawned worker pools whose workers never outlive the process that started them.

A ``ProcessPoolExecutor`` worker trains or measures for minutes to hours. When the parent is
stopped with SIGTERM (what schedulers, ``kill`` and ``systemctl stop`` send) or SIGKILL, it
dies without shutting its pool down, and the workers, reparented to init, would go on
training and writing checkpoints for a run nobody waits for (seen here: 25 minutes of two
orphans competing with the next job). Ctrl-C reaches the whole process group, so only those
signals to the parent alone are the problem.

Each worker therefore starts a daemon thread that watches its parent's pid and ends the
worker as soon as it changes. Polling ``os.getppid`` works on every POSIX system (Linux's
``PR_SET_PDEATHSIG`` would not cover macOS) and costs nothing between polls; what a worker
writes is atomic (``learn_features.atomic``), so ending it mid-job loses only that job's
unfinished epoch, which a re-run resumes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

#: Seconds between two looks at the parent's pid: how long an orphan may go on at most.
POLL_S = 0.5


def spawn_pool(max_workers: int) -> ProcessPoolExecutor:
    """A pool of spawned workers that exit when the parent process goes away.

    Spawned, never forked: a process forked after OpenMP has started its threads hangs at its
    first OpenMP call (torch's CPU kernels).
    """
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=context, initializer=_watch_parent, initargs=(os.getpid(),))


def _watch_parent(parent_pid: int) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="watch-parent", daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    # os._exit, not sys.exit: a worker's main thread is busy in a job, and SystemExit raised
    # in this thread would end only the thread.
    os._exit(1)
