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


def assert_moments(x):
    se = np.sqrt(np.diag(COV) / N)
    assert np.all(np.abs(np.asarray(x.mean(0)) - MEAN) < 5 * se), (x.mean(0), MEAN)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), COV, atol=0.03)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_reproduces_gaussian_moments(variance):
    sample = jax.jit(lambda r: ddpm.ancestral_sample(exact_eps, SCHEDULE, r, (N, 2), variance))
    assert_moments(sample(jax.random.key(0)))


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
