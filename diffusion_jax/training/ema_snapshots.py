"""Post-hoc EMA snapshots in a work directory and the reconstruction from them (Karras et al.
2024, EDM2, Sec. 3 and App. C; NVlabs/edm2 `train_edm2.py` --snap and `reconstruct_phema.py`).

`WORKDIR/ema_snapshots/<step>/{profiles, meta}`: at every `ema.snapshot_every` steps the
tracked power-function EMAs (`TrainState.power_emas`, one per `ema.sigma_rels`) as orbax items,
the profiles as a list of parameter trees and a JSON of the step, the images seen, the batch
size, the sigma_rels and their exponents. Orbax writes a step under a temporary name and
renames it when complete, so a kill never leaves a half snapshot that is listed; a step that is
already there is not written again (a resumed run retraces the same steps bit for bit).

Differences from NVlabs: snapshots are counted in optimiser steps (t = step x batch images for
the solve), kept in float32 (NVlabs pickles float16), one directory per snapshot holding every
profile (NVlabs: one pickle per profile); the reconstruction streams the snapshots one at a time
as `reconstruct_phema` does, with the coefficients of `posthoc_ema.reconstruction_coefficients`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusion_jax.errors import ConfigError
from diffusion_jax.training.posthoc_ema import (SIGMA_REL_MAX, reconstruction_coefficients,
                                                sigma_rel_to_gamma)

SNAPSHOT_DIR = "ema_snapshots"


def snapshot_directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)


def _manager(workdir: str, read_only: bool, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=None, read_only=read_only,
                                           create=not read_only,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(snapshot_directory(workdir), options=options,
                                 item_names=("profiles", "meta"))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One snapshot's meta data: the profiles of `sigma_rels` (exponents `gammas`) at `step`."""

    step: int
    images: int
    batch_size: int
    sigma_rels: tuple
    gammas: tuple


class SnapshotWriter:
    """Writes the snapshots of one training run (every process calls `save`, as for
    checkpoints)."""

    def __init__(self, workdir: str, sigma_rels, batch_size: int, async_save: bool = True):
        self.manager = _manager(workdir, read_only=False, async_save=async_save)
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(float(g) for g in sigma_rel_to_gamma(np.asarray(self.sigma_rels)))
        self.batch_size = batch_size

    def save(self, step: int, power_emas) -> bool:
        """Snapshot `power_emas` at `step` unless that step is there already; whether it wrote."""
        if step in self.manager.all_steps():
            return False
        meta = dict(step=step, images=step * self.batch_size, batch_size=self.batch_size,
                    sigma_rels=list(self.sigma_rels), gammas=list(self.gammas))
        self.manager.save(step, args=ocp.args.Composite(
            profiles=ocp.args.StandardSave(list(power_emas)), meta=ocp.args.JsonSave(meta)))
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def list_snapshots(workdir: str) -> list[Snapshot]:
    """The complete snapshots of `workdir`, by step ([] when there are none)."""
    if not os.path.isdir(snapshot_directory(workdir)):
        return []
    manager = _manager(workdir, read_only=True)
    found = []
    for step in sorted(manager.all_steps()):
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        found.append(Snapshot(step=int(meta["step"]), images=int(meta["images"]),
                              batch_size=int(meta["batch_size"]),
                              sigma_rels=tuple(meta["sigma_rels"]), gammas=tuple(meta["gammas"])))
    manager.close()
    return found


def read_profiles(workdir: str, step: int, abstract_params, count: int) -> list:
    """The `count` profiles of snapshot `step`, restored into the layout of `abstract_params`
    (ShapeDtypeStructs with shardings: the parameter layout of a train state)."""
    manager = _manager(workdir, read_only=True)
    restored = manager.restore(step, args=ocp.args.Composite(
        profiles=ocp.args.StandardRestore([abstract_params] * count)))["profiles"]
    manager.close()
    return list(restored)


def target_step(snapshots: list[Snapshot], snapshot_step: int, workdir: str) -> int:
    """The snapshot step to reconstruct at: `snapshot_step`, or the last snapshot's when 0;
    ConfigError when there is no snapshot, or `snapshot_step` is past the last or not one of
    them (NVlabs requires the same: a time between snapshots has no snapshot near it)."""
    if not snapshots:
        raise ConfigError(f"no post-hoc EMA snapshots in {snapshot_directory(workdir)!r}: train "
                          f"with ema.sigma_rels and ema.snapshot_every > 0 first")
    steps = [s.step for s in snapshots]
    if snapshot_step == 0:
        return steps[-1]
    if snapshot_step > steps[-1]:
        raise ConfigError(f"ema.snapshot_step {snapshot_step} is beyond the last snapshot, step "
                          f"{steps[-1]}, in {snapshot_directory(workdir)!r}")
    if snapshot_step not in steps:
        raise ConfigError(f"ema.snapshot_step {snapshot_step} is not a snapshot step; the "
                          f"snapshots are at steps {', '.join(map(str, steps))}")
    return snapshot_step


def check_sigma_rel(sigma_rel: float) -> None:
    """ConfigError unless 0 < sigma_rel < SIGMA_REL_MAX."""
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ConfigError(f"ema.sigma_rel must be in (0, {SIGMA_REL_MAX}) (set "
                          f"--config.ema.sigma_rel, e.g. 0.085), got {sigma_rel}")


def coefficients(snapshots: list[Snapshot], step: int, sigma_rel: float):
    """([(snapshot step, profile index)], their coefficients (Alg. 3)) for the EMA of width
    `sigma_rel` at snapshot `step`, from every profile of every snapshot up to it."""
    used = [s for s in snapshots if s.step <= step]
    inputs = [(s.step, i) for s in used for i in range(len(s.gammas))]
    t = np.float64([s.images for s in used for _ in s.gammas])
    gamma = np.float64([g for s in used for g in s.gammas])
    target = next(s.images for s in used if s.step == step)
    return inputs, reconstruction_coefficients(t, gamma, target, sigma_rel)


def reconstruct(workdir: str, sigma_rel: float, snapshot_step: int, abstract_params,
                on_snapshot: Optional[Callable[[int, int], None]] = None):
    """(parameters, info) of the post-hoc EMA of width `sigma_rel` at `snapshot_step` (0: the
    last snapshot) of `workdir`: sum_i c_i theta_i over every profile up to that step, read one
    snapshot at a time in the order of `coefficients` (the same sum as
    `posthoc_ema.combine_snapshots`). `on_snapshot(done, total)` after each snapshot read.
    `info`: step, images, sigma_rel, the inputs and coefficients."""
    check_sigma_rel(sigma_rel)
    snapshots = list_snapshots(workdir)
    step = target_step(snapshots, snapshot_step, workdir)
    inputs, c = coefficients(snapshots, step, sigma_rel)
    used = [s for s in snapshots if s.step <= step]
    total, k = None, 0
    for done, snapshot in enumerate(used, 1):
        for profile in read_profiles(workdir, snapshot.step, abstract_params,
                                     len(snapshot.gammas)):
            weight = float(c[k])
            total = (jax.tree.map(lambda x: 0 + weight * x, profile) if total is None else
                     jax.tree.map(lambda a, x: a + weight * x, total, profile))
            k += 1
        if on_snapshot is not None:
            on_snapshot(done, len(used))
    by_step = {s.step: s for s in used}
    info = dict(step=step, images=by_step[step].images, sigma_rel=float(sigma_rel),
                inputs=[dict(step=s, sigma_rel=float(by_step[s].sigma_rels[i]),
                             coefficient=float(ci)) for (s, i), ci in zip(inputs, c)])
    return total, info
