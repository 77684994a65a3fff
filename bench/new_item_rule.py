"""What retrieval under a new-item rule costs: ``ItemIndex.search`` with the version's rule
(``bias``, ``share``) against the same index without one, in one run.

Under a rule the index searches the warm and the new items apart and ranks each user's k best
of both by the rule (``NewItemsPolicy.order``, in Python per user), so it does twice the
faiss work on split indexes plus that ordering. The catalog and users are synthetic (speed
only, never quality): ``--items`` random ``--dim``-d vectors, ``--new-share`` of them new,
``--queries`` users with random 10-item histories.

    .venv/bin/python bench/new_item_rule.py                          # 100k items, 1,000 queries, k = 100
    .venv/bin/python bench/new_item_rule.py --items 5000 --queries 100   # smoke size
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from learn_features.new_items import NewItemRule, NewItemsPolicy
from learn_features.store.candidates import ItemIndex


def best_of(repeats: int, call) -> float:
    """The fastest of ``repeats`` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--new-share", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(args.items)]
    vectors = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    users = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    warm = frozenset(np.array(ids)[rng.random(args.items) >= args.new_share])
    histories = [[ids[j] for j in rng.integers(0, args.items, 10)] for _ in range(args.queries)]
    indexes = {
        "no rule": (ItemIndex(ids, vectors, "bench"), None),
        "bias 0.2": (ItemIndex(ids, vectors, "bench", policy=NewItemsPolicy(NewItemRule("bias", 0.2), warm)), None),
        "share 1.25": (ItemIndex(ids, vectors, "bench", policy=NewItemsPolicy(NewItemRule("share", 1.25), warm)), histories),
    }
    print(f"{args.items:,} items x {args.dim}, {len(warm):,} warm; {args.queries:,} queries, k = {args.k}; best of {args.repeats}")
    base = None
    for name, (index, past) in indexes.items():
        seconds = best_of(args.repeats, lambda: index.search(users, args.k, past))
        base = base or seconds
        print(f"  {name:<11} {seconds * 1000:8.1f} ms  {args.queries / seconds:10,.0f} queries/s  {seconds / base:5.2f}x the time of no rule")


if __name__ == "__main__":
    main()
