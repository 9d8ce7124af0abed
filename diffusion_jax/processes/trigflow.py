"""TrigFlow (Lu & Song 2024, Sec. 2 and 3): x_t = cos t x0 + sin t z, z ~ N(0, sigma_d^2 I),
t in [0, pi/2] (t = 0 data, t = pi/2 noise), sigma_d = 0.5.

- EDM <-> TrigFlow: sigma = sigma_d tan t, and the EDM state x = x0 + sigma n is x_t / cos t
  (so cos t = sigma_d / sqrt(sigma^2 + sigma_d^2)).
- Diffusion target (velocity) v_t = dx_t/dt = cos t z - sin t x0, predicted as
  sigma_d F(x_t / sigma_d, t); the PF-ODE is dx_t/dt = E[v_t | x_t] = (cos t x_t - E[x0 | x_t])
  / sin t, and a velocity v gives the denoiser x0_hat = cos t x_t - sin t v.
- Consistency function (Eq. 6): f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t):
  f(x, 0) = x exactly; it is the DDIM step x_s = cos(t - s) x_t - sin(t - s) sigma_d F taken
  to s = 0.
- An EDM-preconditioned network is a TrigFlow network: c_in x = x_t / sigma_d, c_skip = cos^2 t,
  c_out = sigma_d sin t, so D = cos t x_t + sigma_d sin t F_edm and F = -F_edm(x_t / sigma_d,
  ln(sigma_d tan t) / 4) exactly (Sec. 3 of the paper: TrigFlow unifies EDM and flow matching).

t is a scalar or a (B,) array; it is broadcast against x's trailing axes.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_D = 0.5
T_MAX = float(np.arctan(80.0 / SIGMA_D))  # the paper's t_max = arctan(sigma_max / sigma_d)


def expand(t, x):
    """t shaped to broadcast against x: (B,) -> (B, 1, ..., 1)."""
    t = jnp.asarray(t, x.dtype)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


def sigma_of_t(t, sigma_d: float = SIGMA_D):
    """EDM noise level sigma = sigma_d tan t."""
    return sigma_d * jnp.tan(t)


def t_of_sigma(sigma, sigma_d: float = SIGMA_D):
    """t = arctan(sigma / sigma_d)."""
    return jnp.arctan(jnp.asarray(sigma) / sigma_d)


def to_edm(x_t, t):
    """The EDM state x = x0 + sigma n of x_t: x_t / cos t."""
    return x_t / jnp.cos(expand(t, x_t))


def from_edm(x, sigma, sigma_d: float = SIGMA_D):
    """x_t = cos t x of the EDM state x at noise level sigma."""
    sigma = expand(sigma, x)
    return x * sigma_d / jnp.sqrt(sigma**2 + sigma_d**2)


def noisy(x0, z, t):
    """x_t = cos t x0 + sin t z (z ~ N(0, sigma_d^2 I))."""
    t = expand(t, x0)
    return jnp.cos(t) * x0 + jnp.sin(t) * z


def velocity(x0, z, t):
    """dx_t/dt = cos t z - sin t x0: the diffusion target and sCT's tangent."""
    t = expand(t, x0)
    return jnp.cos(t) * z - jnp.sin(t) * x0


def sample_t(rng, n: int, P_mean: float, P_std: float, sigma_d: float = SIGMA_D):
    """The proposal p(t): tan t = e^tau / sigma_d with tau ~ N(P_mean, P_std^2) (Sec. 4.2)."""
    tau = P_mean + P_std * jax.random.normal(rng, (n,))
    return jnp.arctan(jnp.exp(tau) / sigma_d)


def denoiser_from_velocity(x_t, t, v):
    """x0_hat = cos t x_t - sin t v: the denoiser of a velocity v (= sigma_d F)."""
    t = expand(t, x_t)
    return jnp.cos(t) * x_t - jnp.sin(t) * v


def velocity_from_denoiser(x_t, t, x0_hat):
    """v = (cos t x_t - x0_hat) / sin t: the PF-ODE velocity of a denoiser (t > 0)."""
    t = expand(t, x_t)
    return (jnp.cos(t) * x_t - x0_hat) / jnp.sin(t)


def velocity_of_edm_denoiser(D: Callable, sigma_d: float = SIGMA_D) -> Callable:
    """v(x_t, t[, cond]) of an EDM denoiser D(x, sigma[, cond]) (a distillation teacher of any
    family with a denoiser): x0_hat = D(x_t / cos t, sigma_d tan t)."""
    def v(x_t, t, cond=None):
        t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
        args = (to_edm(x_t, t), sigma_of_t(t, sigma_d)) + (() if cond is None else (cond,))
        return velocity_from_denoiser(x_t, t, D(*args))
    return v


def consistency_function(F: Callable, sigma_d: float = SIGMA_D) -> Callable:
    """f(x_t, t[, cond]) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t[, cond]) (Eq. 6)."""
    def f(x_t, t, cond=None):
        t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
        return denoiser_from_velocity(x_t, t, sigma_d * F(x_t / sigma_d, t, cond))
    return f


def edm_convention(f: Callable, sigma_d: float = SIGMA_D) -> Callable:
    """A TrigFlow consistency function f(x_t, t) as f_edm(x, sigma) = f(cos t x, t) on EDM
    states, for the shared consistency sampler and editing (`samplers.consistency`): there
    x + sigma z with z ~ N(0, I) at sigma = sigma_d tan t is the TrigFlow re-noising cos t x0 +
    sin t sigma_d z."""
    def f_edm(x, sigma, cond=None):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        return f(from_edm(x, sigma, sigma_d), t_of_sigma(sigma, sigma_d), cond)
    return f_edm

