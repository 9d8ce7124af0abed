"""What the scripted studies (`sampler_nfe.py`, `consistency_steps.py`) share: their output."""
from __future__ import annotations

import csv
import os


def write_results(workdir: str, name: str, rows: list[dict], table: str, plot) -> None:
    """`<name>.csv` of `rows` (dicts with the same keys), `<name>.png` drawn by
    `plot(rows, path)`, and the Markdown `table` printed."""
    with open(os.path.join(workdir, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(workdir, f"{name}.png"))
    print(table, flush=True)
