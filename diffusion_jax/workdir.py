"""The work directory's files: resolved config, metrics log, run metadata, and the lock that keeps
a second run out of it."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time

import jax

from diffusion_jax.errors import UserError

LOCK_FILE = ".lock"


class WorkdirBusy(UserError):
    """Another live run holds the work directory."""


class WorkdirLock:
    """An exclusive lock on a work directory for the life of one run: `workdir/.lock`, held with
    `fcntl.flock` (released by the kernel however the holder dies, kill -9 included) and holding
    the holder's host, pid, mode and start time for the error a second run gets. On a file system
    without flock (some network mounts) the lock file alone is used, and a lock whose pid no
    longer runs on this host is taken over as stale."""

    def __init__(self, workdir: str, mode: str):
        self.path, self.mode, self.handle = os.path.join(workdir, LOCK_FILE), mode, None

    def __enter__(self) -> "WorkdirLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise WorkdirBusy(f"work directory {os.path.dirname(self.path)!r} is in use by "
                              f"another run ({holder or 'unknown holder'}); wait for it or use "
                              f"another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._check_pid_lock(handle)
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, mode {self.mode}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def _check_pid_lock(self, handle) -> None:
        """Without flock: refuse while the recorded holder is a live process on this host."""
        handle.seek(0)
        holder = handle.read().strip()
        fields = dict(part.split(" ", 1) for part in holder.split(", ") if " " in part)
        if fields.get("host") == socket.gethostname() and fields.get("pid", "").isdigit():
            try:
                os.kill(int(fields["pid"]), 0)
            except ProcessLookupError:
                return  # stale: its holder is gone
            raise WorkdirBusy(f"work directory {os.path.dirname(self.path)!r} is in use by "
                              f"another run ({holder}); wait for it or use another --workdir")

    def __exit__(self, *exc) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.close()


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
    dropped, and so is a last line cut off by a kill mid-write, so the history up to the
    checkpoint stays as it was and nothing is logged twice.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        if enabled and os.path.exists(self.path):
            keep = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
            with open(self.path + ".tmp", "w") as f:  # replaced whole: a kill here loses nothing
                f.writelines(json.dumps(r) + "\n" for r in keep)
            os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
    """The records of `metrics.jsonl`, without a last line that a kill cut off mid-write."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the partial last line of a killed write
            raise UserError(f"{path} line {i + 1} is not JSON; fix or remove it") from None
    return records


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
