"""Network preconditioning D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, Eq. 7).

One frozen dataclass per column of Table 1 (VP, VE, iDDPM, EDM); calling it on sigma gives the
four coefficients, `sample_sigma(rng, n)` the column's training noise levels and
`loss_weight(sigma)` its lambda(sigma), and `precondition(F, scheme)` wraps a raw network
F(x_in, c_noise[, cond]) into a denoiser.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import denoisers


class Coefficients(NamedTuple):
    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


@dataclasses.dataclass(frozen=True)
class EDMPrecond:
    """Table 1, "ours": c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4."""

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2

    def __call__(self, sigma):
        sd2 = self.sigma_data**2
        total = jnp.square(sigma) + sd2
        return Coefficients(sd2 / total, sigma * self.sigma_data * jax.lax.rsqrt(total),
                            jax.lax.rsqrt(total), jnp.log(sigma) / 4.0)

    def sample_sigma(self, rng: jax.Array, n: int) -> jax.Array:
        """ln sigma ~ N(P_mean, P_std^2)."""
        return lognormal_sigma(rng, n, self.P_mean, self.P_std)

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """lambda = (sigma^2 + sd^2) / (sigma sd)^2."""
        return edm_loss_weight(sigma, self.sigma_data)


@dataclasses.dataclass(frozen=True)
class VPPrecond:
    """Table 1, VP: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = (M - 1) sigma^{-1}(sigma) with the linear-beta VP sigma(t)."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5

    def __call__(self, sigma):
        t = denoisers.vp_t_of_sigma(sigma, self.beta_d, self.beta_min)
        return Coefficients(jnp.ones_like(sigma), -sigma, denoisers.vp_alpha(sigma),
                            (self.M - 1) * t)

    def sample_sigma(self, rng: jax.Array, n: int) -> jax.Array:
        """sigma = sigma(t), t ~ U(epsilon_t, 1)."""
        t = jax.random.uniform(rng, (n,), minval=self.epsilon_t, maxval=1.0)
        return denoisers.vp_sigma(t, self.beta_d, self.beta_min)

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """lambda = 1 / sigma^2."""
        return 1.0 / jnp.square(sigma)


@dataclasses.dataclass(frozen=True)
class VEPrecond:
    """Table 1, VE: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def __call__(self, sigma):
        return Coefficients(jnp.ones_like(sigma), sigma, jnp.ones_like(sigma),
                            jnp.log(0.5 * sigma))

    def sample_sigma(self, rng: jax.Array, n: int) -> jax.Array:
        """ln sigma ~ U(ln sigma_min, ln sigma_max)."""
        log_sigma = jax.random.uniform(rng, (n,), minval=math.log(self.sigma_min),
                                       maxval=math.log(self.sigma_max))
        return jnp.exp(log_sigma)

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """lambda = 1 / sigma^2."""
        return 1.0 / jnp.square(sigma)


@dataclasses.dataclass(frozen=True)
class IDDPMPrecond:
    """Table 1, iDDPM: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = M - 1 - argmin_j |u_j - sigma|, with u_M = 0 and
    u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar_{j-1} / alpha_bar_j, C1) - 1),
    alpha_bar_j = sin^2(pi j / (2 M (C2 + 1)))."""

    C1: float = 0.001
    C2: float = 0.008
    M: int = 1000

    @functools.cached_property
    def u(self) -> np.ndarray:
        """u_0 > u_1 > ... > u_M = 0, the noise levels of the cosine-schedule network."""
        alpha_bar = lambda j: math.sin(0.5 * math.pi * j / self.M / (self.C2 + 1)) ** 2
        u = np.zeros(self.M + 1)
        for j in range(self.M, 0, -1):
            u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), self.C1) - 1)
        return u

    def index(self, sigma):
        """j = argmin_j |u_j - sigma|."""
        return jnp.argmin(jnp.abs(jnp.asarray(sigma)[..., None] - jnp.asarray(self.u)), axis=-1)

    def round_sigma(self, sigma):
        """The u_j nearest to sigma: EDM samples this network on these levels only."""
        return jnp.asarray(self.u, dtype=jnp.result_type(sigma, float))[self.index(sigma)]

    def __call__(self, sigma):
        c_noise = (self.M - 1 - self.index(sigma)).astype(jnp.result_type(sigma, float))
        return Coefficients(jnp.ones_like(sigma), -sigma, denoisers.vp_alpha(sigma), c_noise)

    def sample_sigma(self, rng: jax.Array, n: int) -> jax.Array:
        """sigma = u_j, j ~ U{0, ..., M - 1}."""
        return jnp.asarray(self.u, jnp.float32)[jax.random.randint(rng, (n,), 0, self.M)]

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """lambda = 1 / sigma^2."""
        return 1.0 / jnp.square(sigma)


@dataclasses.dataclass(frozen=True)
class ConsistencyPrecond:
    """The consistency-model boundary parameterisation (Song et al. 2023, Appendix C):
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = (sigma - sigma_min) sd /
    sqrt(sigma^2 + sd^2), with EDM's c_in = 1 / sqrt(sigma^2 + sd^2) and c_noise = ln(sigma) / 4.
    At sigma = sigma_min, c_skip = 1 and c_out = 0 exactly, so f(x, sigma_min) = x whatever the
    network; elsewhere it is EDM's preconditioning shifted by sigma_min."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002

    def __call__(self, sigma):
        sd2 = self.sigma_data**2
        shifted = sigma - self.sigma_min
        return Coefficients(sd2 / (jnp.square(shifted) + sd2),
                            shifted * self.sigma_data * jax.lax.rsqrt(jnp.square(sigma) + sd2),
                            jax.lax.rsqrt(jnp.square(sigma) + sd2), jnp.log(sigma) / 4.0)


COLUMNS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}


def precondition(F: Callable, scheme: Callable) -> denoisers.Denoiser:
    """D(x, sigma[, cond]) = c_skip x + c_out F(c_in x, c_noise[, cond]) (Karras et al. 2022, Eq. 7)."""
    def denoiser(x, sigma, cond=None):
        sigma = denoisers.per_example(sigma, x)
        c = scheme(sigma)
        c_skip, c_out, c_in = (denoisers.expand(a, x) for a in c[:3])
        return c_skip * x + c_out * denoisers.call(F, c_in * x, c.c_noise, cond)
    return denoiser


def lognormal_sigma(rng: jax.Array, n: int, P_mean: float = -1.2, P_std: float = 1.2) -> jax.Array:
    """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)."""
    return jnp.exp(P_mean + P_std * jax.random.normal(rng, (n,)))


def edm_loss_weight(sigma: jax.Array, sigma_data: float = 0.5) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (Karras et al. 2022, Table 1)."""
    return (jnp.square(sigma) + sigma_data**2) / jnp.square(sigma * sigma_data)
