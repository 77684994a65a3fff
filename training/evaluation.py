"""Turning rankings into the retrieval tables: per protocol, per method, per target subset, with
paired intervals.

Per-user scores are the unit of everything: a method's metric is the mean over test users of
its per-user score (averaged over training seeds first), its interval a bootstrap over users,
and its difference to each reference method (``eval.references``, default ``learn_v1``) a
*paired* bootstrap over the same users' per-user differences. Two per-method intervals that
overlap say little; the paired one says whether the two methods differ. With several seeds the
table also gives the SD of the seed means, so a training-based lift can be set against the
spread over seeds.

Every table is given on each target subset of ``target_subsets`` (all, warm, tail, cold, and cold
again ranked among the cold-start items alone).

``metrics.json``::

    {"protocols": {"temporal": {"split": {...}, "seeds": [0], "references": ["learn_v1"],
      "tail_share": 0.2, "methods": {"popularity": {"recall@50": .., "ndcg@50": .., "users": 130,
                               "ci95": {"recall@50": [lo, hi], ..}, "seed_sd": {..},
                               "paired": {"learn_v1": {"recall@50": {"delta": .., "ci95": [lo, hi]}, ..}},
                               "warm_items": {... the same, warm targets only ...},
                               "tail_items": {...}, "cold_items": {...}, "cold_gallery": {...},
                               "diagnostics": {...}, "training": [...]}}}}}

A method is not paired against itself: ``paired`` holds the other references only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from learn_features.data.split import EvalUsers, Split
from learn_features.retrieval import bootstrap_interval, paired_bootstrap_interval, per_user_scores, rank_scores
from training.published import PublishedRow, published_markdown

#: The subset ranked over the cold-start items alone (``rank_among_cold``), not the full gallery.
COLD_GALLERY = "cold_gallery"
#: The target subsets of every table, in table order: (heading, what it keeps) (see ``target_subsets``).
SUBSETS: dict[str, tuple[str, str]] = {
    "all": ("All target items", ""),
    "warm_items": ("Warm target items", "the item has a training event"),
    "tail_items": ("Tail target items", "the {share:.0%} of warm items with the fewest training positives"),
    "cold_items": ("Cold-start target items", "no training event"),
    COLD_GALLERY: ("Cold-start target items among cold-start items", "ranked against the cold-start items alone"),
}
#: The paired tables' columns, where ``eval.ks`` has them (``paired_columns``).
PAIRED_COLUMNS = ("recall@10", "ndcg@10", "recall@50")


def target_subsets(split: Split, users: EvalUsers, tail_share: float) -> dict[str, list[np.ndarray]]:
    """Each evaluated user's targets in every subset of ``SUBSETS`` (a user with none in a subset
    drops out of its table; the ranking stays over the full gallery).

    - ``all``: every target.
    - ``warm_items``: targets with a training event (``split.warm_items``).
    - ``tail_items``: targets among the least-trained warm items: the warm items ranked by their
      positive training events (``split.positive_counts()``), ties broken by catalog index, and
      the first ``tail_share`` of them by count of items (rounded).
    - ``cold_items``: targets without a training event.
    - ``cold_gallery``: the same targets, ranked against the cold-start items alone
      (``rank_among_cold``). A model can order new items well among themselves and still put
      every one below the warm items, which the full-gallery table cannot tell from knowing
      nothing about them; this one can. It is the quality a separate candidate list of new
      items would have.

    Why these: A-LLMRec (Table 4) reports all / warm / cold, the question being whether text
    carries items that behaviour cannot. On Amazon only 0.44% of the test targets are cold, too
    few for a table of their own to say much, so the tail asks the same question of items the
    towers saw a handful of times. The tail is a share of the warm items, not a count threshold,
    so it means the same on data sets of any size and popularity curve.
    """
    warm = split.warm_items
    warm_index = np.flatnonzero(warm)
    by_count = warm_index[np.lexsort((warm_index, split.positive_counts()[warm_index]))]
    tail = np.zeros_like(warm)
    tail[by_count[: int(round(tail_share * len(warm_index)))]] = True
    cold = [t[~warm[t]] for t in users.targets]
    return {
        "all": list(users.targets),
        "warm_items": [t[warm[t]] for t in users.targets],
        "tail_items": [t[tail[t]] for t in users.targets],
        "cold_items": cold,
        COLD_GALLERY: cold,  # the same targets: only their ranking differs (``rank_among_cold``)
    }


def rank_among_cold(scores: np.ndarray, exclude: Sequence[np.ndarray], warm: np.ndarray, cold_targets: Sequence[np.ndarray],
                    depth: int) -> np.ndarray:
    """``rank_scores`` with every warm item left out, for the users with a cold target (the
    other rows stay -1, no item: those users are not in the subset's table)."""
    rows = [u for u, t in enumerate(cold_targets) if len(t)]
    ranked = np.full((scores.shape[0], min(depth, scores.shape[1])), -1, dtype=np.int64)
    if rows:
        among_cold = scores[rows].astype(np.float64)  # a copy: the method's scores stay as they are
        among_cold[:, warm] = -np.inf
        ranked[rows] = rank_scores(among_cold, [exclude[u] for u in rows], depth)
    return ranked


@dataclass
class MethodRankings:
    """One method's rankings of the evaluated users, one (U, depth) array per training seed."""

    name: str
    ranked: list[np.ndarray]
    diagnostics: dict = field(default_factory=dict)
    training: list[dict] = field(default_factory=list)


def headline_metrics(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]


def headline_metric(ks: Sequence[int]) -> str:
    """The column with an interval in the tables: recall@50, else the middle cut-off's recall."""
    return f"recall@{50 if 50 in ks else ks[len(ks) // 2]}"


def paired_columns(ks: Sequence[int]) -> list[str]:
    """The paired tables' columns: ΔR@10, ΔN@10 and ΔR@50 where ``ks`` has them; with neither 10
    nor 50, the headline recall and its NDCG, so a table never goes without a column."""
    present = [name for name in PAIRED_COLUMNS if int(name.split("@")[1]) in ks]
    headline = headline_metric(ks)
    if not present:
        return [headline, headline.replace("recall", "ndcg")]
    return present if headline in present else present + [headline]


def per_user_table(rankings: MethodRankings, targets: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """metric -> (seeds, users-with-targets) per-user scores."""
    per_seed = [per_user_scores(r, targets, ks) for r in rankings.ranked]
    return {name: np.stack([s[name] for s in per_seed]) for name in per_seed[0]}


#: subset -> method -> metric -> (seeds, users-with-targets) per-user scores.
UserTables = dict[str, dict[str, dict[str, np.ndarray]]]


def user_tables(rankings: list[MethodRankings], targets: Mapping[str, Sequence[np.ndarray]], ks: Sequence[int]) -> UserTables:
    """Every method's per-user table on each target subset (``target_subsets``), computed once:
    the summaries (``protocol_metrics``) and the per-user file (``per_user_frame``) both read them."""
    return {subset: {r.name: per_user_table(r, wanted, ks) for r in rankings} for subset, wanted in targets.items()}


def summarise(table: dict[str, np.ndarray], ks: Sequence[int], rounds: int, references: dict[str, dict[str, np.ndarray]]) -> dict:
    """Means, bootstrap intervals, seed SD and the paired differences to each of ``references``
    (reference name -> its per-user table on the same users)."""
    users = int(next(iter(table.values())).shape[1])
    out: dict = {name: float(values.mean()) if users else None for name, values in table.items()}
    out["users"] = users
    out["ci95"], out["seed_sd"] = {}, {}
    out["paired"] = {reference: {} for reference in references} if users else {}
    for name in headline_metrics(ks):
        values = table[name]
        out["seed_sd"][name] = float(values.mean(axis=1).std(ddof=1)) if values.shape[0] > 1 and users else None
        out["ci95"][name] = list(bootstrap_interval(values.mean(axis=0), rounds=rounds)) if users else None
        if not users:
            continue
        for reference, reference_table in references.items():
            difference = values.mean(axis=0) - reference_table[name].mean(axis=0)
            out["paired"][reference][name] = {"delta": float(difference.mean()),
                                              "ci95": list(paired_bootstrap_interval(difference, rounds=rounds))}
    return out


def protocol_metrics(rankings: list[MethodRankings], tables: UserTables, ks: Sequence[int], rounds: int,
                     references: Sequence[str]) -> dict[str, dict]:
    """Every method's summary on each target subset (all targets at the top level, the other
    subsets as sections), paired against each of ``references`` but itself."""
    results = {}
    for r in rankings:
        summaries = {subset: summarise(table[r.name], ks, rounds, {ref: table[ref] for ref in references if ref != r.name})
                     for subset, table in tables.items()}
        results[r.name] = {**summaries.pop("all"), **summaries, "diagnostics": r.diagnostics, "training": r.training}
    return results


def per_user_frame(protocol: str, rankings: list[MethodRankings], tables: UserTables, user_ids: Sequence[str],
                   targets: Mapping[str, Sequence[np.ndarray]], seeds: Sequence[int]) -> pd.DataFrame:
    """Every (method, seed, subset, user) score, so paired comparisons can be recomputed without retraining."""
    frames = []
    for subset, wanted in targets.items():
        users = [u for u, t in zip(user_ids, wanted) if len(t)]
        for r in rankings:
            table = tables[subset][r.name]
            for k, seed in enumerate(seeds[: len(r.ranked)]):
                frame = pd.DataFrame({name: values[k] for name, values in table.items()})
                frame.insert(0, "user_id", users)
                frame.insert(0, "subset", subset)
                frame.insert(0, "seed", seed)
                frame.insert(0, "method", r.name)
                frame.insert(0, "protocol", protocol)
                frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _cell(metrics: dict, name: str, with_interval: bool) -> str:
    value = metrics.get(name)
    if value is None:
        return "n/a"
    text = f"{value:.4f}"
    sd = metrics.get("seed_sd", {}).get(name)
    if sd is not None:
        text += f" ± {sd:.4f}"
    interval = metrics.get("ci95", {}).get(name)
    if with_interval and interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _paired_cell(metrics: dict, reference: str, name: str) -> str:
    paired = metrics.get("paired", {}).get(reference, {}).get(name)
    if not paired:
        return "n/a"
    low, high = paired["ci95"]
    mark = "" if low <= 0 <= high else " *"
    return f"{paired['delta']:+.4f} [{low:+.3f}, {high:+.3f}]{mark}"


def _table(methods: dict[str, dict], section: str | None, columns: list[str], headline: str) -> list[str]:
    lines = ["| method | users | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, metrics in methods.items():
        m = metrics if section is None else metrics[section]
        lines.append(f"| {name} | {m['users']} | " + " | ".join(_cell(m, c, c == headline) for c in columns) + " |")
    return lines


def _paired_table(methods: dict[str, dict], section: str | None, reference: str, columns: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(f"Δ{c}" for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, metrics in methods.items():
        if name == reference:
            continue
        m = metrics if section is None else metrics[section]
        lines.append(f"| {name} | " + " | ".join(_paired_cell(m, reference, c) for c in columns) + " |")
    return lines


def _diagnostics_table(methods: dict[str, dict]) -> list[str]:
    columns = ["item mean cos", "item eff. rank", "user mean cos", "user eff. rank", "pop. corr.", "best epoch", "final loss / chance",
               "new-item rule"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, metrics in methods.items():
        d = metrics["diagnostics"]
        if not d:
            continue

        def fmt(key: str, digits: int = 3) -> str:
            value = d.get(key)
            return "n/a" if value is None else f"{value:.{digits}f}"

        training = metrics.get("training") or []
        epochs = ", ".join(str(t["best_epoch"]) for t in training) or "n/a"
        losses = ", ".join(f"{t['final_loss']:.3f} / {t['final_chance_loss']:.3f}" for t in training) or "n/a"
        dims = d.get("dim")
        rank = lambda key: "n/a" if d.get(key) is None else f"{d[key]:.1f} of {dims}"  # noqa: E731
        lines.append(
            f"| {name} | {fmt('item_mean_cosine')} | {rank('item_effective_rank')} | {fmt('user_mean_cosine')} | "
            f"{rank('user_effective_rank')} | {fmt('popularity_spearman')} | {epochs} | {losses} | {_new_item_rule(d)} |"
        )
    return lines


def _new_item_rule(diagnostics: dict) -> str:
    """The rule the tables applied to items without a training event (``learn_features.new_items``)."""
    if "cold_share" in diagnostics:
        return f"share, {diagnostics['cold_share']:.1%} of slots on average"
    return f"bias {diagnostics['cold_bias']:g}" if "cold_bias" in diagnostics else "none"


def metrics_markdown(protocols: dict[str, dict], ks: Sequence[int], on: str = "test", published: list[PublishedRow] | None = None) -> str:
    """``metrics.md``: per protocol, one table per target subset, each followed by its paired
    differences to every reference; ``published`` figures follow each leave-one-out protocol's
    all-targets table (they are leave-one-out figures)."""
    headline = headline_metric(ks)
    columns, deltas = headline_metrics(ks), paired_columns(ks)
    title = "Retrieval metrics (full item gallery)" if on == "test" else "Retrieval metrics on the VALIDATION users (for choosing settings)"
    lines = [f"# {title}", ""]
    if any(m.get("training") for block in protocols.values() for m in block["methods"].values()):
        curves = "training_curves.png" if on == "test" else f"training_curves-{on}.png"
        lines += [f"Training loss against chance and the validation score per epoch, every trained method: `{curves}`.", ""]
    for protocol, block in protocols.items():
        split, methods = block["split"], block["methods"]
        seeds = block["seeds"]
        cut = f"cut {split['cut_time']}; " if split.get("cut_time") else ""
        lines += [
            f"## Protocol: {protocol}",
            "",
            f"{cut}{block['users']} evaluated users; {split['test_users']} test users with {split['test_targets']} target items "
            f"({split['test_cold_targets']} on cold-start items), {split['val_users']} validation users; gallery of {split['items']} items, {split['items'] - split['warm_items']} of them cold; "
            f"{split['train_users']} training users, {split['train_events']} training events; training seeds {seeds}. "
            f"Values are means over users (of the seed mean), ± the SD of the seed means where there are several seeds; "
            f"brackets on {headline}: 95% bootstrap interval over users. Each subset's table keeps the users with a "
            f"target in it, ranked against the full gallery (the last: against the cold-start items alone). "
            f"Paired differences: per user, 95% bootstrap over users; * = the interval excludes 0."
            + (" Items the user already has stay in the ranking (`eval.rank_seen`, as in RecBole's sequential evaluation)." if block.get("rank_seen") else ""),
            "",
        ]
        for subset, (heading, keeps) in SUBSETS.items():
            section = None if subset == "all" else subset
            detail = f" ({keeps.format(share=block['tail_share'])})" if keeps else ""
            lines += [f"### {heading}{detail}", "", *_table(methods, section, columns, headline), ""]
            if subset == "all" and protocol == "leave_one_out":
                lines += published_markdown(published or [])
            for reference in block["references"]:
                where = "Paired difference" if section is None else f"{heading}: paired difference"
                lines += [f"### {where} to {reference}", "", *_paired_table(methods, section, reference, deltas), ""]
        lines += [
            "### Diagnostics (collapse, popularity bias, training)",
            "",
            "Mean pairwise cosine and effective rank (exp of the entropy of the normalised singular values of the "
            "centred vectors) of item and test-user vectors; Spearman correlation of an item's mean score over the "
            "test users with its training popularity; best validation epoch and the final epoch's training loss "
            "against the loss of a model that scores every item alike, per seed; how the tables placed the items "
            "without a training event (eval.cold_bias or eval.cold_share, last seed; the other columns describe the "
            "vectors without it).",
            "",
            *_diagnostics_table(methods),
            "",
        ]
    return "\n".join(lines)
