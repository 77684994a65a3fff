"""Does the LLM's compute dtype move retrieval metrics? Two finished runs of one config, one
per ``llm.dtype``, compared method by method.

bf16 extraction is about twice as fast on a CPU with native bf16 (``bench/extract.py``), but
it is a default only if the towers trained on its vectors score like the fp32 ones. For each
method of both runs this prints, per metric, the mean over users of the seed-averaged score
± the SD of the seed means in each run, their difference with the paired 95% bootstrap
interval over the same users (the evaluation's own ``paired_bootstrap_interval``), and whether
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

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learn_features.retrieval import paired_bootstrap_interval  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@50", "recall@100")


def seed_means(frame: pd.DataFrame, metric: str) -> tuple[pd.Series, float]:
    """Per user, the mean over seeds; and the SD over seeds of the users' mean."""
    by_user = frame.groupby("user_id")[metric].mean()
    per_seed = frame.groupby("seed")[metric].mean()
    return by_user, float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0


def compare(a: pd.DataFrame, b: pd.DataFrame, rounds: int) -> list[str]:
    lines = ["| protocol | method | subset | metric | A | B | B − A [paired 95%] | within seed SD | interval holds 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = ["protocol", "method", "subset"]
    for (protocol, method, subset), part_a in a.groupby(keys):
        part_b = b[(b.protocol == protocol) & (b.method == method) & (b.subset == subset)]
        if part_b.empty:
            continue
        for metric in METRICS:
            if metric not in part_a:
                continue
            users_a, sd_a = seed_means(part_a, metric)
            users_b, sd_b = seed_means(part_b, metric)
            shared = users_a.index.intersection(users_b.index)
            difference = (users_b[shared] - users_a[shared]).to_numpy()
            low, high = paired_bootstrap_interval(difference, rounds=rounds)
            spread = max(sd_a, sd_b)  # 0 for one seed or an untrained method: no spread to be within
            within = "n/a" if spread == 0 else "yes" if abs(difference.mean()) <= spread else "NO"
            lines.append(
                f"| {protocol} | {method} | {subset} | {metric} | {users_a.mean():.4f} ± {sd_a:.4f} | {users_b.mean():.4f} ± {sd_b:.4f} "
                f"| {difference.mean():+.4f} [{low:+.4f}, {high:+.4f}] | {within} | {'yes' if low <= 0 <= high else 'NO'} |"
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
