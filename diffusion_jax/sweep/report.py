"""The results of an experiment directory, rebuilt from the directory alone: `experiment.json`,
each member's `done.json` / `failed.json` and each training run's `metrics.jsonl`.

- `results.csv`: one row per member: its axis values, status, error, the collected metrics
  (full precision) and, when the experiment declares published numbers, a `published` column;
- `results.md`: the description, the same table (4 significant digits, a failed member's error
  in its status) and links to the plots;
- `plots/<metric>_vs_<axis>.png`: each metric against each axis with two or more values, one
  line per combination of the other axes (the zipped axes count as one axis, drawn together);
- `plots/training_curves.png`: the loss of every training run against its step.
"""
from __future__ import annotations

import csv
import json
import math
import os
from urllib.parse import quote

from diffusion_jax.sweep.spec import CONFIG_AXIS, Experiment, config_label
from diffusion_jax.sweep.status import format_number, markdown_table
from diffusion_jax.workdir import read_metrics

DIGITS_NOTE = ("The `digits_` metrics are measured in the feature space of a small digits "
               "classifier (`evaluation/digits_features.py`): they are not FID or Inception "
               "score, and the digits numbers are not comparable with the published CIFAR-10 "
               "numbers beside them; the digits runs only exercise the pipeline.")


def display(key: str, value) -> str:
    """An axis value as the table shows it (a config file by its name)."""
    if key == CONFIG_AXIS:
        return config_label(value)
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return str(value)


def load_results(directory: str) -> tuple[str, Experiment, list[dict]]:
    """The title and experiment of `directory` and one record per member: name, values,
    training, status (`done`, `failed`, `not run`), error, metrics, published."""
    with open(os.path.join(directory, "experiment.json")) as f:
        data = json.load(f)
    experiment = Experiment.from_json(data["experiment"])
    rows = []
    for member in data["members"]:
        workdir = os.path.join(directory, "members", member["name"])
        row = dict(member, status="not run", error="", metrics={},
                   published=experiment.published_for(member["values"]))
        if os.path.exists(os.path.join(workdir, "done.json")):
            with open(os.path.join(workdir, "done.json")) as f:
                row.update(status="done", metrics=json.load(f)["metrics"])
        elif os.path.exists(os.path.join(workdir, "failed.json")):
            with open(os.path.join(workdir, "failed.json")) as f:
                row.update(status="failed", error=json.load(f)["error"])
        rows.append(row)
    return data["title"], experiment, rows


def metric_names(experiment: Experiment, rows: list[dict]) -> list[str]:
    """The declared metrics, or every collected one in order of first appearance."""
    if experiment.metrics:
        return list(experiment.metrics)
    names = []
    for row in rows:
        names += [k for k in row["metrics"] if k not in names]
    return names


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def write_csv(path: str, experiment: Experiment, rows: list[dict]) -> None:
    metrics = metric_names(experiment, rows)
    headers = ["member", *experiment.axes(), "status", "error", *metrics]
    headers += ["published"] if experiment.published else []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        for row in rows:
            axes = [display(k, row["values"][k]) for k in experiment.axes()]
            writer.writerow([row["name"], *axes, row["status"], row["error"],
                             *(repr(row["metrics"][m]) if m in row["metrics"] else ""
                               for m in metrics),
                             *([row["published"]] if experiment.published else [])])


