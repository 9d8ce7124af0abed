"""The DDPM chains: ancestral sampling (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021a).

Both take any noise-prediction function `eps_fn(x_t, t)`, t a (B,) float array of timestep
indices 0..T-1, and run as one `jax.lax.fori_loop` program.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes.schedules import (DiscreteSchedule, from_betas,
                                              learned_log_variance, posterior_mean_coefficients)
from diffusion_jax.samplers import grids

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
ANCESTRAL_VARIANCES = ("beta", "beta_tilde", "learned")
FIXED_VARIANCES = ANCESTRAL_VARIANCES[:2]
ANCESTRAL_SPACINGS = ("uniform",) + grids.SPACINGS
DDIM_SPACINGS = ("uniform", "quadratic")
TIME_SPACINGS = {"uniform": "time_uniform", "quadratic": "time_quadratic"}  # and DPM-Solver's


def respace(schedule: DiscreteSchedule, timesteps) -> DiscreteSchedule:
    """The chain over a subsequence tau of timesteps (Nichol & Dhariwal 2021, Sec. 4):
    beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}, which keeps every alpha_bar_{tau_k}."""
    ab = np.asarray(schedule.alpha_bars, np.float64)[np.asarray(timesteps)]
    return from_betas(1.0 - ab / np.concatenate([[1.0], ab[:-1]]))


def ancestral_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform"):
    """The increasing timesteps of the respaced chain: `ddim_timesteps` for 'uniform', else the
    `grids.spaced_timesteps` of `spacing` ('adm': the improved-DDPM / DiT respacing)."""
    if spacing not in ANCESTRAL_SPACINGS:
        raise ValueError(f"unknown ancestral spacing {spacing!r}; valid: {ANCESTRAL_SPACINGS}")
    if spacing == "uniform":
        return ddim_timesteps(num_timesteps, num_steps)
    return grids.spaced_timesteps(num_timesteps, num_steps, spacing)[::-1].astype(np.int32)


def ancestral_sample(eps_fn: EpsFn, schedule: DiscreteSchedule, rng: jax.Array, shape,
                     variance: str = "beta", clip_x0: bool = False, num_steps: int | None = None,
                     x_init: jax.Array | None = None, spacing: str = "uniform") -> jax.Array:
    """x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z.

    sigma_t^2 = beta_t ("beta", the paper's choice for CIFAR-10), the posterior variance
    beta-tilde_t ("beta_tilde"), or the network's ("learned": `eps_fn` returns the noise
    prediction and the variance output v concatenated on the last axis, sigma_t^2 =
    `learned_log_variance`'s, as improved DDPM and DiT sample); no noise is added at the last
    step. With `clip_x0` the mean is the posterior mean q(x_{t-1} | x_t, x0) of the x0
    prediction clipped to [-1, 1]. `num_steps` < T runs the respaced chain (`respace`) over
    `ancestral_timesteps(T, num_steps, spacing)`, its beta, beta-tilde and learned range those of
    the respaced chain (as DiT's SpacedDiffusion).
    """
    if variance not in ANCESTRAL_VARIANCES:
        raise ValueError(f"unknown ancestral variance {variance!r}; valid: {ANCESTRAL_VARIANCES}")
    if num_steps is not None and num_steps != schedule.num_timesteps:
        taus = ancestral_timesteps(schedule.num_timesteps, num_steps, spacing)
        taus_j = jnp.asarray(taus, jnp.float32)
        inner = eps_fn
        eps_fn = lambda x, i: inner(x, taus_j[i.astype(jnp.int32)])
        schedule = respace(schedule, taus)
    s = schedule
    num_t = s.num_timesteps
    sigmas = jnp.sqrt(s.betas if variance == "beta" else s.posterior_variance)
    learned = variance == "learned"
    init_rng, loop_rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, shape) if x_init is None else x_init

    def step(k, x):
        i = num_t - 1 - k
        t = jnp.full((shape[0],), i, jnp.float32)
        eps = eps_fn(x, t)
        if learned:
            eps, v = jnp.split(eps, 2, axis=-1)
            std = jnp.exp(0.5 * learned_log_variance(s, i, v))
        else:
            std = sigmas[i]
        if clip_x0:
            x0 = jnp.clip((x - jnp.sqrt(1 - s.alpha_bars[i]) * eps) / jnp.sqrt(s.alpha_bars[i]),
                          -1, 1)
            c_0, c_t = posterior_mean_coefficients(s, i)
            mean = c_0 * x0 + c_t * x
        else:
            mean = (x - s.betas[i] / jnp.sqrt(1 - s.alpha_bars[i]) * eps) / jnp.sqrt(s.alphas[i])
        z = jax.random.normal(jax.random.fold_in(loop_rng, i), shape)
        return mean + jnp.where(i > 0, std, 0.0) * z

    return jax.lax.fori_loop(0, num_t, step, x)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """The strided subsequence tau of [0, T) visited by DDIM (Song et al. 2021a, Appendix C.2).

    `uniform`: tau_i = floor(i T / S); `quadratic`: tau_i = floor((i sqrt(0.8 T) / S)^2).
    Returned in increasing order, starting at 0.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"DDIM num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if spacing == "uniform":
        taus = np.floor(np.arange(num_steps) * num_timesteps / num_steps)
    elif spacing == "quadratic":
        taus = np.floor((np.arange(num_steps) * np.sqrt(num_timesteps * 0.8) / num_steps) ** 2)
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}; valid: uniform, quadratic")
    return taus.astype(np.int32)


def ddim_spacing(spacing: str) -> str:
    """A time spacing in DDIM's names: 'time_uniform' is 'uniform', 'time_quadratic' 'quadratic'."""
    return {v: k for k, v in TIME_SPACINGS.items()}.get(spacing, spacing)


def ddim_sample(eps_fn: EpsFn, schedule: DiscreteSchedule, rng: jax.Array, shape,
                num_steps: int = 50, eta: float = 0.0, spacing: str = "uniform",
                x_init: jax.Array | None = None) -> jax.Array:
    """DDIM (Song et al. 2021a, Eq. 12) over a strided subset of the timesteps.

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps + s z, with
    s = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)); eta = 0 is deterministic, eta = 1
    is the ancestral chain with beta-tilde variance on the subsequence.
    """
    taus = jnp.asarray(ddim_timesteps(schedule.num_timesteps, num_steps, spacing))
    ab_all = schedule.alpha_bars
    init_rng, loop_rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, shape) if x_init is None else x_init

    def step(k, x):
        idx = num_steps - 1 - k
        i = taus[idx]
        ab = ab_all[i]
        ab_prev = jnp.where(idx > 0, ab_all[taus[jnp.maximum(idx - 1, 0)]], 1.0)
        eps = eps_fn(x, jnp.full((shape[0],), i, jnp.float32))
        x0 = (x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
        sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        z = jax.random.normal(jax.random.fold_in(loop_rng, idx), shape)
        return (jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1 - ab_prev - sigma**2, 0.0)) * eps
                + sigma * z)

    return jax.lax.fori_loop(0, num_steps, step, x)
