"""Probability-flow ODE log-likelihoods against the exact log-density of Gaussian data, and the
bits/dim conversion (Song et al. 2021, Sec. 4.3 and App. D.2)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, likelihood
from diffusion_jax.processes import sde as sde_lib

MEAN = jnp.array([0.3, -0.5])
COV = jnp.array([[0.5, 0.2], [0.2, 0.3]])
LAM, U = np.linalg.eigh(np.asarray(COV))
EPS = 1e-5


def gaussian_score(sde):
    """grad log N(x; alpha mu, U diag(alpha^2 lam + sigma^2) U^T): the exact score at time t."""
    def score(x, t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        y = (x - a * MEAN) @ U
        return -(y / (a**2 * LAM + s**2)) @ U.T
    return score


def exact_logp(sde, x, t):
    """log p_t(x) of the Gaussian data's marginal at time t: N(alpha mu, alpha^2 C + sigma^2 I)."""
    a, s = sde.alpha(jnp.full((1,), t))[0], sde.sigma(jnp.full((1,), t))[0]
    return analytic.gaussian(a * MEAN, a**2 * COV).log_prob(x, s)


def test_gaussian_score_is_the_analytic_one():
    sde = sde_lib.VPSDE()
    x, t = jax.random.normal(jax.random.key(0), (16, 2)), jnp.linspace(0.05, 1.0, 16)
    expected = analytic.gaussian(MEAN, COV).vp_score(x, sde.alpha(t), sde.sigma(t))
    np.testing.assert_allclose(gaussian_score(sde)(x, t), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()],
                         ids=["vp", "subvp", "ve"])
def test_exact_divergence_likelihood_matches_the_gaussian_density(sde):
    x = analytic.gaussian(MEAN, COV).sample(jax.random.key(1), 16)
    run = jax.jit(lambda x: likelihood.log_likelihood(gaussian_score(sde), sde, x, None,
                                                      divergence="exact", eps=EPS))
    logp, z, nfe = run(x)
    expected = exact_logp(sde, x, EPS)
    # The prior N(0, prior_std^2 I) stands in for p_T: off by alpha(T) ~ 7e-3 (VP) or C / 50^2 (VE).
    np.testing.assert_allclose(logp, expected, rtol=1e-2, atol=1e-2)
    assert z.shape == x.shape and 10 < int(nfe) < 2000


def test_hutchinson_likelihood_is_unbiased():
    """64 Rademacher (and Gaussian) probes per point, averaged, land on the density within
    their standard error."""
    sde, reps = sde_lib.VPSDE(), 64
    x = analytic.gaussian(MEAN, COV).sample(jax.random.key(2), 8)
    tiled = jnp.repeat(x, reps, axis=0)  # probes are drawn per example, so per repetition

    @jax.jit
    def run(rng):
        out = []
        for divergence, key in zip(("rademacher", "gaussian"), jax.random.split(rng)):
            logp, _, _ = likelihood.log_likelihood(gaussian_score(sde), sde, tiled, key,
                                                   divergence=divergence, eps=EPS)
            out.append(logp.reshape(-1, reps))
        return jnp.stack(out)

    logps = np.asarray(run(jax.random.key(3)), np.float64)  # (2, points, reps)
    expected = np.asarray(exact_logp(sde, x, EPS), np.float64)
    for per_probe in logps:
        assert np.std(per_probe) > 1e-3  # the probes really are random
        # The 2-D Rademacher estimate errs by 2 v1 v2 int (J_12 + J_21) dt / 2, about 0.5-1 nats
        # per probe here, so the average is held to 4 standard errors plus 1% of |log p|.
        se = per_probe.std(-1) / np.sqrt(reps)
        np.testing.assert_array_less(np.abs(per_probe.mean(-1) - expected),
                                     4 * se + 1e-2 * np.abs(expected))


def test_unknown_divergence():
    with pytest.raises(ValueError, match="rademacher"):
        likelihood.log_likelihood(gaussian_score(sde_lib.VPSDE()), sde_lib.VPSDE(),
                                  jnp.zeros((2, 2)), None, divergence="trace")


def test_bits_per_dim_by_hand():
    """Data in [-1, 1] on L = 256 levels, uniformly dequantised: each bin is 2 / 256 wide, so
    bpd = -log p / (D ln 2) + log2(256 / 2) = -log p / (D ln 2) + 7, score_sde's offset for centred
    data (7 - inverse_scaler(-1) = 7); data in [0, 1] (bins 1 / 256, offset 8) gives the same bpd
    because log p picks up D ln 2 under x -> (x + 1) / 2."""
    to_bpd = likelihood.log_likelihood_to_bits_per_dim
    D = 3072
    logp = jnp.array([-D * 3 * math.log(2.0), 0.0])
    np.testing.assert_allclose(to_bpd(logp, D, 256), [10.0, 7.0], rtol=1e-6)
    # The uniform density on [-1, 1]^D, log p = -D ln 2, spends exactly log2(256) = 8 bits.
    np.testing.assert_allclose(to_bpd(jnp.array([-D * math.log(2.0)]), D, 256), 8.0,
                               rtol=1e-6)
    np.testing.assert_allclose(
        to_bpd(logp + D * math.log(2.0), D, 256, data_range=1.0),
        to_bpd(logp, D, 256), rtol=1e-6)
    # 5 levels: bins 2 / 5 wide, offset log2(5 / 2).
    np.testing.assert_allclose(to_bpd(jnp.array([-2.0]), 2, 5),
                               1.0 / math.log(2.0) + math.log2(2.5), rtol=1e-6)


def test_dequantization_fills_each_levels_bin():
    levels = 256
    k = jnp.arange(levels, dtype=jnp.float32)
    x = jnp.tile(2.0 * k / (levels - 1) - 1.0, (64, 1))  # every level of [-1, 1], 64 times
    y = likelihood.dequantize(jax.random.key(4), x, levels)
    bins = np.floor((np.asarray(y) + 1.0) / 2.0 * levels)
    np.testing.assert_array_equal(bins, np.broadcast_to(np.asarray(k), bins.shape))
    assert float(y.min()) >= -1.0 and float(y.max()) < 1.0
