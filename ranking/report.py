"""``report.html`` + ``report.md`` + ``report.json`` for a ranking experiment.

The JSON is the machine-readable record (every number, the config, the data fingerprint);
the Markdown and HTML render the same tables: the headline comparison like the paper's
Table 6 and the tier breakdown like its Table 7, plus plots. The HTML embeds its PNGs as
base64 so it is a single file that can be mailed or attached to a ticket; the Markdown links
the same PNGs written under ``plots/``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve

from learn_features.atomic import atomic_path, write_json_atomic, write_text_atomic
from ranking.arms import ARMS_BY_NAME, REPORT_ORDER
from ranking.bootstrap import PairedDelta
from ranking.experiment import ArmResult, Comparison, ExperimentResults, TierResult
from ranking.seeds import SeedPaired, SeedSpread

METRICS = ("uauc", "wuauc")


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _delta(d: PairedDelta | None) -> str:
    if d is None:
        return "n/a"
    return f"{d.delta_pp:+.2f} [{d.ci_low_pp:+.2f}, {d.ci_high_pp:+.2f}]"


def _mean_sd(spread: SeedSpread, scale: float = 1.0, digits: int = 4, sign: str = "") -> str:
    mean, sd = spread.mean, spread.sd
    if mean is None:
        return "n/a"
    text = f"{mean * scale:{sign}.{digits}f}"
    return text if sd is None else f"{text} ± {sd * scale:.{digits}f}"


def _paired(p: SeedPaired) -> str:
    text = _mean_sd(p.spread, digits=2, sign="+")
    return text if p.beyond_noise is None else f"{text} ({'beyond' if p.beyond_noise else 'within'} 2 SD)"


def headline_rows(results: ExperimentResults) -> list[dict[str, object]]:
    """Table 6: one row per arm, its metrics over seeds and on the seed-averaged predictions."""
    order = [n for n in REPORT_ORDER if n in results.arms]
    rows = []
    for name in order:
        arm = results.arms[name]
        row: dict[str, object] = {"model": name, "seeds": arm.seeds}
        for metric in ("auc", "uauc", "wuauc", "logloss"):
            spread = arm.spread(metric)
            row[f"{metric}_mean"], row[f"{metric}_sd"] = spread.mean, spread.sd
            row[f"{metric}_seed_averaged"] = getattr(arm.averaged, metric)
        row["n_users_uauc"], row["n_single_class_users"] = arm.averaged.n_users_uauc, arm.averaged.n_single_class_users
        row["best_iteration_per_seed"] = [m.best_iteration for m in arm.per_seed]
        rows.append(row)
    return rows


def answers(results: ExperimentResults) -> list[str]:
    """The questions a reader comes with (issue 11's), answered from the numbers in this report."""
    by_pair = {(c.reference, c.arm): c for c in results.comparisons}
    lines = []

    def judged(c: Comparison) -> str:
        return "; ".join(f"{m.upper()}: **{c.verdict(m)[0]}** ({c.verdict(m)[1]})" for m in METRICS)

    main = by_pair.get(("dnn_baseline", "dnn_learn"))
    if main is not None:
        beyond = {m: main.seed_paired[m].beyond_noise for m in METRICS}
        said = ", ".join(f"{m.upper()} {'n/a (no seed spread)' if v is None else ('yes' if v else 'no')}" for m, v in beyond.items())
        lines.append(f"Does DNN + LEARN beat the DNN baseline by more than 2 SD of the seed-paired differences? {said}. {judged(main)}.")
    controls = [by_pair[k] for k in (("dnn_llm_frozen", "dnn_learn"), ("dnn_random", "dnn_learn")) if k in by_pair]
    if controls:
        both = all(c.verdict(m)[0] == "lift" for c in controls for m in METRICS) and len(controls) == 2
        detail = " ".join(f"Against {ARMS_BY_NAME[c.reference].label}: {judged(c)}." for c in controls)
        lines.append(f"Does DNN + LEARN beat both control arms? {'Yes' if both else 'No'}. {detail}")
    tiers = [t for t in results.tiers if (t.reference, t.arm) == ("dnn_baseline", "dnn_learn") and t.dimension != "all"]
    if tiers:
        def side(t: TierResult) -> str | None:
            d = t.uauc
            if d is None or d.ci_low_pp <= 0 <= d.ci_high_pp:
                return None
            return f"{t.dimension} {t.tier} ({_delta(d)} pp)"

        found = [x for x in map(side, tiers) if x]
        lines.append(
            "On which tiers does the DNN + LEARN UAUC difference have a bootstrap interval that excludes 0 "
            f"(seed-averaged predictions; the tiers have no seed-paired test)? {', '.join(found) if found else 'none'}."
        )
    lgbm = by_pair.get(("lgbm_baseline", "lgbm_learn"))
    if lgbm is not None:
        lines.append(f"LightGBM + LEARN against LightGBM: {judged(lgbm)}.")
    return lines


def _png(fig: Figure) -> bytes:
    # Figure objects, not pyplot: no global state and no GUI backend on a headless machine.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_tier_deltas(tiers: list[TierResult], arm: str) -> bytes:
    rows = [t for t in tiers if t.arm == arm]
    labels = [f"{t.dimension}: {t.tier}" if t.dimension != "all" else "all" for t in rows]
    fig = Figure(figsize=(11, 0.45 * len(rows) + 1.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("uauc", "auc")):
        deltas = [getattr(t, metric) for t in rows]
        y = np.arange(len(rows))
        value = np.array([d.delta_pp if d else np.nan for d in deltas])
        lo = np.array([d.delta_pp - d.ci_low_pp if d else np.nan for d in deltas])
        hi = np.array([d.ci_high_pp - d.delta_pp if d else np.nan for d in deltas])
        colors = ["#2b7bba" if np.isfinite(v) and v >= 0 else "#d9534f" for v in value]
        ax.barh(y, np.nan_to_num(value), xerr=np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]), color=colors, capsize=3)
        for yi, v in zip(y, value):
            if not np.isfinite(v):
                ax.text(0, yi, " n/a", va="center", fontsize=8, color="gray")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, labels)
        ax.set_xlabel(f"arm - baseline {metric.upper()} (pp), 95% bootstrap CI")
    axes[0].invert_yaxis()  # shared y axis: inverting once puts "all" on top for both panels
    fig.suptitle(f"{ARMS_BY_NAME[arm].label} vs {ARMS_BY_NAME[rows[0].reference].label}: per-tier difference (seed-averaged predictions)")
    return _png(fig)


