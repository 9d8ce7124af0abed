"""Linear multistep (Adams-Bashforth) solvers of the probability-flow ODE dx/dsigma = eps(x, sigma).

eps = (x - D(x, sigma)) / sigma is the EDM derivative (Karras et al. 2022, Eq. 4). A p-step method
replaces eps by the polynomial through its last p values and integrates it exactly:
    x_{i+1} = x_i + sum_j c_j eps_{i-j},   c_j = int_{sigma_i}^{sigma_{i+1}} l_j dsigma,
with l_j the Lagrange basis on the last p points. LMS (k-diffusion's `sample_lms`, diffusers'
`LMSDiscreteScheduler`) interpolates in sigma; DEIS with its 'logrho' tAB solver (Zhang & Chen
2023; diffusers' `DEISMultistepScheduler`) interpolates in log sigma (rho = sigma_t / alpha_t is
the EDM sigma), where dsigma = e^u du for u = log sigma. The weights are computed by 16-point
Gauss-Legendre quadrature of l_j (times e^u for DEIS) over the step: exact for LMS's polynomials,
and for DEIS below 1e-15 relative error for any step with h = log(sigma_i / sigma_{i+1}) < 8.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.samplers.common import multistep_orders, one_evaluation_per_step, start

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_QUAD_POINTS = 0.5 * (_GL_NODES + 1.0)  # on [0, 1]
_QUAD_WEIGHTS = 0.5 * _GL_WEIGHTS


def adams_weights(nodes: jax.Array, lower, upper, density: Callable) -> jax.Array:
    """c_j = int_lower^upper l_j(u) density(u) du for the Lagrange basis l_j on `nodes` (p,)."""
    u = lower + (upper - lower) * jnp.asarray(_QUAD_POINTS, nodes.dtype)
    p = nodes.shape[0]
    basis = [functools.reduce(jnp.multiply, [(u - nodes[k]) / (nodes[j] - nodes[k])
                                             for k in range(p) if k != j], jnp.ones_like(u))
             for j in range(p)]
    quad = (upper - lower) * jnp.asarray(_QUAD_WEIGHTS, nodes.dtype) * density(u)
    return jnp.stack([jnp.sum(quad * l) for l in basis])


def _multistep(D, sigmas, x, orders, max_order, in_log_sigma):
    """x_{i+1} = x_i + sum_j c_j eps_{i-j} over the grid with orders[i] points at step i."""

    def update(p, x, eps_hist, i):
        nodes = sigmas[jnp.maximum(i - jnp.arange(p), 0)]
        if in_log_sigma:
            c = adams_weights(jnp.log(nodes), jnp.log(sigmas[i]), jnp.log(sigmas[i + 1]), jnp.exp)
        else:
            c = adams_weights(nodes, sigmas[i], sigmas[i + 1], jnp.ones_like)
        return x + sum(c[j] * eps_hist[j] for j in range(p))

    def body(i, carry):
        x, eps_hist = carry  # eps_hist[j] = eps_{i-1-j}
        sigma = sigmas[i]
        denoised = D(x, sigma)
        eps_hist = jnp.concatenate([((x - denoised) / sigma)[None], eps_hist[:-1]])
        step = lambda: jax.lax.switch(orders[i] - 1, [functools.partial(update, p)
                                                      for p in range(1, max_order + 1)],
                                      x, eps_hist, i)
        if in_log_sigma:  # log 0: the step onto sigma = 0 is x = D
            return jax.lax.cond(sigmas[i + 1] > 0, step, lambda: denoised), eps_hist
        return step(), eps_hist

    eps_hist = jnp.zeros((max_order,) + x.shape, x.dtype)
    x, _ = jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, (x, eps_hist))
    return x


def lms_sample(denoiser: Callable, rng: jax.Array, shape, *, sigmas: jax.Array,
               x_init: Optional[jax.Array] = None, cond=None, order: int = 4) -> jax.Array:
    """Linear multistep of `order` in sigma (k-diffusion's `sample_lms`, diffusers'
    `LMSDiscreteScheduler`): order min(i + 1, order) at step i. As in both references, the step
    onto sigma = 0 is the multistep step too (eps stays finite there), not x = D."""
    if order < 1:
        raise ConfigError(f"LMS order must be >= 1, got {order}")
    D, sigmas, x, _ = start(denoiser, rng, shape, sigmas, x_init, cond)
    orders = jnp.minimum(order, jnp.arange(1, sigmas.shape[0]))
    return _multistep(D, sigmas, x, orders, order, in_log_sigma=False)


def deis_sample(denoiser: Callable, rng: jax.Array, shape, *, sigmas: jax.Array,
                x_init: Optional[jax.Array] = None, cond=None, order: int = 2,
                lower_order_final: bool = True) -> jax.Array:
    """DEIS tAB-`order` in log sigma (1-3; diffusers' `DEISMultistepScheduler` with its defaults
    solver_order 2, lower_order_final; order 1 is DDIM): orders by `multistep_orders`. A step onto
    sigma = 0 is x = D (diffusers' DEIS grids end at sigma_min)."""
    if order not in (1, 2, 3):
        raise ConfigError(f"DEIS order must be 1, 2 or 3, got {order}")
    D, sigmas, x, _ = start(denoiser, rng, shape, sigmas, x_init, cond)
    orders = multistep_orders(sigmas.shape[0] - 1, order, lower_order_final)
    return _multistep(D, sigmas, x, orders, order, in_log_sigma=True)


lms_nfe = one_evaluation_per_step
deis_nfe = one_evaluation_per_step
