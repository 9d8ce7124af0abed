"""The generic training loop: data -> jitted step -> logs and checkpoints, with resume.

It is given built objects (a method, an optimizer, a mesh, the training data and the resources
the method requires) and knows nothing about the family: it calls the method protocol
(`methods.base.Method`: `init_params`, `init_aux`, `start`, `loss`, `update_aux`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax import workdir as workdir_io
from diffusion_jax.data.loader import BatchLoader, LoaderState
from diffusion_jax.errors import ConfigError
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.state import TrainState, create_train_state
from diffusion_jax.training.step import jit_train_step


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

    def check(self, num_devices: int) -> None:
        """ConfigError for settings no run can use on `num_devices` devices."""
        for key in ("num_steps", "batch_size", "checkpoint_every", "log_every",
                    "grad_accum_steps", "steps_per_call", "max_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % (num_devices * self.grad_accum_steps):
            raise ConfigError(f"training.batch_size {self.batch_size} is not divisible by the "
                              f"{num_devices} devices x training.grad_accum_steps "
                              f"{self.grad_accum_steps}")


class Progress:
    """A one-line progress bar on stderr: steps, loss, images/s (process 0 only)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        done = int(30 * step / max(self.total, 1))
        line = (f"[{'#' * done}{'.' * (30 - done)}] step {step}/{self.total} "
                f"loss {loss:.4f} {images_per_s:,.0f} img/s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


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


def _create(method, optimizer, seed: int) -> TrainState:
    init_rng, train_rng, aux_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = method.init_params(init_rng)
    return create_train_state(params, optimizer, train_rng, method.init_aux(params, aux_rng))


def initial_state(method, optimizer, seed: int, mesh, resources: Callable[[], dict] = dict
                  ) -> TrainState:
    """The state at step 0, laid out over the mesh as `parallel.state_shardings` says
    (replicated, or split over its `fsdp` axis): parameters initialised from the seed, then
    `method.start(params, aux, resources())` with the method's restored requirements (e.g. a
    student that starts from its teacher); EMA and optimizer state follow changed parameters."""
    shardings = jax.tree.map(lambda s: s.sharding, abstract_state(method, optimizer, mesh))
    state = jax.jit(lambda: _create(method, optimizer, seed), out_shardings=shardings)()
    restored = resources()
    if not restored:
        return state
    params, aux = method.start(state.params, state.aux, restored)
    if params is not state.params:
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                              opt_state=optimizer.init(params))
    return jax.jit(lambda s: s, out_shardings=shardings)(state.replace(aux=aux))


def abstract_state(method, optimizer, mesh) -> TrainState:
    """Shapes, dtypes and shardings (`parallel.state_shardings` on `mesh`) of the train state,
    computing nothing; restoring a checkpoint into it reshards onto this mesh, whatever the
    device count it was saved with."""
    shapes = jax.eval_shape(lambda: _create(method, optimizer, 0))
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                 sharding=sharding),
                        shapes, parallel.state_shardings(mesh, shapes))


def restore_state(method, optimizer, workdir: str, mesh, step: Optional[int] = None
                  ) -> TrainState:
    """The state of checkpoint `step` (default: the newest) in `workdir`, onto `mesh`."""
    state, _ = Checkpointer(workdir, read_only=True).restore(
        abstract_state(method, optimizer, mesh), step)
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


def train(method, optimizer, mesh, settings: Settings, workdir: str,
          training_data: Callable, resources: Callable[[], dict] = dict
          ) -> tuple[TrainState, bool]:
    """Train to `settings.num_steps`, resuming from the newest checkpoint in `workdir`.

    `training_data(aux) -> (source, decode)` gives the random-access training source once the
    state (and its aux, e.g. a frozen encoder) exists; `resources()` the method's restored
    requirements, asked for only when the run starts fresh. Returns the final state and whether
    SIGTERM stopped the run early (after a checkpoint).
    """
    t = settings
    checkpointer = Checkpointer(workdir, max_to_keep=t.max_checkpoints)
    abstract = abstract_state(method, optimizer, mesh)
    loader_state = None
    if checkpointer.latest_step() is not None:
        state, loader_state = checkpointer.restore(abstract)
    else:
        state = initial_state(method, optimizer, t.seed, mesh, resources)
    source, decode = training_data(state.aux)
    loader = BatchLoader(source, decode, global_batch=t.batch_size, seed=t.seed,
                         random_flip=t.random_flip,
                         process_index=jax.process_index(), process_count=jax.process_count())
    if loader_state is not None:
        loader.state = LoaderState.from_dict(loader_state)
    step = int(state.step)
    is_main = jax.process_index() == 0
    log = workdir_io.MetricsLog(workdir, resume_step=step, enabled=is_main)
    progress = Progress(t.num_steps, is_main)
    shardings = jax.tree.map(lambda s: s.sharding, abstract)
    step_fns = {n: jit_train_step(method, optimizer, t.ema_decay, mesh, shardings,
                                  t.grad_accum_steps, n) for n in {1, t.steps_per_call}}
    interrupted = False
    pending, last_time, last_step = [], time.perf_counter(), step
    with stop_on_sigterm() as sigterm:
        batches = iter(loader)
        sizes = call_sizes(step, t.num_steps, t.steps_per_call,
                           (t.log_every, t.checkpoint_every))
        # each call's batches carry the loader position after them: the prefetch reads ahead
        device_batches = parallel.prefetch_to_device(grouped_batches(batches, loader, sizes), mesh)
        while step < t.num_steps:
            batch, n, data_position = next(device_batches)
            state, metrics = step_fns[n](state, batch)
            step += n
            pending.append(metrics)
            if step % t.log_every == 0 or step == t.num_steps:
                means = {k: float(np.mean(np.concatenate(
                    [np.atleast_1d(jax.device_get(m[k])) for m in pending]))) for k in pending[0]}
                now = time.perf_counter()
                means["images_per_s"] = (step - last_step) * t.batch_size / (now - last_time)
                log.write(step, means)
                progress.update(step, means["loss"], means["images_per_s"])
                pending, last_time, last_step = [], now, step
            if sigterm.is_set() or step % t.checkpoint_every == 0 or step == t.num_steps:
                checkpointer.save(step, state, data_position.as_dict())
            if sigterm.is_set():
                interrupted = True
                break
        batches.close()
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    return state, interrupted
