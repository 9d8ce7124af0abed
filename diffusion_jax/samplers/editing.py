"""Image editing with any denoiser-based sampler: SDEdit (Meng et al. 2022) and inpainting.

A sampler here is any function sample_fn(denoiser, rng, shape, *, x_init=..., sigmas=...) such as
`edm.edm_sample` or `dpm_solver.dpm_solver_sample` (bind their other options with
functools.partial). Editing never touches the sampler: SDEdit picks its start and its grid,
inpainting wraps the denoiser and projects the result.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import Denoiser, call, expand, per_example


def truncate_sigmas(sigmas: jax.Array, strength: float) -> jax.Array:
    """The last round(strength * N) steps of an N-step grid: sigmas[N - k:] (k + 1 values)."""
    num = sigmas.shape[0] - 1
    return sigmas[num - round(strength * num):]


def sdedit(sample_fn: Callable, denoiser: Denoiser, rng: jax.Array, x: jax.Array, *,
           strength: float, sigmas: jax.Array) -> jax.Array:
    """SDEdit: x_init = x + sigma_start n, then denoise over the truncated grid.

    `strength` in [0, 1] (a Python float) is the fraction of the steps of the full grid `sigmas`
    that are run; sigma_start is the first noise level kept. Strength 0 returns x unchanged.
    """
    sub = truncate_sigmas(sigmas, strength)
    if sub.shape[0] == 1:
        return x
    noise_rng, sample_rng = jax.random.split(rng)
    x_init = x + sub[0] * jax.random.normal(noise_rng, x.shape, x.dtype)
    return sample_fn(denoiser, sample_rng, x.shape, x_init=x_init, sigmas=sub)


def inpainting_denoiser(denoiser: Denoiser, x_known: jax.Array, mask: jax.Array,
                        rng: jax.Array) -> Denoiser:
    """D'(x, sigma) = m x_known + (1 - m) D(m (x_known + sigma n) + (1 - m) x, sigma).

    The known region (mask m = True, broadcast against x) of the input is replaced by the known
    pixels noised to the current level (the replacement method, Song et al. 2021, App. I.2), and
    D' returns the known pixels there, so the sampler's state keeps them. The noise n is fresh for
    each noise level: its key folds the bits of sigma into `rng`, so D' stays a pure function of
    (x, sigma[, cond]) and works inside any sampler.
    """
    def wrapped(x, sigma, cond=None):
        sigma = per_example(sigma, x)
        bits = jax.lax.bitcast_convert_type(sigma[0].astype(jnp.float32), jnp.int32)
        n = jax.random.normal(jax.random.fold_in(rng, bits), x.shape, x.dtype)
        x_in = jnp.where(mask, x_known + expand(sigma, x) * n, x)
        return jnp.where(mask, x_known, call(denoiser, x_in, sigma, cond))
    return wrapped


def inpaint(sample_fn: Callable, denoiser: Denoiser, rng: jax.Array, x_known: jax.Array,
            mask: jax.Array) -> jax.Array:
    """Samples that equal x_known where `mask` is True: sample_fn(denoiser, rng, shape) run on
    `inpainting_denoiser`, then the final projection where(mask, x_known, x)."""
    noise_rng, sample_rng = jax.random.split(rng)
    wrapped = inpainting_denoiser(denoiser, x_known, mask, noise_rng)
    return jnp.where(mask, x_known, sample_fn(wrapped, sample_rng, x_known.shape))
