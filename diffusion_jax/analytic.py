"""Gaussian-mixture data with exact denoisers, scores and (for one Gaussian) exact ODE flows.

These closed forms are the ground truth the tests and experiments hold every process, sampler
and likelihood to. Data points are flat vectors of dimension d; reshape images around them.

Noise conventions:
- EDM / VE: x = x0 + sigma * n. The noisy marginal of component k is N(mu_k, C_k + sigma^2 I),
  the denoiser is D(x, sigma) = E[x0 | x] and the score is (D(x, sigma) - x) / sigma^2
  (Tweedie's formula, Karras et al. 2022, Eq. 3).
- VP: x_t = alpha x0 + sigma n. Then x_t / alpha = x0 + (sigma / alpha) n, so
  E[x0 | x_t] = D(x_t / alpha, sigma / alpha) and score = (alpha E[x0 | x_t] - x_t) / sigma^2.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """sum_k w_k N(mu_k, C_k); `labels[k]` is the class of component k (for conditional use).

    A conditional query with a label that no component has (the null label num_classes) is
    the unconditional one: the exact conditional model of classifier-free guidance."""

    weights: jax.Array  # (K,)
    means: jax.Array  # (K, d)
    covs: jax.Array  # (K, d, d)
    labels: Optional[jax.Array] = None  # (K,) int

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def mean(self) -> jax.Array:
        return jnp.einsum("k,kd->d", self.weights, self.means)

    @property
    def covariance(self) -> jax.Array:
        """Law of total covariance: sum_k w_k (C_k + mu_k mu_k^T) - mu mu^T."""
        mu = self.mean
        second = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means)
        return second - jnp.outer(mu, mu)

    def sample(self, rng: jax.Array, n: int, cond: Optional[jax.Array] = None) -> jax.Array:
        k_rng, z_rng = jax.random.split(rng)
        logits = jnp.broadcast_to(jnp.log(self.weights), (n, self.weights.shape[0]))
        logits = logits + self._class_mask(cond, n)
        comp = jax.random.categorical(k_rng, logits, axis=-1)
        chol = jnp.linalg.cholesky(self.covs)[comp]
        z = jax.random.normal(z_rng, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, z)

    def log_prob(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """log p_sigma(x) of the mixture convolved with N(0, sigma^2 I); x is (B, d)."""
        return jax.nn.logsumexp(self._component_log_probs(x, sigma), axis=-1)

    def denoiser(self, x: jax.Array, sigma: jax.Array | float,
                 cond: Optional[jax.Array] = None) -> jax.Array:
        """D(x, sigma) = E[x0 | x0 + sigma n = x] (per class if `cond` is given): per component
        mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k) = mu_k + U_k diag(lam / (lam + sigma^2))
        U_k^T (x - mu_k), weighted by the posterior responsibilities."""
        sigma = _per_example(sigma, x)
        lam, u, y = self._whitened(x)
        logp = self._log_probs_in_eigenbasis(lam, y, sigma) + self._class_mask(cond, x.shape[0])
        resp = jax.nn.softmax(logp, axis=-1)  # (B, K)
        shrink = lam[None] / (lam[None] + (sigma**2)[:, None, None])  # (B, K, d)
        post_mean = self.means[None] + jnp.einsum("kij,bkj->bki", u, shrink * y)
        return jnp.einsum("bk,bkd->bd", resp, post_mean)

    def score(self, x: jax.Array, sigma: jax.Array | float,
              cond: Optional[jax.Array] = None) -> jax.Array:
        """grad_x log p_sigma(x) for x = x0 + sigma n (VE convention)."""
        sigma = _per_example(sigma, x)
        return (self.denoiser(x, sigma, cond) - x) / (sigma**2)[:, None]

    def vp_score(self, x: jax.Array, alpha: jax.Array | float, sigma: jax.Array | float,
                 cond: Optional[jax.Array] = None) -> jax.Array:
        """grad log p(x_t) for x_t = alpha x0 + sigma n."""
        alpha, sigma = _per_example(alpha, x), _per_example(sigma, x)
        x0 = self.denoiser(x / alpha[:, None], sigma / alpha, cond)
        return (alpha[:, None] * x0 - x) / (sigma**2)[:, None]

    def _component_log_probs(self, x, sigma):
        lam, _, y = self._whitened(x)
        return self._log_probs_in_eigenbasis(lam, y, _per_example(sigma, x))

    def _whitened(self, x):
        """Each component's eigendecomposition C_k = U_k diag(lam_k) U_k^T and the coordinates
        y = U_k^T (x - mu_k), (B, K, d). One small eigh of the K covariances instead of a
        (B, K)-batched solve or Cholesky per call: jaxlib's batched CPU LAPACK kernels split
        their batch over the intra-op thread pool and wait for it, and two of them running at
        once in one program deadlock a 2-core host (jaxlib 0.10.2)."""
        lam, u = jnp.linalg.eigh(self.covs)
        y = jnp.einsum("kji,bkj->bki", u, x[:, None, :] - self.means[None])
        return jnp.maximum(lam, 0.0), u, y

    def _log_probs_in_eigenbasis(self, lam, y, sigma):
        """log w_k + log N(x; mu_k, C_k + sigma^2 I) from the eigenbasis coordinates."""
        var = lam[None] + (sigma**2)[:, None, None]  # (B, K, d)
        quad = jnp.sum(y**2 / var, axis=-1)
        logdet = jnp.sum(jnp.log(var), axis=-1)
        return jnp.log(self.weights) - 0.5 * (quad + logdet + self.dim * jnp.log(2 * jnp.pi))

    def _class_mask(self, cond, n):
        if cond is None:
            return jnp.zeros((n, self.weights.shape[0]))
        if self.labels is None:
            raise ValueError("a class-conditional query needs a mixture with `labels`")
        match = self.labels[None, :] == cond[:, None]
        match = match | ~jnp.any(match, axis=1, keepdims=True)  # no such class: the whole mixture
        return jnp.where(match, 0.0, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class DiscreteEpsNetwork:
    """The exact epsilon-prediction of `data` for a DDPM schedule with cumulative `alpha_bars`,
    called like a Flax module: apply(variables, x_t, t, cond) on images of d values each.

    A fractional timestep t has the sigma whose log interpolates log sigma_i = log sqrt((1 -
    alpha_bar_i) / alpha_bar_i) linearly in t (what `denoisers.from_discrete` queries), and
    eps = (x - D(x, sigma)) / sigma at x = x_t sqrt(1 + sigma^2).
    """

    data: GaussianMixture
    alpha_bars: jax.Array

    def apply(self, variables, x_t, t, cond=None, train=False, rngs=None):
        log_sigmas = 0.5 * jnp.log((1.0 - self.alpha_bars) / self.alpha_bars)
        sigma = jnp.exp(jnp.interp(t, jnp.arange(log_sigmas.shape[0]), log_sigmas))
        x = x_t.reshape(x_t.shape[0], -1) * jnp.sqrt(1.0 + sigma**2)[:, None]
        eps = (x - self.data.denoiser(x, sigma, cond)) / sigma[:, None]
        return eps.reshape(x_t.shape)


def gaussian(mean: jax.Array, cov: jax.Array) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture."""
    return GaussianMixture(jnp.ones((1,)), mean[None], cov[None])


def gaussian_ode_flow(x: jax.Array, mean: jax.Array, cov: jax.Array,
                      sigma_from: jax.Array | float, sigma_to: jax.Array | float) -> jax.Array:
    """Exact probability-flow ODE map of N(mean, cov) data from noise level sigma_from to sigma_to.

    dx/dsigma = (x - D(x, sigma)) / sigma = sigma (C + sigma^2 I)^{-1} (x - mu) (Karras et al. 2022,
    Eq. 4 with sigma(t) = t). In the eigenbasis of C = U diag(lam) U^T each coordinate scales as
    y(sigma_to) = y(sigma_from) sqrt((lam + sigma_to^2) / (lam + sigma_from^2)).
    """
    lam, u = jnp.linalg.eigh(cov)
    sigma_from, sigma_to = _per_example(sigma_from, x), _per_example(sigma_to, x)
    y = (x - mean) @ u
    scale = jnp.sqrt((lam[None] + sigma_to[:, None]**2) / (lam[None] + sigma_from[:, None]**2))
    return mean + (y * scale) @ u.T


def _per_example(value, x):
    return jnp.broadcast_to(jnp.asarray(value, dtype=x.dtype), (x.shape[0],))