def markdown(title: str, experiment: Experiment, rows: list[dict], plots: list[str]) -> str:
    metrics = metric_names(experiment, rows)
    headers = [*experiment.axes(), "status", *metrics]
    headers += ["published"] if experiment.published else []
    table = [[*(display(k, row["values"][k]) for k in experiment.axes()),
              row["status"] + (f": {row['error']}" if row["error"] else ""),
              *(format_number(row["metrics"][m]) if m in row["metrics"] else "" for m in metrics),
              *([row["published"]] if experiment.published else [])] for row in rows]
    lines = [f"# {title}", ""]
    lines += [experiment.description, ""] if experiment.description else []
    if experiment.published and any(m.startswith("digits_") for m in metrics):
        lines += [DIGITS_NOTE, ""]
    done = sum(r["status"] == "done" for r in rows)
    lines += [f"{done} of {len(rows)} members done.", "", markdown_table(headers, table), ""]
    lines += [f"![{os.path.splitext(p)[0]}](plots/{p})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"


def _plot_axes(experiment: Experiment) -> list[tuple[str, list[str]]]:
    """(label, keys) of each axis a plot can vary: each grid key, the zipped keys together
    (those whose value changes), the seed."""
    axes = [(k, [k]) for k in experiment.grid]
    varying = [k for k, v in experiment.zipped.items() if len({repr(x) for x in v}) > 1]
    if varying:
        axes.append(("+".join(varying), varying))
    if experiment.seeds:
        axes.append(("training.seed", ["training.seed"]))
    return axes


def _axis_value(row: dict, keys: list[str]):
    values = [row["values"][k] for k in keys]
    if len(values) == 1 and _number(values[0]) is not None:
        return values[0]
    return "/".join(display(k, row["values"][k]) for k in keys)


def plot_metrics(plots_dir: str, experiment: Experiment, rows: list[dict]) -> list[str]:
    """One PNG per metric and axis (see the module docstring); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    axes, written = _plot_axes(experiment), []
    for metric in metric_names(experiment, rows):
        points = [r for r in done if _number(r["metrics"].get(metric)) is not None]
        for label, keys in axes:
            xs = list(dict.fromkeys(_axis_value(r, keys) for r in points))
            if len(xs) < 2:
                continue
            numeric = all(isinstance(x, (int, float)) for x in xs)
            position = {x: x if numeric else i for i, x in enumerate(xs)}
            others = [a for a in axes if a[0] != label]
            lines = {}
            for r in points:
                name = ", ".join(f"{l}={_axis_value(r, k)}" for l, k in others)
                lines.setdefault(name, []).append((position[_axis_value(r, keys)],
                                                   _number(r["metrics"][metric])))
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, pts in lines.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name or None)
            if not numeric:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, ha="right",
                              fontsize=7)
            ax.set(xlabel=label, ylabel=metric, title=f"{metric} vs {label}")
            if any(lines):
                ax.legend(fontsize=7)
            fig.tight_layout()
            file = f"{quote(metric, safe='_.+-')}_vs_{quote(label, safe='_.+-')}.png"
            fig.savefig(os.path.join(plots_dir, file))
            plt.close(fig)
            written.append(file)
    return written


def plot_training_curves(path: str, directory: str, rows: list[dict]) -> bool:
    """The training loss of every training run against its step; False when none has logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for training in dict.fromkeys(r["training"] for r in rows):
        log = [m for m in read_metrics(os.path.join(directory, "train", training)) if "loss" in m]
        if log:
            ax.plot([m["step"] for m in log], [m["loss"] for m in log], label=training)
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel="loss", title="training loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return drawn


def write_report(directory: str) -> str:
    """Write `results.csv`, `results.md` and `plots/` of an experiment directory (replacing
    earlier ones); returns the path of `results.md`."""
    title, experiment, rows = load_results(directory)
    plots_dir = os.path.join(directory, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    for name in os.listdir(plots_dir):
        if name.endswith(".png"):
            os.remove(os.path.join(plots_dir, name))
    plots = plot_metrics(plots_dir, experiment, rows)
    if plot_training_curves(os.path.join(plots_dir, "training_curves.png"), directory, rows):
        plots.append("training_curves.png")
    write_csv(os.path.join(directory, "results.csv"), experiment, rows)
    path = os.path.join(directory, "results.md")
    with open(path, "w") as f:
        f.write(markdown(title, experiment, rows, plots))
    return path
