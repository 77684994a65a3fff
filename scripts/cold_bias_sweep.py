"""Choose ``eval.cold_bias`` or ``eval.cold_share``: how a rule for new items trades all targets against new ones.

A method that ranks warm items by what the towers learned of them puts every new item (no
training event, served from content alone) below them; ``learn_features.new_items`` has two rules
that bring them up: ``--rule bias`` (``eval.cold_bias``, a constant added to new items'
scores) and ``--rule share`` (``eval.cold_share``, a multiple of each user's recent share of
new items, of every prefix of their ranking). This script scores one method's trained models
(every seed of ``eval.seeds``) over a grid of values of one rule and prints, per protocol, the
share of new items in the users' top K, recall@K on all, warm and new targets (seed means),
and the same for a reference method without a rule (default ``llm_frozen``, the content-only
model that ranks new items as high as any; its first seed if it is trained), then two
candidates: the value with the best recall on all targets, and the smallest value whose
new-target recall reaches the reference's.

Choose on the period before the one you report, never on its test users: run it with
``--set split.until=<your cut>`` (the same protocol one period earlier, whose models are
trained with the same flag) and set the chosen value in the config. README, "New movies",
gives the MovieLens run:

    .venv/bin/python scripts/cold_bias_sweep.py -c training/configs/movielens-benchmark.toml \\
        --run-dir runs/movielens-earlier --set 'split.until="2009-11-17T01:21:52"' \\
        --set 'split.protocols=["temporal"]'

A bias is on the scale of one model's scores, and that scale moves from period to period
(MovieLens: 0.2 gave new movies 18% of the top 50 one period earlier and 43% in the real
window, with the collaborative part; 0.04 gave 12% and 4% before it). ``--shares-only``
prints the share alone, reading no target, so that the reported period can be checked
against the earlier one before any of its test figures is read.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from learn_features.config import load_config
from learn_features.data.split import Split
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import NewItemRule, recent_new_shares
from learn_features.retrieval import per_user_scores, rank_scores
from training.config import PipelineConfig
from training.evaluation import target_subsets
from training.methods import get_methods
from training.pipeline import Prepared, prepare, seeds_of

SUBSETS = ("all", "warm_items", "cold_items")


#: --rule (a name in ``learn_features.new_items.RULES``): its default grid of values
GRIDS = {
    "bias": (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1),
    "share": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
}


def ruled_rankings(prep: Prepared, split: Split, method: str, rule: str, values: list[float], k: int) -> list[list[np.ndarray]]:
    """Per seed of ``method``'s models (one for an untrained method), the test users' top ``k``
    under each value of ``rule``. Reads the users' histories, never their targets."""
    users, warm, window = split.test, split.warm_items, prep.config.eval.cold_share_window
    recent = recent_new_shares(users.histories, warm, window)
    model = get_methods([method])[0].fit(prep, split)
    seeds = seeds_of(prep.config) if model.trained else [prep.config.train.seed]
    return [
        [rank_scores(NewItemRule(rule, value, window).apply(scores, warm, users.exclude, recent)[0], users.exclude, k) for value in values]
        for scores in (model.full_sort_predict(users, seed).scores for seed in seeds)
    ]


def new_share(ranked: np.ndarray, new: np.ndarray) -> float:
    """The share of new items among the ranked slots (``-1``: no item)."""
    return float(new[ranked[ranked >= 0]].mean())


def shares(prep: Prepared, method: str, rule: str, values: list[float], k: int) -> dict[str, list[tuple[float, float, list[float]]]]:
    """Per protocol: [(value, share of new items in the top k as a seed mean, the share per seed)],
    reading no target. The seeds are shown because a bias's share can move from seed to seed
    with each model's score scale (MovieLens, bias 0.2 on the test users: 81%, 33%, 44%)."""
    results = {}
    for protocol, split in prep.splits.items():
        new = ~split.warm_items
        per_seed = np.array([[new_share(ranked, new) for ranked in seed] for seed in ruled_rankings(prep, split, method, rule, values, k)])
        results[protocol] = [(value, float(column.mean()), column.tolist()) for value, column in zip(values, per_seed.T)]
    return results


