"""The DDPM variational bound in bits/dim (Ho et al. 2020, Eq. 5, Sec. 3.3) against closed forms:
the prior term, the decoder in the far tails, a single data point with its exact model (and off
by a known offset), Gaussian data with its exact model, the Monte-Carlo estimate's mean, and
`--mode=eval`'s bits/dim of a DDPM."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from diffusion_jax import variational_bound as vb
from diffusion_jax.processes import schedules
from helpers import random_params, tiny_ddpm_config

LEVELS = 256
H = 1.0 / (LEVELS - 1)  # half a bin of the 8-bit levels in [-1, 1]


def linear_schedule(T):
    """Ho et al.'s linear betas 1e-4..0.02 at T = 1000, rescaled by 1000 / T for other T."""
    return schedules.from_betas(schedules.linear_betas(T, 0.1 / T, 20.0 / T))


def float64_schedule(T):
    betas = schedules.linear_betas(T, 0.1 / T, 20.0 / T)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return betas, ab, ab_prev, (1.0 - ab_prev) / (1.0 - ab) * betas


def quantise(x):
    return np.clip(np.round((x + 1.0) * (LEVELS - 1) / 2), 0, LEVELS - 1) / (LEVELS - 1) * 2 - 1


def _at(values, t, x):
    """float64-computed schedule values (T,) at the timesteps t (B,), shaped like x."""
    return jnp.asarray(values, jnp.float32)[t.astype(jnp.int32)].reshape(
        (-1,) + (1,) * (x.ndim - 1))


def gaussian_eps(T, s):
    """E[eps | x_t] of data N(0, s^2 I): sqrt(1 - ab_t) x_t / (ab_t s^2 + 1 - ab_t)."""
    _, ab, _, _ = float64_schedule(T)
    return lambda x_t, t: (_at(np.sqrt(1 - ab) / (ab * s**2 + 1 - ab), t, x_t) * x_t)


def point_eps(T, x0):
    """The exact noise prediction of data that is the single point x0."""
    _, ab, _, _ = float64_schedule(T)
    return lambda x_t, t: (x_t - _at(np.sqrt(ab), t, x_t) * x0) / _at(np.sqrt(1 - ab), t, x_t)


def test_prior_term_is_its_closed_form_and_every_term_is_nonnegative():
    T = 50  # betas 1e-4..0.02 unscaled: alpha_bar_T = 0.61, so L_T is far from 0
    schedule = schedules.from_betas(schedules.linear_betas(T))
    x0 = jnp.asarray(quantise(np.random.default_rng(0).uniform(-1, 1, (16, 3, 2, 1))),
                     jnp.float32)
    ab_T = np.prod(1.0 - schedules.linear_betas(T))
    m2, v = ab_T * np.asarray(x0, np.float64) ** 2, 1.0 - ab_T  # KL(N(m, v) || N(0, 1))
    expected = 0.5 * np.sum(v + m2 - 1.0 - np.log(v), axis=(1, 2, 3))
    np.testing.assert_allclose(vb.prior_kl(schedule, x0), expected, rtol=1e-5)

    wrong_eps = lambda x_t, t: jnp.sin(3.0 * x_t) + 0.01 * t[:, None, None, None]  # noqa: E731
    run = jax.jit(lambda v: (vb.vlb_terms(wrong_eps, schedule, x0, jax.random.key(1), variance=v),
                             vb.vlb_bits_per_dim(wrong_eps, schedule, x0, jax.random.key(1),
                                             variance=v)), static_argnums=0)
    for variance in ("beta", "beta_tilde"):
        terms, (bpd, nfe) = run(variance)
        assert terms.shape == (16, T) and np.all(np.asarray(terms) >= -1e-6)
        np.testing.assert_allclose(bpd * 6 * math.log(2),
                                   vb.prior_kl(schedule, x0) + terms.sum(-1), rtol=1e-6)
        assert nfe == T


