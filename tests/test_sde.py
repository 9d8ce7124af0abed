"""The forward SDEs (VP, sub-VP, VE) against their closed-form marginals and discrete chains, and
the denoising score-matching loss (Song et al. 2021, Eqs. 7-12)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax.losses import dsm
from diffusion_jax.processes import schedules
from diffusion_jax.processes import sde as sde_lib

SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()]
IDS = ["vp", "subvp", "ve"]
X0 = jnp.array([[1.5, -0.7]])


def _moments(sde, x0, t1, num_steps=2000):
    """RK4 on the moment ODEs of the linear SDE dx = a(t) x dt + g(t) dw, with a and g read off
    sde.sde: dm/dt = a m, dv/dt = 2 a v + g^2, from the kernel at t = 0 (VE starts at sigma_min)."""
    def rates(t, m, v):
        drift, g = sde.sde(jnp.ones((1, 1)), jnp.full((1,), t))
        a = drift[0, 0]
        return a * m, 2.0 * a * v + g[0] ** 2

    h = t1 / num_steps

    def step(i, mv):
        m, v = mv
        t = i * h
        k1 = rates(t, m, v)
        k2 = rates(t + h / 2, m + h / 2 * k1[0], v + h / 2 * k1[1])
        k3 = rates(t + h / 2, m + h / 2 * k2[0], v + h / 2 * k2[1])
        k4 = rates(t + h, m + h * k3[0], v + h * k3[1])
        return (m + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]),
                v + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]))

    m0, s0 = sde.marginal_prob(x0, jnp.zeros((1,)))
    return jax.jit(lambda m, v: jax.lax.fori_loop(0, num_steps, step, (m, v)))(m0, s0[0] ** 2)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("t1", [0.05, 0.4, 1.0])
def test_sde_coefficients_integrate_to_the_marginal(sde, t1):
    """The drift and diffusion of `sde` transport mean and variance exactly onto `marginal_prob`."""
    m, v = _moments(sde, X0, t1)
    mean, std = sde.marginal_prob(X0, jnp.full((1,), t1))
    np.testing.assert_allclose(m, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jnp.sqrt(v), std[0], rtol=1e-4)
    np.testing.assert_allclose(sde.alpha(jnp.full((1,), t1)), mean[0, 0] / X0[0, 0], rtol=1e-5)
    np.testing.assert_allclose(sde.sigma(jnp.full((1,), t1)), std, rtol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_euler_maruyama_samples_match_the_marginal(sde):
    """Monte Carlo: 4000 Euler-Maruyama paths of 500 steps from x(0) ~ p_00(. | x0) to t = 0.5."""
    n, steps, t1 = 4000, 500, 0.5
    dt = t1 / steps

    def simulate(rng):
        init_rng, rng = jax.random.split(rng)
        mean0, std0 = sde.marginal_prob(jnp.broadcast_to(X0, (n, 2)), jnp.zeros((n,)))
        x = mean0 + std0[:, None] * jax.random.normal(init_rng, (n, 2))

        def body(i, x):
            drift, g = sde.sde(x, jnp.full((n,), i * dt))
            z = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
            return x + drift * dt + g[:, None] * math.sqrt(dt) * z
        return jax.lax.fori_loop(0, steps, body, x)

    x = np.asarray(jax.jit(simulate)(jax.random.key(0)), np.float64)
    mean, std = sde.marginal_prob(X0, jnp.full((1,), t1))
    mean, std = np.asarray(mean[0], np.float64), float(std[0])
    # 4 standard errors (mean: std / sqrt(n); sample std: std / sqrt(2 n)) plus 1% for the
    # O(dt) bias of Euler-Maruyama.
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * std / math.sqrt(n) + 1e-2 * std)
    np.testing.assert_array_less(np.abs(x.std(0) / std - 1), 4 / math.sqrt(2 * n) + 1e-2)


def test_vp_discretization_is_the_ddpm_chain():
    sde = sde_lib.VPSDE()
    betas = schedules.linear_betas(sde.N, sde.beta_min / sde.N, sde.beta_max / sde.N)
    chain = schedules.from_betas(betas)
    i = np.array([0, 1, 10, 250, 500, 998, 999])
    t = jnp.asarray(i / (sde.N - 1), jnp.float32)  # the chain's own times t_i = i T / (N - 1)
    x = jax.random.normal(jax.random.key(1), (i.size, 3))
    f, g = sde.discretize(x, t)
    np.testing.assert_allclose(g, np.sqrt(betas[i]), rtol=1e-5)
    np.testing.assert_allclose(f, (np.sqrt(1 - betas[i])[:, None] - 1) * np.asarray(x),
                               rtol=1e-4, atol=1e-7)
    # The chain's alpha_bar_i = prod_{j <= i} (1 - beta_j) is the continuous alpha(t)^2 at the end
    # of step i, t = (i + 1) / N, up to the O(beta^2) term of log(1 - beta): 0.7% of B(1) = 10.05.
    t_end = jnp.asarray((np.arange(sde.N) + 1) / sde.N, jnp.float32)
    log_ab = np.log(np.asarray(chain.alpha_bars, np.float64))
    log_a2 = 2 * np.log(np.asarray(sde.alpha(t_end), np.float64))
    np.testing.assert_allclose(log_ab, log_a2, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(chain.alpha_bars, np.asarray(sde.alpha(t_end)) ** 2, atol=2e-3)
    # x_{i+1} = x_i + f + G z has the chain's mean and variance.
    np.testing.assert_allclose(1 + f / x, np.broadcast_to(np.sqrt(np.asarray(chain.alphas)[i])[:, None], x.shape),
                               rtol=1e-4)


def test_ve_discretization_is_the_smld_chain():
    sde = sde_lib.VESDE()
    sigmas = np.exp(np.linspace(np.log(sde.sigma_min), np.log(sde.sigma_max), sde.N))
    t = jnp.asarray(np.arange(sde.N) / (sde.N - 1), jnp.float32)
    f, g = sde.discretize(jnp.ones((sde.N, 2)), t)
    np.testing.assert_array_equal(f, 0.0)
    expected = np.sqrt(sigmas**2 - np.concatenate([[0.0], sigmas[:-1]]) ** 2)
    np.testing.assert_allclose(g, expected, rtol=2e-4)
    np.testing.assert_allclose(np.sum(np.asarray(g, np.float64) ** 2), sde.sigma_max**2, rtol=1e-4)
    np.testing.assert_allclose(sde.sigma(t), sigmas, rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_reverse_sde_and_probability_flow(sde):
    x = jax.random.normal(jax.random.key(2), (5, 2))
    t = jnp.linspace(0.1, 0.9, 5)
    score = lambda x, t: -x * (1.0 + t[:, None])
    f, g = sde.sde(x, t)
    drift, diffusion = sde.reverse(score).sde(x, t)
    np.testing.assert_allclose(drift, f - g[:, None] ** 2 * score(x, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffusion, g)
    drift, diffusion = sde.reverse(score, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift, f - 0.5 * g[:, None] ** 2 * score(x, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(diffusion, 0.0)
    np.testing.assert_allclose(sde.probability_flow_drift(score)(x, t), drift)
    fd, gd = sde.discretize(x, t)
    rdrift, rdiff = sde.reverse(score).discretize(x, t)
    np.testing.assert_allclose(rdrift, fd - gd[:, None] ** 2 * score(x, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rdiff, gd)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior(sde):
    z = sde.prior_sampling(jax.random.key(3), (20000, 2))
    expected_std = sde.sigma(jnp.ones((1,)))[0]  # p_T is the marginal at T up to alpha(T) x0
    np.testing.assert_allclose(np.std(z), expected_std, rtol=0.05)
    np.testing.assert_allclose(np.std(z), sde.prior_std, rtol=0.02)
    zz = z[:4].reshape(4, 1, 2, 1)
    s = sde.prior_std
    expected = -np.sum(np.asarray(zz).reshape(4, -1) ** 2, -1) / (2 * s**2) - np.log(2 * np.pi * s**2)
    np.testing.assert_allclose(sde.prior_logp(zz), expected, rtol=1e-5)


def test_noise_conditioning_names_and_jit():
    t = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(sde_lib.VPSDE().noise_conditioning(t), [0.0, 499.5, 999.0])
    np.testing.assert_allclose(sde_lib.SubVPSDE().noise_conditioning(t), [0.0, 499.5, 999.0])
    np.testing.assert_allclose(sde_lib.VESDE().noise_conditioning(t), [0.01, math.sqrt(0.5), 50.0],
                               rtol=1e-5)
    assert isinstance(sde_lib.SDES["vesde"](sigma_max=10.0), sde_lib.VESDE)
    assert sde_lib.SDES["vpsde"]().beta_max == 20.0
    # SDEs pass through jit as arguments (static pytrees) and hash as static arguments.
    f = jax.jit(lambda s, t: s.sigma(t))
    np.testing.assert_allclose(f(sde_lib.VPSDE(), t), sde_lib.VPSDE().sigma(t))
    g = jax.jit(lambda t, s: s.alpha(t), static_argnums=1)
    np.testing.assert_allclose(g(t, sde_lib.SubVPSDE()), sde_lib.SubVPSDE().alpha(t))


# Denoising score matching -------------------------------------------------------------------------

# Isotropic two-component mixture sum_k w_k N(mu_k, c_k I): at time t component k is
# N(alpha mu_k, (alpha^2 c_k + sigma^2) I), so the exact score is elementwise and cheap.
WEIGHTS, MEANS, VARS = jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.5], [1.0, -0.5]]), jnp.array([0.2, 0.1])
MIXTURE = analytic.GaussianMixture(WEIGHTS, MEANS, VARS[:, None, None] * jnp.eye(2))


def exact_score(sde):
    def score(x, t):
        a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
        var = a**2 * VARS[None, :, None] + s**2  # (B, K, 1)
        diff = x[:, None, :] - a * MEANS[None]
        log_p = jnp.log(WEIGHTS) - 0.5 * jnp.sum(diff**2 / var + jnp.log(var), axis=-1)
        return jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_p, axis=-1), -diff / var)
    return score


def test_exact_score_is_the_analytic_one():
    x, t = jax.random.normal(jax.random.key(8), (16, 2)), jnp.linspace(0.05, 1.0, 16)
    sde = sde_lib.SubVPSDE()
    np.testing.assert_allclose(exact_score(sde)(x, t), MIXTURE.vp_score(x, sde.alpha(t), sde.sigma(t)),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_dsm_loss_is_smallest_at_the_exact_score(sde):
    x0 = MIXTURE.sample(jax.random.key(4), 4000)
    exact = exact_score(sde)
    perturbed = lambda x, t: 1.1 * exact(x, t) + 0.1

    @jax.jit
    def losses(rng):  # the same t and z for every loss, so the comparisons are paired
        out = [dsm.dsm_loss(fn, sde, x0, rng, likelihood_weighting=lw)
               for lw in (False, True) for fn in (exact, perturbed)]
        return jnp.stack(out + [dsm.dsm_loss(exact, sde, x0, rng, reduce="sum")])

    exact_l, perturbed_l, exact_g2, perturbed_g2, exact_sum = np.asarray(losses(jax.random.key(5)))
    assert exact_l < perturbed_l
    assert exact_g2 < perturbed_g2
    # sum over the d = 2 dimensions is d times the mean.
    np.testing.assert_allclose(exact_sum, 2 * exact_l, rtol=1e-5)


def test_dsm_loss_value_for_gaussian_data():
    """For N(0, I) data under VP the exact score is -x (alpha^2 + sigma^2 = 1) and the residual
    sigma s + z = -sigma alpha x0 + alpha^2 z has E||.||^2 / d = alpha^2 (sigma^2 + alpha^2) =
    alpha^2, so the loss is E_t alpha(t)^2 = E_t exp(-B(t))."""
    sde = sde_lib.VPSDE()
    x0 = jax.random.normal(jax.random.key(6), (20000, 2))
    loss = dsm.dsm_loss(lambda x, t: -x, sde, x0, jax.random.key(7))
    t = np.linspace(1e-5, 1.0, 100001)
    expected = np.mean(np.exp(-(sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2)))
    np.testing.assert_allclose(loss, expected, rtol=0.05)
    with pytest.raises(ValueError, match="mean"):
        dsm.dsm_loss(lambda x, t: -x, sde, x0, jax.random.key(7), reduce="max")