def sweep(prep: Prepared, method: str, reference: str, rule: str, values: list[float], k: int) -> dict[str, dict]:
    """Per protocol: {"rows": [(value, share of new items in the top k, recall@k on SUBSETS)],
    "reference": recall@k of ``reference`` on SUBSETS, "best_all": value, "matches_reference": value or None}."""
    results = {}
    for protocol, split in prep.splits.items():
        users, new = split.test, ~split.warm_items
        subsets = target_subsets(split, users, prep.config.eval.tail_share)

        def recalls(ranked: np.ndarray) -> list[float]:
            return [float(per_user_scores(ranked, subsets[s], [k])[f"recall@{k}"].mean()) for s in SUBSETS]

        per_seed = [[[new_share(ranked, new), *recalls(ranked)] for ranked in seed] for seed in ruled_rankings(prep, split, method, rule, values, k)]
        means = np.mean(per_seed, axis=0)
        ref_model = get_methods([reference])[0].fit(prep, split)
        ref = recalls(rank_scores(ref_model.full_sort_predict(users, prep.config.train.seed).scores, users.exclude, k))
        reaching = [v for v, row in zip(values, means) if row[3] >= ref[2]]
        results[protocol] = {
            "rows": [(v, *map(float, row)) for v, row in zip(values, means)],
            "reference": ref,
            "best_all": values[int(np.argmax(means[:, 1]))],
            "matches_reference": min(reaching) if reaching else None,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="pipeline TOML (training/configs/)")
    parser.add_argument("--run-dir", help="the run whose trained models to score (default: the config's run_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--method", default="learn_hybrid", help="the method the rule applies to (default: learn_hybrid)")
    parser.add_argument("--reference", default="llm_frozen", help="the method whose new-target recall to reach (default: llm_frozen)")
    parser.add_argument("--rule", choices=sorted(GRIDS), default="bias",
                        help="bias: eval.cold_bias, a constant on new items' scores; share: eval.cold_share, a multiple of each "
                             "user's recent share of new items (default: bias)")
    parser.add_argument("--values", "--biases", dest="values",
                        help="comma-separated values of the rule to try (default: " + "; ".join(
                            f"{name}: {','.join(map(str, grid))}" for name, grid in GRIDS.items()) + ")")
    parser.add_argument("-k", type=int, default=None, help="cut-off (default: that of train.select_metric)")
    parser.add_argument("--shares-only", action="store_true",
                        help="print only the share of new items in the top K under each value, reading no target: run it on the "
                             "reported period before any test figure, to see whether a value chosen one period earlier gives new "
                             "items a like share there")
    args = parser.parse_args(argv)
    try:
        overrides = [*args.set, *([f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir else []), "eval.cold_bias={}", "eval.cold_share={}"]
        config = load_config(PipelineConfig, args.config, overrides)
        values = [float(v) for v in args.values.split(",")] if args.values else list(GRIDS[args.rule])
        k = args.k or int(config.train.select_metric.split("@")[1])
        prep = prepare(config)
        if args.shares_only:
            for protocol, rows in shares(prep, args.method, args.rule, values, k).items():
                print(f"{protocol}: {args.method}, no target read\n{args.rule}\tnew items in top {k} (seed mean)\tper seed")
                print("\n".join(f"{value:g}\t{share:.3f}\t" + ", ".join(f"{s:.3f}" for s in per_seed) for value, share, per_seed in rows))
            return 0
        results = sweep(prep, args.method, args.reference, args.rule, values, k)
    except (LearnFeaturesError, ValueError) as exc:
        print(f"cold_bias_sweep: error: {exc}", file=sys.stderr)
        return 2
    for protocol, result in results.items():
        print(f"{protocol}: {args.method}, seed means; {args.reference} without a rule: recall@{k} all {result['reference'][0]:.4f}, "
              f"warm {result['reference'][1]:.4f}, new {result['reference'][2]:.4f}")
        print(f"{args.rule}\tnew items in top {k}\trecall@{k} all\twarm\tnew")
        for value, share, *recall in result["rows"]:
            print(f"{value:g}\t{share:.3f}\t" + "\t".join(f"{r:.4f}" for r in recall))
        print(f"best on all targets: {result['best_all']:g}; smallest reaching {args.reference} on new targets: {result['matches_reference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
