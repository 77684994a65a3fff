"""The ranking report's time, previous implementation against this tree, in one run.

``learn-features report`` trains every arm once per seed (5 seeds, 6 arms by default). The
previous implementation rebuilt each arm's feature matrices for every seed, ran the all-rows
bootstrap of each baseline pair twice (once for the comparison, once for the "all" tier) and
built the history index twice. This script exports the previous commit's tree with
``git archive``, runs the same report command (same config, run directory and working
directory) with ``PYTHONPATH`` set to each tree in turn, prints both wall times and the ratio,
and checks that the two ``report.json`` and ``report.md`` files are byte-identical (the change
must not move a number).

It also times the retrieval evaluation's tables (``training/evaluation.py``): the previous
code computed each method's per-user table twice (for the summaries and again for
``per_user.parquet``). That part runs on synthetic rankings of MovieLens' size (9 methods,
608 users, depth 200, ks 10/50/100/200), in each tree, and checks that both give the same
metrics and per-user frame.

    PYTHONPATH=$PWD .venv/bin/python bench/report_bench.py --run-dir runs/movielens
    PYTHONPATH=$PWD .venv/bin/python bench/report_bench.py --run-dir runs/movielens --set 'seeds=[0]'
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The start of the branch that cut the report's repeated work.
PREVIOUS = "ad1acea"
COMPARED = ("report.json", "report.md")

#: Run in each tree: per-user tables, summaries and the per-user frame of synthetic rankings.
EVALUATION_SNIPPET = r"""
import hashlib, json, sys, time
import numpy as np
from training import evaluation as ev

rng = np.random.default_rng(0)
n_users, n_items, depth, ks, seeds = 608, 9742, 200, [10, 50, 100, 200], [0]
names = ["id_baseline", "item_knn", "learn_v1", "learn_v2", "learn_v3", "llm_frozen", "popularity", "popularity_recent", "text_encoder"]
targets = [rng.choice(n_items, size=rng.integers(1, 20), replace=False) for _ in range(n_users)]
cold = [t[t % 7 == 0] for t in targets]
rankings = [ev.MethodRankings(n, [np.argsort(rng.random((n_users, n_items)), axis=1)[:, :depth] for _ in seeds]) for n in names]
users = [f"u{i}" for i in range(n_users)]
start = time.perf_counter()
if hasattr(ev, "user_tables"):
    subsets = {"all": targets, "cold_items": cold}
    tables = ev.user_tables(rankings, subsets, ks)
    metrics = ev.protocol_metrics(rankings, tables, ks, 1000, ["learn_v1"])
    frame = ev.per_user_frame("temporal", rankings, tables, users, subsets, seeds)
else:
    metrics = ev.protocol_metrics(rankings, targets, cold, ks, 1000)
    frame = ev.per_user_frame("temporal", rankings, users, targets, cold, ks, seeds)
seconds = time.perf_counter() - start
digest = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode() + frame.to_csv().encode()).hexdigest()
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


def export_tree(commit: str, into: Path) -> Path:
    """``git archive`` of ``commit`` unpacked under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_report(tree: Path, args: argparse.Namespace, out: Path) -> float:
    """Wall seconds of one ``learn-features report`` with ``tree``'s packages, in this repo's root."""
    # -P: the working directory (this tree) must not shadow PYTHONPATH's tree.
    config, run_dir = (str(Path(p).resolve()) for p in (args.config, args.run_dir))
    command = [sys.executable, "-P", "-m", "learn_features.cli", "report", "-q", "-c", config, "--run-dir", run_dir, "--out", str(out)]
    for override in args.set or []:
        command += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_evaluation(tree: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-P", "-c", EVALUATION_SNIPPET], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous", default=PREVIOUS, help=f"commit of the previous implementation (default {PREVIOUS})")
    parser.add_argument("-c", "--config", default=str(ROOT / "ranking/configs/movielens.toml"), help="ranking config (both runs read this one)")
    parser.add_argument("--run-dir", required=True, help="a trained LEARN run with its replay repo (as for `learn-features report`)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for both runs (repeatable)")
    parser.add_argument("--skip-report", action="store_true", help="time the retrieval evaluation tables only")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    figures: dict[str, object] = {"previous": args.previous, "overrides": args.set or []}
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        previous = export_tree(args.previous, Path(tmp) / "previous")
        trees = {"previous": previous, "new": ROOT}
        if not args.skip_report:
            seconds = {name: run_report(tree, args, Path(tmp) / f"out-{name}") for name, tree in trees.items()}
            same = {f: filecmp.cmp(Path(tmp) / "out-previous" / f, Path(tmp) / "out-new" / f, shallow=False) for f in COMPARED}
            figures["report"] = {"seconds": seconds, "ratio": seconds["previous"] / seconds["new"], "identical": same}
            print(f"ranking report, previous ({args.previous}): {seconds['previous']:.1f} s")
            print(f"ranking report, new (working tree):   {seconds['new']:.1f} s")
            print(f"ratio previous/new: {seconds['previous'] / seconds['new']:.2f}x")
            print("byte-identical: " + ", ".join(f"{f} {'yes' if ok else 'NO'}" for f, ok in same.items()))
        evaluation = {name: run_evaluation(tree) for name, tree in trees.items()}
        t_prev, t_new = evaluation["previous"]["seconds"], evaluation["new"]["seconds"]
        identical = evaluation["previous"]["digest"] == evaluation["new"]["digest"]
        figures["evaluation_tables"] = {"seconds": {k: v["seconds"] for k, v in evaluation.items()}, "ratio": t_prev / t_new, "identical": identical}
        print(f"retrieval tables (9 methods x 608 users), previous: {t_prev:.2f} s, new: {t_new:.2f} s, ratio {t_prev / t_new:.2f}x, "
              f"identical: {'yes' if identical else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    ok = identical and all(figures.get("report", {}).get("identical", {}).values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
