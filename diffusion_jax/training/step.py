"""The jitted train step over a device mesh: the batch split over every device, the state
replicated or FSDP-sharded (`parallel.state_shardings`), optional gradient accumulation."""
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


def accumulated_value_and_grad(loss_fn: LossFn, params, batch, rng, num_micro_batches: int):
    """((loss, metrics), grads) of `loss_fn` averaged over `num_micro_batches` equal slices of
    the batch, computed one after another (`lax.scan`), so activations of one slice only are
    live. Micro-batch i holds examples i, i + k, i + 2k, ... (each device keeps its own rows)
    and draws its randomness from fold_in(rng, i). For a loss that is a mean over examples the
    result equals one step on the whole batch, up to the random draws."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro_batches == 1:
        return grad_fn(params, batch, rng)
    k = num_micro_batches
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]),
                                                0, 1), batch)

    def accumulate(total, inputs):
        i, micro_batch = inputs
        value = grad_fn(params, micro_batch, jax.random.fold_in(rng, i))
        return jax.tree.map(lambda a, b: a + b / k, total, value), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params,
                                                        jax.tree.map(lambda x: x[0], micro), rng))
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
    return total


def train_step(state: TrainState, batch, *, loss_fn: LossFn, optimizer, ema_decay: float,
               grad_accum_steps: int = 1):
    """One optimiser step on the global batch; the step's randomness is fold_in(rng, step)."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = accumulated_value_and_grad(loss_fn, state.params, batch, step_rng,
                                                        grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              ema_params=ema_update(state.ema_params, params, ema_decay),
                              opt_state=opt_state)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def jit_train_step(loss_fn: LossFn, optimizer, ema_decay: float, mesh, state_sharding=None,
                   grad_accum_steps: int = 1):
    """jax.jit of `train_step` with the state in `state_sharding` (default replicated), the
    batch split over every device, and the old state's buffers donated."""
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state_sharding = rep if state_sharding is None else state_sharding
    fn = lambda state, batch: train_step(state, batch, loss_fn=loss_fn, optimizer=optimizer,
                                         ema_decay=ema_decay, grad_accum_steps=grad_accum_steps)
    return jax.jit(fn, in_shardings=(state_sharding, shard), out_shardings=(state_sharding, rep),
                   donate_argnums=0)
