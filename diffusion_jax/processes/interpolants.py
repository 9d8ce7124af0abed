"""Interpolants x_t = alpha_t x + sigma_t eps of flow matching and stochastic interpolants.

Time convention, the one of this codebase: **t = 0 is data, t = 1 is noise** (SD3, MeanFlow,
the score SDEs). SiT, RectifiedFlow and the flow_matching library run the other way (t = 1 is
data); `sit_time` converts at the edges. x is data, eps ~ N(0, I), and the velocity is
v = dx_t / dt = alpha'_t x + sigma'_t eps, pointing from data to noise: sampling integrates
dx = v dt from t = 1 down to t = 0.

Paths (`PATHS`), with a' = da/dt:
- `Linear` (rectified flow, Liu et al. 2023; with sigma_min the conditional OT path of Lipman
  et al. 2023, mu = t x1, sigma = 1 - (1 - sigma_min) t in their time t -> 1 - t):
  alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t, v = (1 - sigma_min) eps - x.
- `GVP` (SiT's generalised VP): alpha = cos(pi t / 2), sigma = sin(pi t / 2).
- `VP` (SiT's VPCPlan = the VP SDE of Song et al. 2021): alpha = exp(-t^2 (beta_max - beta_min)
  / 4 - t beta_min / 2), sigma = sqrt(1 - alpha^2).

Predictions (`PREDICTIONS`) of a network at (x_t, t) are velocity, eps, score = -eps / sigma
(Tweedie: E[eps | x_t] = -sigma grad log p_t) and x0 = E[x | x_t]; all are affine in the pair
(x0, eps), which x_t = alpha x0 + sigma eps and the prediction determine (`to_x0_eps`), so
`convert` is exact between any two. With delta = alpha sigma' - alpha' sigma (1 for the linear
path): x0 = (sigma' x_t - sigma v) / delta and eps = (alpha v - alpha' x_t) / delta.

The EDM denoiser (Karras et al. 2022): x_t / alpha = x0 + (sigma / alpha) eps, so the path at t
is EDM's x = x_t / alpha_t at noise level sigma_EDM = sigma_t / alpha_t, increasing in t, with
the inverse `t_of_edm_sigma`; `denoiser` turns any prediction network into D(x, sigma[, cond]),
on which every sampler of the denoiser family runs.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.processes.sde import expand


def _path(cls):
    """A frozen dataclass registered as a static pytree (a hashable jit argument)."""
    return jax.tree_util.register_static(dataclasses.dataclass(frozen=True)(cls))


@_path
class Linear:
    """alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t (sigma_min = 0: rectified flow)."""

    sigma_min: float = 0.0

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return self.sigma_min + (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return -jnp.ones_like(t)

    def d_sigma(self, t):
        return (1.0 - self.sigma_min) * jnp.ones_like(t)

    def t_of_edm_sigma(self, s):
        """sigma_t / alpha_t = s: t = (s - sigma_min) / (1 + s - sigma_min)."""
        return (s - self.sigma_min) / (1.0 + s - self.sigma_min)


@_path
class GVP:
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2): alpha^2 + sigma^2 = 1 (SiT's GVPCPlan)."""

    def alpha(self, t):
        return jnp.cos(0.5 * math.pi * t)

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * t)

    def d_alpha(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)

    def d_sigma(self, t):
        return 0.5 * math.pi * jnp.cos(0.5 * math.pi * t)

    def t_of_edm_sigma(self, s):
        """tan(pi t / 2) = s: t = 2 arctan(s) / pi."""
        return 2.0 / math.pi * jnp.arctan(s)


