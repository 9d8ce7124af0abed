"""Checkpoints with orbax: the train state (params, EMA, optimizer, step, RNG) and the data
iterator's position with the metrics not yet logged, saved asynchronously by every process
together.

A checkpoint that does not restore (a truncated array file, garbled metadata) is renamed
`checkpoints/<step>.corrupt` (`.corrupt-<n>` if that exists; kept, not deleted, and orbax no
longer lists it) and the newest one that restores is used instead, with one line saying so;
`--mode=sample` and `--mode=eval` open checkpoints read-only and leave it in place. A checkpoint half-written by a kill
during the write is never listed (orbax commits a step directory only when it is complete).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import threading
from typing import Optional

import orbax.checkpoint as ocp
from etils import epath

from diffusion_jax import parallel
from diffusion_jax.errors import CheckpointError


def _first_line(error: Exception) -> str:
    text = str(error).strip().split(" See full TensorStore details")[0]
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


@contextlib.contextmanager
def _abandoned_reads_silenced():
    """Drop the reports of orbax's abandoned reads after a failed restore.

    When one array of a damaged checkpoint fails to read, orbax's event loop closes with the other
    reads in flight; each then reports "Event loop is closed" or an unawaited-coroutine error
    (hundreds of tracebacks for one bad file). Those reports are noise about the failure already
    handled here, so they are dropped while the restore runs and its garbage is collected.
    """
    hooks = sys.unraisablehook, threading.excepthook, sys.excepthook
    sys.unraisablehook = lambda *_: None
    threading.excepthook = lambda *_: None
    sys.excepthook = lambda *_: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook, threading.excepthook, sys.excepthook = hooks


def _item(state):
    """A train state as orbax saves it: a dict of its fields, without `power_emas` when it holds
    none, so a run without post-hoc EMA has exactly the checkpoint layout it always had (and old
    checkpoints restore)."""
    if not dataclasses.is_dataclass(state) or not hasattr(state, "power_emas"):
        return state
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "power_emas" or len(state.power_emas)}


class Checkpointer:
    """`workdir/checkpoints/<step>/{state, loader}`; keeps the newest `max_to_keep`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                    enable_async_checkpointing=async_save,
                                                    read_only=read_only, create=not read_only)
        self.read_only = read_only
        if not read_only:  # orbax then syncs the processes, often a run's first collective:
            parallel.wait_for_all_processes(f"checkpoints {self.directory}")  # meet first
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self.options,
                                     item_names=("state", "loader"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, loader_state: dict) -> None:
        """`loader_state`: a JSON-able dict (the data position and the pending metrics)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_item(state)), loader=ocp.args.JsonSave(loader_state)))

    def power_ema_count(self, step: Optional[int] = None) -> int:
        """How many post-hoc EMA profiles checkpoint `step` holds (default: the newest whose
        metadata reads; 0 when none does, and `restore` then says why)."""
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        for candidate in steps:
            try:
                tree = ocp.StandardCheckpointHandler().metadata(
                    epath.Path(self.directory) / str(candidate) / "state").tree
            except Exception:
                continue
            return len(tree.get("power_emas", ())) if isinstance(tree, dict) else 0
        return 0

    def _restore_step(self, abstract_state, step: int):
        item = _item(abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(item), loader=ocp.args.JsonRestore()))
        state = restored["state"]
        return (state if item is abstract_state else abstract_state.replace(**state),
                dict(restored["loader"]))

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, loader dict) of `step`, or of the newest checkpoint that restores.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: the layout to restore
        into, which may differ from the layout the checkpoint was saved with. A checkpoint that
        does not match the config (another network) is a CheckpointError, never set aside.
        """
        if step is not None:
            try:
                return self._restore_step(abstract_state, step)
            except Exception as e:
                raise CheckpointError(f"checkpoint {step} in {self.directory} is unreadable or "
                                      f"does not match the config: {_first_line(e)}") from None
        failures = []
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            try:
                with _abandoned_reads_silenced():
                    restored = self._restore_step(abstract_state, candidate)
            except Exception as e:
                if _mismatch(e):
                    raise CheckpointError(f"checkpoint {candidate} in {self.directory} does not "
                                          f"match the config: {_first_line(e)}") from None
                failures.append((candidate, _first_line(e)))
                continue
            if failures:
                self._set_aside(failures, candidate)
            return restored
        if failures:
            raise CheckpointError(f"no checkpoint in {self.directory} restores (newest "
                                  f"{failures[0][0]}: {failures[0][1]})")
        raise CheckpointError(f"no checkpoint in {self.directory}: train first")

    def _set_aside(self, failures, used: int) -> None:
        """Rename the unreadable checkpoints newer than `used` (not in read-only mode) and say so
        in one line."""
        kept = []
        for step, _ in failures:
            if self.read_only:
                kept.append(str(step))
                continue
            target = os.path.join(self.directory, f"{step}.corrupt")
            n = 0
            while os.path.exists(target if not n else f"{target}-{n}"):
                n += 1
            os.rename(os.path.join(self.directory, str(step)), target if not n else f"{target}-{n}")
            kept.append(os.path.basename(target if not n else f"{target}-{n}"))
        step, reason = failures[0]
        where = (f"left in place (read-only): {', '.join(kept)}" if self.read_only
                 else f"kept aside as {', '.join(kept)}")
        print(f"warning: checkpoint {step} is unreadable ({reason}); restored checkpoint {used} "
              f"instead; unreadable checkpoints {where}", file=sys.stderr, flush=True)
        if not self.read_only:
            self.manager.close()
            self.manager = self._manager()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _mismatch(error: Exception) -> bool:
    """Whether a restore failed because the checkpoint holds another tree than the config's
    (a user's config mistake) rather than because its files are damaged."""
    text = str(error)
    return any(marker in text for marker in ("tree structure", "Dict key mismatch",
                                             "does not match", "shape mismatch",
                                             "Requested shape"))
