"""Denoiser converters, EDM preconditioning and the EDM loss against closed forms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, denoisers, preconditioning
from diffusion_jax.losses import edm as edm_loss
from diffusion_jax.processes import parameterization, schedules

MEAN = jnp.array([0.3, -0.5, 1.0])
COV = jnp.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]])
GAUSS = analytic.gaussian(MEAN, COV)


def _points(n=16, seed=0, scale=2.0):
    return scale * jax.random.normal(jax.random.key(seed), (n, 3))


def _exact_vp_network(kind):
    """The exact `kind` prediction of x_t = alpha x0 + sigma_t n for GAUSS, as a function of
    (x_t, alpha, sigma_t)."""
    def net(x_t, alpha, sigma_t):
        x0 = GAUSS.denoiser(x_t / alpha[:, None], sigma_t / alpha)
        eps = (x_t - alpha[:, None] * x0) / sigma_t[:, None]
        return parameterization.target(kind, x0, eps, alpha, sigma_t)
    return net


@pytest.mark.parametrize("kind", ["epsilon", "x0", "v"])
def test_from_prediction_of_exact_vp_network_is_exact_denoiser(kind):
    net = _exact_vp_network(kind)

    def continuous_net(x_t, t):  # conditioned on t of the linear-beta VP SDE
        sigma = denoisers.vp_sigma(t)
        alpha = denoisers.vp_alpha(sigma)
        return net(x_t, alpha, alpha * sigma)

    D = denoisers.from_prediction(continuous_net, kind, t_of_sigma=denoisers.vp_t_of_sigma)
    x, sigma = _points(), jnp.geomspace(0.01, 50.0, 16)
    np.testing.assert_allclose(D(x, sigma), GAUSS.denoiser(x, sigma), rtol=2e-4, atol=2e-4)


def test_vp_t_of_sigma_inverts_vp_sigma():
    t = jnp.linspace(1e-3, 1.0, 50)
    np.testing.assert_allclose(denoisers.vp_t_of_sigma(denoisers.vp_sigma(t)), t, rtol=1e-4)


@pytest.mark.parametrize("mode", ["nearest", "interpolate"])
def test_from_discrete_is_exact_on_the_schedule_sigmas(mode):
    schedule = schedules.make_schedule("linear", 1000)
    alpha_bars = schedule.alpha_bars
    net = _exact_vp_network("epsilon")

    def eps_fn(x_t, t):  # a DDPM network: t is the timestep index
        alpha_bar = alpha_bars[t.astype(jnp.int32)]
        return net(x_t, jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar))

    D = denoisers.from_discrete(eps_fn, "epsilon", schedule, mode)
    index = jnp.array([0, 10, 250, 500, 999] * 2 + [3] * 6)
    sigma = denoisers.discrete_sigmas(schedule)[index]
    x = _points()
    np.testing.assert_allclose(D(x, sigma), GAUSS.denoiser(x, sigma), rtol=2e-4, atol=2e-4)


def test_discrete_t_of_sigma_interpolates_in_log_sigma():
    schedule = schedules.make_schedule("linear", 100)
    sigmas = denoisers.discrete_sigmas(schedule)
    between = jnp.sqrt(sigmas[40] * sigmas[41])  # geometric midpoint
    np.testing.assert_allclose(denoisers.discrete_t_of_sigma(schedule, "interpolate")(between),
                               40.5, atol=1e-3)
    assert denoisers.discrete_t_of_sigma(schedule, "nearest")(sigmas[41] * 1.001) == 41


def test_ve_score_tweedie():
    x, sigma = _points(), jnp.geomspace(0.05, 20.0, 16)
    D = denoisers.from_score(GAUSS.score, lambda sigma: sigma, jnp.ones_like)  # alpha = 1
    np.testing.assert_allclose(D(x, sigma), GAUSS.denoiser(x, sigma), rtol=1e-4, atol=1e-4)


def test_vp_score_to_denoiser():
    def vp_score(x_t, t):
        sigma = denoisers.vp_sigma(t)
        alpha = denoisers.vp_alpha(sigma)
        return GAUSS.vp_score(x_t, alpha, alpha * sigma)

    D = denoisers.from_score(vp_score, t_of_sigma=denoisers.vp_t_of_sigma)
    x, sigma = _points(), jnp.geomspace(0.05, 20.0, 16)
    np.testing.assert_allclose(D(x, sigma), GAUSS.denoiser(x, sigma), rtol=2e-4, atol=2e-4)


def test_epsilon_network_to_denoiser():
    """The exact noise prediction eps = -sigma score of Gaussian data, seen as a VP network,
    gives back the exact denoiser."""
    x, sigma = _points(), jnp.geomspace(0.05, 20.0, 16)
    eps = lambda x, s: -s[:, None] * GAUSS.score(x, s)  # noqa: E731
    D = denoisers.from_prediction(lambda x_t, s: eps(x_t / denoisers.vp_alpha(s)[:, None], s),
                                  "epsilon")
    np.testing.assert_allclose(D(x, sigma), GAUSS.denoiser(x, sigma), rtol=1e-4, atol=1e-4)


def test_edm_coefficients_match_table_1():
    sd = 0.5
    for s in (0.002, 0.5, 80.0):
        c = preconditioning.EDMPrecond(sd)(jnp.asarray(s))
        np.testing.assert_allclose(
            [c.c_skip, c.c_out, c.c_in, c.c_noise],
            [sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2),
             np.log(s) / 4], rtol=1e-5)
    np.testing.assert_allclose(preconditioning.edm_loss_weight(jnp.asarray(2.0)),
                               1.0 / preconditioning.EDMPrecond()(jnp.asarray(2.0)).c_out**2,
                               rtol=1e-6)


def test_vp_ve_iddpm_coefficients():
    s = jnp.asarray(3.0)
    vp = preconditioning.VPPrecond()(s)
    t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log(1 + 9.0)) - 0.1) / 19.9
    np.testing.assert_allclose([vp.c_skip, vp.c_out, vp.c_in, vp.c_noise],
                               [1.0, -3.0, 1 / np.sqrt(10.0), 999 * t], rtol=1e-5)
    ve = preconditioning.VEPrecond()(s)
    np.testing.assert_allclose([ve.c_skip, ve.c_out, ve.c_in, ve.c_noise],
                               [1.0, 3.0, 1.0, np.log(1.5)], rtol=1e-6)
    iddpm = preconditioning.IDDPMPrecond()
    u = iddpm.u
    assert u[-1] == 0.0 and np.all(np.diff(u) < 0) and u[0] > 80.0
    c = iddpm(jnp.asarray(u[[0, 500, 999]] * 1.0001, jnp.float32))
    np.testing.assert_array_equal(c.c_noise, [999.0, 499.0, 0.0])
    np.testing.assert_allclose(iddpm.round_sigma(u[300] * 1.0001), u[300], rtol=1e-6)


@pytest.mark.parametrize("scheme", [preconditioning.EDMPrecond(), preconditioning.VPPrecond(),
                                    preconditioning.VEPrecond()])
def test_zero_network_gives_c_skip_x(scheme):
    D = preconditioning.precondition(lambda x_in, c_noise: jnp.zeros_like(x_in), scheme)
    x, sigma = _points(), jnp.geomspace(0.01, 80.0, 16)
    np.testing.assert_allclose(D(x, sigma), scheme(sigma).c_skip[:, None] * x, rtol=1e-6)


def test_preconditioned_network_sees_c_in_x_and_c_noise():
    scheme = preconditioning.EDMPrecond()
    D = preconditioning.precondition(lambda x_in, c_noise, cond: x_in * c_noise[:, None] + cond[:, None],
                                     scheme)
    x, sigma, cond = _points(), jnp.geomspace(0.01, 80.0, 16), jnp.arange(16.0)
    c = scheme(sigma)
    expected = c.c_skip[:, None] * x + c.c_out[:, None] * (
        c.c_in[:, None] * x * c.c_noise[:, None] + cond[:, None])
    np.testing.assert_allclose(D(x, sigma, cond), expected, rtol=1e-5, atol=1e-6)


def test_sigma_samplers_follow_table_1():
    log_sigma = jnp.log(preconditioning.lognormal_sigma(jax.random.key(0), 20000))
    assert abs(float(log_sigma.mean()) + 1.2) < 0.03 and abs(float(log_sigma.std()) - 1.2) < 0.03
    ve = preconditioning.VEPrecond().sample_sigma(jax.random.key(1), 5000)
    assert float(ve.min()) >= 0.02 and float(ve.max()) <= 100.0
    assert abs(float(jnp.log(ve).mean()) - 0.5 * np.log(0.02 * 100.0)) < 0.1
    vp = preconditioning.VPPrecond().sample_sigma(jax.random.key(2), 5000)
    assert float(vp.min()) >= float(denoisers.vp_sigma(1e-5)) and float(vp.max()) <= float(
        denoisers.vp_sigma(1.0)) * 1.0001


def test_edm_loss_of_exact_denoiser_is_weighted_posterior_variance():
    """E||D(x0 + sigma n) - x0||^2 = tr(C - C (C + sigma^2 I)^{-1} C) for Gaussian data."""
    sigma = 0.7

    @jax.jit
    def losses(rng):
        x0 = GAUSS.sample(jax.random.key(3), 8000)
        loss = functools.partial(edm_loss.edm_loss, GAUSS.denoiser, x0, rng,
                                 sample_sigma=lambda rng, n: jnp.full((n,), sigma))
        return loss(), loss(reduce="mean")

    summed, averaged = losses(jax.random.key(4))
    post = COV - COV @ jnp.linalg.solve(COV + sigma**2 * jnp.eye(3), COV)
    expected = preconditioning.edm_loss_weight(sigma) * jnp.trace(post)
    np.testing.assert_allclose(summed.mean(), expected, rtol=0.05)
    np.testing.assert_allclose(averaged, summed / 3.0, rtol=1e-5)


def test_edm_loss_is_jittable_with_preconditioned_network():
    D = preconditioning.precondition(lambda x_in, c_noise: 0.1 * x_in, preconditioning.EDMPrecond())
    loss = jax.jit(lambda x0, rng: edm_loss.edm_loss(D, x0, rng).mean())(_points(), jax.random.key(5))
    assert np.isfinite(float(loss)) and float(loss) > 0
