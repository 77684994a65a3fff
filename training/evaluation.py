"""Turning rankings into the metrics table: overall and cold-item breakdowns, with intervals.

``metrics.json`` maps each method to its metrics, e.g. ``{"learn_v1": {"recall@50": ..,
"ndcg@50": .., "users": 28, "ci95": {"recall@50": [lo, hi], ..}, "cold_items": {...}}}``,
for every K in ``eval.ks``. The 95% intervals (recall@K and ndcg@K for each K) are
percentile bootstraps over test users: with a few dozen users the interval, not the point
estimate, tells whether two methods differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learn_features.retrieval import bootstrap_interval, per_user_scores

INTERVAL_METRICS = ("recall", "ndcg")


def _summarise(per_user: dict[str, np.ndarray], rounds: int) -> dict:
    users = int(next(iter(per_user.values())).size)
    out: dict = {name: float(v.mean()) if users else None for name, v in per_user.items()}
    out["users"] = users
    out["ci95"] = {
        name: list(bootstrap_interval(values, rounds=rounds)) if users else None
        for name, values in per_user.items()
        if name.split("@")[0] in INTERVAL_METRICS
    }
    return out


def method_metrics(ranked: np.ndarray, targets: Sequence[np.ndarray], cold_targets: Sequence[np.ndarray], eval_config) -> dict:
    result = _summarise(per_user_scores(ranked, targets, eval_config.ks), eval_config.bootstrap_rounds)
    result["cold_items"] = _summarise(per_user_scores(ranked, cold_targets, eval_config.ks), eval_config.bootstrap_rounds)
    return result


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "n/a"
    if name in metrics.get("ci95", {}) and metrics["ci95"][name]:
        low, high = metrics["ci95"][name]
        return f"{value:.4f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4f}"


def metrics_markdown(methods: dict[str, dict], split: dict, ks: Sequence[int]) -> str:
    cold_cols = [f"{m}@{k}" for k in ks for m in INTERVAL_METRICS]
    overall_cols = cold_cols + [f"hit@{max(ks)}"]
    lines = [
        "# Retrieval metrics (held-out test users, full item gallery)",
        "",
        f"Cut time {split['cut_time']}; {split['test_users']} test users with {split['test_targets']} target items "
        f"({split['test_cold_targets']} on cold-start items); gallery of {split['items']} items, "
        f"{split['items'] - split['warm_items']} of them cold. Brackets: 95% bootstrap interval over users.",
        "",
        "## All target items",
        "",
        "| method | users | " + " | ".join(overall_cols) + " |",
        "|---|---|" + "---|" * len(overall_cols),
    ]
    for name, metrics in methods.items():
        lines.append(f"| {name} | {metrics['users']} | " + " | ".join(_cell(metrics, c) for c in overall_cols) + " |")
    lines += ["", "## Cold-start target items (no interaction before the cut)", "",
              "| method | users | " + " | ".join(cold_cols) + " |", "|---|---|" + "---|" * len(cold_cols)]
    for name, metrics in methods.items():
        cold = metrics["cold_items"]
        lines.append(f"| {name} | {cold['users']} | " + " | ".join(_cell(cold, c) for c in cold_cols) + " |")
    return "\n".join(lines) + "\n"