def test_decoder_is_exact_far_in_the_tails():
    """log P(bin) where Phi(b) - Phi(a) underflows: against log phi(a) + log int_0^{b-a}
    exp(-a u - u^2 / 2) du in float64, integrated numerically."""
    x = np.array([242, 13, 191, 255, 0]) / 127.5 - 1  # levels k; the last two are the edges
    mean = np.array([0.0, 0.0, x[2] - 0.01, 0.0, 0.0])
    logp = np.asarray(vb.discretized_gaussian_log_likelihood(
        jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
        jnp.full((5,), 2 * math.log(0.01))), np.float64)

    def log_bin(lo, hi):  # lo, hi standardised, lo > 0
        integral = integrate.quad(lambda u: math.exp(-lo * u - u * u / 2), 0, hi - lo)[0]
        return -lo * lo / 2 - 0.5 * math.log(2 * math.pi) + math.log(integral)

    lo = (x[0] - H) / 0.01  # the bin of -x[0] is the mirror image
    expected = [log_bin(lo, lo + 2 * H / 0.01), log_bin(lo, lo + 2 * H / 0.01),
                math.log(special.ndtr((0.01 + H) / 0.01) - special.ndtr((0.01 - H) / 0.01)),
                special.log_ndtr(-(1.0 - H) / 0.01), special.log_ndtr(-(1.0 - H) / 0.01)]
    assert expected[0] < -3000  # exp underflows even in float64
    np.testing.assert_allclose(logp, expected, rtol=1e-5)


def test_a_single_point_with_its_exact_model_has_only_the_prior_and_decoder_terms():
    """Data x0 alone and eps* = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t): x0_hat = x0, so with
    sigma_t^2 = beta_tilde_t every L_{t-1} vanishes and L = L_T + L_0; the decoder (mean x0,
    variance beta_tilde_2 whatever the setting) by hand."""
    T = 100
    schedule = linear_schedule(T)
    x0_np = np.array([0, 255, 127, 1, 191, 254]) / 127.5 - 1  # levels k, two at the edges
    x0 = jnp.asarray(x0_np.reshape(1, 2, 3, 1), jnp.float32)
    _, ab, _, beta_tilde = float64_schedule(T)
    z = H / math.sqrt(beta_tilde[1])
    L_0 = -(2 * special.log_ndtr(z) + 4 * math.log(special.ndtr(z) - special.ndtr(-z)))
    L_T = 0.5 * np.sum(ab[-1] * x0_np**2 - ab[-1] - np.log(1.0 - ab[-1]))
    run = jax.jit(lambda v: (vb.vlb_terms(point_eps(T, x0), schedule, x0, jax.random.key(0),
                                          variance=v)[0],
                             vb.vlb_bits_per_dim(point_eps(T, x0), schedule, x0, jax.random.key(0),
                                             variance=v)[0][0]), static_argnums=0)
    (beta_terms, _), (terms, bpd) = run("beta"), run("beta_tilde")
    assert [float(beta_terms[0]), float(terms[0])] == pytest.approx([L_0, L_0], rel=1e-5)
    np.testing.assert_array_less(np.abs(terms[1:]), 1e-5)  # every L_{t-1}, t >= 2, is 0
    assert float(bpd) == pytest.approx((L_T + L_0) / (6 * math.log(2)), rel=1e-5)


S, D, B = 0.25, 4, 2000  # data N(0, S^2 I) in D dimensions, B examples; clipping at +-1 is rare


def gaussian_data(seed=0, n=B):
    x = quantise(np.random.default_rng(seed).normal(0.0, S, (n, D)))
    return jnp.asarray(x.reshape(n, D, 1, 1), jnp.float32), x


