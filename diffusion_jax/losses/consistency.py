"""Consistency-model objectives (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023,
"Improved Techniques for Training Consistency Models"): the discretisation schedules, the
noise-level samplers and weights, the distances, and the CD / CT losses.

A consistency function f(x, sigma) maps any point of a probability-flow ODE trajectory to its
end at sigma_min. Training matches f at two adjacent levels sigma_n < sigma_{n+1} of a Karras
grid: L = lambda(sigma_n) d(f_theta(x_{n+1}, sigma_{n+1}), f_target(x_n, sigma_n)), where
x_{n+1} = x0 + sigma_{n+1} z and x_n is one teacher ODE step back from it (distillation, CD)
or x0 + sigma_n z with the same z (training, CT: the one-sample estimate of the score).
Everything here is a plain function of arrays and keys; the number of levels N may be a traced
integer (the CT and iCT curricula change it during training inside one compiled step).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import call, expand
from diffusion_jax.samplers.edm import ODE_STEPS

DISTANCES = ("l2", "l1", "pseudo_huber", "lpips")
WEIGHTINGS = ("uniform", "icm")


def karras_levels(index, num_scales, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0):
    """sigma_i = (sigma_min^(1/rho) + i / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho
    for i = 0 .. N - 1, increasing (Song et al. 2023, Sec. 5; Karras et al. 2022, Eq. 5).
    `index` and `num_scales` may be traced arrays."""
    inv_rho = 1.0 / rho
    ramp = jnp.asarray(index, jnp.float32) / (jnp.asarray(num_scales, jnp.float32) - 1.0)
    return (sigma_min**inv_rho + ramp * (sigma_max**inv_rho - sigma_min**inv_rho)) ** rho


def ct_num_scales(k, total_steps: int, s0: int = 2, s1: int = 150):
    """N(k) = max(ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1), 1) + 1 (Song et al. 2023,
    App. C; the max as in the released code, `cm/script_util.py`), from s0 to s1 + 1 levels."""
    k = jnp.asarray(k, jnp.float32)
    inner = jnp.sqrt(k / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2)
    return (jnp.maximum(jnp.ceil(inner - 1.0), 1.0) + 1.0).astype(jnp.int32)


def ct_target_decay(num_scales, s0: int = 2, mu0: float = 0.9):
    """mu(k) = exp(s0 ln(mu0) / (N(k) - 1)), the target network's EMA rate (Song et al. 2023,
    App. C). The paper writes N(k) in the denominator; the released code (`cm/script_util.py`,
    `jcm/losses.py`), which produced its results, divides by the number of intervals N(k) - 1,
    and so does this. mu0 = 0 gives mu = 0: the target is the online network.

    The target then lags about 1 / (1 - mu) = (N - 1) / (s0 ln(1 / mu0)) steps behind the online
    network whatever the training length K, while N(k) climbs one level every
    2 N K / (s1 + 1)^2 steps: during one target time constant N grows by about
    (s1 + 1)^2 / (2 K s0 ln(1 / mu0)) levels (0.07 with the paper's K = 800k, 18 with K = 3000)."""
    if mu0 == 0.0:
        return jnp.zeros_like(jnp.asarray(num_scales, jnp.float32))
    return jnp.exp(s0 * math.log(mu0) / (jnp.asarray(num_scales, jnp.float32) - 1.0))


def ict_num_scales(k, total_steps: int, s0: int = 10, s1: int = 1280):
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(s1 / s0) + 1)): the
    doubling curriculum of improved CT (Song & Dhariwal 2023, Eq. 8)."""
    stage_steps = max(math.floor(total_steps / (math.log2(s1 / s0) + 1)), 1)
    doublings = jnp.asarray(k, jnp.int32) // stage_steps
    return (jnp.minimum(s0 * 2.0 ** doublings.astype(jnp.float32), s1) + 1).astype(jnp.int32)


def lognormal_index_logits(num_scales, max_scales: int, sigma_min: float, sigma_max: float,
                           rho: float, P_mean: float = -1.1, P_std: float = 2.0):
    """Log-probabilities of pair index i in 0 .. N - 2 (levels sigma_i < sigma_{i+1}):
    p(i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((ln sigma_i - P_mean) / (sqrt 2 P_std)) (Song & Dhariwal 2023, Sec. 3.5), over a padded
    axis of `max_scales - 1` entries with -inf beyond N - 2."""
    i = jnp.arange(max_scales - 1)
    lo = karras_levels(i, num_scales, sigma_min, sigma_max, rho)
    hi = karras_levels(i + 1, num_scales, sigma_min, sigma_max, rho)
    cdf = lambda s: jax.scipy.special.erf((jnp.log(s) - P_mean) / (math.sqrt(2.0) * P_std))
    mass = jnp.maximum(cdf(hi) - cdf(lo), 1e-30)
    return jnp.where(i < num_scales - 1, jnp.log(mass), -jnp.inf)


def pair_weight(weighting: str, sigma, sigma_next):
    """lambda(sigma_n): 'uniform' 1 (Song et al. 2023) or 'icm' 1 / (sigma_{n+1} - sigma_n)
    (Song & Dhariwal 2023, Sec. 3.1)."""
    if weighting == "uniform":
        return jnp.ones_like(sigma)
    if weighting == "icm":
        return 1.0 / (sigma_next - sigma)
    raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def pseudo_huber(x, y, c: float):
    """d(x, y) = sqrt(||x - y||^2 + c^2) - c per example (Song & Dhariwal 2023, Eq. 10)."""
    sq = jnp.sum(jnp.square(x - y).reshape(x.shape[0], -1), axis=-1)
    return jnp.sqrt(sq + c**2) - c


def default_huber_c(dim: int) -> float:
    """c = 0.00054 sqrt(d), d the data dimension (Song & Dhariwal 2023, Sec. 3.3)."""
    return 0.00054 * math.sqrt(dim)


def distance_fn(name: str, huber_c: float = 0.0, lpips_fn: Callable | None = None) -> Callable:
    """d(x, y) -> (B,): 'l2' mean squared error, 'l1' mean absolute error (per example, over the
    data dimensions as in the reference code), 'pseudo_huber' with c = `huber_c`, 'lpips' the
    perceptual distance `lpips_fn`."""
    flat = lambda a: a.reshape(a.shape[0], -1)
    if name == "l2":
        return lambda x, y: jnp.mean(jnp.square(flat(x - y)), axis=-1)
    if name == "l1":
        return lambda x, y: jnp.mean(jnp.abs(flat(x - y)), axis=-1)
    if name == "pseudo_huber":
        return lambda x, y: pseudo_huber(x, y, huber_c)
    if name == "lpips":
        if lpips_fn is None:
            raise ValueError("the lpips distance needs its network (lpips_fn)")
        return lpips_fn
    raise ValueError(f"unknown distance {name!r}; valid: {', '.join(DISTANCES)}")


def spread(x):
    """sqrt(mean over the data dimensions of the variance over the batch): the spread of a batch
    of samples; 0 for a constant function of the noise (the collapsed consistency function)."""
    flat = x.reshape(x.shape[0], -1)
    return jnp.sqrt(jnp.mean(jnp.var(flat, axis=0)))


def consistency_loss(online: Callable, target: Callable, x0, rng, cond=None, *,
                     num_scales, sample_index: Callable, distance: Callable,
                     weighting: str = "uniform", teacher: Callable | None = None,
                     teacher_solver: str = "heun", sigma_min: float = 0.002,
                     sigma_max: float = 80.0, rho: float = 7.0):
    """Per-example lambda(sigma_n) d(f_online(x_{n+1}, sigma_{n+1}), f_target(x_n, sigma_n)).

    online(x, sigma[, cond]) is f_theta (gradients flow), target(x, sigma[, cond]) f_theta-
    (under stop-gradient here). n = sample_index(rng, batch) in 0 .. N - 2 on the Karras grid of
    `num_scales` levels; x_{n+1} = x0 + sigma_{n+1} z. With a `teacher` denoiser D(x, sigma
    [, cond]) this is consistency distillation (Song et al. 2023, Algorithm 2): x_n is one
    `teacher_solver` ('heun' | 'euler') step of dx/dsigma = (x - D) / sigma from x_{n+1};
    without one, consistency training (Algorithm 3): x_n = x0 + sigma_n z.
    """
    index_rng, noise_rng = jax.random.split(rng)
    n = sample_index(index_rng, x0.shape[0])
    sigma = karras_levels(n, num_scales, sigma_min, sigma_max, rho)
    sigma_next = karras_levels(n + 1, num_scales, sigma_min, sigma_max, rho)
    z = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    x_next = x0 + expand(sigma_next, x0) * z
    if teacher is None:
        x_prev = x0 + expand(sigma, x0) * z
    else:
        x_prev = jax.lax.stop_gradient(
            ODE_STEPS[teacher_solver](teacher, x_next, sigma_next, sigma, cond))
    f_online = call(online, x_next, sigma_next, cond)
    f_target = jax.lax.stop_gradient(call(target, x_prev, sigma, cond))
    return pair_weight(weighting, sigma, sigma_next) * distance(f_online, f_target)
