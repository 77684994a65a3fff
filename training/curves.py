"""Training curves of the tower methods: loss against chance, and the validation score, per epoch.

Whether the towers learned at all is the first question to ask of a retrieval table (a loss
stuck at chance, or a validation score that peaks at epoch 1, explains a bad row better than
any metric). ``metrics.json`` holds the numbers; this draws them, one row per protocol, so a
reader can see them at a glance.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure


def training_curves_png(protocols: dict[str, dict]) -> bytes | None:
    """PNG of every trained method's per-epoch history (every seed), or None when nothing trained.

    ``protocols`` is ``metrics.json``'s ``protocols`` object.
    """
    rows = [(name, block["methods"]) for name, block in protocols.items()
            if any(m.get("training") for m in block["methods"].values())]
    if not rows:
        return None
    fig = Figure(figsize=(11, 3.6 * len(rows)))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (protocol, methods), (loss_ax, val_ax) in zip(rows, axes):
        for index, (name, values) in enumerate(m for m in methods.items() if m[1].get("training")):
            colour = f"C{index % 10}"
            for seed, run in enumerate(values["training"]):
                history = run["history"]
                epochs = [h["epoch"] for h in history]
                label = name if seed == 0 else None
                # Each method's loss over its own chance level: methods with a second loss term
                # (learn_v1's serving path) have twice the raw loss, but the same ratio scale.
                loss_ax.plot(epochs, [h["loss"] / h["chance_loss"] for h in history], color=colour, label=label, lw=1.2)
                score_key = next(k for k in history[0] if k.startswith("val_"))
                val_ax.plot(epochs, [h[score_key] for h in history], color=colour, label=label, lw=1.2)
                val_ax.plot(run["best_epoch"], run["best_validation"], "o", color=colour, ms=4)
            val_ax.set_ylabel(score_key.removeprefix("val_") + " (validation)")
        loss_ax.axhline(1.0, color="grey", ls="--", lw=1, label="chance")
        loss_ax.set_title(f"{protocol}: training loss / chance loss")
        val_ax.set_title(f"{protocol}: validation score (dot: kept epoch)")
        for ax in (loss_ax, val_ax):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