def expected_terms(T, x0, variance):
    """E[L_{t-1} | x0] (B, T-1) and E[L_0 | x0] (B,) in nats for the exact model of N(0, S^2 I),
    in float64, with the model mean of Eq. 11: mu = m_t x_t, m_t = (1 - beta_t / (ab_t S^2 + 1 -
    ab_t)) / sqrt(alpha_t), against mu_tilde = c0 x0 + ct x_t (Eq. 7), x_t ~ N(a x0, 1 - ab_t)."""
    betas, ab, ab_prev, beta_tilde = float64_schedule(T)
    a = np.sqrt(ab)
    m = (1.0 - betas / (ab * S**2 + 1.0 - ab)) / np.sqrt(1.0 - betas)
    c0, ct = np.sqrt(ab_prev) * betas / (1.0 - ab), np.sqrt(1.0 - betas) * (1 - ab_prev) / (1 - ab)
    x = x0[:, :, None]  # (B, D, 1) against (T,)
    mean_sq = (c0 * x + (ct - m) * a * x) ** 2 + (ct - m) ** 2 * (1.0 - ab)
    sigma2, bt = (betas if variance == "beta" else beta_tilde)[1:], beta_tilde[1:]
    kl = 0.5 * (np.log(sigma2 / bt) + bt / sigma2 - 1.0) + mean_sq[..., 1:] / (2 * sigma2)
    # L_0: the decoder's mean m_1 x_1 ~ N(m_1 a_1 x0, m_1^2 (1 - ab_1)) and variance
    # beta_tilde_2, by Gauss-Hermite quadrature over x_1
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    mean = m[0] * a[0] * x + m[0] * np.sqrt(1.0 - ab[0]) * nodes  # (B, D, nodes)
    lo, hi = (x - H - mean) / np.sqrt(beta_tilde[1]), (x + H - mean) / np.sqrt(beta_tilde[1])
    p = np.where(x < -1 + H, special.ndtr(hi), np.where(
        x > 1 - H, special.ndtr(-lo), np.where(lo > 0, special.ndtr(-lo) - special.ndtr(-hi),
                                               special.ndtr(hi) - special.ndtr(lo))))
    L_0 = -(np.log(p) @ weights) / weights.sum()
    return kl.sum(1), L_0.sum(1)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_gaussian_data_terms_match_their_expectation_under_the_exact_model(variance):
    T = 100
    schedule = linear_schedule(T)
    x0, x0_np = gaussian_data()
    terms = np.asarray(jax.jit(lambda r: vb.vlb_terms(gaussian_eps(T, S), schedule, x0, r,
                                                      variance=variance))(jax.random.key(3)))
    kl, L_0 = expected_terms(T, x0_np, variance)
    for got, want in ((terms[:, 1:].sum(-1), kl.sum(-1)), (terms[:, 0], L_0)):
        diff = got - want  # zero-mean noise of the one sample of x_t per term
        assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(B), (got.mean(), want.mean())
        assert diff.std() / math.sqrt(B) < 0.01 * want.mean()  # the check is sharp


def exact_nll(x0_np):
    """-log P(x0) in nats (B,) of the 8-bit quantised N(0, S^2): each level's bin mass."""
    k = np.round((x0_np + 1.0) * (LEVELS - 1) / 2)
    lo = np.where(k == 0, -np.inf, (x0_np - H) / S)
    hi = np.where(k == LEVELS - 1, np.inf, (x0_np + H) / S)
    return -np.log(special.ndtr(hi) - special.ndtr(lo)).sum(-1)


def test_gaussian_data_bound_is_above_the_exact_nll_and_tightens_with_more_steps():
    """With sigma_t^2 = beta_tilde_t the bound's gap to the data's NLL is mostly the reverse
    variance's mismatch at small t, which shrinks as T grows (about 1.6 -> 0.7 bits/dim). (With
    beta_t the reverse variance is nearly right at every t and the gap, about 0.1 bits/dim, is
    the decoder's: its beta_tilde_2, about beta_1 / 2 at T = 1000 and 3 beta_1 / 4 at T = 100,
    against a posterior variance near beta_1, so it does not shrink with T on this data.)"""
    n = 500
    x0, x0_np = gaussian_data(seed=1, n=n)
    nll = exact_nll(x0_np)
    gaps = {}
    for T in (100, 1000):
        schedule = linear_schedule(T)
        bpd, _ = jax.jit(lambda r: vb.vlb_bits_per_dim(gaussian_eps(T, S), schedule, x0, r,
                                                   variance="beta_tilde"))(jax.random.key(T))
        gap = np.asarray(bpd) - nll / (D * math.log(2))
        gaps[T] = gap.mean(), gap.std() / math.sqrt(n)
        assert gaps[T][0] > 4 * gaps[T][1]  # above the exact NLL
    assert gaps[100][0] - gaps[1000][0] > 4 * math.hypot(gaps[100][1], gaps[1000][1])


def offset_point_model(T, x0):
    """The exact model of the single point x0 off by delta_t, eps = eps* + delta_t, and the
    L_{t-1} it has whatever x_t is (variance beta_tilde): x0 - x0_hat = sqrt(1 - ab_t) delta_t /
    sqrt(ab_t), so L_{t-1} = D c0_t^2 (1 - ab_t) delta_t^2 / (2 ab_t beta_tilde_t), c0_t =
    sqrt(ab_{t-1}) beta_t / (1 - ab_t) (Eq. 7-8); delta_t is set to make it w_t = 1 + cos(t) / 2."""
    betas, ab, ab_prev, beta_tilde = float64_schedule(T)
    c0 = np.sqrt(ab_prev) * betas / (1.0 - ab)
    w = 1.0 + 0.5 * np.cos(np.arange(T))
    delta = np.sqrt(2 * ab * beta_tilde * w / (D * c0**2 * (1.0 - ab)))
    delta[0] = 0.0  # the decoder of the exact mean
    exact_eps = point_eps(T, x0)
    return lambda x_t, t: exact_eps(x_t, t) + _at(delta, t, x_t), w[1:]


