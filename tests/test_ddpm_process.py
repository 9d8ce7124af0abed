"""The DDPM forward process: schedules, q(x_t | x_0), prediction-target conversions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.processes.schedules import marginal_coefficients, q_sample
from diffusion_jax.processes import parameterization, schedules


def test_linear_schedule_is_the_papers():
    s = schedules.make_schedule("linear", 1000)
    np.testing.assert_allclose(np.asarray(s.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)),
                               rtol=1e-5)


def test_cosine_schedule_matches_its_definition():
    T, s_off = 1000, 0.008
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    sched = schedules.make_schedule("cosine", T)
    for t in (1, 10, 500, 900):
        assert float(sched.alpha_bars[t - 1]) == pytest.approx(f(t) / f(0), rel=1e-4)
    assert float(sched.betas.max()) == pytest.approx(0.999)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="cosine, linear|linear"):
        schedules.make_schedule("quadratic", 10)


def test_q_sample_matches_closed_form_marginal():
    sched = schedules.make_schedule("linear", 1000)
    x0 = jnp.array([[1.5, -0.5]])
    n = 20000
    for t in (0, 300, 999):
        noise = jax.random.normal(jax.random.key(t), (n, 2))
        xt = q_sample(sched, jnp.broadcast_to(x0, (n, 2)), jnp.full((n,), t), noise)
        ab = float(sched.alpha_bars[t])
        se = math.sqrt(1 - ab) / math.sqrt(n)
        np.testing.assert_allclose(xt.mean(0), math.sqrt(ab) * x0[0], atol=5 * se)
        np.testing.assert_allclose(xt.std(0), math.sqrt(1 - ab), rtol=0.03)


def test_posterior_variance_is_beta_tilde():
    s = schedules.make_schedule("linear", 10)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 10))
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(s.posterior_variance,
                               (1 - ab_prev) / (1 - ab) * np.linspace(1e-4, 0.02, 10), rtol=1e-5)


def test_prediction_targets_are_the_papers_closed_forms():
    """eps (Ho et al. 2020), x0, and v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4),
    written out here, not through the module's own conversions."""
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 3, 4, 4, 1)).astype(np.float32)
    alpha, sigma = np.float32([0.9, 0.5, 0.1]), np.float32([0.43589, 0.86603, 0.99499])
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    expected = {"epsilon": eps, "x0": x0, "v": a * eps - s * x0}
    assert set(expected) == set(parameterization.PREDICTION_TARGETS)
    for kind, value in expected.items():
        np.testing.assert_allclose(parameterization.target(kind, x0, eps, alpha, sigma), value,
                                   rtol=1e-6, atol=1e-6)
    # the negative control: v with the signs of the other convention (sigma x0 - alpha eps)
    assert not np.allclose(parameterization.target("v", x0, eps, alpha, sigma),
                           s * x0 - a * eps, atol=1e-3)


@pytest.mark.parametrize("kind", parameterization.PREDICTION_TARGETS)
def test_prediction_targets_convert_into_each_other(kind):
    rng = jax.random.key(0)
    x0, eps = jax.random.normal(rng, (2, 5, 4, 4, 1))
    t = jnp.array([0, 10, 100, 500, 999])
    alpha, sigma = marginal_coefficients(schedules.make_schedule("linear", 1000), t)
    x_t = q_sample(schedules.make_schedule("linear", 1000), x0, t, eps)
    pred = parameterization.target(kind, x0, eps, alpha, sigma)
    np.testing.assert_allclose(parameterization.to_x0(kind, pred, x_t, alpha, sigma), x0,
                               atol=2e-3)
    np.testing.assert_allclose(parameterization.to_eps(kind, pred, x_t, alpha, sigma), eps,
                               atol=2e-3)
