"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, EDM2, Sec. 3 and
App. C; NVlabs/edm2 `training/phema.py`), and EDM's traditional EMA (Karras et al. 2022, Sec. 5).

Time t is counted in training images, not steps. A power-function EMA at time t averages the
parameters theta(tau) of 0 <= tau <= t with the profile p_t(tau) = (gamma + 1) tau^gamma /
t^(gamma + 1); its width relative to t is sigma_rel (Eq. 123). Tracked with the per-step beta
of Eq. 127, the EMA after n steps of `batch` images is exactly sum_k w_k theta_k with
w_k = (k^(gamma + 1) - (k - 1)^(gamma + 1)) / n^(gamma + 1), the profile integrated over the
images of step k. Snapshots of a few tracked profiles at a few times determine, by least
squares over the profiles (Alg. 3), the EMA for any other sigma_rel and any time up to the last
snapshot. The solve is host-side numpy in float64; the updates are pytree maps that work on
jax or numpy arrays.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError

SIGMA_REL_MAX = 0.289
"""NVlabs' bound on sigma_rel (`reconstruct_phema.parse_std_list`): just above
gamma_to_sigma_rel(0) = 1 / sqrt(12), the flat profile."""


def gamma_to_sigma_rel(gamma):
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (Eq. 123), float64."""
    gamma = np.float64(gamma)
    return np.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3))


def sigma_rel_to_gamma(sigma_rel):
    """The inverse of Eq. 123: the largest real root of gamma^3 + 7 gamma^2 +
    (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0 (Eq. 126, Alg. 2), float64.
    ConfigError unless 0 < sigma_rel < 0.289."""
    sigma_rel = np.float64(sigma_rel)
    if not np.all((sigma_rel > 0) & (sigma_rel < SIGMA_REL_MAX)):
        raise ConfigError(f"EMA sigma_rel must be in (0, {SIGMA_REL_MAX}), got {sigma_rel}")
    s = sigma_rel.reshape(-1) ** -2
    gamma = [np.roots([1.0, 7.0, 16.0 - v, 12.0 - v]).real.max() for v in s]
    return np.float64(gamma).reshape(sigma_rel.shape)


def power_function_beta(gamma, t, batch):
    """beta = (1 - batch / t)^(gamma + 1) (Eq. 127) for the update ema <- beta ema +
    (1 - beta) theta after a step of `batch` images, t the images seen after the step (so
    beta = 0 after the first step). Works on traced t."""
    return (1.0 - batch / t) ** (gamma + 1.0)


def ema_update(ema, params, beta):
    """ema <- beta ema + (1 - beta) params, leaf by leaf."""
    return jax.tree.map(lambda e, p: beta * e + (1.0 - beta) * p, ema, params)


def update_power_emas(emas: Sequence, params, gammas: Sequence[float], t, batch) -> tuple:
    """One step of several power-function EMAs: `emas` a sequence of parameter pytrees, one
    per exponent in `gammas`, each updated with `power_function_beta(gamma, t, batch)`."""
    return tuple(ema_update(ema, params, power_function_beta(float(gamma), t, batch))
                 for ema, gamma in zip(emas, gammas, strict=True))


def power_ema_weight(gamma, n):
    """1 - beta of Eq. 127 after the n-th step of a constant batch (t = n batch, so beta =
    (1 - 1/n)^(gamma + 1)), as -expm1((gamma + 1) log1p(-1/n)): in float32 both 1 - 1/n and
    1 - beta lose their relative precision once 1/n nears the float epsilon (at n = 1e6, gamma 7
    the direct form is a few per cent off), these forms do not. 1 at n = 1. Works on traced n."""
    return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / jnp.asarray(n, jnp.float32)))


def update_power_emas_at_step(emas: Sequence, params, gammas: Sequence[float], n) -> tuple:
    """`update_power_emas` after the n-th optimiser step of a constant batch (t = n batch): each
    ema <- (1 - w) ema + w params with w = `power_ema_weight(gamma, n)`."""
    out = []
    for ema, gamma in zip(emas, gammas, strict=True):
        w = power_ema_weight(float(gamma), n)
        out.append(jax.tree.map(lambda e, p: (1.0 - w) * e + w * p, ema, params))
    return tuple(out)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = int p_{t_a, gamma_a}(tau) p_{t_b, gamma_b}(tau) dtau =
    (gamma_a + 1) (gamma_b + 1) (t_a / t_b)^e / ((gamma_a + gamma_b + 1) max(t_a, t_b)),
    e = gamma_b if t_a < t_b else -gamma_a (Eq. 151); broadcasts, float64."""
    t_a, gamma_a, t_b, gamma_b = (np.float64(v) for v in (t_a, gamma_a, t_b, gamma_b))
    e = np.where(t_a < t_b, gamma_b, -gamma_a)
    return ((gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** e
            / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b)))


