"""PC and probability-flow ODE samplers of the score SDEs against a 2-D Gaussian mixture, the exact
Gaussian ODE flow, and exact Gaussian conditionals for inpainting and colourisation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax.processes import sde as sde_lib
from diffusion_jax.samplers import editing, ode, pc

MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))
NUM_SAMPLES = 2000
Z = 4.0  # standard errors allowed for every sample statistic


def mixture_score(mixture, sde):
    """GaussianMixture.vp_score (VP, sub-VP) / .score (VE) in the eigenbases of the component
    covariances: the same function (checked below), elementwise, so cheaper to compile and run.
    Component k of x_t is N(alpha mu_k, U_k diag(alpha^2 lam_k + sigma^2) U_k^T)."""
    lam, u = np.linalg.eigh(np.asarray(mixture.covs))
    log_w, means = jnp.log(mixture.weights), mixture.means

    def score(x, t):
        a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
        var = a**2 * lam[None] + s**2  # (B, K, d)
        y = jnp.einsum("bkd,kde->bke", x[:, None, :] - a * means[None], u)
        log_p = log_w - 0.5 * jnp.sum(y**2 / var + jnp.log(var), axis=-1)
        grads = -jnp.einsum("bke,kde->bkd", y / var, u)
        return jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_p, axis=-1), grads)
    return score


def _nearest_component(x, means):
    return np.argmin(np.sum((x[:, None] - np.asarray(means)[None]) ** 2, axis=-1), axis=1)


def _numpy_samples(mixture, n, seed):
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(mixture.weights), size=n, p=np.asarray(mixture.weights))
    chol = np.linalg.cholesky(np.asarray(mixture.covs))[comp]
    return np.asarray(mixture.means)[comp] + np.einsum("nij,nj->ni", chol, rng.normal(size=(n, 2)))


REFERENCE = _numpy_samples(MIXTURE, 200_000, seed=1234)


def assert_mixture_statistics(x, mixture=MIXTURE, ref=REFERENCE, z=Z):
    """Mean, covariance and nearest-component fractions of x within z standard errors; the
    standard errors of the covariance entries and fractions come from exact samples `ref`."""
    x, n = np.asarray(x, np.float64), x.shape[0]
    mu, cov = np.asarray(mixture.mean), np.asarray(mixture.covariance)
    np.testing.assert_array_less(np.abs(x.mean(0) - mu), z * np.sqrt(np.diag(cov) / n))
    centred = ref - mu
    cov_se = np.std(centred[:, :, None] * centred[:, None, :], axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * cov_se)
    p = np.bincount(_nearest_component(ref, mixture.means), minlength=2) / ref.shape[0]
    f = np.bincount(_nearest_component(x, mixture.means), minlength=2) / n
    np.testing.assert_array_less(np.abs(f - p), z * np.sqrt(p * (1 - p) / n))


def test_mixture_score_is_the_analytic_one():
    sde = sde_lib.VPSDE()
    x = 2.0 * jax.random.normal(jax.random.key(0), (64, 2))
    t = jnp.linspace(0.05, 1.0, 64)
    expected = jax.jit(lambda x, a, s: MIXTURE.vp_score(x, a, s))(x, sde.alpha(t), sde.sigma(t))
    np.testing.assert_allclose(mixture_score(MIXTURE, sde)(x, t), expected, rtol=1e-4, atol=1e-4)


def test_the_statistics_check_rejects_a_wrong_distribution():
    exact = _numpy_samples(MIXTURE, NUM_SAMPLES, seed=5)
    assert_mixture_statistics(exact)
    reweighted = dataclasses.replace(MIXTURE, weights=jnp.array([0.35, 0.65]))
    for wrong in (exact + np.array([0.15, 0.0]), exact * np.array([1.0, 1.1]),
                  _numpy_samples(reweighted, NUM_SAMPLES, seed=5)):
        with pytest.raises(AssertionError):
            assert_mixture_statistics(wrong)


PC_CASES = {
    "vp-euler_maruyama": (sde_lib.VPSDE(), pc.paper_defaults(sde_lib.VPSDE()), 300),
    "subvp-euler_maruyama": (sde_lib.SubVPSDE(), pc.paper_defaults(sde_lib.SubVPSDE()), 300),
    "ve-reverse_diffusion-langevin": (sde_lib.VESDE(), pc.paper_defaults(sde_lib.VESDE()), 600),
    "vp-ancestral-annealed_langevin": (
        sde_lib.VPSDE(), dict(predictor="ancestral", corrector="annealed_langevin", snr=0.16,
                              n_corrector_steps=1, eps=1e-3), 600),
    "ve-ancestral": (sde_lib.VESDE(), dict(predictor="ancestral", eps=1e-5), 300),
}


@pytest.mark.parametrize("case", list(PC_CASES))
def test_pc_sampler_reproduces_the_mixture(case):
    sde, options, nfe = PC_CASES[case]
    score = mixture_score(MIXTURE, sde)
    x, got_nfe = jax.jit(lambda rng: pc.pc_sample(score, sde, rng, (NUM_SAMPLES, 2),
                                                  num_steps=300, **options))(jax.random.key(1))
    assert_mixture_statistics(x)
    assert got_nfe == nfe


def test_paper_defaults_and_unknown_names():
    assert pc.paper_defaults(sde_lib.VPSDE()) == dict(
        predictor="euler_maruyama", corrector="none", snr=0.16, n_corrector_steps=1, eps=1e-3)
    assert pc.paper_defaults(sde_lib.VESDE())["predictor"] == "reverse_diffusion"
    assert pc.paper_defaults(sde_lib.VESDE())["corrector"] == "langevin"
    with pytest.raises(ValueError, match="euler_maruyama"):
        pc.pc_sample(lambda x, t: -x, sde_lib.VPSDE(), jax.random.key(0), (4, 2), predictor="rk")
    with pytest.raises(ValueError, match="VPSDE or VESDE"):
        pc.pc_sample(lambda x, t: -x, sde_lib.SubVPSDE(), jax.random.key(0), (4, 2),
                     predictor="ancestral")


@pytest.mark.parametrize("sde,method", [(sde_lib.VPSDE(), "tsit5"), (sde_lib.SubVPSDE(), "rk4"),
                                        (sde_lib.VESDE(), "rk4")], ids=["vp", "subvp", "ve"])
def test_ode_sampler_reproduces_the_mixture(sde, method):
    eps = 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3
    score = mixture_score(MIXTURE, sde)
    x, _ = jax.jit(lambda rng: ode.ode_sample(score, sde, rng, (NUM_SAMPLES, 2), eps=eps,
                                              method=method, num_steps=100))(jax.random.key(2))
    assert_mixture_statistics(x)


MEAN = jnp.array([0.3, -0.5])
COV = jnp.array([[1.0, 0.6], [0.6, 0.5]])
GAUSSIAN = analytic.gaussian(MEAN, COV)


def _exact_gaussian_flow(sde, x_T, eps):
    """The probability-flow ODE of N(MEAN, COV) from T to eps: x_t / alpha is the EDM flow in
    sigma / alpha (analytic.gaussian_ode_flow)."""
    T = jnp.ones(x_T.shape[:1])
    a_T, a_eps = sde.alpha(T), sde.alpha(eps * T)
    flow = analytic.gaussian_ode_flow(x_T / a_T[:, None], MEAN, COV, sde.sigma(T) / a_T,
                                      sde.sigma(eps * T) / a_eps)
    return a_eps[:, None] * flow


@pytest.mark.parametrize("sde,method,rtol", [(sde_lib.VESDE(), "rk4", 1e-3),
                                             (sde_lib.VPSDE(), "heun", 1e-2)],
                         ids=["ve-rk4", "vp-heun"])
def test_fixed_step_ode_sampler_follows_the_exact_gaussian_flow(sde, method, rtol):
    score = mixture_score(GAUSSIAN, sde)
    x_T = sde.prior_sampling(jax.random.key(3), (16, 2))
    x, nfe = jax.jit(lambda x: ode.ode_sample(score, sde, None, x.shape, x_init=x,
                                              method=method, num_steps=200))(x_T)
    expected = _exact_gaussian_flow(sde, x_T, 1e-3)
    np.testing.assert_allclose(x, expected, rtol=rtol, atol=rtol * float(jnp.std(expected)))
    assert nfe == 200 * ode.FIXED_STAGES[method]


def test_adaptive_ode_sampler_follows_the_exact_flow_and_counts_its_evaluations():
    calls, sde = [], sde_lib.VPSDE()
    gaussian_score = mixture_score(GAUSSIAN, sde)

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return gaussian_score(x, t)
    x_T = sde.prior_sampling(jax.random.key(3), (16, 2))
    x, nfe = jax.jit(lambda x: ode.ode_sample(score, sde, None, x.shape, x_init=x))(x_T)
    jax.effects_barrier()
    expected = _exact_gaussian_flow(sde, x_T, 1e-3)
    np.testing.assert_allclose(x, expected, rtol=1e-3, atol=1e-3 * float(jnp.std(expected)))
    assert int(nfe) == len(calls) > 1


def test_ode_encode_inverts_ode_sample():
    sde = sde_lib.VPSDE()
    score = mixture_score(GAUSSIAN, sde)
    x_T = sde.prior_sampling(jax.random.key(5), (16, 2))
    x0, _ = jax.jit(lambda x: ode.ode_sample(score, sde, None, x.shape, x_init=x, method="rk4",
                                             num_steps=100))(x_T)
    drift = sde.probability_flow_drift(score)
    encode = lambda x: ode.ode_solve(lambda y, t: drift(y, jnp.full(y.shape[:1], t)), x, 1e-3,
                                     sde.T, method="rk4", num_steps=100)
    z, _ = jax.jit(encode)(x0)
    np.testing.assert_allclose(z, x_T, atol=2e-3)


def _conditional_gaussian(mean, cov, known, y_known):
    """Mean and covariance of the unknown coordinates of N(mean, cov) given x[known] = y_known."""
    unknown = np.setdiff1d(np.arange(mean.shape[0]), known)
    c_uk, c_kk = cov[np.ix_(unknown, known)], cov[np.ix_(known, known)]
    gain = c_uk @ np.linalg.inv(c_kk)
    return (mean[unknown] + gain @ (y_known - mean[known]),
            cov[np.ix_(unknown, unknown)] - gain @ c_uk.T, unknown)


def _conditional_score(sde, mean, cov, known, y_known, basis):
    """grad_x log p_t(x_t | (x_0 Q)[known] = y_known) of Gaussian data x_0 Q ~ N(mean, cov): the
    unknown coordinates are the conditional Gaussian, the known ones alpha y_known + sigma z."""
    cond_mean, cond_cov, unknown = _conditional_gaussian(mean, cov, known, y_known)
    inner = mixture_score(analytic.gaussian(jnp.asarray(cond_mean), jnp.asarray(cond_cov)), sde)

    def score(x, t):
        q = x.reshape(x.shape[0], -1) @ basis
        sigma = sde.sigma(t)[:, None]
        s_q = jnp.zeros_like(q).at[:, unknown].set(inner(q[:, unknown], t))
        s_q = s_q.at[:, known].set(-(q[:, known] - sde.alpha(t)[:, None] * y_known) / sigma**2)
        return (s_q @ basis.T).reshape(x.shape)
    return score


MEAN3 = np.array([0.2, -0.4, 0.5])
COV3 = np.array([[0.5, 0.2, 0.25], [0.2, 0.4, -0.15], [0.25, -0.15, 0.6]])


def _assert_gaussian_statistics(x, mean, cov, z=Z):
    x, n = np.asarray(x, np.float64), x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(np.diag(cov) / n))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Gaussian 4th moments
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * cov_se)


def test_inpainting_keeps_known_pixels_and_samples_the_exact_conditional():
    sde, known, y_known = sde_lib.VPSDE(), np.array([2]), np.array([0.9])
    x_known = jnp.zeros((NUM_SAMPLES, 3)).at[:, 2].set(0.9)
    mask = jnp.arange(3) == 2
    score = _conditional_score(sde, MEAN3, COV3, known, y_known, jnp.eye(3))
    x, _ = jax.jit(lambda rng: pc.pc_replace(score, sde, rng, x_known, mask,
                                             num_steps=300))(jax.random.key(6))
    np.testing.assert_array_equal(x[:, 2], x_known[:, 2])
    cond_mean, cond_cov, unknown = _conditional_gaussian(MEAN3, COV3, known, y_known)
    _assert_gaussian_statistics(x[:, unknown], cond_mean, cond_cov)


def test_colorization_keeps_the_gray_level_and_samples_the_exact_conditional():
    sde, q = sde_lib.VESDE(), np.asarray(editing.COLOR_BASIS)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-6)
    gray = jnp.full((NUM_SAMPLES, 1, 1, 1), 0.3)
    y_known = np.array([0.3 * np.sqrt(3.0)])  # the grey coordinate (r + g + b) / sqrt(3)
    mean_q, cov_q = MEAN3 @ q, q.T @ COV3 @ q
    score = _conditional_score(sde, mean_q, cov_q, np.array([0]), y_known, jnp.asarray(q))
    rgb = jnp.broadcast_to(gray, gray.shape[:-1] + (3,))
    x, _ = jax.jit(lambda rng: pc.pc_replace(
        score, sde, rng, rgb, editing.COLOR_MASK, editing.COLOR_BASIS, num_steps=300,
        **pc.paper_defaults(sde)))(jax.random.key(7))
    assert x.shape == (NUM_SAMPLES, 1, 1, 3)
    np.testing.assert_allclose(x.mean(-1), gray[..., 0], atol=1e-5)
    cond_mean, cond_cov, unknown = _conditional_gaussian(mean_q, cov_q, np.array([0]), y_known)
    _assert_gaussian_statistics(x.reshape(-1, 3) @ q[:, unknown], cond_mean, cond_cov)
