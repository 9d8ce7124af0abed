"""What the grid samplers share: the start of a run, the per-step noise and the multistep orders.

A grid sampler is `fn(denoiser, rng, shape, *, sigmas, x_init=None, cond=None, **options)`: it
integrates from sigmas[0] down a decreasing grid that ends at sigma_min > 0 or at 0, starting
from `x_init` (the state at sigmas[0]; by default sigmas[0] * N(0, I) drawn from `rng`).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.denoisers import call, per_example


def start(denoiser: Callable, rng: jax.Array, shape, sigmas, x_init: Optional[jax.Array], cond):
    """(D(x, sigma), sigmas in x's dtype, x at sigmas[0], key for the steps' noise)."""
    init_rng, loop_rng = jax.random.split(rng)
    sigmas = jnp.asarray(sigmas)
    if x_init is None:
        x_init = sigmas[0] * jax.random.normal(init_rng, shape)
    D = lambda x, sigma: call(denoiser, x, per_example(sigma, x), cond)
    return D, sigmas.astype(x_init.dtype), x_init, loop_rng


def step_noise(loop_rng: jax.Array, noise: Optional[jax.Array], i, x: jax.Array) -> jax.Array:
    """The standard normal draw of step i: noise[i] when a (num_steps, *shape) array is given (to
    replay another implementation's noise), else drawn from fold_in(loop_rng, i)."""
    if noise is not None:
        return noise[i].astype(x.dtype)
    return jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape, x.dtype)


def multistep_orders(num_steps: int, order: int, lower_order_final: bool) -> jax.Array:
    """The order of each step of a multistep solver: min(order, i + 1) (warm-up from one model
    output), and with `lower_order_final` below 15 steps the last two steps at orders 1 and at
    most 2 (the rule of diffusers' DPMSolverMultistepScheduler and DEISMultistepScheduler)."""
    orders = np.minimum(order, np.arange(1, num_steps + 1))
    if lower_order_final and num_steps < 15:
        orders[-1] = 1
        orders[-2:-1] = np.minimum(orders[-2:-1], 2)
    return jnp.asarray(orders)


def one_evaluation_per_step(sigmas) -> int:
    """Network evaluations of a sampler with one per step (the multistep solvers): len(sigmas) - 1."""
    return int(np.shape(sigmas)[0]) - 1