def reconstruction_coefficients(snapshot_t, snapshot_gamma, t, sigma_rel) -> np.ndarray:
    """Coefficients c of the EMA at time t with width sigma_rel as sum_i c_i snapshot_i
    (Alg. 3): the least-squares fit of its profile by the snapshots' profiles, c = A^-1 b with
    the Gram matrix A_ij = <p_i, p_j> and b_i = <p_i, p_target> (Eq. 151), rescaled to sum to 1.

    snapshot_t (n,) in images, each > 0 and <= t; snapshot_gamma (n,) their exponents;
    t a scalar in images; sigma_rel a scalar (-> (n,)) or (m,) (-> (n, m), a column per
    target). Duplicate snapshots make A singular."""
    snapshot_t, snapshot_gamma = np.broadcast_arrays(np.float64(snapshot_t),
                                                     np.float64(snapshot_gamma))
    if snapshot_t.ndim != 1 or snapshot_t.size == 0:
        raise ConfigError("post-hoc EMA needs a non-empty 1-D list of snapshots")
    if not np.all((snapshot_t > 0) & (snapshot_t <= t)):
        raise ConfigError(f"post-hoc EMA at t = {t} images needs snapshots at 0 < t_i <= t, "
                          f"got {snapshot_t.tolist()}")
    gamma = np.atleast_1d(sigma_rel_to_gamma(sigma_rel))
    gram = profile_inner_product(snapshot_t[:, None], snapshot_gamma[:, None],
                                 snapshot_t[None, :], snapshot_gamma[None, :])
    rhs = profile_inner_product(snapshot_t[:, None], snapshot_gamma[:, None], t, gamma[None, :])
    coefficients = np.linalg.solve(gram, rhs)
    coefficients = coefficients / coefficients.sum(axis=0)
    return coefficients[:, 0] if np.ndim(sigma_rel) == 0 else coefficients


def combine_snapshots(snapshots: Sequence, coefficients):
    """sum_i coefficients[i] snapshots[i] over parameter pytrees of one structure."""
    coefficients = np.asarray(coefficients)
    if coefficients.shape != (len(snapshots),):
        raise ValueError(f"{len(snapshots)} snapshots need ({len(snapshots)},) coefficients, "
                         f"got {coefficients.shape}")
    weights = [float(c) for c in coefficients]
    return jax.tree.map(lambda *leaves: sum(c * leaf for c, leaf in zip(weights, leaves)),
                        *snapshots)


def traditional_ema_beta(n_img, batch, halflife_images: float,
                         rampup_ratio: Optional[float] = None) -> jax.Array:
    """EDM's EMA decay beta = 0.5^(batch / max(h, 1e-8)) with the half-life
    h = min(halflife_images, n_img rampup_ratio) (h = halflife_images when rampup_ratio is
    None) (Karras et al. 2022, Sec. 5: `ema_halflife_kimg` 500, `ema_rampup_ratio` 0.05).
    EDM's training loop passes n_img = images seen before the step; NVlabs/edm2's
    TraditionalEMA the images seen after it. A jax scalar; n_img may be traced."""
    halflife = jnp.asarray(halflife_images, jnp.float32)
    if rampup_ratio is not None:
        halflife = jnp.minimum(halflife, n_img * rampup_ratio)
    return 0.5 ** (batch / jnp.maximum(halflife, 1e-8))
