"""Power-function EMA and post-hoc EMA reconstruction (EDM2, Sec. 3, App. C) against the
paper's equations, NVlabs' phema.py (fixture from tools/make_edm2_fixtures.py) and a parameter
trajectory whose every EMA is known in closed form; EDM's traditional EMA."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffusion_jax.errors import ConfigError
from diffusion_jax.training import posthoc_ema as pe

PHEMA = dict(np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                                  "edm2_phema.npz")))


def test_sigma_rel_and_gamma_convert_both_ways_as_phema_does():
    np.testing.assert_allclose(pe.sigma_rel_to_gamma(PHEMA["sigma_rel"]), PHEMA["std_to_exp"],
                               rtol=1e-12)
    np.testing.assert_allclose(pe.gamma_to_sigma_rel(PHEMA["gamma"]), PHEMA["exp_to_std"],
                               rtol=1e-12)
    # the two tracked profiles of EDM2: 16.97 and 6.94
    np.testing.assert_allclose(pe.sigma_rel_to_gamma([0.05, 0.10]), [16.9722, 6.9372], atol=1e-4)
    gamma = pe.sigma_rel_to_gamma(PHEMA["sigma_rel"])
    np.testing.assert_allclose(pe.gamma_to_sigma_rel(gamma), PHEMA["sigma_rel"], rtol=1e-12)
    assert np.ndim(pe.sigma_rel_to_gamma(0.085)) == 0


def test_sigma_rel_is_the_relative_standard_deviation_of_the_profile():
    # Eq. 123 from its definition: std of p(tau) = (gamma + 1) tau^gamma on [0, 1]
    for gamma in (0.0, 2.5, 16.97):
        mean = (gamma + 1) / (gamma + 2)
        var = integrate.quad(lambda u: (gamma + 1) * u**gamma * (u - mean) ** 2, 0, 1)[0]
        assert math.isclose(math.sqrt(var), pe.gamma_to_sigma_rel(gamma), rel_tol=1e-9)


@pytest.mark.parametrize("sigma_rel", [0.0, -0.1, 0.289, 0.5])
def test_sigma_rel_outside_the_profiles_is_a_config_error(sigma_rel):
    with pytest.raises(ConfigError, match="sigma_rel"):
        pe.sigma_rel_to_gamma(sigma_rel)


def test_power_function_beta_matches_eq_127_and_phema():
    gamma = pe.sigma_rel_to_gamma(PHEMA["beta_std"])
    np.testing.assert_allclose(pe.power_function_beta(gamma, PHEMA["beta_t"], PHEMA["beta_delta"]),
                               PHEMA["beta"], rtol=1e-12)
    assert pe.power_function_beta(6.94, 2048.0, 2048.0) == 0.0  # the first step copies theta


def test_profile_inner_product_matches_the_integral_and_phema():
    gamma_a, gamma_b = pe.sigma_rel_to_gamma(PHEMA["a_std"]), pe.sigma_rel_to_gamma(PHEMA["b_std"])
    ours = pe.profile_inner_product(PHEMA["a_t"], gamma_a, PHEMA["b_t"], gamma_b)
    np.testing.assert_allclose(ours, PHEMA["correlation"], rtol=1e-12)
    profile = lambda tau, t, g: (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0  # noqa: E731
    for t_a, g_a, t_b, g_b in [(3.0, 2.0, 5.0, 7.0), (5.0, 16.97, 2.0, 6.94), (4.0, 0.5, 4.0, 3.0)]:
        quad = integrate.quad(lambda tau: profile(tau, t_a, g_a) * profile(tau, t_b, g_b), 0,
                              min(t_a, t_b), epsabs=0, epsrel=1e-12)[0]
        assert math.isclose(pe.profile_inner_product(t_a, g_a, t_b, g_b), quad, rel_tol=1e-9)


def test_reconstruction_coefficients_match_phema():
    ours = pe.reconstruction_coefficients(PHEMA["in_t"], pe.sigma_rel_to_gamma(PHEMA["in_std"]),
                                          PHEMA["out_t"], PHEMA["out_std"])
    np.testing.assert_allclose(ours, PHEMA["coefficients"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.sum(axis=0), 1.0, rtol=1e-12)


def test_a_target_equal_to_a_snapshot_is_that_snapshot():
    t = np.array([1.0, 1.0, 2.0, 2.0]) * 2**23
    gamma = pe.sigma_rel_to_gamma(np.array([0.05, 0.10, 0.05, 0.10]))
    c = pe.reconstruction_coefficients(t, gamma, 2.0 * 2**23, 0.10)
    np.testing.assert_allclose(c, [0, 0, 0, 1], atol=1e-9)


def test_snapshots_after_the_target_time_are_a_config_error():
    with pytest.raises(ConfigError, match="0 < t_i <= t"):
        pe.reconstruction_coefficients([1.0, 3.0], [6.94, 6.94], 2.0, 0.1)


# A parameter trajectory with closed-form EMAs: theta_k = sum_m a_m (k / n)^m after step k of
# `BATCH` images, a (degree + 1, 3) random; the tracked EMA after n steps is then exactly
# sum_k w_k theta_k, w_k = (k^(gamma+1) - (k-1)^(gamma+1)) / n^(gamma+1) (module docstring).
BATCH, STEPS = 256, 4096
A = np.random.default_rng(0).standard_normal((5, 3))


def theta(k):
    return {"w": sum(a * (k / STEPS) ** m for m, a in enumerate(A)), "b": np.float64(k)}


def discrete_ema(gamma, n, exponent=None):
    """sum_k w_k theta_k, with w_k from the given exponent (default gamma + 1)."""
    e = gamma + 1 if exponent is None else exponent
    k = np.arange(1, n + 1, dtype=np.float64)
    w = (k**e - (k - 1) ** e) / n**e
    return {"w": w @ np.stack([theta(i)["w"] for i in k]), "b": w @ k}


def continuous_ema(gamma, n):
    """int p_t(tau) theta(tau) dtau = sum_m a_m (gamma + 1) / (gamma + m + 1) (t / T)^m."""
    return sum(a * (gamma + 1) / (gamma + m + 1) * (n / STEPS) ** m for m, a in enumerate(A))


GAMMAS = tuple(pe.sigma_rel_to_gamma(np.array([0.05, 0.10])))


@pytest.fixture(scope="module")
def tracked():
    """`update_power_emas` run step by step from theta_0 for STEPS steps: the final EMAs and
    the snapshots (t_i, gamma_i, pytree) taken every STEPS / 32 steps."""
    emas = tuple(theta(0) for _ in GAMMAS)
    snapshots = []
    for k in range(1, STEPS + 1):
        emas = pe.update_power_emas(emas, theta(k), GAMMAS, k * BATCH, BATCH)
        if k % (STEPS // 32) == 0:
            snapshots += [(k * BATCH, g, e) for g, e in zip(GAMMAS, emas)]
    return emas, snapshots


def test_step_by_step_update_equals_the_closed_form(tracked):
    emas, _ = tracked
    for gamma, ema in zip(GAMMAS, emas):
        exact = discrete_ema(gamma, STEPS)
        np.testing.assert_allclose(ema["w"], exact["w"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ema["b"], exact["b"], rtol=1e-12)
        # and the continuous-time EMA of theta(tau) within the step's change:
        # |theta(ceil(tau)) - theta(tau)| <= max |theta'| / STEPS
        bound = np.abs(A[1:] * np.arange(1, len(A))[:, None]).sum(0) / STEPS
        assert np.all(np.abs(ema["w"] - continuous_ema(gamma, STEPS)) <= bound)
        # negative control: the closed form with the exponent gamma instead of gamma + 1
        assert np.abs(ema["w"] - discrete_ema(gamma, STEPS, exponent=gamma)["w"]).max() > 1e-3


def test_update_is_a_pure_pytree_map_that_jits():
    emas = (theta(0), theta(0))
    step = jax.jit(lambda emas, params, t: pe.update_power_emas(emas, params, GAMMAS, t, BATCH))
    as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    out = step(as_jax(emas), as_jax(theta(1)), jnp.float32(2 * BATCH))
    beta = (1 - 1 / 2) ** (np.asarray(GAMMAS) + 1)
    for b, e in zip(beta, out):
        np.testing.assert_allclose(e["w"], b * theta(0)["w"] + (1 - b) * theta(1)["w"], rtol=1e-5)


def reconstruct(snapshots, n, sigma_rel):
    keep = [s for s in snapshots if s[0] <= n * BATCH]
    c = pe.reconstruction_coefficients([s[0] for s in keep], [s[1] for s in keep], n * BATCH,
                                       sigma_rel)
    return pe.combine_snapshots([s[2] for s in keep], c)


@pytest.mark.parametrize("sigma_rel", [0.03, 0.085, 0.15])
@pytest.mark.parametrize("n", [STEPS, STEPS // 2])
def test_reconstruction_recovers_the_exact_ema_of_any_width_and_length(tracked, sigma_rel, n):
    _, snapshots = tracked  # two profiles (sigma_rel 0.05, 0.10), 32 snapshot times to STEPS
    exact = discrete_ema(pe.sigma_rel_to_gamma(sigma_rel), n)
    # the scale: an EMA is a weighted mean of theta over [0, t], so errors relative to the range
    # of theta there (2.3 for n = STEPS, 0.12 for STEPS / 2)
    thetas = np.stack([theta(k)["w"] for k in range(n + 1)])
    scale = (thetas.max(0) - thetas.min(0)).max()
    error = lambda rec: np.abs(rec["w"] - exact["w"]).max() / scale  # noqa: E731
    # measured: 2e-6 to 4e-5 for n = STEPS (sigma_rel 0.085 to 0.03), 3e-5 to 5e-4 for STEPS / 2
    # (16 snapshot times)
    assert error(reconstruct(snapshots, n, sigma_rel)) <= 1e-3
    np.testing.assert_allclose(reconstruct(snapshots, n, sigma_rel)["b"], exact["b"], rtol=1e-3)
    # negative controls: the snapshots labelled with the other profile's gamma (error >= 0.1),
    # and 4 snapshot times up to n (error >= 4e-3) fail the same check
    swapped = [(t, GAMMAS[1] if g == GAMMAS[0] else GAMMAS[0], e) for t, g, e in snapshots]
    assert error(reconstruct(swapped, n, sigma_rel)) > 1e-3
    sparse = [s for s in snapshots if s[0] % (n * BATCH // 4) == 0]
    assert error(reconstruct(sparse, n, sigma_rel)) > 1e-3


def test_combine_snapshots_checks_the_coefficients():
    with pytest.raises(ValueError, match="2 snapshots"):
        pe.combine_snapshots([theta(1), theta(2)], [1.0])


def test_traditional_ema_matches_edm2s_traditional_ema_and_halves_in_a_halflife():
    for n_img, batch, halflife, rampup, beta in PHEMA["traditional"]:
        rampup = None if np.isnan(rampup) else rampup
        np.testing.assert_allclose(pe.traditional_ema_beta(n_img, batch, halflife, rampup), beta,
                                   rtol=1e-6)
    # EDM's setting (500 kimg, ramp-up 0.05), past the ramp-up: beta^(halflife / batch) = 1/2
    beta = pe.traditional_ema_beta(1e8, 512, 500_000, 0.05)
    np.testing.assert_allclose(beta ** (500_000 / 512), 0.5, rtol=1e-4)
    # in the ramp-up the half-life is n_img rampup_ratio, and the first step copies theta
    np.testing.assert_allclose(pe.traditional_ema_beta(1e6, 512, 500_000, 0.05) ** (5e4 / 512),
                               0.5, rtol=1e-4)
    assert float(pe.traditional_ema_beta(0, 512, 500_000, 0.05)) == 0.0
    traced = jax.jit(lambda n: pe.traditional_ema_beta(n, 512, 500_000, 0.05))(1e6)
    np.testing.assert_allclose(traced, pe.traditional_ema_beta(1e6, 512, 500_000, 0.05))
