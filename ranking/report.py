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
from ranking.bootstrap import PairedDelta
from ranking.config import MODEL_PAIRS
from ranking.dnn import DNNRanker
from ranking.experiment import ExperimentResults, TierResult

MODEL_LABELS = {
    "lgbm_baseline": "LightGBM (ID + statistics)",
    "lgbm_learn": "LightGBM + LEARN features",
    "dnn_baseline": "DNN baseline (ID embeddings)",
    "dnn_learn": "DNN + LEARN auxiliary network",
}


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _delta(d: PairedDelta | None) -> str:
    if d is None:
        return "n/a"
    return f"{d.delta_pp:+.2f} [{d.ci_low_pp:+.2f}, {d.ci_high_pp:+.2f}]"


def _headline_delta(row: dict[str, object], metric: str) -> str:
    """Table 6 cell: the difference, with its interval where the row carries one."""
    delta, ci = row[f"delta_{metric}_pp"], row.get(f"delta_{metric}_ci_pp")
    if delta is None:
        return "—"
    text = f"{delta:+.2f}"
    return text if ci is None else f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]"  # type: ignore[index]


def headline_rows(results: ExperimentResults) -> list[dict[str, object]]:
    """Table 6: one row per model; LEARN rows carry their difference to the paired baseline.

    The WUAUC difference also carries its interval, taken from the pair's "all" tier row: that
    row is the same paired bootstrap on the same evaluation rows, so the interval costs nothing.
    """
    baseline_of = {learn: base for base, learn in MODEL_PAIRS}
    all_rows = {t.pair: t for t in results.tiers if t.dimension == "all"}
    rows = []
    order = [n for pair in MODEL_PAIRS for n in pair if n in results.metrics]
    for name in order:
        m = results.metrics[name]
        row: dict[str, object] = {"model": name, **m.to_dict()}
        base = results.metrics.get(baseline_of.get(name, ""))
        for metric in ("auc", "uauc", "wuauc"):
            mine, theirs = getattr(m, metric), getattr(base, metric) if base else None
            row[f"delta_{metric}_pp"] = None if mine is None or theirs is None else (mine - theirs) * 100.0
        paired = all_rows.get(name.split("_")[0]) if base else None
        wuauc = paired.wuauc if paired else None
        row["delta_wuauc_ci_pp"] = None if wuauc is None else [wuauc.ci_low_pp, wuauc.ci_high_pp]
        rows.append(row)
    return rows


def _png(fig: Figure) -> bytes:
    # Figure objects, not pyplot: no global state and no GUI backend on a headless machine.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_tier_deltas(tiers: list[TierResult], pair: str) -> bytes:
    rows = [t for t in tiers if t.pair == pair]
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
        ax.set_xlabel(f"LEARN - baseline {metric.upper()} (pp), 95% bootstrap CI")
    axes[0].invert_yaxis()  # shared y axis: inverting once puts "all" on top for both panels
    fig.suptitle(f"{pair.upper()}: per-tier difference")
    return _png(fig)


def plot_calibration(results: ExperimentResults) -> bytes:
    labels = results.predictions["label"].to_numpy()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect")
    n_bins = max(2, min(10, len(labels) // 50))
    for name in results.metrics:
        frac, mean = calibration_curve(labels, results.predictions[name].to_numpy(), n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, marker="o", label=MODEL_LABELS[name])
    ax.set_xlabel("mean predicted conversion probability")
    ax.set_ylabel("observed conversion rate")
    ax.set_title(f"Calibration on the evaluation period ({n_bins} quantile bins)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_score_distributions(results: ExperimentResults) -> bytes:
    names = list(results.metrics)
    labels = results.predictions["label"].to_numpy()
    fig = Figure(figsize=(3.6 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)
    bins = np.linspace(0, 1, 31)
    for ax, name in zip(axes[0], names):
        s = results.predictions[name].to_numpy()
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, density=True, label="negatives")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, density=True, label="positives")
        ax.set_title(MODEL_LABELS[name], fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def _plots(results: ExperimentResults) -> dict[str, tuple[str, bytes]]:
    plots = {}
    for pair in dict.fromkeys(t.pair for t in results.tiers):
        plots[f"tier_deltas_{pair}.png"] = (f"{pair.upper()} per-tier LEARN minus baseline", plot_tier_deltas(results.tiers, pair))
    if results.metrics:
        plots["calibration.png"] = ("Calibration curves", plot_calibration(results))
        plots["score_distributions.png"] = ("Score distributions by label", plot_score_distributions(results))
    return plots


def _tables(results: ExperimentResults) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table, shared by the Markdown and HTML renderers."""
    head = ["Model", "AUC", "UAUC", "WUAUC", "Logloss", "ΔAUC pp", "ΔUAUC pp", "ΔWUAUC pp [95% CI]", "Users in UAUC", "Best iter/epoch"]
    rows = []
    for r in headline_rows(results):
        rows.append(
            [
                MODEL_LABELS[str(r["model"])],
                _fmt(r["auc"]),  # type: ignore[arg-type]
                _fmt(r["uauc"]),  # type: ignore[arg-type]
                _fmt(r["wuauc"]),  # type: ignore[arg-type]
                _fmt(r["logloss"]),  # type: ignore[arg-type]
                *(_headline_delta(r, m) for m in ("auc", "uauc", "wuauc")),
                f"{r['n_users_uauc']} (+{r['n_single_class_users']} single-class excluded)",
                str(r["best_iteration"]),
            ]
        )
    tables = [("Table 6 — evaluation period, all impressions", head, rows)]
    tier_head = [
        "Tier", "Impressions", "Share", "Users", "AUC base", "AUC LEARN", "ΔAUC pp [95% CI]",
        "UAUC base", "UAUC LEARN", "ΔUAUC pp [95% CI]", "WUAUC base", "WUAUC LEARN", "ΔWUAUC pp [95% CI]", "Note",
    ]  # fmt: skip
    for pair in dict.fromkeys(t.pair for t in results.tiers):
        trs = []
        for t in (t for t in results.tiers if t.pair == pair):
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
        tables.append((f"Table 7 — {pair.upper()} baseline vs LEARN by user and item tier", tier_head, trs))
    return tables


def report_json(results: ExperimentResults) -> dict[str, object]:
    dnn_history = {n: r.history for n, r in results.rankers.items() if isinstance(r, DNNRanker)}
    return {
        "config": results.config.to_dict(),
        "fingerprint": results.fingerprint,
        "periods": results.dataset.periods.to_dict(),
        "thresholds": results.thresholds.to_dict(),
        "headline": headline_rows(results),
        "tiers": [t.to_dict() for t in results.tiers],
        "notes": results.notes,
        "dnn_training": dnn_history,
    }


def _intro(results: ExperimentResults) -> list[str]:
    p = results.dataset.periods
    return [
        f"Train [{p.train_start}, {p.valid_start}), validation [{p.valid_start}, {p.cut}) for early stopping, "
        f"evaluation [{p.cut}, {p.eval_end}]. Every feature of a row is taken as of min(row time, cut).",
        f"Tiers: {results.thresholds.how}. Intervals: paired bootstrap over users, "
        f"{results.config.bootstrap.n_resamples} resamples, {100 * results.config.bootstrap.confidence:g}% percentile.",
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
