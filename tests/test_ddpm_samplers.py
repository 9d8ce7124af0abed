"""Ancestral and DDIM sampling driven by the exact epsilon of Gaussian data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import ddpm

MEAN = jnp.array([1.0, -0.5])
COV = jnp.array([[0.30, 0.12], [0.12, 0.20]])
DATA = analytic.gaussian(MEAN, COV)
SCHEDULE = schedules.make_schedule("linear", 1000)
N = 4000


def exact_eps(x_t, t):
    """eps = -sigma_t * grad log p_t(x_t) for Gaussian data under q(x_t | x_0)."""
    ab = SCHEDULE.alpha_bars[t.astype(jnp.int32)]
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    return -sigma[:, None] * DATA.vp_score(x_t, alpha, sigma)


def assert_moments(x, mean=MEAN, cov=COV, z=4.0):
    """Sample mean and covariance within z standard errors (the covariance's from Gaussian fourth
    moments: Var s_ij = (C_ii C_jj + C_ij^2) / n)."""
    x, cov = np.asarray(x, np.float64), np.asarray(cov, np.float64)
    n = x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(np.diag(cov) / n))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * cov_se)


def ancestral_chain_moments(taus, variance):
    """Exact mean and covariance of the ancestral chain over timesteps `taus` with the exact
    epsilon, in float64: with alpha_bar'_k = alpha_bar_{tau_k}, beta'_k = 1 - alpha_bar'_k /
    alpha_bar'_{k-1} and A_k = alpha_bar'_k C + (1 - alpha_bar'_k) I, each step is the affine map
    x <- (I - beta'_k A_k^-1) x / sqrt(1 - beta'_k) + beta'_k A_k^-1 sqrt(alpha_bar'_k) mu /
    sqrt(1 - beta'_k) plus N(0, sigma_k^2 I), sigma_k^2 = beta'_k or beta'_k (1 - alpha_bar'_{k-1})
    / (1 - alpha_bar'_k), none at the last step."""
    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[np.asarray(taus)]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    betas = 1.0 - ab / ab_prev
    noise = betas if variance == "beta" else betas * (1.0 - ab_prev) / (1.0 - ab)
    mu, cov = np.asarray(MEAN, np.float64), np.asarray(COV, np.float64)
    m, p = np.zeros(2), np.eye(2)
    for k in range(len(taus) - 1, -1, -1):
        gain = betas[k] * np.linalg.inv(ab[k] * cov + (1.0 - ab[k]) * np.eye(2))
        lin = (np.eye(2) - gain) / np.sqrt(1.0 - betas[k])
        m = lin @ m + gain @ (np.sqrt(ab[k]) * mu) / np.sqrt(1.0 - betas[k])
        p = lin @ p @ lin.T + (noise[k] if k > 0 else 0.0) * np.eye(2)
    return m, p


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_reproduces_gaussian_moments(variance):
    """All 1000 steps: both variances give the data's moments (their chains' exact covariances
    differ by 0.9 standard errors here, so this cannot tell them apart; the next test can)."""
    sample = jax.jit(lambda r: ddpm.ancestral_sample(exact_eps, SCHEDULE, r, (N, 2), variance))
    assert_moments(sample(jax.random.key(0)))


@pytest.mark.parametrize("variance,swapped", [("beta", "beta_tilde"), ("beta_tilde", "beta")])
def test_respaced_ancestral_has_the_exact_moments_of_its_own_variance(variance, swapped):
    """50 of 1000 steps, where the two variances differ: the samples have the exact moments of
    the chain with their variance (float64 propagation above). Negative control: the moments of
    the swapped variance (13 standard errors away) are rejected by the same check (verified)."""
    taus = ddpm.ddim_timesteps(1000, 50)
    x = jax.jit(lambda r: ddpm.ancestral_sample(exact_eps, SCHEDULE, r, (N, 2), variance,
                                                num_steps=50))(jax.random.key(7))
    assert_moments(x, *ancestral_chain_moments(taus, variance))
    with pytest.raises(AssertionError):
        assert_moments(x, *ancestral_chain_moments(taus, swapped))


def test_respaced_ancestral_reproduces_gaussian_moments():
    """Stochastic chains lose variance when steps are coarse (the reverse kernel's variance
    ignores Var[x0 | x_t]; Bao et al. 2022), so the respaced chain keeps 500 of 1000 steps."""
    x = ddpm.ancestral_sample(exact_eps, SCHEDULE, jax.random.key(1), (N, 2), "beta_tilde",
                              num_steps=500)
    assert_moments(x)


@pytest.mark.parametrize("eta,steps", [(0.0, 100), (1.0, 500)])
def test_ddim_reproduces_gaussian_moments(eta, steps):
    sample = jax.jit(lambda r: ddpm.ddim_sample(exact_eps, SCHEDULE, r, (N, 2), steps, eta))
    assert_moments(sample(jax.random.key(2)))


def test_ddim_eta0_is_deterministic_given_the_initial_noise():
    x_init = jax.random.normal(jax.random.key(3), (16, 2))
    a = ddpm.ddim_sample(exact_eps, SCHEDULE, jax.random.key(4), (16, 2), 50, 0.0, x_init=x_init)
    b = ddpm.ddim_sample(exact_eps, SCHEDULE, jax.random.key(5), (16, 2), 50, 0.0, x_init=x_init)
    np.testing.assert_array_equal(a, b)
    c = ddpm.ddim_sample(exact_eps, SCHEDULE, jax.random.key(5), (16, 2), 50, 1.0, x_init=x_init)
    assert np.abs(np.asarray(a - c)).max() > 1e-3


def test_wrong_score_fails_the_moment_check():
    """The moment check can fail: a biased epsilon moves the sample mean."""
    biased = lambda x, t: exact_eps(x, t) + 0.05
    x = ddpm.ddim_sample(biased, SCHEDULE, jax.random.key(6), (N, 2), 100)
    with pytest.raises(AssertionError):
        assert_moments(x)


def test_ddim_timesteps_are_strided_and_start_at_zero():
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 10), np.arange(0, 1000, 100))
    assert ddpm.ddim_timesteps(1000, 10, "quadratic")[0] == 0