def plot_seed_paired(comparisons: list[Comparison]) -> bytes:
    """Each comparison: the per-seed differences (dots), their mean ± 2 SD, and the bootstrap interval."""
    fig = Figure(figsize=(11, 0.7 * len(comparisons) + 1.6))
    axes = fig.subplots(1, len(METRICS), sharey=True, squeeze=False)[0]
    y = np.arange(len(comparisons))
    for ax, metric in zip(axes, METRICS):
        for yi, c in zip(y, comparisons):
            paired, boot = c.seed_paired[metric], c.bootstrap[metric]
            deltas = [d for d in paired.deltas_pp if d is not None]
            ax.scatter(deltas, np.full(len(deltas), yi - 0.12), s=18, color="#555555", zorder=3, label="one seed" if yi == 0 else None)
            mean, sd = paired.spread.mean, paired.spread.sd
            if mean is not None:
                ax.errorbar(mean, yi - 0.12, xerr=0 if sd is None else 2 * sd, fmt="D", color="#2b7bba", capsize=4,
                            label="seed mean ± 2 SD" if yi == 0 else None)  # fmt: skip
            if boot is not None:
                ax.errorbar(boot.delta_pp, yi + 0.18, xerr=[[boot.delta_pp - boot.ci_low_pp], [boot.ci_high_pp - boot.delta_pp]],
                            fmt="o", color="#e08214", capsize=4, label="seed-averaged, bootstrap 95% CI" if yi == 0 else None)  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [f"{ARMS_BY_NAME[c.arm].label}\nvs {ARMS_BY_NAME[c.reference].label}" for c in comparisons], fontsize=8)
        ax.set_xlabel(f"Δ{metric.upper()} (pp)")
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(bottom=0.18)
    fig.suptitle("Arm minus reference: across seeds (paired) and across users (bootstrap)")
    return _png(fig)


