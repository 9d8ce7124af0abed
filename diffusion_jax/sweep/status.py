"""The live view of a running experiment: `DIR/status.json` and a table of its members.

Each member is `pending`, `running` (with the mode: `train` while its training run trains),
`done` or `failed` (with its error line), beside its latest metrics: the collected ones once
done, else the newest line of the running command's `metrics.jsonl`. `status.json` is rewritten
on every change and every few seconds while commands run; on a terminal the whole table is
redrawn on every change, elsewhere (a log file) one line per change is printed.
`launch.py --status=DIR` prints the table from `status.json`.
"""
from __future__ import annotations

import json
import os
import time

from diffusion_jax.workdir import read_metrics

REFRESH_S = 5.0
STATES = ("done", "running", "failed", "pending")


def format_number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shown(metrics: dict, names) -> str:
    keys = ["step"] + [k for k in (names or metrics) if k != "step"]
    return ", ".join(f"{k} {format_number(metrics[k])}" for k in keys if k in metrics)


def status_table(status: dict) -> str:
    """The members' table of a `status.json` record, with a line of counts above it."""
    rows = [[m["name"], m["state"] + (f" ({m['mode']})" if m["mode"] else ""),
             m["error"] or _shown(m["metrics"], status["metrics"])] for m in status["members"]]
    counts = ", ".join(f"{status['counts'][s]} {s}" for s in STATES)
    return f"{counts}\n" + markdown_table(["member", "state", "metrics / error"], rows)


def read_status(directory: str) -> dict:
    path = os.path.join(directory, "status.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {directory} an experiment directory?")
    with open(path) as f:
        return json.load(f)


def _latest(workdir: str) -> dict:
    records = read_metrics(workdir)
    return records[-1] if records else {}


class LiveView:
    """Writes `status.json` and prints the members' progress for the runner's jobs."""

    def __init__(self, directory: str, jobs, metrics, out):
        self.path = os.path.join(directory, "status.json")
        self.members = [j for j in jobs if j.after is not None]
        self.metrics, self.out = list(metrics), out
        self.last_write = 0.0

    def _member(self, job) -> dict:
        training = job.after
        state, mode, error, metrics = job.state, job.mode, job.error, {}
        if state == "pending" and training.state == "running":
            state, mode, metrics = "running", "train", _latest(training.workdir)
        elif state == "running":
            metrics = _latest(job.workdir)
        elif state == "done":
            with open(os.path.join(job.workdir, "done.json")) as f:
                metrics = json.load(f).get("metrics", {})
        return dict(name=job.members[0], state=state, mode=mode, error=error, metrics=metrics)

    def snapshot(self) -> dict:
        members = [self._member(j) for j in self.members]
        return dict(updated=time.strftime("%Y-%m-%d %H:%M:%S"), metrics=self.metrics,
                    counts={s: sum(m["state"] == s for m in members) for s in STATES},
                    members=members)

    def update(self, changed=None) -> None:
        """Record the current states; print the table (terminal) or the changed job's line."""
        status = self.snapshot()
        self._write(status)
        if self.out.isatty():
            print("\033[H\033[J" + status_table(status), file=self.out, flush=True)
        elif changed is not None:
            counts = ", ".join(f"{status['counts'][s]} {s}" for s in STATES)
            detail = f": {changed.error}" if changed.error else ""
            mode = f" ({changed.mode})" if changed.mode else ""
            print(f"[{counts}] {changed.name} {changed.state}{mode}{detail}", file=self.out,
                  flush=True)

    def tick(self) -> None:
        """Refresh the running members' latest metrics in `status.json` now and then."""
        if time.time() - self.last_write > REFRESH_S:
            self._write(self.snapshot())

    def _write(self, status: dict) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"  # array tasks of one sweep write it at once
        with open(tmp, "w") as f:
            json.dump(status, f, indent=2)
        os.replace(tmp, self.path)
        self.last_write = time.time()
