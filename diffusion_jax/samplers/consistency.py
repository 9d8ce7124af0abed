"""Sampling with a consistency function f(x, sigma[, cond]) (Song et al. 2023, Algorithm 1).

One step: x = f(sigma_max z, sigma_max). Several steps over tau_1 > tau_2 > ... > tau_k:
x = f(x_{tau_1}, tau_1), then for each next tau: x_tau = x + sqrt(tau^2 - sigma_min^2) z and
x = f(x_tau, tau). The grid is written like every sampler grid here, decreasing and ending at 0
(`(tau_1, ..., tau_k, 0)`: k evaluations), so `samplers.editing` (SDEdit, inpainting) runs on
it unchanged; in editing the consistency function takes the denoiser's place.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.denoisers import call, per_example
from diffusion_jax.samplers.edm import sigma_steps


def consistency_sigmas(num_steps: int = 1, sigma_min: float = 0.002, sigma_max: float = 80.0,
                       rho: float = 7.0, sigmas: Sequence[float] = ()) -> jax.Array:
    """(tau_1, ..., tau_k, 0): the explicit `sigmas` when given (decreasing, each in
    (sigma_min, sigma_max]), else the first `num_steps` levels of the N = num_steps + 1 rho grid
    from sigma_max to sigma_min (one step: sigma_max alone)."""
    if len(sigmas):
        if np.any(np.diff(sigmas) >= 0) or min(sigmas) <= sigma_min:
            raise ValueError(f"consistency sampling sigmas must decrease and stay above "
                             f"sigma_min {sigma_min}; got {list(sigmas)}")
        taus = jnp.asarray(sigmas, jnp.float32)
    else:
        taus = sigma_steps(num_steps + 1, sigma_min, sigma_max, rho)[:num_steps]
    return jnp.concatenate([taus, jnp.zeros((1,), taus.dtype)])


def consistency_sample(f: Callable, rng: jax.Array, shape, *, sigmas: jax.Array,
                       sigma_min: float = 0.002, x_init: Optional[jax.Array] = None,
                       cond=None) -> jax.Array:
    """Multistep consistency sampling over `sigmas` (decreasing, ending at 0); `x_init` is the
    state at sigmas[0] (default sigmas[0] z). One program: the steps loop in `lax.fori_loop`."""
    init_rng, loop_rng = jax.random.split(rng)
    if x_init is None:
        x_init = sigmas[0] * jax.random.normal(init_rng, shape)
    sigmas = sigmas.astype(x_init.dtype)
    x = call(f, x_init, per_example(sigmas[0], x_init), cond)

    def body(i, x):
        tau = sigmas[i]
        z = jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape, x.dtype)
        x_tau = x + jnp.sqrt(jnp.maximum(tau**2 - sigma_min**2, 0.0)) * z
        return call(f, x_tau, per_example(tau, x_tau), cond)

    return jax.lax.fori_loop(1, sigmas.shape[0] - 1, body, x)
