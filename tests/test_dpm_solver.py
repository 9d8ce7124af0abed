"""DPM-Solver and DPM-Solver++ against the exact probability-flow ODE of Gaussian data."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, denoisers
from diffusion_jax.samplers import dpm_solver, edm

MEAN = jnp.array([0.3, -0.5])
COV = jnp.array([[1.0, 0.6], [0.6, 0.5]])
MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))
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


def _errors(sampler, steps):
    """Max error at sigma_min against the exact flow of N(MEAN, COV) from the same noise."""
    with jax.enable_x64(True):
        mean, cov = MEAN.astype(jnp.float64), COV.astype(jnp.float64)
        D = _linear_gaussian_denoiser(mean, cov)
        x_T = SIGMA_MAX * jax.random.normal(jax.random.key(0), (32, 2), dtype=jnp.float64)
        exact = analytic.gaussian_ode_flow(x_T, mean, cov, SIGMA_MAX, SIGMA_MIN)
        run = jax.jit(lambda x, sigmas: sampler(D, jax.random.key(1), x.shape,
                                                x_init=x, sigmas=sigmas))
        return [float(jnp.max(jnp.abs(run(x_T, dpm_solver.dpm_sigmas(n, SIGMA_MIN, SIGMA_MAX))
                                      - exact))) for n in steps]


@pytest.mark.parametrize("order,prediction,steps", [
    (1, "noise", (16, 32)),
    (2, "noise", (16, 32)),
    (2, "data", (16, 32)),
    (3, "noise", (8, 16)),
    (3, "data", (64, 128)),
])
def test_singlestep_converges_at_its_order(order, prediction, steps):
    sampler = functools.partial(dpm_solver.dpm_solver_sample, order=order, prediction=prediction)
    errors = _errors(sampler, steps)
    observed = np.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.35, errors


def test_dpm_solver_pp_2m_converges_at_second_order():
    errors = _errors(dpm_solver.dpm_solver_pp_2m_sample, (32, 64))
    assert abs(np.log2(errors[0] / errors[1]) - 2) < 0.3, errors


def test_first_order_forms_are_euler():
    """DPM-Solver-1 = DPM-Solver++-1 = DDIM = Euler in sigma (Lu et al. 2022, Sec. 4.1)."""
    x = 80.0 * jax.random.normal(jax.random.key(2), (16, 2))
    sigmas = dpm_solver.dpm_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    D = _linear_gaussian_denoiser(MEAN, COV)
    run = lambda prediction: dpm_solver.dpm_solver_sample(
        D, jax.random.key(3), x.shape, order=1, prediction=prediction, x_init=x,
        sigmas=sigmas)
    euler = edm.edm_sample(D, jax.random.key(3), x.shape, solver="euler",
                           x_init=x, sigmas=sigmas)
    np.testing.assert_allclose(run("noise"), euler, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run("data"), euler, rtol=1e-4, atol=1e-4)


def test_spacings():
    logsnr = dpm_solver.dpm_sigmas(10, SIGMA_MIN, SIGMA_MAX, "logsnr")
    np.testing.assert_allclose(jnp.diff(jnp.log(logsnr)), jnp.log(SIGMA_MIN / SIGMA_MAX) / 10,
                               rtol=1e-4)
    t_of = denoisers.vp_t_of_sigma
    for spacing, power in (("time_uniform", 1), ("time_quadratic", 2)):
        sigmas = dpm_solver.dpm_sigmas(10, SIGMA_MIN, SIGMA_MAX, spacing)
        np.testing.assert_allclose([sigmas[0], sigmas[-1]], [SIGMA_MAX, SIGMA_MIN], rtol=1e-5)
        roots = t_of(sigmas[1:-1]) ** (1.0 / power)
        np.testing.assert_allclose(jnp.diff(roots), jnp.diff(roots)[0], rtol=1e-3)
    with_zero = dpm_solver.dpm_sigmas(10, denoise_to_zero=True)
    assert with_zero.shape == (12,) and with_zero[-1] == 0.0


def test_denoise_to_zero_is_a_final_denoiser_call():
    x = 80.0 * jax.random.normal(jax.random.key(4), (16, 2))
    sigmas = dpm_solver.dpm_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    D = _linear_gaussian_denoiser(MEAN, COV)
    run = lambda s: dpm_solver.dpm_solver_pp_2m_sample(D, jax.random.key(5), x.shape, x_init=x,
                                                       sigmas=s)
    at_min = run(sigmas)
    to_zero = run(jnp.concatenate([sigmas, jnp.zeros(1)]))
    np.testing.assert_allclose(to_zero, D(at_min, SIGMA_MIN), rtol=1e-5, atol=1e-5)


def test_vp_epsilon_network_through_converter_follows_exact_flow():
    """A VP epsilon-network (linear-beta SDE, time-uniform steps) solved in the EDM convention."""
    g = analytic.gaussian(MEAN, COV)

    def eps_net(x_t, t):
        sigma = denoisers.vp_sigma(t)
        alpha = denoisers.vp_alpha(sigma)
        return -alpha[:, None] * sigma[:, None] * g.vp_score(x_t, alpha, alpha * sigma)

    D = denoisers.from_prediction(eps_net, "epsilon", t_of_sigma=denoisers.vp_t_of_sigma)
    sigma_max = float(denoisers.vp_sigma(1.0))
    sigma_min = float(denoisers.vp_sigma(1e-3))
    x_T = sigma_max * jax.random.normal(jax.random.key(6), (16, 2))
    out = dpm_solver.dpm_solver_sample(D, jax.random.key(7), x_T.shape, order=3, num_steps=20,
                                       sigma_min=sigma_min, sigma_max=sigma_max,
                                       spacing="time_uniform", x_init=x_T)
    exact = analytic.gaussian_ode_flow(x_T, MEAN, COV, sigma_max, sigma_min)
    np.testing.assert_allclose(out, exact, atol=1e-2)


def test_sde_dpm_solver_pp_reproduces_mixture_moments():
    n = 3000
    x = jax.jit(functools.partial(dpm_solver.dpm_solver_pp_2m_sample, MIXTURE.denoiser,
                                  shape=(n, 2), sde=True, num_steps=32, denoise_to_zero=True))(
        jax.random.key(8))
    np.testing.assert_allclose(x.mean(0), MIXTURE.mean, atol=0.07)
    np.testing.assert_allclose(jnp.cov(x.T), MIXTURE.covariance, atol=0.12)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="order"):
        dpm_solver.dpm_solver_sample(MIXTURE.denoiser, jax.random.key(0), (2, 2), order=4)
    with pytest.raises(ValueError, match="logsnr"):
        dpm_solver.dpm_sigmas(4, spacing="karras")
