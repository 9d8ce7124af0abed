"""Flow-matching interpolants against closed forms: the paths' coefficients, the exact velocity
field of Gaussian and Gaussian-mixture data and the conversions velocity <-> eps <-> score <-> x0 <->
denoiser on it, SiT's formulas in SiT's time, the SDE's marginals for every diffusion form,
and the training-time t distributions.

The ground truth is written here, not taken from the module: the paths' alpha and sigma (SiT's
`path.py` at t_SiT = 1 - t, Lipman et al.'s sigma_min path), their derivatives by autodiff, and
the exact velocity v*(x_t, t) = alpha' E[x0 | x_t] + sigma' E[eps | x_t] from the data's exact
denoiser (`analytic.GaussianMixture`).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import analytic
from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import interpolants as itp

SIGMA_MIN = 0.01


def _sit_vp_alpha(s, beta_min=0.1, beta_max=20.0):
    """SiT's VPCPlan alpha at its time s (s = 1 is data)."""
    return jnp.exp(-0.25 * (1 - s) ** 2 * (beta_max - beta_min) - 0.5 * (1 - s) * beta_min)


CLOSED_FORMS = {  # (alpha(t), sigma(t)) in our time, t = 0 data
    "linear": (lambda t: 1 - t, lambda t: t),
    "linear_sigma_min": (lambda t: 1 - t, lambda t: 1 - (1 - SIGMA_MIN) * (1 - t)),
    "gvp": (lambda t: jnp.sin((1 - t) * jnp.pi / 2), lambda t: jnp.cos((1 - t) * jnp.pi / 2)),
    "vp": (lambda t: _sit_vp_alpha(1 - t), lambda t: jnp.sqrt(1 - _sit_vp_alpha(1 - t) ** 2)),
}
PATHS = {"linear": itp.Linear(), "linear_sigma_min": itp.Linear(SIGMA_MIN), "gvp": itp.GVP(),
         "vp": itp.VP()}
NAMES = list(PATHS)


def _closed(name, t):
    """alpha, sigma, alpha', sigma' of the closed forms, derivatives by forward-mode autodiff."""
    alpha, sigma = CLOSED_FORMS[name]
    a, da = jax.jvp(alpha, (t,), (jnp.ones_like(t),))
    s, ds = jax.jvp(sigma, (t,), (jnp.ones_like(t),))
    return a, s, da, ds


MIXTURE = analytic.GaussianMixture(
    weights=jnp.array([0.5, 0.3, 0.2]),
    means=jnp.array([[1.0, -0.5], [-1.2, 0.8], [0.2, 1.5]]),
    covs=jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.15, 0.0], [0.0, 0.4]], [[0.05, 0.0],
                                                                           [0.0, 0.05]]]))


DATA = {"mixture": MIXTURE, "gaussian": analytic.gaussian(jnp.array([0.5, -1.0]),
                                                        jnp.array([[0.3, 0.2], [0.2, 1.5]]))}


def _exact(name, x_t, t, data=MIXTURE):
    """Exact predictions of `data` at (x_t, t): x0 and eps from the exact denoiser (x_t / alpha
    at EDM noise sigma / alpha), the score from `vp_score`, v* = alpha' x0 + sigma' eps."""
    a, s, da, ds = _closed(name, t)
    x0 = data.denoiser(x_t / a[:, None], s / a)
    eps = (x_t - a[:, None] * x0) / s[:, None]
    return {"x0": x0, "eps": eps, "score": data.vp_score(x_t, a, s),
            "velocity": da[:, None] * x0 + ds[:, None] * eps}


