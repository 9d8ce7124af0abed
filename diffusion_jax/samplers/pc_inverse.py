"""Controllable generation with the PC sampler by replacement (Song et al. 2021, App. I.2).

The known part of the data y is noised with the forward kernel, y_t = alpha(t) y + sigma(t) z, and
replaces the known part of the sampler's state after every predictor and corrector update; the
score model then fills in the rest. "Known part" is taken in an orthonormal basis Q of the
channels: the pixels themselves for inpainting, and for colourisation the basis whose first axis
is the grey level (1, 1, 1) / sqrt(3) (the reference code's orthogonal decoupling of RGB). With Q
orthonormal the forward noise stays isotropic in the new coordinates, so the replacement there is
the same operation. The returned samples equal y exactly on the known part.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes.sde import SDE, ScoreFn, expand
from diffusion_jax.samplers.pc import pc_sample

# Columns: grey (1, 1, 1) / sqrt(3) and two orthonormal colour axes.
COLOR_BASIS = np.array([[1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)],
                         [1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)],
                         [1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)]])


def pc_replace(score_fn: ScoreFn, sde: SDE, rng: jax.Array, y: jax.Array, mask: jax.Array,
               basis: Optional[jax.Array] = None, **pc_options) -> tuple[jax.Array, int]:
    """Samples whose coordinates x Q equal y Q where `mask` is True (mask broadcast against x Q;
    Q = `basis` acts on the last axis, the identity when None), and the number of score evaluations.
    `pc_options` go to `pc_sample` (predictor, corrector, snr, num_steps, eps, ...)."""
    to_q = (lambda a: a) if basis is None else (lambda a: a @ basis)
    from_q = (lambda a: a) if basis is None else (lambda a: a @ basis.T)
    replace = lambda known, a: from_q(jnp.where(mask, to_q(known), to_q(a)))

    def project(rng, x, x_mean, t):
        mean, std = sde.marginal_prob(y, t)
        y_t = mean + expand(std, y) * jax.random.normal(rng, y.shape, y.dtype)
        return replace(y_t, x), replace(mean, x_mean)

    prior_rng, known_rng, sample_rng = jax.random.split(rng, 3)
    x_T = sde.prior_sampling(prior_rng, y.shape)
    x_init, _ = project(known_rng, x_T, x_T, jnp.full(y.shape[:1], sde.T, y.dtype))
    x, nfe = pc_sample(score_fn, sde, sample_rng, y.shape, x_init=x_init, project=project,
                       **pc_options)
    return replace(y, x), nfe


def pc_inpaint(score_fn: ScoreFn, sde: SDE, rng: jax.Array, x_known: jax.Array, mask: jax.Array,
               **pc_options) -> tuple[jax.Array, int]:
    """Inpainting: the pixels where `mask` is True are known (x_known there), the rest sampled."""
    return pc_replace(score_fn, sde, rng, x_known, mask, **pc_options)


def pc_colorize(score_fn: ScoreFn, sde: SDE, rng: jax.Array, gray: jax.Array,
                **pc_options) -> tuple[jax.Array, int]:
    """Colourisation of grey images `gray` (B, H, W, 1) into RGB (B, H, W, 3) whose channel mean
    is `gray`: the grey axis of COLOR_BASIS is known, the two colour axes are sampled."""
    rgb = jnp.broadcast_to(gray, gray.shape[:-1] + (3,))
    return pc_replace(score_fn, sde, rng, rgb, jnp.arange(3) == 0, COLOR_BASIS, **pc_options)
