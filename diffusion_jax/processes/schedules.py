"""Discrete noise schedules of the DDPM chain (Ho et al. 2020; Nichol & Dhariwal 2021).

A schedule is the sequence beta_1..beta_T of q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
and everything derived from it. Index i = 0..T-1 below stands for t = i + 1 of the papers.

Zero terminal SNR (Lin et al. 2024): `rescale_zero_terminal_snr` makes alpha_bar_T = 0 exactly, so
x_T is pure noise and the EDM noise level sigma_T = sqrt((1 - alpha_bar_T) / alpha_bar_T) is
infinite. Training uses that schedule as it is. A sampler cannot start at sigma = inf (its state
x = x_T / sqrt(alpha_bar_T) is infinite), so it runs on `clip_terminal_alpha_bar(schedule)`,
where alpha_bar_T = 2^-24 and sigma_T = 4096 (what diffusers' samplers do), with the "trailing"
timesteps that start at t = T (`samplers.grids`). That first step needs a v-prediction model:
x0 = alpha x_t - sigma_t v stays exact at alpha -> 0, while an epsilon model's
x0 = (x_t - sigma_t eps) / alpha divides its error by alpha (4096 times at the clip, 0/0 at T).
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


def clipped_posterior_log_variance(schedule: DiscreteSchedule) -> jax.Array:
    """(T,) log beta-tilde_t with the first entry (beta-tilde_1 = 0) replaced by beta-tilde_2's, as
    the improved-DDPM code (Nichol & Dhariwal 2021; DiT) keeps it finite."""
    pv = schedule.posterior_variance
    return jnp.log(jnp.concatenate([pv[1:2], pv[1:]]))


def learned_log_variance(schedule: DiscreteSchedule, i, v: jax.Array) -> jax.Array:
    """log Sigma_theta(x_t, t) = frac log beta_t + (1 - frac) log beta-tilde_t, frac = (v + 1) / 2,
    for the network's variance output v (Nichol & Dhariwal 2021, Eq. 15; the 'learned range' of
    their code and DiT's, v in [-1, 1] spans [beta-tilde_t, beta_t]); i the index t - 1, (B,) or
    a scalar, broadcast against v (B, ...)."""
    i = jnp.asarray(i)
    shape = i.shape + (1,) * (v.ndim - i.ndim)
    max_log = jnp.log(schedule.betas)[i].reshape(shape)
    min_log = clipped_posterior_log_variance(schedule)[i].reshape(shape)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def from_betas(betas) -> DiscreteSchedule:
    betas64 = np.asarray(betas, dtype=np.float64)
    alpha_bars = np.cumprod(1.0 - betas64)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas64
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return DiscreteSchedule(f32(betas64), f32(1.0 - betas64), f32(alpha_bars),
                            f32(alpha_bars_prev), f32(posterior_variance))


def betas_of_alpha_bars(alpha_bars) -> np.ndarray:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (alpha_bar_0 = 1): the inverse of the cumprod."""
    alpha_bars = np.asarray(alpha_bars, dtype=np.float64)
    return 1.0 - np.concatenate([alpha_bars[:1], alpha_bars[1:] / alpha_bars[:-1]])


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


def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> np.ndarray:
    """beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2: Stable Diffusion's schedule
    (Rombach et al. 2022; diffusers' 'scaled_linear')."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_logsnr(t, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
    """log SNR(t) = -2 log tan(t_min + t (t_max - t_min)) on t in [0, 1]: the cosine schedule
    alpha_t = cos(pi t / 2) with its log-SNR clipped to [logsnr_min, logsnr_max]
    (t_min = arctan e^{-logsnr_max / 2}, t_max = arctan e^{-logsnr_min / 2}; Hoogeboom et al. 2023, Sec. 3)."""
    t_min = np.arctan(np.exp(-0.5 * logsnr_max))
    t_max = np.arctan(np.exp(-0.5 * logsnr_min))
    return -2.0 * np.log(np.tan(t_min + np.asarray(t, np.float64) * (t_max - t_min)))


def shifted_cosine_logsnr(t, resolution: int, base_resolution: int = 64, **clip):
    """cosine_logsnr(t) + 2 log(base_resolution / resolution): the cosine schedule of a
    base_resolution^2 image shifted to resolution^2, SNR(t) divided by (resolution / base)^2
    at every t, the clipped range moving with it (Hoogeboom et al. 2023, Sec. 3.1, the shifted
    schedule with noise_d = 64)."""
    return cosine_logsnr(t, **clip) + 2.0 * np.log(base_resolution / resolution)


def shifted_cosine_betas(num_timesteps: int, resolution: int, base_resolution: int = 64,
                         **clip) -> np.ndarray:
    """The T-step chain of `shifted_cosine_logsnr`: alpha_bar_i = sigmoid(log SNR(t)) at
    t = (i + 1) / T."""
    t = np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps
    logsnr = shifted_cosine_logsnr(t, resolution, base_resolution, **clip)
    return betas_of_alpha_bars(1.0 / (1.0 + np.exp(-logsnr)))


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: sqrt(alpha_bar) shifted so that its last value is 0 and scaled
    so that its first is kept, then the betas recomputed; beta_T = 1 and alpha_bar_T = 0."""
    root = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = root[0], root[-1]
    return betas_of_alpha_bars(((root - last) * first / (first - last)) ** 2)


def clip_terminal_alpha_bar(schedule: DiscreteSchedule,
                            alpha_bar_min: float = 2.0**-24) -> DiscreteSchedule:
    """`schedule` with alpha_bar_t raised to at least alpha_bar_min (only alpha_bar_T = 0 of a
    zero-terminal-SNR schedule moves): the schedule its sampler grid and denoiser use, sigma_T =
    sqrt((1 - 2^-24) / 2^-24) = 4096 instead of infinity (diffusers' UniPC, DPM-Solver and Euler
    schedulers set alphas_cumprod[-1] = 2^-24 the same way)."""
    alpha_bars = np.asarray(schedule.alpha_bars, np.float64)
    return from_betas(betas_of_alpha_bars(np.maximum(alpha_bars, alpha_bar_min)))


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas,
                  "scaled_linear": scaled_linear_betas}


def make_schedule(name: str, num_timesteps: int, *, zero_terminal_snr: bool = False,
                  **kwargs) -> DiscreteSchedule:
    """The schedule `name` of BETA_SCHEDULES or 'shifted_cosine' (which needs `resolution`),
    rescaled to zero terminal SNR if asked."""
    builders = {**BETA_SCHEDULES, "shifted_cosine": shifted_cosine_betas}
    if name not in builders:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {sorted(builders)}")
    betas = builders[name](num_timesteps, **kwargs)
    return from_betas(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)
