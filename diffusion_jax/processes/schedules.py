"""Discrete noise schedules of the DDPM chain (Ho et al. 2020; Nichol & Dhariwal 2021).

A schedule is the sequence beta_1..beta_T of q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
and everything derived from it. Index i = 0..T-1 below stands for t = i + 1 of the papers.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
    betas: jax.Array  # (T,) beta_t
    alphas: jax.Array  # (T,) alpha_t = 1 - beta_t
    alpha_bars: jax.Array  # (T,) prod_{s <= t} alpha_s
    alpha_bars_prev: jax.Array  # (T,) alpha_bar_{t-1}, with alpha_bar_0 = 1
    posterior_variance: jax.Array  # (T,) beta-tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t (Eq. 7)

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def marginal_coefficients(schedule: DiscreteSchedule, t: jax.Array):
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at integer (or float) t."""
    ab = schedule.alpha_bars[jnp.asarray(t).astype(jnp.int32)]
    return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def q_sample(schedule: DiscreteSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t integer indices (B,) (Eq. 4)."""
    alpha, sigma = marginal_coefficients(schedule, t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return alpha.reshape(shape) * x0 + sigma.reshape(shape) * noise


def posterior_mean_coefficients(schedule: DiscreteSchedule, i):
    """(c_0, c_t) of the posterior mean mu_tilde_t(x_t, x_0) = c_0 x_0 + c_t x_t of
    q(x_{t-1} | x_t, x_0) (Eq. 7): c_0 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
    c_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)."""
    s = schedule
    return (jnp.sqrt(s.alpha_bars_prev[i]) * s.betas[i] / (1.0 - s.alpha_bars[i]),
            jnp.sqrt(s.alphas[i]) * (1.0 - s.alpha_bars_prev[i]) / (1.0 - s.alpha_bars[i]))


def from_betas(betas) -> DiscreteSchedule:
    betas64 = np.asarray(betas, dtype=np.float64)
    alpha_bars = np.cumprod(1.0 - betas64)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas64
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return DiscreteSchedule(f32(betas64), f32(1.0 - betas64), f32(alpha_bars),
                            f32(alpha_bars_prev), f32(posterior_variance))


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_t linear from beta_start to beta_end (Ho et al. 2020, Sec. 4).

    With beta_start = beta_min / T and beta_end = beta_max / T this is exactly the discretisation
    of the VP SDE with linear beta(t) (Song et al. 2021, Eq. 10); DDPM's 1e-4..0.02 with T = 1000
    is beta_min = 0.1, beta_max = 20.
    """
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi / 2) (Nichol & Dhariwal Eq. 17).

    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at max_beta.
    """
    f = lambda t: math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(num_timesteps)]
    return np.asarray(betas, dtype=np.float64)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_schedule(name: str, num_timesteps: int, **kwargs) -> DiscreteSchedule:
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {sorted(BETA_SCHEDULES)}")
    return from_betas(BETA_SCHEDULES[name](num_timesteps, **kwargs))
