"""Improved DDPM's learned variance (Nichol & Dhariwal 2021) as DiT trains and samples it: the
learned range, the hybrid loss's bound term, the ancestral chain with sigma_t^2 learned, ADM's
timestep respacing, guidance that keeps the variance output conditional, and the DiT-XL/2 config.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, builders, guidance
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import ddpm, grids

SCHEDULE = schedules.make_schedule("linear", 1000)
MEAN = jnp.array([1.0, -0.5])
COV = jnp.array([[0.30, 0.12], [0.12, 0.20]])
DATA = analytic.gaussian(MEAN, COV)
N = 4000


def exact_eps(x_t, t):
    ab = SCHEDULE.alpha_bars[t.astype(jnp.int32)]
    return -jnp.sqrt(1 - ab)[:, None] * DATA.vp_score(x_t, jnp.sqrt(ab), jnp.sqrt(1 - ab))


def test_the_learned_range_interpolates_log_beta_tilde_and_log_beta():
    """v = 1 gives log beta_t, v = -1 the clipped log beta-tilde_t (index 0: beta-tilde of index
    1), v = 0 their mean (Eq. 15 with frac = (v + 1) / 2)."""
    i = jnp.array([0, 1, 500, 999])
    betas = np.asarray(SCHEDULE.betas, np.float64)
    pv = np.asarray(SCHEDULE.posterior_variance, np.float64)
    log_tilde = np.log(np.where(np.asarray(i) == 0, pv[1], pv[np.asarray(i)]))
    for v, want in ((1.0, np.log(betas[i])), (-1.0, log_tilde),
                    (0.0, 0.5 * (np.log(betas[i]) + log_tilde))):
        got = schedules.learned_log_variance(SCHEDULE, i, jnp.full((4, 2), v))
        np.testing.assert_allclose(got, np.broadcast_to(want[:, None], (4, 2)), rtol=1e-5)


def test_adm_spacing_is_dits_space_timesteps():
    """'adm' reproduces improved DDPM's `space_timesteps(T, "N")` (one section: a float index
    grown by (T - 1) / (N - 1), rounded), transcribed here from their code, e.g. DiT's 250 steps
    0, 4, 8, ..., 995, 999; uniform striding (`ddim_timesteps`) differs."""
    def space_timesteps(num_timesteps, count):
        frac_stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1
        cur_idx, taken = 0.0, []
        for _ in range(count):
            taken.append(round(cur_idx))
            cur_idx += frac_stride
        return sorted(set(taken))

    for T, count in ((1000, 250), (1000, 25), (1000, 1000), (4000, 100), (1000, 7)):
        got = ddpm.ancestral_timesteps(T, count, "adm")
        assert got.tolist() == space_timesteps(T, count)
    steps = ddpm.ancestral_timesteps(1000, 250, "adm")
    assert steps[:3].tolist() == [0, 4, 8] and steps[-2:].tolist() == [995, 999]
    assert steps.tolist() != ddpm.ddim_timesteps(1000, 250).tolist()
    sigmas = grids.spaced_sigmas(SCHEDULE, 250, "adm")  # the shared solvers take it too
    assert sigmas.shape == (251,) and float(sigmas[-1]) == 0.0


def chain_moments(taus, v):
    """Exact mean and covariance (float64) of the respaced ancestral chain over `taus` with the
    exact epsilon of the Gaussian data and the learned variance at constant output v."""
    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[np.asarray(taus)]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    betas = 1.0 - ab / ab_prev
    tilde = betas * (1.0 - ab_prev) / (1.0 - ab)
    tilde[0] = tilde[1]
    frac = (v + 1.0) / 2.0
    noise = np.exp(frac * np.log(betas) + (1.0 - frac) * np.log(tilde))
    mu, cov = np.asarray(MEAN, np.float64), np.asarray(COV, np.float64)
    m, p = np.zeros(2), np.eye(2)
    for k in range(len(taus) - 1, -1, -1):
        gain = betas[k] * np.linalg.inv(ab[k] * cov + (1.0 - ab[k]) * np.eye(2))
        lin = (np.eye(2) - gain) / np.sqrt(1.0 - betas[k])
        m = lin @ m + gain @ (np.sqrt(ab[k]) * mu) / np.sqrt(1.0 - betas[k])
        p = lin @ p @ lin.T + (noise[k] if k > 0 else 0.0) * np.eye(2)
    return m, p


def assert_moments(x, mean, cov, z=4.0):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(np.diag(cov) / n))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * cov_se)


def test_the_learned_variance_chain_has_the_exact_moments_of_its_variance():
    """30 'adm' steps with the exact epsilon and a constant variance output v = 0.5: the samples
    have the exact moments of the chain with that learned variance. Negative control: the chain
    with v = -1 (beta-tilde) is rejected by the same check. v = 1 is the fixed-beta chain on the
    same noise (to float rounding)."""
    with_v = lambda v: lambda x, t: jnp.concatenate([exact_eps(x, t), jnp.full(x.shape, v)], -1)
    taus = ddpm.ancestral_timesteps(1000, 30, "adm")
    run = lambda v, r, n=N: ddpm.ancestral_sample(with_v(v), SCHEDULE, r, (n, 2), "learned",
                                                  num_steps=30, spacing="adm")
    x = jax.jit(lambda r: run(0.5, r))(jax.random.key(3))
    assert_moments(x, *chain_moments(taus, 0.5))
    with pytest.raises(AssertionError):
        assert_moments(x, *chain_moments(taus, -1.0))
    fixed = ddpm.ancestral_sample(exact_eps, SCHEDULE, jax.random.key(4), (64, 2), "beta",
                                  num_steps=30, spacing="adm")
    np.testing.assert_allclose(run(1.0, jax.random.key(4), 64), fixed, rtol=1e-4, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class MeanAndVariance:
    """A stand-in network of 2C channels: eps = a * (exact eps of a scalar Gaussian) and the
    variance output v = b (+ c * label when conditional), params {'a', 'b', 'c'}."""
    mean: float
    std: float
    alpha_bars: jax.Array

    def init(self, rng, x, t, cond=None):
        return {"params": {"a": jnp.ones(()), "b": jnp.zeros(()), "c": jnp.zeros(())}}

    def apply(self, variables, x_t, t, cond=None, train=False, rngs=None):
        p = variables["params"]
        ab = self.alpha_bars[t.astype(jnp.int32)].reshape(-1, 1, 1, 1)
        a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
        posterior_mean = (a * self.std**2 * x_t + s**2 * self.mean) / (a**2 * self.std**2 + s**2)
        eps = (x_t - a * posterior_mean) / s
        label = 0.0 if cond is None else cond.astype(jnp.float32).reshape(-1, 1, 1, 1)
        v = jnp.broadcast_to(p["b"] + p["c"] * label, x_t.shape)
        return jnp.concatenate([p["a"] * eps, v], axis=-1)


def _method(num_classes=0):
    model = MeanAndVariance(0.3, 0.5, SCHEDULE.alpha_bars)
    return DDPM(model=model, schedule=SCHEDULE, image_shape=(4, 4, 1), learn_sigma=True,
                num_classes=num_classes)


@pytest.mark.parametrize("t,v", [(1, 0.0), (5, 0.6), (20, -0.4)])
def test_the_bound_term_of_the_hybrid_loss_has_its_closed_form_expectation(t, v):
    """With the exact posterior mean of N(0.3, 0.5^2) pixels, E[L_{t-1}] per dimension is
    0.5 (log Sigma - log beta-tilde + (beta-tilde + c0^2 Var[x0 | x_t]) / Sigma - 1) / ln 2 with
    log Sigma the learned range at v: the Monte Carlo mean of `variance_bound_term` over 20,000
    examples lies within 4 standard errors. Negative control: the same closed form with the
    range read as frac = v (not (v + 1) / 2) is rejected."""
    method = _method()
    n = 20_000
    k1, k2 = jax.random.split(jax.random.key(t))
    x0 = 0.3 + 0.5 * jax.random.normal(k1, (n, 4, 4, 1))
    i = jnp.full((n,), t)
    x_t = schedules.q_sample(SCHEDULE, x0, i, jax.random.normal(k2, x0.shape))
    params = {"a": jnp.ones(()), "b": jnp.full((), v), "c": jnp.zeros(())}
    out = method.apply(params, x_t, i.astype(jnp.float32))
    vb = np.asarray(method.variance_bound_term(x0, x_t, i, out[..., :1], out[..., 1:]))

    ab, ab_prev = float(SCHEDULE.alpha_bars[t]), float(SCHEDULE.alpha_bars_prev[t])
    beta, tilde = 1 - ab / ab_prev, float(SCHEDULE.posterior_variance[t])
    c0 = np.sqrt(ab_prev) * beta / (1 - ab)
    post_var = 0.25 * (1 - ab) / (ab * 0.25 + 1 - ab)

    def expected(frac):
        log_sigma = frac * np.log(beta) + (1 - frac) * np.log(tilde)
        return 0.5 * (log_sigma - np.log(tilde) + (tilde + c0**2 * post_var) / np.exp(log_sigma)
                      - 1) / np.log(2.0)

    se = vb.std() / np.sqrt(n)
    assert abs(vb.mean() - expected((v + 1) / 2)) < 4 * se
    assert abs(vb.mean() - expected(v)) > 4 * se


@pytest.mark.slow
def test_the_hybrid_loss_trains_the_mean_by_mse_and_the_variance_by_the_bound():
    """DiT's split: the gradient of the hybrid loss w.r.t. the mean's parameter equals that of
    the MSE alone (the bound sees the mean under stop-gradient), and w.r.t. the variance
    parameter that of the bound alone; the loss is MSE + bound, reported as metric 'vb'."""
    method = _method()
    batch = {"image": 0.3 + 0.5 * jax.random.normal(jax.random.key(0), (256, 4, 4, 1))}
    params = {"a": jnp.full((), 0.9), "b": jnp.full((), 0.2), "c": jnp.zeros(())}
    rng = jax.random.key(1)
    loss = lambda p: method.loss(p, batch, rng)[0]
    grads = jax.grad(loss)(params)
    vb = lambda p: method.loss(p, batch, rng)[1]["vb"]
    mse = lambda p: loss(p) - vb(p)
    assert float(grads["a"]) == pytest.approx(float(jax.grad(mse)(params)["a"]), rel=1e-5)
    assert float(grads["b"]) == pytest.approx(float(jax.grad(vb)(params)["b"]), rel=1e-5)
    assert abs(float(jax.grad(vb)(params)["b"])) > 1e-3
    assert abs(float(jax.grad(mse)(params)["b"])) == 0.0


def test_guidance_guides_the_prediction_and_keeps_the_variance_output_conditional():
    """Guidance scale 2 on a learn_sigma network: eps is e_u + 2 (e_c - e_u) and the variance
    output that of the conditional branch (DiT's forward_with_cfg), not guided."""
    method = _method(num_classes=3)
    params = {"a": jnp.ones(()), "b": jnp.full((), 0.1), "c": jnp.full((), 0.2)}
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    t = jnp.full((2,), 400.0)
    cond = jnp.array([1, 2])
    out = method.eps_fn(params, cond, guidance.Guidance(scale=2.0), with_variance=True)(x, t)
    np.testing.assert_allclose(out[..., 1:], (0.1 + 0.2 * cond).reshape(2, 1, 1, 1)
                               * np.ones(x.shape), rtol=1e-6)
    np.testing.assert_allclose(out[..., :1], method.eps_fn(params, cond)(x, t), rtol=1e-5)
    assert method.eps_fn(params, cond, guidance.Guidance(scale=2.0))(x, t).shape == x.shape


def test_learned_variance_needs_a_variance_output():
    """sampling.variance='learned' on a DDPM without learn_sigma is a one-line ConfigError."""
    method = dataclasses.replace(_method(), learn_sigma=False)
    with pytest.raises(builders.ConfigError, match="learn_sigma"):
        method.check_sampler(method.sampler(method="ancestral", variance="learned"))
    with pytest.raises(builders.ConfigError, match="spacing"):
        _method().check_sampler(_method().sampler(method="ancestral", spacing="karras"))


def test_the_dit_xl2_config_is_dits_setting():
    """configs/flow/imagenet256_dit_xl2.py: a DDPM with learned variance on DiT-XL/2 (674,834,720
    parameters with the 8-channel head, FRONTIER.md section 2), linear betas, 250 'adm' steps,
    guidance 1.5 on 3 channels, AdamW 1e-4 at batch 256."""
    from configs.flow import imagenet256_dit_xl2

    config = imagenet256_dit_xl2.get_config()
    latent = builders.build_method(config)  # on the 32x32x4 latents of the SD VAE, flipped
    assert latent.noise_shape == (32, 32, 4) and latent.cache_views == 2
    method = latent.inner
    assert isinstance(method, DDPM) and method.learn_sigma and method.num_classes == 1000
    shapes = jax.eval_shape(method.init_params, jax.random.key(0))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == 674_834_720
    sampler = builders.build_sampler(config, method)
    assert (sampler.method, sampler.num_steps, sampler.spacing, sampler.variance,
            sampler.guidance_scale, sampler.guidance_channels) == (
        "ancestral", 250, "adm", "learned", 1.5, 3)
    assert (config.optim.name, config.optim.lr, config.training.batch_size) == ("adamw", 1e-4, 256)