def _marginal_points(name, t, data=MIXTURE, seed=0):
    """x_t drawn from the path's marginal at each t (one point per t)."""
    a, s, _, _ = _closed(name, t)
    k1, k2 = jax.random.split(jax.random.key(seed))
    x0 = data.sample(k1, t.shape[0])
    return a[:, None] * x0 + s[:, None] * jax.random.normal(k2, x0.shape)


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_and_derivatives_are_the_closed_forms(name):
    path, t = PATHS[name], jnp.linspace(0.01, 0.99, 41)
    a, s, da, ds = _closed(name, t)
    for got, want in zip((path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)),
                         (a, s, da, ds)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert float(path.alpha(0.0)) == 1.0
    np.testing.assert_allclose(path.sigma(0.0), SIGMA_MIN if name == "linear_sigma_min" else 0.0)
    if name != "vp":  # VP reaches alpha = exp(-5.025) at t = 1
        np.testing.assert_allclose([path.alpha(1.0), path.sigma(1.0)], [0.0, 1.0], atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_t_of_edm_sigma_inverts_sigma_over_alpha(name):
    path = PATHS[name]
    t = jnp.linspace(0.02, 0.98, 49)
    np.testing.assert_allclose(path.t_of_edm_sigma(itp.edm_sigma(path, t)), t, rtol=1e-5,
                               atol=1e-6)
    sigma = jnp.geomspace(0.02, 80.0, 40)
    t_of = path.t_of_edm_sigma(sigma)
    a, s, _, _ = _closed(name, t_of)
    np.testing.assert_allclose(s / a, sigma, rtol=1e-4)


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("name", NAMES)
def test_conversions_are_exact_on_the_exact_velocity_field(name, data):
    """Every prediction converted to every other equals the exact one, for x_t on the path."""
    path, t = PATHS[name], jnp.tile(jnp.array([0.05, 0.3, 0.6, 0.95]), 8)
    x_t = _marginal_points(name, t, DATA[data])
    exact = _exact(name, x_t, t, DATA[data])
    scale = {k: float(jnp.max(jnp.abs(v))) for k, v in exact.items()}
    for source in itp.PREDICTIONS:
        for target in itp.PREDICTIONS:
            got = itp.convert(path, exact[source], x_t, t, source, target)
            np.testing.assert_allclose(got, exact[target], rtol=1e-4, atol=1e-4 * scale[target],
                                       err_msg=f"{source} -> {target}")


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("name", NAMES)
def test_the_denoiser_of_the_exact_velocity_is_the_exact_denoiser(name, data):
    """D(x, sigma) of v* queried at t(sigma), x_t = alpha x is the data's denoiser in EDM's
    convention, from sigma 0.02 to 80: every denoiser sampler runs on a velocity model."""
    path, data = PATHS[name], DATA[data]
    sigma = jnp.geomspace(0.02, 80.0, 32)
    x = jax.vmap(lambda k, s: data.sample(k, 1)[0] + s * jax.random.normal(k, (2,)))(
        jax.random.split(jax.random.key(3), 32), sigma)
    D = itp.denoiser(path, lambda x_t, t: _exact(name, x_t, t, data)["velocity"])
    want = data.denoiser(x, sigma)
    np.testing.assert_allclose(D(x, sigma), want, rtol=1e-4, atol=1e-4)
    cond_D = itp.denoiser(path, lambda x_t, t, cond: _exact(name, x_t, t, data)["velocity"]
                          + cond)
    np.testing.assert_allclose(cond_D(x, sigma, jnp.zeros_like(x)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [0.3, 0.7])
def test_the_velocity_target_has_the_exact_field_as_its_conditional_mean(name, t):
    """E[v(x0, eps) | x_t] = v*(x_t): binned in x_t, the mean of the module's target
    alpha' x0 + sigma' eps over a bin equals the mean of v* over the same samples (the tower
    property, whatever the bin width), to Monte-Carlo error. Negative control: the same check
    rejects the target with sigma' of the wrong sign."""
    path, n = PATHS[name], 100_000
    k1, k2 = jax.random.split(jax.random.key(11))
    x0, eps = MIXTURE.sample(k1, n), jax.random.normal(k2, (n, 2))
    tt = jnp.full((n,), t)
    x_t = itp.interpolate(path, tt, x0, eps)
    exact = np.asarray(_exact(name, x_t, tt)["velocity"])
    target = np.asarray(itp.velocity(path, tt, x0, eps))
    wrong = np.asarray(path.d_alpha(t) * x0 - path.d_sigma(t) * eps)

    def max_z(v):
        bins = np.digitize(np.asarray(x_t[:, 0]), np.quantile(np.asarray(x_t[:, 0]),
                                                              np.linspace(0, 1, 21)[1:-1]))
        z = []
        for b in range(20):
            diff = (v - exact)[bins == b]
            z.append(np.abs(diff.mean(0)) / (diff.std(0) / math.sqrt(len(diff))))
        return float(np.max(z))
    np.testing.assert_allclose(itp.interpolate(path, tt, x0, eps),
                               _closed(name, tt)[0][:, None] * x0
                               + _closed(name, tt)[1][:, None] * eps, rtol=1e-5, atol=1e-6)
    assert max_z(target) < 4.5  # 40 z-scores (20 bins, 2 dims); measured 1.6 to 3.1
    assert max_z(wrong) > 20.0  # measured 23 to 410


@pytest.mark.parametrize("name", ["linear", "gvp", "vp"])
def test_sit_conversions_in_sit_time_agree(name):
    """SiT's path.py formulas in its time s = 1 - t, with v_SiT = -v: get_score_from_velocity,
    get_noise_from_velocity, get_velocity_from_score and compute_drift's diffusion."""
    path = PATHS[name]
    s_sit = jnp.linspace(0.05, 0.95, 19)
    t = itp.sit_time(s_sit)
    np.testing.assert_allclose(t, 1 - s_sit)
    alpha, sigma = (lambda s, f=f: f(1 - s) for f in CLOSED_FORMS[name])
    a, da = jax.jvp(alpha, (s_sit,), (jnp.ones_like(s_sit),))
    s, ds = jax.jvp(sigma, (s_sit,), (jnp.ones_like(s_sit),))
    x_t = _marginal_points(name, t, seed=5)
    v = _exact(name, x_t, t)["velocity"]
    v_sit = -v
    e = lambda c: c[:, None]  # noqa: E731
    ratio = a / da
    score_sit = (e(ratio) * v_sit - x_t) / e(s**2 - ratio * ds * s)
    noise_sit = (e(ratio) * v_sit - x_t) / e(ratio * ds - s)
    g_sit = (da / a) * s**2 - s * ds
    np.testing.assert_allclose(itp.convert(path, v, x_t, t, "velocity", "score"), score_sit,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(itp.convert(path, v, x_t, t, "velocity", "eps"), noise_sit,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(-itp.convert(path, score_sit, x_t, t, "score", "velocity"),
                               e(g_sit) * score_sit + e(da / a) * x_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(itp.sbdm_diffusion(path, t), g_sit, rtol=1e-4)
    if name == "vp":  # SiT's VPCPlan.compute_drift: beta_t / 2
        np.testing.assert_allclose(itp.sbdm_diffusion(path, t),
                                   (0.1 + (1 - s_sit) * (20.0 - 0.1)) / 2, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "gvp", "vp"])
def test_diffusion_forms_and_loss_weights_are_sits(name):
    """compute_diffusion (form, norm) and training_losses' weights, in SiT's time s."""
    path, norm = PATHS[name], 0.7
    s = jnp.linspace(0.05, 0.95, 19)
    t = 1 - s
    sigma_sit = CLOSED_FORMS[name][1](t)
    g_sit = itp.sbdm_diffusion(path, t)
    expected = {"constant": norm * jnp.ones_like(s), "SBDM": norm * g_sit,
                "sigma": norm * sigma_sit, "linear": norm * (1 - s),
                "decreasing": 0.25 * (norm * jnp.cos(jnp.pi * s) + 1) ** 2,
                "increasing-decreasing": norm * jnp.sin(jnp.pi * s) ** 2}
    assert set(expected) == set(itp.DIFFUSION_FORMS)
    for form, want in expected.items():
        np.testing.assert_allclose(itp.diffusion_coefficient(path, t, form, norm), want,
                                   rtol=1e-5, atol=1e-7, err_msg=form)
    weights = {"none": jnp.ones_like(s), "velocity": (g_sit / sigma_sit) ** 2,
               "likelihood": g_sit / sigma_sit**2}
    for weighting, want in weights.items():
        np.testing.assert_allclose(itp.loss_weight(path, t, weighting), want, rtol=1e-5)
    if name == "linear":  # g = t / (1 - t): weights 1 / (1 - t)^2 and 1 / (t (1 - t))
        np.testing.assert_allclose(itp.loss_weight(path, t, "velocity"), 1 / (1 - t) ** 2,
                                   rtol=1e-4)
        np.testing.assert_allclose(itp.loss_weight(path, t, "likelihood"), 1 / (t * (1 - t)),
                                   rtol=1e-4)


MU, VAR = jnp.array([0.5, -1.0]), jnp.array([0.3, 1.5])  # Gaussian data, diagonal covariance


@jax.jit
def _euler_maruyama(x, coefficients, keys, score_sign):
    """Euler-Maruyama steps t -> t - h of dx = (v - score_sign w score) dt + sqrt(2 w) dW with
    the exact v and score of N(MU, diag VAR): V_t = alpha^2 VAR + sigma^2,
    v = alpha' MU + V'_t / (2 V_t) (x - alpha MU), score = -(x - alpha MU) / V_t."""
    def step(x, inputs):
        (a, s, da, ds, w, h), key = inputs
        var = a**2 * VAR + s**2
        v = da * MU + (a * da * VAR + s * ds) / var * (x - a * MU)
        drift = itp.sde_drift(v, -score_sign * (x - a * MU) / var, w)
        return x - h * drift + jnp.sqrt(2 * w * h) * jax.random.normal(key, x.shape), None
    return jax.lax.scan(step, x, (coefficients, keys))[0]


def _em_moments(name, form, score_sign, n=10_000, h=1e-3, t_hi=0.9, checkpoints=(0.5, 0.0)):
    """Particles from the exact marginal at t_hi down to each checkpoint in steps of h, with w
    the module's diffusion coefficient: [(t, mean, variance, path's mean, path's variance)]."""
    path = PATHS[name]
    k0, key = jax.random.split(jax.random.key(0))
    a, s, _, _ = _closed(name, jnp.array(t_hi))
    x = a * MU + jnp.sqrt(a**2 * VAR + s**2) * jax.random.normal(k0, (n, 2))
    out, start = [], t_hi
    for c in checkpoints:
        steps = round((start - c) / h)
        t = start - h * jnp.arange(steps)
        key, k = jax.random.split(key)
        coefficients = (*_closed(name, t), itp.diffusion_coefficient(path, t, form),
                        jnp.full((steps,), h))
        x = _euler_maruyama(x, coefficients, jax.random.split(k, steps), score_sign)
        a, s, _, _ = _closed(name, jnp.array(c))
        out.append((c, x.mean(0), x.var(0), a * MU, a**2 * VAR + s**2))
        start = c
    return out


def _keeps_the_marginals(moments) -> bool:
    """Means within 0.05 standard deviations and variances within 6% of the path's (10,000
    particles: Monte-Carlo errors about 0.01 and 1.4%)."""
    return all(bool(jnp.all(jnp.abs(mean - want_mean) < 0.05 * jnp.sqrt(want_var)))
               and bool(jnp.all(jnp.abs(var / want_var - 1) < 0.06))
               for _, mean, var, want_mean, want_var in moments)


@pytest.mark.parametrize("name", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("form", itp.DIFFUSION_FORMS)
def test_the_sde_keeps_the_marginals_of_the_path(name, form):
    """For every diffusion coefficient the SDE's particles keep the path's marginal moments at
    t = 0.5 and t = 0 (Fokker-Planck). Negative control: the score term with the wrong sign
    (v + w score) is rejected by the same check."""
    assert _keeps_the_marginals(_em_moments(name, form, 1.0))
    assert not _keeps_the_marginals(_em_moments(name, form, -1.0))


N_T = 20_000


def test_uniform_t_is_uniform():
    """KS test against U[1e-3, 1]; negative control: the same samples against U[0, 0.95]."""
    t = np.asarray(itp.sample_uniform(jax.random.key(0), N_T, 1e-3, 1.0))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    assert stats.kstest(t, stats.uniform(1e-3, 1 - 1e-3).cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.uniform(0.0, 0.95).cdf).pvalue < 1e-6


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (-0.4, 1.0), (0.5, 0.6)])
def test_logit_normal_t_and_its_density(m, s):
    """Samples: KS test against Phi((logit t - m) / s); negative control m + 0.1 rejected. The
    density integrates to that CDF over intervals, and to 1."""
    t = np.asarray(itp.sample_logit_normal(jax.random.key(1), N_T, m, s))
    cdf = lambda m_: lambda x: stats.norm.cdf((np.log(x) - np.log1p(-x) - m_) / s)  # noqa: E731
    assert stats.kstest(t, cdf(m)).pvalue > 1e-3
    assert stats.kstest(t, cdf(m + 0.1)).pvalue < 1e-6
    grid = np.linspace(1e-6, 1 - 1e-6, 200_001)
    density = np.asarray(itp.logit_normal_density(jnp.asarray(grid), m, s), np.float64)
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1])
                                                * np.diff(grid))])
    np.testing.assert_allclose(integral[-1], 1.0, atol=1e-4)
    for q in (0.2, 0.5, 0.8):
        i = np.searchsorted(grid, q)
        np.testing.assert_allclose(integral[i], cdf(m)(grid[i]), atol=1e-4)


