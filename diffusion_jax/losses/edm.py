"""The EDM training loss and the training noise distributions of Karras et al. 2022, Table 1.

L = E_{sigma, x0, n} [lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2] (Eq. 2 with the weight of
Table 1), summed over the data dimensions as in the reference implementation.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, preconditioning


def vp_sigma_sampler(rng: jax.Array, n: int, epsilon_t: float = 1e-5, beta_d: float = 19.9,
                     beta_min: float = 0.1) -> jax.Array:
    """VP training noise: sigma = sigma(t), t ~ U(epsilon_t, 1) (Table 1, VP column)."""
    t = jax.random.uniform(rng, (n,), minval=epsilon_t, maxval=1.0)
    return denoisers.vp_sigma(t, beta_d, beta_min)


def ve_sigma_sampler(rng: jax.Array, n: int, sigma_min: float = 0.02,
                     sigma_max: float = 100.0) -> jax.Array:
    """VE training noise: ln sigma ~ U(ln sigma_min, ln sigma_max) (Table 1, VE column)."""
    log_sigma = jax.random.uniform(rng, (n,), minval=jnp.log(sigma_min), maxval=jnp.log(sigma_max))
    return jnp.exp(log_sigma)


def inverse_square_weight(sigma: jax.Array) -> jax.Array:
    """lambda(sigma) = 1 / sigma^2, the VP and VE loss weight (Table 1)."""
    return 1.0 / jnp.square(sigma)


def edm_loss(denoiser: Callable, x0: jax.Array, rng: jax.Array, cond=None, *,
             sample_sigma: Callable = preconditioning.lognormal_sigma,
             loss_weight: Callable = preconditioning.edm_loss_weight,
             reduce: str = "sum") -> jax.Array:
    """Per-example lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2, reduced over non-batch dims.

    `sample_sigma(rng, n)` draws the noise levels and `loss_weight(sigma)` weights them: the EDM
    defaults, or `vp_sigma_sampler` / `ve_sigma_sampler` with `inverse_square_weight`.
    `reduce` is 'sum' (EDM) or 'mean' over the data dimensions.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"unknown reduce {reduce!r}; valid: ['mean', 'sum']")
    sigma_rng, noise_rng = jax.random.split(rng)
    sigma = sample_sigma(sigma_rng, x0.shape[0]).astype(x0.dtype)
    n = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    x = x0 + denoisers.expand(sigma, x0) * n
    err = jnp.square(denoisers.call(denoiser, x, sigma, cond) - x0)
    reduce_fn = functools.partial(jnp.sum if reduce == "sum" else jnp.mean,
                                  axis=tuple(range(1, x0.ndim)))
    return loss_weight(sigma) * reduce_fn(err)