def test_a_point_model_off_by_delta_has_the_closed_form_kl_terms():
    T = 50
    x0 = gaussian_data()[0][:1]
    eps, w = offset_point_model(T, x0)
    terms = jax.jit(lambda r: vb.vlb_terms(eps, linear_schedule(T), x0, r,
                                           variance="beta_tilde"))(jax.random.key(0))
    np.testing.assert_allclose(terms[0, 1:], w, rtol=1e-4)


def test_the_monte_carlo_estimate_is_unbiased():
    """With `offset_point_model` the exact sum of the KL terms is sum w_t; the estimates from 4
    uniform timesteps, over copies of x0, average to the exact bound within a few standard
    errors, and the test is sharp enough to see T in place of T - 1."""
    T, N = 50, 4000
    x0 = jnp.broadcast_to(gaussian_data()[0][:1], (N, D, 1, 1))
    eps, w = offset_point_model(T, x0[:1])
    schedule = linear_schedule(T)
    run = jax.jit(lambda r, k: vb.vlb_bits_per_dim(eps, schedule, x0, r, timesteps=k,
                                               variance="beta_tilde"), static_argnums=1)
    (exact, nfe_exact), (estimate, nfe) = run(jax.random.key(0), 0), run(jax.random.key(1), 4)
    assert (nfe_exact, nfe) == (T, 5)
    exact, estimate = (np.asarray(b, np.float64) * D * math.log(2) for b in (exact, estimate))
    stderr = estimate.std() / math.sqrt(N)
    assert abs(estimate.mean() - exact.mean()) < 4 * stderr
    assert stderr < w.sum() / (T - 1) / 5


@dataclasses.dataclass(frozen=True)
class RecordingMethod:
    """A stand-in with DDPM's bits_per_dim keywords: its bits/dim is each image's largest
    distance to the 17 digit levels, and it records the options it was called with."""

    calls: list

    def bits_per_dim(self, params, rng, x, cond=None, *, timesteps=0, variance="beta"):
        self.calls.append(dict(timesteps=timesteps, variance=variance))
        k = (x + 1.0) * 8.0
        return jnp.max(jnp.abs(k - jnp.round(k)).reshape(x.shape[0], -1), -1), timesteps + 1


def test_eval_feeds_the_quantised_test_images_and_only_the_options_a_method_takes():
    from diffusion_jax import builders, parallel
    from diffusion_jax.evaluation import test_split
    from configs.score_sde import digits_vp

    config = tiny_ddpm_config()
    config.eval.update(bpd_num_examples=8, bpd_batch_size=8, bpd_timesteps=5)
    config.sampling.variance = "beta_tilde"
    method = RecordingMethod([])
    metrics = test_split.bits_per_dim(config, parallel.make_mesh(), method, {})
    assert method.calls == [dict(timesteps=5, variance="beta_tilde")]
    assert metrics["bits_per_dim"] < 1e-5 and metrics["bits_per_dim_nfe"] == 6
    sde_config = digits_vp.get_config()
    assert set(test_split.bits_per_dim_options(builders.build_method(sde_config), sde_config)) == {
        "divergence", "rtol", "atol"}
    assert set(test_split.bits_per_dim_options(builders.build_method(config), config)) == {
        "timesteps", "variance", "clip_x0"}


def test_eval_reports_the_bits_per_dim_of_a_tiny_ddpm():
    from diffusion_jax import builders, parallel
    from diffusion_jax.evaluation import test_split

    config = tiny_ddpm_config()
    config.eval.update(bpd_num_examples=8, bpd_batch_size=8)
    method = builders.build_method(config)
    assert method.num_levels == 17  # the digits' levels, for the decoder's bins
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    metrics = test_split.bits_per_dim(config, parallel.make_mesh(), method, params)
    assert metrics["bits_per_dim_examples"] == 8 and metrics["bits_per_dim_nfe"] == 100
    assert np.isfinite(metrics["bits_per_dim"]) and metrics["bits_per_dim"] > 0
