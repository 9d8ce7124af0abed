"""The generic training loop: data -> jitted step -> logs and checkpoints, with resume.

It is given built objects (a method, an optimizer, a mesh, the training data and the resources
the method requires) and knows nothing about the family: it calls the method protocol
(`methods.base.Method`: `init_params`, `init_aux`, `start`, `loss`, `update_aux`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import math
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax import workdir as workdir_io
from diffusion_jax.data.loader import BatchLoader, LoaderState
from diffusion_jax.errors import ConfigError, TrainingDiverged
from diffusion_jax.progress import Progress
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.ema_snapshots import SnapshotWriter
from diffusion_jax.training.posthoc_ema import sigma_rel_to_gamma
from diffusion_jax.training.state import TrainState, create_train_state
from diffusion_jax.training.step import EMA_WARMUPS, ema_schedule, jit_train_step


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the loop reads of `config.training` (and `data.random_flip`)."""

    num_steps: int
    batch_size: int
    checkpoint_every: int
    log_every: int
    seed: int = 0
    ema_decay: float = 0.9999
    max_checkpoints: int = 3
    grad_accum_steps: int = 1
    steps_per_call: int = 1
    random_flip: bool = False
    ema_warmup: str = "none"  # `step.ema_schedule`: none | power | edm
    ema_rampup_ratio: float = 0.05
    # post-hoc EMA (EDM2): the tracked profiles' sigma_rels (() = off) and the snapshot interval
    # in optimiser steps (`ema_snapshots`)
    ema_sigma_rels: tuple = ()
    ema_snapshot_every: int = 0

    def power_ema_gammas(self) -> tuple:
        """The exponents of `ema_sigma_rels` (Eq. 126); ConfigError for one out of range."""
        if not self.ema_sigma_rels:
            return ()
        try:
            gammas = sigma_rel_to_gamma(np.asarray(self.ema_sigma_rels, np.float64))
        except ConfigError:
            raise ConfigError(f"ema.sigma_rels must each be in (0, 0.289), got "
                              f"{tuple(self.ema_sigma_rels)}") from None
        return tuple(float(g) for g in gammas)

    def check(self, num_devices: int) -> None:
        """ConfigError for settings no run can use on `num_devices` devices."""
        for key in ("num_steps", "batch_size", "checkpoint_every", "log_every",
                    "grad_accum_steps", "steps_per_call", "max_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if self.ema_warmup not in EMA_WARMUPS:
            raise ConfigError(f"unknown training.ema_warmup {self.ema_warmup!r}; valid: "
                              f"{', '.join(EMA_WARMUPS)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"training.ema_decay must be in [0, 1], got {self.ema_decay}")
        self.power_ema_gammas()
        if len(set(self.ema_sigma_rels)) != len(self.ema_sigma_rels):
            raise ConfigError(f"ema.sigma_rels has duplicates: {tuple(self.ema_sigma_rels)}")
        if self.ema_snapshot_every < 0 or bool(self.ema_sigma_rels) != bool(
                self.ema_snapshot_every):
            raise ConfigError(f"ema.sigma_rels {tuple(self.ema_sigma_rels)} and "
                              f"ema.snapshot_every {self.ema_snapshot_every}: set both (profiles "
                              f"and a snapshot interval >= 1 in steps) or neither")
        if self.batch_size % (num_devices * self.grad_accum_steps):
            raise ConfigError(f"training.batch_size {self.batch_size} is not divisible by the "
                              f"{num_devices} devices x training.grad_accum_steps "
                              f"{self.grad_accum_steps}")


@contextlib.contextmanager
def stop_on_sigterm():
    """Yields an Event set by SIGTERM, so the loop can checkpoint and exit cleanly."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def _create(method, optimizer, seed: int, params=None, ema_params=None,
            num_power_emas: int = 0) -> TrainState:
    """The step-0 state of `seed`: parameters initialised from it (as `constrain_params`
    stores them) unless `params` (and `ema_params`) are given, then the method's aux state, a
    fresh optimizer state and `num_power_emas` post-hoc EMA profiles."""
    init_rng, train_rng, aux_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = method.constrain_params(method.init_params(init_rng)) if params is None else params
    state = create_train_state(params, optimizer, train_rng, method.init_aux(params, aux_rng),
                               num_power_emas)
    return state if ema_params is None else state.replace(ema_params=ema_params)


def initial_state(method, optimizer, seed: int, mesh, resources: Callable[[], dict] = dict,
                  initial: Optional[Callable] = None, num_power_emas: int = 0) -> TrainState:
    """The state at step 0, laid out over the mesh as `parallel.state_shardings` says
    (replicated, or split over its `fsdp` axis): parameters initialised from the seed, or
    `initial(params) -> (params, ema_params)` of them (fine-tuning: another run's weights, on
    `mesh`), then `method.start(params, aux, resources())` with the method's restored
    requirements (e.g. a student that starts from its teacher); EMA, post-hoc EMA profiles and
    optimizer state follow changed parameters."""
    shardings = jax.tree.map(lambda s: s.sharding,
                             abstract_state(method, optimizer, mesh, num_power_emas))
    state = jax.jit(lambda: _create(method, optimizer, seed, num_power_emas=num_power_emas),
                    out_shardings=shardings)()
    if initial is not None:
        params, ema_params = initial(state.params)
        state = jax.jit(lambda p, e: _create(method, optimizer, seed, p, e, num_power_emas),
                        out_shardings=shardings)(params, ema_params)
    restored = resources()
    if not restored:
        return state
    params, aux = method.start(state.params, state.aux, restored)
    if params is not state.params:
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                              opt_state=optimizer.init(params),
                              power_emas=tuple(jax.tree.map(jnp.copy, params)
                                               for _ in range(num_power_emas)))
    return jax.jit(lambda s: s, out_shardings=shardings)(state.replace(aux=aux))


def abstract_state(method, optimizer, mesh, num_power_emas: int = 0) -> TrainState:
    """Shapes, dtypes and shardings (`parallel.state_shardings` on `mesh`) of the train state
    (with `num_power_emas` post-hoc EMA profiles), computing nothing; restoring a checkpoint
    into it reshards onto this mesh, whatever the device count it was saved with."""
    shapes = jax.eval_shape(lambda: _create(method, optimizer, 0,
                                            num_power_emas=num_power_emas))
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                 sharding=sharding),
                        shapes, parallel.state_shardings(mesh, shapes))


def latest_checkpoint(workdir: str) -> Optional[int]:
    """The newest checkpoint step listed in `workdir` (None: none, or no such directory)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    return Checkpointer(workdir, read_only=True).latest_step()


def restore_state(method, optimizer, workdir: str, mesh, step: Optional[int] = None
                  ) -> TrainState:
    """The state of checkpoint `step` (default: the newest) in `workdir`, onto `mesh`, with the
    post-hoc EMA profiles it holds (whatever the config says of them)."""
    checkpointer = Checkpointer(workdir, read_only=True)
    count = checkpointer.power_ema_count(step) if checkpointer.latest_step() is not None else 0
    state, _ = checkpointer.restore(abstract_state(method, optimizer, mesh, count), step)
    return state


def call_sizes(step: int, num_steps: int, steps_per_call: int, every: tuple[int, ...]):
    """How many steps each jitted call runs from `step` to `num_steps`: `steps_per_call` while
    no multiple of an interval of `every` (logging, checkpoints) falls inside the call, else 1,
    so logs and checkpoints land on the same steps whatever `steps_per_call` is."""
    while step < num_steps:
        boundary = min([num_steps] + [(step // e + 1) * e for e in every])
        n = steps_per_call if boundary - step >= steps_per_call else 1
        yield n
        step += n


def grouped_batches(batches, loader: BatchLoader, sizes):
    """For each call size n of `sizes`: (the next n batches of `batches` as one dict, stacked
    along a leading axis when n > 1, then `leading` = that axis count, the tag (n, loader
    position after them)) -- the items of `parallel.prefetch_to_device`."""
    for n in sizes:
        group = [next(batches) for _ in range(n)]
        images, labels = (np.stack(x) for x in zip(*group)) if n > 1 else group[0]
        yield {"image": images, "label": labels}, int(n > 1), (n, loader.state)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the launcher layer adds to a run without the loop knowing it: `on_log(step,
    metrics)` after each log line (plots, TensorBoard), `on_checkpoint(step, state)` after each
    checkpoint (a sample grid). Process 0 calls them."""

    on_log: tuple = ()
    on_checkpoint: tuple = ()


def _finite_values(metrics, step: int, n: int, last_checkpoint) -> dict:
    """{name: [float]} of a call's metrics (n steps ending at `step`) on the host;
    TrainingDiverged at the first non-finite loss or gradient norm."""
    values = {k: np.atleast_1d(np.asarray(jax.device_get(v), np.float32)).tolist()
              for k, v in metrics.items()}
    for key in ("loss", "grad_norm"):
        bad = [i for i, v in enumerate(values.get(key, ())) if not math.isfinite(v)]
        if bad:
            kept = ("no checkpoint was written" if last_checkpoint is None else
                    f"the last checkpoint, step {last_checkpoint}, is finite and unchanged")
            raise TrainingDiverged(f"non-finite {key} ({values[key][bad[0]]}) at step "
                                   f"{step - n + bad[0] + 1}: training diverged (lower optim.lr "
                                   f"or clip gradients with optim.grad_clip); {kept}")
    return values


def train(method, optimizer, mesh, settings: Settings, workdir: str,
          training_data: Callable, resources: Callable[[], dict] = dict,
          hooks: Hooks = Hooks(), initial: Optional[Callable] = None
          ) -> tuple[TrainState, bool]:
    """Train to `settings.num_steps`, resuming from the newest checkpoint in `workdir`.

    `training_data(aux) -> (source, decode)` gives the random-access training source once the
    state (and its aux, e.g. a frozen encoder) exists; `resources()` the method's restored
    requirements, and `initial(params) -> (params, ema_params)` the weights a fine-tuning run
    starts from (`initial_state`), both asked for only when the run starts fresh. Returns the
    final state and whether SIGTERM stopped the run early (after a checkpoint).

    Every step's metrics are fetched while the next step runs, so a non-finite loss stops the
    run (TrainingDiverged) before a non-finite state is checkpointed, and SIGTERM is seen within
    a step. The metrics of the steps since the last log line are kept in each checkpoint, so a
    resumed run logs the same rows as an uninterrupted one (timings aside). With
    `ema_sigma_rels` the state carries their power-function EMAs (EDM2), snapshotted every
    `ema_snapshot_every` steps into `workdir/ema_snapshots` (`ema_snapshots.SnapshotWriter`); a
    resumed run writes the snapshots an uninterrupted one does, none twice.
    """
    t = settings
    gammas = t.power_ema_gammas()
    checkpointer = Checkpointer(workdir, max_to_keep=t.max_checkpoints)
    abstract = abstract_state(method, optimizer, mesh, len(gammas))
    saved = None
    if checkpointer.latest_step() is not None:
        state, saved = checkpointer.restore(abstract)
    else:
        state = initial_state(method, optimizer, t.seed, mesh, resources, initial, len(gammas))
    source, decode = training_data(state.aux)
    loader = BatchLoader(source, decode, global_batch=t.batch_size, seed=t.seed,
                         random_flip=t.random_flip,
                         process_index=jax.process_index(), process_count=jax.process_count())
    if saved is not None:
        loader.state = LoaderState.from_dict(saved)
    pending = {k: list(v) for k, v in (saved or {}).get("pending", {}).items()}
    step = int(state.step)
    last_checkpoint = step if saved is not None else None
    is_main = jax.process_index() == 0
    log = workdir_io.MetricsLog(workdir, resume_step=step, enabled=is_main)
    progress = Progress(t.num_steps, "train", enabled=is_main, initial=step)
    shardings = jax.tree.map(lambda s: s.sharding, abstract)
    ema = ema_schedule(t.ema_decay, t.ema_warmup, t.batch_size, t.ema_rampup_ratio)
    step_fns = {n: jit_train_step(method, optimizer, ema, mesh, shardings,
                                  t.grad_accum_steps, n, gammas) for n in {1, t.steps_per_call}}
    snapshots = (SnapshotWriter(workdir, t.ema_sigma_rels, t.batch_size)
                 if t.ema_snapshot_every else None)

    def snapshot(step, state):
        """The profiles at a multiple of `ema_snapshot_every` (also at a resumed run's start: a
        kill between its checkpoint and its snapshot leaves the snapshot to write)."""
        if snapshots is not None and step > 0 and step % t.ema_snapshot_every == 0:
            snapshots.save(step, state.power_emas)

    snapshot(step, state)

    def absorb(call):
        for key, values in _finite_values(*call, last_checkpoint).items():
            pending.setdefault(key, []).extend(values)

    interrupted, in_flight, compiled = False, None, set()
    last_time, last_step = time.perf_counter(), step
    with stop_on_sigterm() as sigterm:
        batches = iter(loader)
        sizes = call_sizes(step, t.num_steps, t.steps_per_call,
                           (t.log_every, t.checkpoint_every)
                           + ((t.ema_snapshot_every,) if t.ema_snapshot_every else ()))
        # each call's batches carry the loader position after them: the prefetch reads ahead
        device_batches = parallel.prefetch_to_device(grouped_batches(batches, loader, sizes), mesh)
        try:
            while step < t.num_steps:
                batch, n, data_position = next(device_batches)
                if n not in compiled:
                    progress.note(f"compiling the training step ({n} per call)")
                    compiled.add(n)
                state, metrics = step_fns[n](state, batch)
                step += n
                if in_flight is not None:
                    absorb(in_flight)
                in_flight = (metrics, step, n)
                log_now = step % t.log_every == 0 or step == t.num_steps
                # read once: a SIGTERM arriving later in this step is seen at the next one
                stop = sigterm.is_set()
                save_now = stop or step % t.checkpoint_every == 0 or step == t.num_steps
                if log_now or save_now:
                    absorb(in_flight)
                    in_flight = None
                if log_now:
                    means = {k: float(np.mean(np.asarray(v, np.float32)))
                             for k, v in pending.items()}
                    now = time.perf_counter()
                    means["images_per_s"] = (step - last_step) * t.batch_size / (now - last_time)
                    log.write(step, means)
                    if is_main:
                        for hook in hooks.on_log:
                            hook(step, means)
                    pending, last_time, last_step = {}, now, step
                    progress.update(n, line=True, loss=means["loss"],
                                    img_per_s=round(means["images_per_s"]))
                else:
                    progress.update(n)
                snapshot(step, state)
                if save_now:
                    checkpointer.save(step, state, {**data_position.as_dict(), "pending": pending})
                    last_checkpoint = step
                    if is_main:
                        for hook in hooks.on_checkpoint:
                            hook(step, state)
                if stop:
                    interrupted = True
                    break
        finally:
            batches.close()
            progress.close()
            checkpointer.wait()
            checkpointer.close()
            if snapshots is not None:
                snapshots.wait()
                snapshots.close()
    return state, interrupted
