"""The work directory's files: resolved config, metrics log, run metadata."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import jax


def write_config(workdir: str, config) -> None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def read_config(workdir: str):
    """The resolved config a run wrote (`write_config`), as a ConfigDict (JSON lists stand for
    the tuples they were); ConfigError when `workdir` has none."""
    import ml_collections

    from diffusion_jax.errors import ConfigError

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir!r} is not a training run's work directory (no config.json)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


class MetricsLog:
    """`metrics.jsonl`: one JSON object per log step with a `step` field.

    On resume from step s, lines with step > s (written after the checkpoint, before a kill) are
    dropped, so the history up to the checkpoint stays as it was and nothing is logged twice.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        if enabled and os.path.exists(self.path):
            with open(self.path) as f:
                keep = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_metadata(seed: int) -> dict:
    """What a reproduction needs: git commit and dirtiness, library versions, devices, seed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import flax
    import optax
    import orbax.checkpoint

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
        "seed": seed,
    }
