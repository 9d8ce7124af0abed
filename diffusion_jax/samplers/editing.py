"""Image editing with any sampler: inpainting and colourisation by replacement (Song et al. 2021,
App. I.2) and SDEdit (Meng et al. 2022).

A grid sampler here is any function sample_fn(denoiser, rng, shape, *, x_init=..., sigmas=...,
cond=...) such as `edm.edm_sample` or `dpm_solver.dpm_solver_sample` (other options bound with
functools.partial). Editing never touches the sampler: SDEdit picks its start and its grid,
replacement wraps the denoiser and projects the result. The chains of the score SDEs replace
the known part the same way inside their own loop (`pc.pc_replace`, with `replace` below).

"Known part" is taken in an orthonormal basis Q of the channels: the pixels themselves for
inpainting, and for colourisation the basis whose first axis is the grey level (1, 1, 1) / sqrt(3)
(the reference code's orthogonal decoupling of RGB). With Q orthonormal the forward noise stays
isotropic in the new coordinates, so the replacement there is the same operation.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.denoisers import Denoiser, call, expand, per_example
from diffusion_jax.errors import ConfigError

TASKS = ("inpaint", "sdedit", "colorize")
# Columns: grey (1, 1, 1) / sqrt(3) and two orthonormal colour axes.
COLOR_BASIS = np.array([[1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)],
                        [1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)],
                        [1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)]])
COLOR_MASK = np.arange(3) == 0  # in COLOR_BASIS coordinates: the grey axis is known


def replace(known: jax.Array, x: jax.Array, mask, basis: Optional[jax.Array] = None) -> jax.Array:
    """x with its coordinates x Q set to those of `known` where `mask` is True (mask broadcast
    against x Q; Q = `basis` acts on the last axis, the identity when None)."""
    if basis is None:
        return jnp.where(mask, known, x)
    return jnp.where(mask, known @ basis, x @ basis) @ basis.T


def start_step(num_steps: int, strength: float) -> int:
    """SDEdit runs the last round(strength * N) of N steps: the index of its first step."""
    return num_steps - round(strength * num_steps)


def truncate_sigmas(sigmas: jax.Array, strength: float) -> jax.Array:
    """The last round(strength * N) steps of an N-step grid: sigmas[start:] (k + 1 values)."""
    return sigmas[start_step(sigmas.shape[0] - 1, strength):]


def sdedit(sample_fn: Callable, denoiser: Denoiser, rng: jax.Array, x: jax.Array, cond=None, *,
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
    return sample_fn(denoiser, sample_rng, x.shape, x_init=x_init, sigmas=sub, cond=cond)


def replacement_denoiser(denoiser: Denoiser, known: jax.Array, mask, rng: jax.Array,
                         basis: Optional[jax.Array] = None) -> Denoiser:
    """D'(x, sigma) = R(known, D(R(known + sigma n, x), sigma)) with R = `replace`.

    The known part of the input is replaced by the known values noised to the current level (the
    replacement method, Song et al. 2021, App. I.2), and D' returns the known values there, so
    the sampler's state keeps them. The noise n is fresh for each noise level: its key folds the
    bits of sigma into `rng`, so D' stays a pure function of (x, sigma[, cond]) and works inside
    any sampler.
    """
    def wrapped(x, sigma, cond=None):
        sigma = per_example(sigma, x)
        bits = jax.lax.bitcast_convert_type(sigma[0].astype(jnp.float32), jnp.int32)
        n = jax.random.normal(jax.random.fold_in(rng, bits), x.shape, x.dtype)
        x_in = replace(known + expand(sigma, x) * n, x, mask, basis)
        return replace(known, call(denoiser, x_in, sigma, cond), mask, basis)
    return wrapped


def inpaint(sample_fn: Callable, denoiser: Denoiser, rng: jax.Array, known: jax.Array, mask,
            cond=None, basis: Optional[jax.Array] = None) -> jax.Array:
    """Samples whose known part (`mask` in the coordinates of `basis`) equals `known`:
    sample_fn run on `replacement_denoiser`, then the final replacement."""
    noise_rng, sample_rng = jax.random.split(rng)
    wrapped = replacement_denoiser(denoiser, known, mask, noise_rng, basis)
    return replace(known, sample_fn(wrapped, sample_rng, known.shape, cond=cond), mask, basis)


def grey_to_rgb(x: jax.Array) -> jax.Array:
    """RGB images whose every channel is the grey level (channel mean) of x: the known values of
    colourisation, x Q = (sqrt 3 grey, 0, 0)."""
    if x.shape[-1] != 3:
        raise ConfigError(f"colorize needs RGB images, got {x.shape[-1]} channel(s)")
    return jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)


def edit(sample_fn: Callable, sigmas: jax.Array, denoiser: Denoiser, rng: jax.Array, x, mask,
         cond=None, *, task: str, strength: float) -> jax.Array:
    """The method protocol's `edit` on a grid sampler: 'inpaint' (mask True = known pixel, kept
    exactly at every step), 'colorize' (RGB images whose channel mean is x's grey level) or
    'sdedit' (noise to `strength` of the grid, then denoise)."""
    sample_fn = functools.partial(sample_fn, sigmas=sigmas)
    if task == "inpaint":
        return inpaint(sample_fn, denoiser, rng, x, mask, cond)
    if task == "colorize":
        return inpaint(sample_fn, denoiser, rng, grey_to_rgb(x), COLOR_MASK, cond,
                       jnp.asarray(COLOR_BASIS, x.dtype))
    if task == "sdedit":
        return sdedit(sample_fn, denoiser, rng, x, cond, strength=strength, sigmas=sigmas)
    raise ConfigError(f"unknown edit task {task!r}; valid: {', '.join(TASKS)}")
