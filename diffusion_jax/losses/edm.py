"""The EDM training loss (Karras et al. 2022, Eq. 2 with the weights of Table 1).

L = E_{sigma, x0, n} [lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2], summed over the data
dimensions as in the reference implementation; sigma and lambda come from the column of Table 1
(`preconditioning.COLUMNS`: `sample_sigma`, `loss_weight`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, preconditioning

_EDM = preconditioning.EDMPrecond()


def edm_loss(denoiser: Callable, x0: jax.Array, rng: jax.Array, cond=None, *,
             sample_sigma: Callable = _EDM.sample_sigma,
             loss_weight: Callable = _EDM.loss_weight, reduce: str = "sum") -> jax.Array:
    """Per-example lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2, reduced over non-batch dims.

    `sample_sigma(rng, n)` draws the noise levels and `loss_weight(sigma)` weights them (default:
    the EDM column). `reduce` is 'sum' (EDM) or 'mean' over the data dimensions.
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