def test_skewed_t_is_the_flow_matching_librarys_in_our_time():
    """The library's t_fm = clip(1 / (1 + exp(-1.2 + 1.2 n)), 1e-4, 1) (t = 1 data) from the
    same normals is 1 - t; the law is a logit-normal (-1.2, 1.2) clipped at 1 - 1e-4 (KS test).
    Negative control: the library's own law, logit-normal (+1.2, 1.2), is rejected."""
    key = jax.random.key(2)
    t = np.asarray(itp.sample_skewed(key, N_T))
    sigma = np.exp(np.asarray(jax.random.normal(key, (N_T,))) * 1.2 - 1.2)
    np.testing.assert_allclose(1 - t, np.clip(1 / (1 + sigma), 1e-4, 1.0), atol=1e-6)
    assert t.max() <= 1 - 1e-4 + 1e-7
    cdf = lambda m: lambda x: stats.norm.cdf((np.log(x) - np.log1p(-x) - m) / 1.2)  # noqa: E731
    assert stats.kstest(t, cdf(-1.2)).pvalue > 1e-3
    assert stats.kstest(t, cdf(1.2)).pvalue < 1e-6


def test_unknown_names_are_one_line_config_errors_listing_the_valid_ones():
    path, t = itp.Linear(), jnp.array([0.5])
    for call, valid in ((lambda: itp.diffusion_coefficient(path, t, "SDBM"), "SBDM"),
                        (lambda: itp.loss_weight(path, t, "elbo"), "likelihood"),
                        (lambda: itp.convert(path, t, t, t, "v", "x0"), "velocity"),
                        (lambda: itp.denoiser(path, lambda x, t: x, "noise"), "eps")):
        with pytest.raises(ConfigError, match=valid) as info:
            call()
        assert "\n" not in str(info.value)
    assert set(itp.PATHS) == {"linear", "gvp", "vp"}
    assert set(itp.T_DISTRIBUTIONS) == {"uniform", "logit_normal", "skewed"}
