"""The jitted train step over a device mesh: params replicated, batch sharded over `data`."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_jax import parallel
from diffusion_jax.training.state import TrainState

LossFn = Callable  # (params, batch, rng) -> (scalar loss, dict of scalar metrics)


def ema_update(ema, params, decay):
    """ema <- decay ema + (1 - decay) params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def train_step(state: TrainState, batch, *, loss_fn: LossFn, optimizer, ema_decay: float):
    """One optimiser step on the global batch; the step's randomness is fold_in(rng, step)."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch,
                                                                       step_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              ema_params=ema_update(state.ema_params, params, ema_decay),
                              opt_state=opt_state)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def jit_train_step(loss_fn: LossFn, optimizer, ema_decay: float, mesh):
    """jax.jit of `train_step` with the state replicated, the batch split over the mesh's data
    axis, and the old state's buffers donated."""
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = lambda state, batch: train_step(state, batch, loss_fn=loss_fn, optimizer=optimizer,
                                         ema_decay=ema_decay)
    return jax.jit(fn, in_shardings=(rep, shard), out_shardings=(rep, rep), donate_argnums=0)