def plot_learning_curves(arm: ArmResult) -> bytes:
    """Validation logloss (and UAUC where recorded) per epoch or boosting round, one line per seed."""
    keys = [k for k in ("valid_logloss", "valid_uauc") if any(k in e for curve in arm.curves for e in curve)]
    fig = Figure(figsize=(5.2 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    unit = "boosting round" if ARMS_BY_NAME[arm.name].ranker == "lgbm" else "epoch"
    for ax, key in zip(axes, keys):
        for seed, curve, metrics in zip(arm.seeds, arm.curves, arm.per_seed):
            x = [e["epoch"] for e in curve]
            values = [np.nan if e.get(key) is None else e[key] for e in curve]
            (line,) = ax.plot(x, values, lw=1.2, label=f"seed {seed}")
            best = metrics.best_iteration
            if best is not None and best in x:
                ax.plot([best], [values[x.index(best)]], marker="o", color=line.get_color())
        ax.set_xlabel(f"{unit} (dot: the one kept by early stopping)")
        ax.set_ylabel(key.replace("valid_", "validation ").replace("uauc", "UAUC"))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{ARMS_BY_NAME[arm.name].label}: validation learning curves")
    return _png(fig)


def plot_calibration(results: ExperimentResults) -> bytes:
    labels = results.predictions["label"].to_numpy()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect")
    n_bins = max(2, min(10, len(labels) // 50))
    for name in results.arms:
        frac, mean = calibration_curve(labels, results.predictions[name].to_numpy(), n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, marker="o", label=ARMS_BY_NAME[name].label)
    ax.set_xlabel("mean predicted conversion probability")
    ax.set_ylabel("observed conversion rate")
    ax.set_title(f"Calibration, seed-averaged predictions ({n_bins} quantile bins)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_score_distributions(results: ExperimentResults) -> bytes:
    names = list(results.arms)
    labels = results.predictions["label"].to_numpy()
    fig = Figure(figsize=(3.6 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)
    bins = np.linspace(0, 1, 31)
    for ax, name in zip(axes[0], names):
        s = results.predictions[name].to_numpy()
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, density=True, label="negatives")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, density=True, label="positives")
        ax.set_title(ARMS_BY_NAME[name].label, fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def _plots(results: ExperimentResults) -> dict[str, tuple[str, bytes]]:
    plots = {}
    if results.comparisons:
        plots["seed_paired.png"] = ("Differences across seeds and across users", plot_seed_paired(results.comparisons))
    for name in dict.fromkeys(t.arm for t in results.tiers):
        plots[f"tier_deltas_{name}.png"] = (f"{ARMS_BY_NAME[name].label}: per-tier difference", plot_tier_deltas(results.tiers, name))
    for name, arm in results.arms.items():
        plots[f"curves_{name}.png"] = (f"{ARMS_BY_NAME[name].label}: validation learning curves", plot_learning_curves(arm))
    if results.arms:
        plots["calibration.png"] = ("Calibration curves", plot_calibration(results))
        plots["score_distributions.png"] = ("Score distributions by label", plot_score_distributions(results))
    return plots


def _tables(results: ExperimentResults) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table, shared by the Markdown and HTML renderers."""
    n = len(results.config.seeds)
    head = ["Model", f"UAUC mean ± SD ({n} seeds)", "WUAUC mean ± SD", "AUC mean ± SD", "Logloss mean ± SD",
            "UAUC, seed-averaged", "WUAUC, seed-averaged", "Users in UAUC", "Best iter/epoch per seed"]  # fmt: skip
    rows = []
    for r in headline_rows(results):
        arm = results.arms[str(r["model"])]
        rows.append(
            [
                ARMS_BY_NAME[arm.name].label,
                *(_mean_sd(arm.spread(m)) for m in ("uauc", "wuauc", "auc", "logloss")),
                _fmt(arm.averaged.uauc),
                _fmt(arm.averaged.wuauc),
                f"{arm.averaged.n_users_uauc} (+{arm.averaged.n_single_class_users} single-class excluded)",
                ", ".join(str(m.best_iteration) for m in arm.per_seed),
            ]
        )
    tables = [("Table 6 — evaluation period, all impressions", head, rows)]
    comp_head = ["Arm", "Reference", "ΔUAUC pp, seed-paired mean ± SD", "ΔUAUC pp, bootstrap [95% CI]",
                 "ΔWUAUC pp, seed-paired mean ± SD", "ΔWUAUC pp, bootstrap [95% CI]", "UAUC", "WUAUC"]  # fmt: skip
    comp_rows = [
        [ARMS_BY_NAME[c.arm].label, ARMS_BY_NAME[c.reference].label, _paired(c.seed_paired["uauc"]), _delta(c.bootstrap["uauc"]),
         _paired(c.seed_paired["wuauc"]), _delta(c.bootstrap["wuauc"]), c.verdict("uauc")[0], c.verdict("wuauc")[0]]
        for c in results.comparisons
    ]  # fmt: skip
    if comp_rows:
        tables.append(("Arm against reference: seed-paired differences and user bootstrap", comp_head, comp_rows))
    seeds = results.config.seeds
    seed_head = ["Model", *(f"seed {s} UAUC / WUAUC" for s in seeds)]
    seed_rows = [[ARMS_BY_NAME[name].label, *(f"{_fmt(m.uauc)} / {_fmt(m.wuauc)}" for m in arm.per_seed)] for name, arm in results.arms.items()]
    tables.append(("Every seed", seed_head, seed_rows))
    if results.coverage:
        splits = list(results.coverage)
        keys = list(dict.fromkeys(k for entry in results.coverage.values() for k in entry))
        cov_rows = [[k, *(_coverage_cell(k, results.coverage[s].get(k)) for s in splits)] for k in keys]
        tables.append(("Coverage per split (share of rows unless a count or a UAUC)", ["", *splits], cov_rows))
    tier_head = [
        "Tier", "Impressions", "Share", "Users", "AUC base", "AUC arm", "ΔAUC pp [95% CI]",
        "UAUC base", "UAUC arm", "ΔUAUC pp [95% CI]", "WUAUC base", "WUAUC arm", "ΔWUAUC pp [95% CI]", "Note",
    ]  # fmt: skip
    for arm_name in dict.fromkeys(t.arm for t in results.tiers):
        trs = []
        for t in (t for t in results.tiers if t.arm == arm_name):
            trs.append(
                [
                    "all" if t.dimension == "all" else f"{t.dimension}: {t.tier}",
                    str(t.n_impressions),
                    f"{100 * t.share:.1f}%",
                    f"{t.n_users} ({t.n_single_class_users} single-class)",
                    _fmt(t.auc.base if t.auc else None),
                    _fmt(t.auc.learn if t.auc else None),
                    _delta(t.auc),
                    _fmt(t.uauc.base if t.uauc else None),
                    _fmt(t.uauc.learn if t.uauc else None),
                    _delta(t.uauc),
                    _fmt(t.wuauc.base if t.wuauc else None),
                    _fmt(t.wuauc.learn if t.wuauc else None),
                    _delta(t.wuauc),
                    t.note or "",
                ]
            )
        reference = next(t.reference for t in results.tiers if t.arm == arm_name)
        tables.append((f"Table 7 — {ARMS_BY_NAME[arm_name].label} vs {ARMS_BY_NAME[reference].label} by user and item tier "
                       "(seed-averaged predictions)", tier_head, trs))  # fmt: skip
    return tables


def _coverage_cell(key: str, value: object) -> str:
    if value is None:
        return "n/a"
    if "UAUC" in key:
        return _fmt(value)  # type: ignore[arg-type]
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def report_json(results: ExperimentResults) -> dict[str, object]:
    return {
        "config": results.config.to_dict(),
        "fingerprint": results.fingerprint,
        "periods": results.dataset.periods.to_dict(),
        "features_as_of": results.dataset.features_as_of,
        "thresholds": results.thresholds.to_dict(),
        "answers": answers(results),
        "headline": headline_rows(results),
        "arms": {name: arm.to_dict() for name, arm in results.arms.items()},
        "comparisons": [c.to_dict() for c in results.comparisons],
        "tiers": [t.to_dict() for t in results.tiers],
        "coverage": results.coverage,
        "notes": results.notes,
    }


def _intro(results: ExperimentResults) -> list[str]:
    p = results.dataset.periods
    when = (
        "as of min(row time, cut): evaluation rows see the world frozen at the cut"
        if results.dataset.features_as_of == "cut"
        else "as of the row's own time (statistics and history strictly before it; vectors stamped at or before it)"
    )
    return [
        f"Train [{p.train_start}, {p.valid_start}), validation [{p.valid_start}, {p.cut}) for early stopping, "
        f"evaluation [{p.cut}, {p.eval_end}]. Every feature of a row is taken {when}.",
        f"Seeds {results.config.seeds}: every arm is trained once per seed. Mean ± SD are over seeds (sample SD); "
        "seed-paired differences are arm(s) - reference(s) per seed s. Intervals: paired bootstrap over users on the "
        f"seed-averaged predictions, {results.config.bootstrap.n_resamples} resamples, "
        f"{100 * results.config.bootstrap.confidence:g}% percentile. A lift counts only when the seed-paired mean is "
        "beyond 2 SD and the bootstrap interval excludes 0.",
        f"Tiers (activity before the ranking cut): {results.thresholds.how}.",
        _embedding_line(results),
    ]


def _embedding_line(results: ExperimentResults) -> str:
    source = results.config.embeddings.source
    splits = results.fingerprint.get("splits", {})
    if source == "none" or not isinstance(splits, dict) or not splits:
        return f"Embeddings: source={source}."
    versions = sorted({v for s in splits.values() for v in s.get("model_versions", [])})
    coverage = ", ".join(
        f"{name} {100 * (s.get('user_embedding_coverage') or 0):.0f}%/{100 * (s.get('item_embedding_coverage') or 0):.0f}%"
        for name, s in splits.items()
    )
    return f"Embeddings: source={source}, model version(s) {versions}; rows with a user/item embedding: {coverage}."


def _markdown(results: ExperimentResults, plots: dict[str, tuple[str, bytes]]) -> str:
    out = ["# LEARN ranking report", "", *(f"- {line}" for line in _intro(results)), ""]
    if answers(results):
        out += ["## Answers", "", *(f"- {line}" for line in answers(results)), ""]
    for title, head, rows in _tables(results):
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.append("")
    if results.notes:
        out += ["## Notes", "", *(f"- {n}" for n in results.notes), ""]
    out += ["## Plots", ""] + [f"### {title}\n\n![{title}](plots/{name})\n" for name, (title, _) in plots.items()]
    out += ["## Data fingerprint", "", "```json", json.dumps(results.fingerprint, indent=2, default=str), "```", ""]
    out += ["## Config", "", "```json", json.dumps(results.config.to_dict(), indent=2, default=str), "```", ""]
    return "\n".join(out)


def _html(results: ExperimentResults, plots: dict[str, tuple[str, bytes]]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>LEARN ranking report</title><style>",
        "body{font-family:sans-serif;margin:24px;max-width:1150px}table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}",
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}",
        "th{background:#f0f0f0}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}img{max-width:100%}",
        "</style></head><body><h1>LEARN ranking report</h1><ul>",
        *(f"<li>{e(line)}</li>" for line in _intro(results)),
        "</ul>",
    ]
    if answers(results):
        parts += ["<h2>Answers</h2><ul>", *(f"<li>{e(line.replace('**', ''))}</li>" for line in answers(results)), "</ul>"]
    for title, head, rows in _tables(results):
        parts.append(f"<h2>{e(title)}</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr>")
        parts += [f"<tr>{''.join(f'<td>{e(c)}</td>' for c in row)}</tr>" for row in rows]
        parts.append("</table>")
    if results.notes:
        parts += ["<h2>Notes</h2><ul>", *(f"<li>{e(n)}</li>" for n in results.notes), "</ul>"]
    parts.append("<h2>Plots</h2>")
    for title, png in plots.values():
        parts.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append(f"<h2>Data fingerprint</h2><pre>{e(json.dumps(results.fingerprint, indent=2, default=str))}</pre>")
    parts.append(f"<h2>Config</h2><pre>{e(json.dumps(results.config.to_dict(), indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: ExperimentResults, out_dir: str | Path) -> dict[str, Path]:
    """Write the three report files and the plot PNGs atomically; return their paths."""
    out = Path(out_dir)
    plots = _plots(results)
    paths = {}
    for name, (_, png) in plots.items():
        with atomic_path(out / "plots" / name) as tmp:
            tmp.write_bytes(png)
        paths[name] = out / "plots" / name
    write_json_atomic(out / "report.json", report_json(results))
    write_text_atomic(out / "report.md", _markdown(results, plots))
    write_text_atomic(out / "report.html", _html(results, plots))
    paths.update({"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"})
    return paths
