"""Plots a person would rather look at than read: a run's loss and gradient norm against step."""
from __future__ import annotations

import os


def plot_training(records: list[dict], path: str) -> None:
    """`path` (a PNG): loss and grad norm of the `metrics.jsonl` records against step, on a log
    scale when positive; written atomically, so a reader never sees half a file. Nothing to plot
(no row logged yet) writes nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "loss" in r]
    keys = [k for k in ("loss", "grad_norm") if any(k in r for r in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = [r["step"] for r in rows if key in r]
        values = [r[key] for r in rows if key in r]
        ax.plot(steps, values)
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
