"""The jitted train step over a device mesh: the batch split over every device, the state
replicated or FSDP-sharded (`parallel.state_shardings`), optional gradient accumulation, and
optionally several steps per jitted call."""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffusion_jax import parallel
from diffusion_jax.training.posthoc_ema import traditional_ema_beta, update_power_emas_at_step
from diffusion_jax.training.state import TrainState

LossFn = Callable  # (params, batch, rng, aux, step) -> (scalar loss, dict of scalar metrics)


def ema_update(ema, params, decay):
    """ema <- decay ema + (1 - decay) params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


EMA_WARMUPS = ("none", "power", "edm")


def ema_schedule(decay: float, warmup: str = "none", batch_size: int = 1,
                 rampup_ratio: float = 0.05) -> Callable:
    """The EMA decay as a function of the steps taken before the update, k.

    'none': `decay` from step 0 (the papers' DDPM and score-SDE EMA). 'power': min(decay,
    (1 + k) / (10 + k)), so a short run averages only its recent weights. 'edm': EDM's ramp-up
    (Karras et al. 2022, Sec. 5 and App. F.3): the half-life in images that `decay` has at this
    batch size, 0.5^(batch / h) = decay, capped at `rampup_ratio` times the images seen.
    """
    if warmup == "none":
        return lambda k: decay
    if warmup == "power":
        return lambda k: jnp.minimum(decay, (1.0 + k) / (10.0 + k))
    if warmup == "edm":
        halflife = (math.inf if decay >= 1.0 else 0.0 if decay <= 0.0 else
                    batch_size * math.log(0.5) / math.log(decay))
        return lambda k: traditional_ema_beta(k * batch_size, batch_size, halflife, rampup_ratio)
    raise ValueError(f"unknown EMA warm-up {warmup!r}; valid: {', '.join(EMA_WARMUPS)}")


def accumulated_value_and_grad(loss_fn: Callable, params, batch, rng, num_micro_batches: int):
    """((loss, metrics), grads) of `loss_fn(params, batch, rng)` averaged over
    `num_micro_batches` equal slices of the batch, computed one after another (`lax.scan`), so
    activations of one slice only are live. Micro-batch i holds examples i, i + k, i + 2k, ...
    (each device keeps its own rows) and draws its randomness from fold_in(rng, i). For a loss
    that is a mean over examples the result equals one step on the whole batch, up to the
    random draws."""
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


def train_step(state: TrainState, batch, *, loss_fn: LossFn, optimizer, ema_decay,
               grad_accum_steps: int = 1, update_aux: Optional[Callable] = None,
               constrain_params: Optional[Callable] = None,
               power_ema_gammas: tuple = ()):
    """One optimiser step on the global batch; the step's randomness is fold_in(rng, step).

    `loss_fn` sees the state's aux and step; `update_aux(aux, new_params, step)` (a method's
    target-network EMA, for example) runs after the update. `ema_decay` is a float or a function
    of the step (`ema_schedule`). `constrain_params(params)` (EDM2's forced weight
    normalisation) makes the stored parameters of the optimiser's output, after the EMA and
    `update_aux` have averaged that output as it is (NVlabs/edm2 normalises at the next
    forward pass, after its EMA update). `power_ema_gammas`: the exponents of
    `state.power_emas`, each updated with EDM2's Eq. 127 beta at t = images seen after the
    step, on the same unconstrained output."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    loss = lambda params, batch, rng: loss_fn(params, batch, rng, state.aux, state.step)
    (loss, metrics), grads = accumulated_value_and_grad(loss, state.params, batch, step_rng,
                                                        grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    aux = state.aux if update_aux is None else update_aux(state.aux, params, state.step)
    stored = params if constrain_params is None else constrain_params(params)
    new_state = state.replace(step=state.step + 1, params=stored,
                              ema_params=ema_update(state.ema_params, params,
                                                    ema_decay(state.step) if callable(ema_decay)
                                                    else ema_decay),
                              opt_state=opt_state, aux=aux)
    if power_ema_gammas:
        new_state = new_state.replace(power_emas=update_power_emas_at_step(
            state.power_emas, params, power_ema_gammas, state.step + 1))
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def train_steps(state: TrainState, batches, **step_kwargs):
    """`train_step` once per entry of the batches' leading axis, in one program (`lax.scan`):
    the same steps, randomness included (it depends on `state.step` only), as that many
    separate calls, without a host round trip between them. Metrics come back stacked."""
    return jax.lax.scan(lambda s, batch: train_step(s, batch, **step_kwargs), state, batches)


def jit_train_step(method, optimizer, ema_decay, mesh, state_sharding=None,
                   grad_accum_steps: int = 1, steps_per_call: int = 1,
                   power_ema_gammas: tuple = ()):
    """jax.jit of `train_step` for `method` (its loss and `update_aux`) with the state in
    `state_sharding` (default replicated), the batch split over every device, and the old
    state's buffers donated. With `steps_per_call` k > 1 it is `train_steps`: the batch has a
    leading axis of k global batches and each metric comes back as k values.
    `power_ema_gammas`: the exponents of the state's post-hoc EMA profiles (`train_step`)."""
    rep, state_sharding = parallel.replicated(mesh), state_sharding or parallel.replicated(mesh)
    kwargs = dict(loss_fn=method.loss, optimizer=optimizer, ema_decay=ema_decay,
                  grad_accum_steps=grad_accum_steps, update_aux=method.update_aux,
                  constrain_params=method.constrain_params,
                  power_ema_gammas=tuple(power_ema_gammas))
    if steps_per_call == 1:
        fn, leading = (lambda state, batch: train_step(state, batch, **kwargs)), 0
    else:
        fn, leading = (lambda state, batches: train_steps(state, batches, **kwargs)), 1
    return jax.jit(fn, in_shardings=(state_sharding, parallel.batch_sharded(mesh, leading)),
                   out_shardings=(state_sharding, rep), donate_argnums=0)