@_path
class VP:
    """alpha = exp(-B(t) / 2), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 = int_0^t
    beta, sigma = sqrt(1 - alpha^2); alpha' = -beta(t) alpha / 2, sigma' = -alpha alpha' / sigma
    (SiT's VPCPlan with its beta_min 0.1, beta_max 20, at t_SiT = 1 - t)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _log_alpha(self, t):
        return -0.25 * (self.beta_max - self.beta_min) * t**2 - 0.5 * self.beta_min * t

    def alpha(self, t):
        return jnp.exp(self._log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return 0.5 * self.beta(t) * jnp.exp(2.0 * self._log_alpha(t)) / self.sigma(t)

    def t_of_edm_sigma(self, s):
        """alpha^-2 = 1 + s^2: t = (sqrt(beta_min^2 + 2 (beta_max - beta_min) log(1 + s^2))
        - beta_min) / (beta_max - beta_min)."""
        beta_d = self.beta_max - self.beta_min
        root = jnp.sqrt(self.beta_min**2 + 2.0 * beta_d * jnp.log1p(s**2))
        return (root - self.beta_min) / beta_d


PATHS = {"linear": Linear, "gvp": GVP, "vp": VP}
PREDICTIONS = ("velocity", "eps", "score", "x0")


def sit_time(t):
    """SiT's time of our t, and ours of SiT's: 1 - t. Velocities change sign (v = -v_SiT);
    alpha, sigma, eps, score and x0 at the same point of the path are the same."""
    return 1.0 - t


def interpolate(path, t, x, eps):
    """x_t = alpha_t x + sigma_t eps; t (B,) or a scalar, x and eps (B, ...)."""
    return expand(path.alpha(t), x) * x + expand(path.sigma(t), x) * eps


def velocity(path, t, x, eps):
    """The conditional velocity v = alpha'_t x + sigma'_t eps of the pair (x, eps): the flow
    matching regression target, whose conditional mean E[v | x_t] is the marginal velocity."""
    return expand(path.d_alpha(t), x) * x + expand(path.d_sigma(t), x) * eps


def _delta(path, t):
    """alpha sigma' - alpha' sigma, the determinant of (x0, eps) -> (x_t, v)."""
    return path.alpha(t) * path.d_sigma(t) - path.d_alpha(t) * path.sigma(t)


def to_x0_eps(path, kind: str, pred, x_t, t):
    """(x0, eps) with x_t = alpha x0 + sigma eps and the `kind` prediction `pred` at (x_t, t)."""
    a, s = expand(path.alpha(t), x_t), expand(path.sigma(t), x_t)
    if kind == "velocity":
        da, ds, d = (expand(f, x_t) for f in (path.d_alpha(t), path.d_sigma(t), _delta(path, t)))
        return (ds * x_t - s * pred) / d, (a * pred - da * x_t) / d
    if kind == "eps":
        return (x_t - s * pred) / a, pred
    if kind == "score":
        return (x_t + s**2 * pred) / a, -s * pred
    if kind == "x0":
        return pred, (x_t - a * pred) / s
    raise ConfigError(f"unknown prediction {kind!r}; valid: {', '.join(PREDICTIONS)}")


def from_x0_eps(path, kind: str, x0, eps, t):
    """The `kind` prediction of the pair (x0, eps) at t: velocity alpha' x0 + sigma' eps,
    eps, score -eps / sigma, or x0."""
    if kind == "velocity":
        return velocity(path, t, x0, eps)
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / expand(path.sigma(t), eps)
    if kind == "x0":
        return x0
    raise ConfigError(f"unknown prediction {kind!r}; valid: {', '.join(PREDICTIONS)}")


def convert(path, pred, x_t, t, source: str, target: str):
    """A `source` prediction at (x_t, t) as the `target` prediction (both in PREDICTIONS)."""
    return from_x0_eps(path, target, *to_x0_eps(path, source, pred, x_t, t), t)


def edm_sigma(path, t):
    """EDM's noise level of the path at t: sigma_t / alpha_t."""
    return path.sigma(t) / path.alpha(t)


def denoiser(path, fn: Callable, kind: str = "velocity") -> Callable:
    """D(x, sigma[, cond]) = E[x0 | x] in EDM's x = x0 + sigma n, of a `kind` network
    fn(x_t, t[, cond]) on `path`: t = t_of_edm_sigma(sigma), x_t = alpha_t x, D = its x0.
    A sigma below the path's smallest (the linear path's sigma_min) is taken at t = 0."""
    choose("prediction", kind, PREDICTIONS)

    def denoise(x, sigma, cond=None):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        t = jnp.maximum(path.t_of_edm_sigma(sigma), 0.0)
        x_t = expand(path.alpha(t), x) * x
        pred = fn(x_t, t) if cond is None else fn(x_t, t, cond)
        return convert(path, pred, x_t, t, kind, "x0")
    return denoise


def sbdm_diffusion(path, t):
    """g_t = sigma_t (alpha_t sigma'_t - alpha'_t sigma_t) / alpha_t, SiT's `compute_drift`
    diffusion (alpha-dot/alpha) sigma^2 - sigma sigma-dot in its time: with w_t = g_t the SDE
    below is the reverse SDE of a score-based diffusion model (VP: g = beta(t) / 2; linear:
    t / (1 - t))."""
    return path.sigma(t) * _delta(path, t) / path.alpha(t)


DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")


def diffusion_coefficient(path, t, form: str, norm: float = 1.0):
    """w_t of SiT's `compute_diffusion` (form, norm) at s = t_SiT = 1 - t: constant norm;
    SBDM norm g_t; sigma norm sigma_t; linear norm (1 - s) = norm t; decreasing
    (norm cos(pi s) + 1)^2 / 4 = (1 - norm cos(pi t))^2 / 4; increasing-decreasing
    norm sin^2(pi s) = norm sin^2(pi t)."""
    t = jnp.asarray(t)
    if form == "constant":
        return norm * jnp.ones_like(t)
    if form == "SBDM":
        return norm * sbdm_diffusion(path, t)
    if form == "sigma":
        return norm * path.sigma(t)
    if form == "linear":
        return norm * t
    if form == "decreasing":
        return 0.25 * (1.0 - norm * jnp.cos(math.pi * t)) ** 2
    if form == "increasing-decreasing":
        return norm * jnp.sin(math.pi * t) ** 2
    raise ConfigError(f"unknown diffusion form {form!r}; valid: {', '.join(DIFFUSION_FORMS)}")


def sde_drift(v, score, w):
    """v - w_t score: the drift of dx = (v - w_t score) dt + sqrt(2 w_t) dW, run backward in
    time from t = 1 to 0 (an Euler-Maruyama step to t - h: x - h (v - w score) + sqrt(2 w h) xi),
    which is SiT's drift v_SiT + w score in its forward time. For every w_t >= 0 its marginals
    are those of the path: the w terms of the Fokker-Planck equation cancel, div(p w grad log p)
    = w laplacian(p). w is (B,) or a scalar."""
    return v - expand(jnp.asarray(w), score) * score


WEIGHTINGS = ("none", "velocity", "likelihood")


def loss_weight(path, t, weighting: str):
    """SiT's weight of the eps / score losses: none 1, velocity (g_t / sigma_t)^2, likelihood
    g_t / sigma_t^2 with g_t = `sbdm_diffusion` (its `training_losses`)."""
    t = jnp.asarray(t)
    if weighting == "none":
        return jnp.ones_like(t)
    if weighting == "velocity":
        return (sbdm_diffusion(path, t) / path.sigma(t)) ** 2
    if weighting == "likelihood":
        return sbdm_diffusion(path, t) / path.sigma(t) ** 2
    raise ConfigError(f"unknown loss weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def sample_uniform(rng, n: int, t_min: float = 0.0, t_max: float = 1.0):
    """t ~ U[t_min, t_max] (SiT: [0, 1] for velocity on linear / GVP, else an eps margin)."""
    return jax.random.uniform(rng, (n,), minval=t_min, maxval=t_max)


def sample_logit_normal(rng, n: int, m: float = 0.0, s: float = 1.0):
    """t = sigmoid(m + s n), n ~ N(0, 1): SD3's logit-normal (Esser et al. 2024, Sec. 3.1;
    their best rf/lognorm(0.00, 1.00)), t = 1 noise as here. Density `logit_normal_density`."""
    return jax.nn.sigmoid(m + s * jax.random.normal(rng, (n,)))


def logit_normal_density(t, m: float = 0.0, s: float = 1.0):
    """pi(t; m, s) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))."""
    z = (jnp.log(t) - jnp.log1p(-t) - m) / s
    return jnp.exp(-0.5 * z**2) / (s * math.sqrt(2.0 * math.pi) * t * (1.0 - t))


def sample_skewed(rng, n: int):
    """The flow_matching library's "skewed" timesteps: sigma = exp(-1.2 + 1.2 n), t_fm =
    1 / (1 + sigma) clipped to [1e-4, 1] in its time (t = 1 data). Here t = 1 - t_fm = sigma /
    (1 + sigma) in [0, 1 - 1e-4]: EDM's log-normal sigma (P_mean -1.2, P_std 1.2) on the linear
    path, i.e. a logit-normal (m = -1.2, s = 1.2), clipped."""
    sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(rng, (n,)))
    return jnp.minimum(sigma / (1.0 + sigma), 1.0 - 1e-4)


T_DISTRIBUTIONS = {"uniform": sample_uniform, "logit_normal": sample_logit_normal,
                   "skewed": sample_skewed}
