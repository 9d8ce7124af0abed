"""EDM samplers against the exact probability-flow ODE and the moments of a 2-D mixture."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax.samplers import edm

MEAN = jnp.array([0.3, -0.5])
COV = jnp.array([[1.0, 0.6], [0.6, 0.5]])
MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]), jnp.array([0, 1]))
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _linear_gaussian_denoiser(mean, cov):
    """GaussianMixture.denoiser of one Gaussian in closed form, D = mu + C (C + sigma^2 I)^{-1}
    (x - mu) in the eigenbasis of C: the same function, cheaper to compile (checked below)."""
    lam, u = jnp.linalg.eigh(cov)

    def denoiser(x, sigma):
        sigma = jnp.broadcast_to(sigma, x.shape[:1])
        return mean + (((x - mean) @ u) * (lam / (lam + sigma[:, None] ** 2))) @ u.T
    return denoiser


def test_linear_gaussian_denoiser_is_the_analytic_one():
    x = 3.0 * jax.random.normal(jax.random.key(9), (16, 2))
    sigma = jnp.geomspace(0.002, 80.0, 16)
    np.testing.assert_allclose(_linear_gaussian_denoiser(MEAN, COV)(x, sigma),
                               analytic.gaussian(MEAN, COV).denoiser(x, sigma), atol=1e-5)


def _order(errors):
    return float(np.log2(errors[0] / errors[1]))


def _ode_errors(solver, steps, denoiser, reference):
    """Max error at sigma_min of `solver` on the rho grid without its final sigma = 0."""
    x_T = SIGMA_MAX * jax.random.normal(jax.random.key(0), (32, 2), dtype=jnp.float64)
    run = jax.jit(lambda x, sigmas: edm.edm_sample(denoiser, jax.random.key(1), x.shape,
                                                   solver=solver, x_init=x, sigmas=sigmas))
    target = reference(x_T)
    return [float(jnp.max(jnp.abs(run(x_T, edm.sigma_steps(n + 1, SIGMA_MIN, SIGMA_MAX)[:-1])
                                  - target))) for n in steps]


def test_sigma_steps_follow_eq_5():
    sigmas = edm.sigma_steps(18, SIGMA_MIN, SIGMA_MAX, 7.0)
    assert sigmas.shape == (19,) and sigmas[-1] == 0.0
    np.testing.assert_allclose([sigmas[0], sigmas[17]], [SIGMA_MAX, SIGMA_MIN], rtol=1e-5)
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[i], expected, rtol=1e-5)


@pytest.mark.parametrize("solver,order", [("heun", 2), ("euler", 1)])
def test_deterministic_solver_converges_to_exact_flow_at_its_order(solver, order):
    with jax.enable_x64(True):
        mean, cov = MEAN.astype(jnp.float64), COV.astype(jnp.float64)
        exact = lambda x: analytic.gaussian_ode_flow(x, mean, cov, SIGMA_MAX, SIGMA_MIN)
        errors = _ode_errors(solver, (32, 64), _linear_gaussian_denoiser(mean, cov), exact)
    assert errors[1] < errors[0]
    assert abs(_order(errors) - order) < 0.25, errors


@pytest.mark.slow
def test_heun_on_mixture_converges_to_fine_reference_at_second_order():
    with jax.enable_x64(True):
        fine = edm.sigma_steps(2049, SIGMA_MIN, SIGMA_MAX)[:-1]
        reference = lambda x: edm.edm_sample(MIXTURE.denoiser, jax.random.key(1), x.shape,
                                             x_init=x, sigmas=fine)
        errors = _ode_errors("heun", (64, 128), MIXTURE.denoiser, reference)
    assert abs(_order(errors) - 2) < 0.35, errors


def test_heun_uses_2n_minus_1_evaluations():
    calls = []
    D = _linear_gaussian_denoiser(MEAN, COV)

    def counting_denoiser(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return D(x, sigma)

    edm.edm_sample(counting_denoiser, jax.random.key(0), (4, 2), num_steps=18).block_until_ready()
    assert len(calls) == 35


def test_zero_churn_equals_heun_and_churn_does_not():
    D = _linear_gaussian_denoiser(MEAN, COV)
    heun = edm.edm_sample(D, jax.random.key(0), (64, 2))
    zero_churn = edm.edm_sample(D, jax.random.key(0), (64, 2), S_churn=0.0,
                                S_noise=1.007)
    np.testing.assert_array_equal(zero_churn, heun)
    # churn switched off by the [S_min, S_max] window runs the stochastic code path with gamma = 0
    outside = edm.edm_sample(D, jax.random.key(0), (64, 2), S_churn=40.0,
                             S_min=100.0, S_max=200.0)
    np.testing.assert_allclose(outside, heun, atol=1e-6)
    churned = edm.edm_sample(D, jax.random.key(0), (64, 2), S_churn=40.0)
    assert float(jnp.max(jnp.abs(churned - heun))) > 0.1


@pytest.mark.parametrize("kwargs", [
    dict(num_steps=64, S_churn=40.0, S_min=0.01, S_max=50.0),
    dict(num_steps=256, solver="euler_ancestral"),
], ids=["churn", "euler_ancestral"])
def test_stochastic_sampler_reproduces_mixture_moments(kwargs):
    n = 3000
    x = jax.jit(functools.partial(edm.edm_sample, MIXTURE.denoiser, shape=(n, 2), **kwargs))(
        jax.random.key(2))
    # standard errors: mean ~ sqrt(1.5 / n) = 0.022, variance ~ 1.5 sqrt(2 / n) = 0.039
    np.testing.assert_allclose(x.mean(0), MIXTURE.mean, atol=0.07)
    np.testing.assert_allclose(jnp.cov(x.T), MIXTURE.covariance, atol=0.12)


def test_sampler_with_explicit_sigmas_and_x_init_is_deterministic_ode_map():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(3), (8, 2), dtype=jnp.float64)
        sigmas = jnp.geomspace(2.0, 0.5, 200)
        out = edm.edm_sample(_linear_gaussian_denoiser(MEAN, COV), jax.random.key(4), x.shape, x_init=x, sigmas=sigmas)
        np.testing.assert_allclose(out, analytic.gaussian_ode_flow(x, MEAN, COV, 2.0, 0.5),
                                   atol=1e-5)


def test_unknown_solver_raises():
    with pytest.raises(ValueError, match="heun"):
        edm.edm_sample(MIXTURE.denoiser, jax.random.key(0), (2, 2), solver="rk4")
