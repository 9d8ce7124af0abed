"""The forward SDEs of score-based generative modelling (Song et al. 2021, Sec. 3.4).

dx = f(x, t) dt + g(t) dw on t in [0, T], T = 1, with a Gaussian perturbation kernel
p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), i.e. x_t = alpha(t) x_0 + sigma(t) eps:

- VP (Eq. 11): beta(t) = beta_min + t (beta_max - beta_min), f = -beta x / 2, g = sqrt(beta);
  alpha = exp(-B(t) / 2), sigma^2 = 1 - alpha^2 with B(t) = int_0^t beta (App. B).
- sub-VP (Eq. 12): the VP drift with g^2 = beta (1 - exp(-2 B)); alpha as VP, sigma = 1 - alpha^2.
- VE (Eq. 9): sigma(t) = sigma_min (sigma_max / sigma_min)^t, f = 0,
  g = sigma(t) sqrt(2 log(sigma_max / sigma_min)); alpha = 1. As in the reference code the kernel
  std is sigma(t) itself, i.e. x(0) already carries noise sigma_min (the SDE started from clean
  data gives sigma(t)^2 - sigma_min^2).

x is (B, ...) and t is (B,). The SDE objects are frozen dataclasses registered as pytrees with
every field static, so they pass through `jax.jit` as arguments and hash as static arguments.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.processes.schedules import from_betas, linear_betas

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _static_pytree(cls):
    """A frozen dataclass registered as a pytree whose fields are all static metadata."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=names)


