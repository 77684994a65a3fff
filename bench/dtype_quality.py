"""Does the LLM's compute dtype move retrieval metrics? Two finished runs of one config, one
per ``llm.dtype``, compared method by method.

bf16 extraction is about twice as fast on a CPU with native bf16 (``bench/extract.py``), but
it is a default only if the towers trained on its vectors score like the fp32 ones. For each
method of both runs this prints, per metric, the mean over users of the seed-averaged score
± the SD of the seed means in each run, their difference with the paired 95% bootstrap
interval over the same users (all three from the evaluation's own ``summarise``), and whether
the difference is within the seed spread (|difference| <= the larger of the two seed SDs,
the issue's criterion) and whether the paired interval holds 0.

    learn-features run -c training/configs/movielens.toml --run-dir runs/dtype-fp32 \
        --set 'eval.methods=["learn_v1","llm_frozen","popularity"]' --set eval.seeds=3 --set 'llm.dtype="float32"'
    learn-features run -c training/configs/movielens.toml --run-dir runs/dtype-bf16 \
        --set 'eval.methods=["learn_v1","llm_frozen","popularity"]' --set eval.seeds=3 --set 'llm.dtype="bfloat16"'
    PYTHONPATH=$PWD .venv/bin/python bench/dtype_quality.py runs/dtype-fp32 runs/dtype-bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.evaluation import headline_metrics, summarise  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@50", "recall@100")
KS = sorted({int(metric.split("@")[1]) for metric in METRICS})


def seed_table(frame: pd.DataFrame, users: pd.Index, metrics: list[str]) -> dict[str, object]:
    """metric -> (seeds, users) per-user scores, users in the given order: ``summarise``'s input."""
    return {metric: frame.pivot(index="seed", columns="user_id", values=metric)[users].to_numpy() for metric in metrics}


def compare(a: pd.DataFrame, b: pd.DataFrame, rounds: int) -> list[str]:
    lines = ["| protocol | method | subset | metric | A | B | B − A [paired 95%] | within seed SD | interval holds 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = ["protocol", "method", "subset"]
    for (protocol, method, subset), part_a in a.groupby(keys):
        part_b = b[(b.protocol == protocol) & (b.method == method) & (b.subset == subset)]
        if part_b.empty:
            continue
        ks = [k for k in KS if f"recall@{k}" in part_a]  # the cut-offs of METRICS that run A holds
        metrics = headline_metrics(ks)
        shared = pd.Index(sorted(set(part_a.user_id) & set(part_b.user_id)))
        a_table = seed_table(part_a, shared, metrics)
        summary_a = summarise(a_table, ks, rounds, {})
        summary_b = summarise(seed_table(part_b, shared, metrics), ks, rounds, {"a": a_table})
        for metric in (m for m in METRICS if m in metrics):
            sd_a, sd_b = summary_a["seed_sd"][metric] or 0.0, summary_b["seed_sd"][metric] or 0.0  # None: one seed
            paired = summary_b["paired"]["a"][metric]
            difference, (low, high) = paired["delta"], paired["ci95"]
            spread = max(sd_a, sd_b)  # 0 for one seed or an untrained method: no spread to be within
            within = "n/a" if spread == 0 else "yes" if abs(difference) <= spread else "NO"
            lines.append(
                f"| {protocol} | {method} | {subset} | {metric} | {summary_a[metric]:.4f} ± {sd_a:.4f} | {summary_b[metric]:.4f} ± {sd_b:.4f} "
                f"| {difference:+.4f} [{low:+.4f}, {high:+.4f}] | {within} | {'yes' if low <= 0 <= high else 'NO'} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="the reference run (e.g. fp32)")
    parser.add_argument("run_b", type=Path, help="the candidate run (e.g. bf16)")
    parser.add_argument("--subsets", nargs="+", default=["all", "cold_items"], help="target subsets to show (default: all cold_items)")
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    args = parser.parse_args()
    frames = []
    for run in (args.run_a, args.run_b):
        path = run / "per_user.parquet"
        if not path.is_file():
            print(f"{path}: not found; run `learn-features run` with --run-dir {run} first", file=sys.stderr)
            return 2
        frame = pd.read_parquet(path)
        frames.append(frame[frame.subset.isin(args.subsets)])
    print(f"A = {args.run_a}, B = {args.run_b}; seed-averaged per-user scores, ± the SD of the seed means")
    print("\n".join(compare(*frames, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