def expand(a: jax.Array, x: jax.Array) -> jax.Array:
    """A (B,) array reshaped to broadcast against x of shape (B, ...)."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


class SDE:
    """Shared methods; subclasses define alpha, sigma, sde, prior_std and noise_conditioning."""

    N: int  # steps of the discretisation (the chain behind `discretize` and the samplers)

    @property
    def T(self) -> float:
        return 1.0

    def alpha(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def sigma(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(f(x, t), g(t)): drift (B, ...) and diffusion (B,)."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        raise NotImplementedError

    def noise_conditioning(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean alpha(t) x0 (B, ...) and std sigma(t) (B,) of p_0t(x_t | x0)."""
        return expand(self.alpha(t), x0) * x0, self.sigma(t)

    def prior_sampling(self, rng: jax.Array, shape) -> jax.Array:
        """x_T ~ N(0, prior_std^2 I), the prior p_T."""
        return self.prior_std * jax.random.normal(rng, shape)

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """log N(z; 0, prior_std^2 I) per example, (B,)."""
        d = math.prod(z.shape[1:])
        sq = jnp.sum(jnp.square(z.reshape(z.shape[0], -1)), axis=-1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def edm_sigma(self, t: jax.Array) -> jax.Array:
        """sigma(t) / alpha(t): the noise level of x_t / alpha(t) = x0 + (sigma / alpha) eps, the
        sigma of Karras et al. 2022 (Eq. 4 with s(t) = alpha(t)) that every denoiser sampler uses."""
        return self.sigma(t) / self.alpha(t)

    def t_of_edm_sigma(self, sigma: jax.Array) -> jax.Array:
        """The time t at which edm_sigma(t) = sigma (the inverse of `edm_sigma`)."""
        raise NotImplementedError

    def chain_index(self, t: jax.Array) -> jax.Array:
        """i = floor((N - 1) t / T): the step of the N-step chain at time t.

        The samplers' grid linspace(T, eps, N) visits i = N-1, ..., 0 in turn (for eps < T / (N-1))
        and the chain's own times i T / (N - 1) map to i; a margin of 2^-12 absorbs float32
        rounding of t (N up to about 2000).
        """
        i = jnp.floor(t * (self.N - 1) / self.T + 2.0**-12).astype(jnp.int32)
        return jnp.clip(i, 0, self.N - 1)

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(f_i, G_i) of x_{i+1} = x_i + f_i + G_i z: Euler-Maruyama with dt = T / N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (Eq. 6) or, with `probability_flow`, the ODE (Eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def probability_flow_drift(self, score_fn: ScoreFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """dx/dt = f(x, t) - g(t)^2 / 2 * score(x, t) (Eq. 13)."""
        return lambda x, t: self.reverse(score_fn, probability_flow=True).sde(x, t)[0]


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """dx = [f - c g^2 score] dt + g' dw-bar run backwards in t; c = 1, g' = g for the reverse SDE
    (Eq. 6) and c = 1/2, g' = 0 for the probability-flow ODE (Eq. 13)."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    def _combine(self, f, g, x, t):
        c = 0.5 if self.probability_flow else 1.0
        drift = f - expand(c * jnp.square(g), x) * self.score_fn(x, t)
        return drift, jnp.zeros_like(g) if self.probability_flow else g

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(drift, diffusion) of the reverse process at time t."""
        f, g = self.forward.sde(x, t)
        return self._combine(f, g, x, t)

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The reverse chain x_i = x_{i+1} - f_rev + G_rev z (reverse diffusion, App. E)."""
        f, g = self.forward.discretize(x, t)
        return self._combine(f, g, x, t)


class _LinearBeta(SDE):
    beta_min: float
    beta_max: float

    def beta(self, t: jax.Array) -> jax.Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: jax.Array) -> jax.Array:
        """B(t) = int_0^t beta(s) ds = beta_min t + (beta_max - beta_min) t^2 / 2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * jnp.square(t)

    def alpha(self, t: jax.Array) -> jax.Array:
        return jnp.exp(-0.5 * self.integrated_beta(t))

    @property
    def discrete_betas(self) -> jax.Array:
        """beta_i of the N-step DDPM chain: linear from beta_min / N to beta_max / N (Eq. 10)."""
        return from_betas(linear_betas(self.N, self.beta_min / self.N, self.beta_max / self.N)).betas

    @property
    def prior_std(self) -> float:
        return 1.0

    def noise_conditioning(self, t: jax.Array) -> jax.Array:
        """(N - 1) t = 999 t, what the reference code feeds its nets' positional embedding."""
        return (self.N - 1) * t

    def t_of_integrated_beta(self, b: jax.Array) -> jax.Array:
        """The root t >= 0 of B(t) = b."""
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))


@_static_pytree
class VPSDE(_LinearBeta):
    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def sigma(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def t_of_edm_sigma(self, sigma: jax.Array) -> jax.Array:
        """sigma / alpha = sqrt(e^B - 1), so B = log(1 + sigma^2)."""
        return self.t_of_integrated_beta(jnp.log1p(jnp.square(sigma)))

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        beta = self.beta(t)
        return -0.5 * expand(beta, x) * x, jnp.sqrt(beta)

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The DDPM chain x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Eq. 10):
        f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i)."""
        beta = self.discrete_betas[self.chain_index(t)]
        return (expand(jnp.sqrt(1.0 - beta), x) - 1.0) * x, jnp.sqrt(beta)


@_static_pytree
class SubVPSDE(_LinearBeta):
    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def sigma(self, t: jax.Array) -> jax.Array:
        return -jnp.expm1(-self.integrated_beta(t))

    def t_of_edm_sigma(self, sigma: jax.Array) -> jax.Array:
        """sigma / alpha = e^{B/2} - e^{-B/2} = 2 sinh(B / 2), so B = 2 asinh(sigma / 2)."""
        return self.t_of_integrated_beta(2.0 * jnp.arcsinh(sigma / 2.0))

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        beta = self.beta(t)
        g2 = beta * -jnp.expm1(-2.0 * self.integrated_beta(t))
        return -0.5 * expand(beta, x) * x, jnp.sqrt(g2)


@_static_pytree
class VESDE(SDE):
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def alpha(self, t: jax.Array) -> jax.Array:
        return jnp.ones_like(t)

    def sigma(self, t: jax.Array) -> jax.Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        g = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), g

    @property
    def discrete_sigmas(self) -> jax.Array:
        """sigma_i geometric from sigma_min to sigma_max in N steps (the SMLD noise levels)."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (Eq. 8, sigma_{-1} = 0):
        f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)."""
        i = self.chain_index(t)
        sigmas = self.discrete_sigmas
        prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(jnp.square(sigmas[i]) - jnp.square(prev))

    def t_of_edm_sigma(self, sigma: jax.Array) -> jax.Array:
        return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def noise_conditioning(self, t: jax.Array) -> jax.Array:
        """sigma(t), what the reference code feeds its NCSN++ nets (which embed log sigma)."""
        return self.sigma(t)


SDES = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE}
