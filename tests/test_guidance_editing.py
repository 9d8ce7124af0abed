"""Classifier-free guidance, SDEdit and inpainting with exact class-conditional denoisers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, guidance
from diffusion_jax.samplers import dpm_solver, edm, editing

# Two overlapping classes, one Gaussian each; label 2 is the null label (unconditional).
MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-0.5, 0.0], [0.5, 0.0]]),
    jnp.array([0.5 * jnp.eye(2), 0.5 * jnp.eye(2)]), jnp.array([0, 1]))
NULL = 2


def conditional_denoiser(x, sigma, cond):
    """E[x0 | x, class] for cond in {0, 1}, the full-mixture denoiser for the null label."""
    uncond = MIXTURE.denoiser(x, sigma)
    cond_part = MIXTURE.denoiser(x, sigma, jnp.where(cond == NULL, 0, cond))
    return jnp.where((cond == NULL)[:, None], uncond, cond_part)


def _inputs(n=8, seed=0):
    x = 2.0 * jax.random.normal(jax.random.key(seed), (n, 2))
    return x, jnp.geomspace(0.05, 20.0, n), jnp.arange(n) % 2


def test_guidance_at_scale_one_is_the_conditional_denoiser():
    x, sigma, cond = _inputs()
    guided = guidance.classifier_free_guidance(conditional_denoiser, 1.0, NULL)
    np.testing.assert_allclose(jax.jit(guided)(x, sigma, cond),
                               jax.jit(conditional_denoiser)(x, sigma, cond),
                               rtol=1e-5, atol=1e-6)


def test_guidance_at_scale_zero_is_the_unconditional_denoiser():
    x, sigma, cond = _inputs()
    guided = guidance.classifier_free_guidance(conditional_denoiser, 0.0, NULL)
    np.testing.assert_allclose(guided(x, sigma, cond), MIXTURE.denoiser(x, sigma), rtol=1e-5,
                               atol=1e-6)


def test_guidance_runs_one_batched_call():
    calls = []

    def counting(x, sigma, cond):
        calls.append((x.shape[0], sigma.shape[0], cond.shape[0]))
        return conditional_denoiser(x, sigma, cond)

    x, sigma, cond = _inputs()
    w = 3.0
    out = guidance.classifier_free_guidance(counting, w, NULL)(x, sigma, cond)
    assert calls == [(16, 16, 16)]
    d_c, d_u = conditional_denoiser(x, sigma, cond), MIXTURE.denoiser(x, sigma)
    np.testing.assert_allclose(out, d_u + w * (d_c - d_u), rtol=1e-5, atol=1e-5)


def test_negative_conditioning_replaces_the_unconditional_branch():
    x, sigma, cond = _inputs()
    cond = jnp.zeros_like(cond)
    w = 2.5
    guided = guidance.classifier_free_guidance(conditional_denoiser, w, NULL, negative_cond=1)
    d_c, d_neg = conditional_denoiser(x, sigma, cond), conditional_denoiser(x, sigma, cond + 1)
    np.testing.assert_allclose(guided(x, sigma, cond), d_neg + w * (d_c - d_neg), rtol=1e-5,
                               atol=1e-5)


def test_guidance_interval_limits_guidance_to_sigma_range():
    x, sigma, cond = _inputs()
    w = 3.0
    limited = guidance.classifier_free_guidance(conditional_denoiser, w, NULL, sigma_lo=0.5,
                                                sigma_hi=5.0)
    full = guidance.classifier_free_guidance(conditional_denoiser, w, NULL)
    inside = ((sigma >= 0.5) & (sigma <= 5.0))[:, None]
    assert 0 < int(inside.sum()) < 8
    expected = jnp.where(inside, full(x, sigma, cond), conditional_denoiser(x, sigma, cond))
    np.testing.assert_allclose(limited(x, sigma, cond), expected, rtol=1e-5, atol=1e-5)
    low = jnp.full_like(sigma, 0.1)  # whole batch outside: the conditional denoiser alone
    np.testing.assert_allclose(limited(x, low, cond), conditional_denoiser(x, low, cond),
                               rtol=1e-6)


def test_guidance_accepts_pytree_conditions_with_drop_mask():
    denoiser = lambda x, sigma, c: x * jnp.where(c["drop"], 0.0, c["label"])[:, None]
    x, sigma, labels = _inputs()
    cond = {"label": labels.astype(jnp.float32) + 1.0, "drop": jnp.zeros(8, bool)}
    guided = guidance.classifier_free_guidance(denoiser, 2.0, {"label": 0.0, "drop": True})
    np.testing.assert_allclose(guided(x, sigma, cond), 2.0 * x * cond["label"][:, None], rtol=1e-6)


def test_guidance_moves_samples_toward_the_class():
    """Fraction of class-0 samples nearer the class-0 mean grows with the scale (0, 1, 2, 4)."""
    n = 2000

    @jax.jit
    def sample(scale):
        guided = guidance.classifier_free_guidance(conditional_denoiser, scale, NULL)
        return edm.edm_sample(guided, jax.random.key(1), (n, 2), cond=jnp.zeros(n, jnp.int32))

    fractions = [float(jnp.mean(sample(w)[:, 0] < 0.0)) for w in (0.0, 1.0, 2.0, 4.0)]
    assert abs(fractions[0] - 0.40) < 0.05  # unconditional: 0.3 * 0.76 + 0.7 * 0.24
    assert abs(fractions[1] - 0.76) < 0.05  # conditional: P(x_1 < 0 | class 0)
    assert all(b > a + 0.02 for a, b in zip(fractions, fractions[1:])), fractions


def test_drop_labels():
    labels = jnp.arange(10000) % 10
    dropped = guidance.drop_labels(jax.random.key(2), labels, 0.1, 10)
    is_null = dropped == 10
    assert abs(float(is_null.mean()) - 0.1) < 0.015
    np.testing.assert_array_equal(dropped[~is_null], labels[~is_null])


# Editing: a correlated Gaussian, x_1 known, x_2 unknown.
CORR = analytic.gaussian(jnp.zeros(2), jnp.array([[1.0, 0.8], [0.8, 1.0]]))
EDM_SAMPLER = functools.partial(edm.edm_sample, num_steps=18)
DPM_SAMPLER = functools.partial(dpm_solver.dpm_solver_pp_2m_sample, num_steps=10,
                                denoise_to_zero=True)


@pytest.mark.parametrize("sampler", [EDM_SAMPLER, DPM_SAMPLER], ids=["edm", "dpm_solver_pp"])
def test_inpainting_keeps_known_pixels_exactly(sampler):
    x_known = CORR.sample(jax.random.key(3), 64)
    mask = jnp.array([True, False])
    out = editing.inpaint(sampler, CORR.denoiser, jax.random.key(4), x_known, mask)
    np.testing.assert_array_equal(out[:, 0], x_known[:, 0])
    assert float(jnp.std(out[:, 1] - x_known[:, 1])) > 0.1  # the unknown coordinate is resampled


def test_inpainting_draws_unknown_coordinate_near_conditional_mean():
    """x_1 = 1 known: exact conditional N(0.8, 0.36). Replacement needs the stochastic sampler
    with strong churn down to small sigma to approach it (deterministic samplers stay biased)."""
    n = 2000
    x_known = jnp.broadcast_to(jnp.array([1.0, 0.0]), (n, 2))
    sampler = functools.partial(edm.edm_sample, num_steps=256, S_churn=400.0, S_min=0.002,
                                S_max=50.0)
    out = jax.jit(lambda rng: editing.inpaint(sampler, CORR.denoiser, rng, x_known,
                                              jnp.array([True, False])))(jax.random.key(5))
    assert abs(float(out[:, 1].mean()) - 0.8) < 0.15
    assert abs(float(out[:, 1].var()) - 0.36) < 0.1


@pytest.mark.parametrize("sampler,sigmas", [
    (EDM_SAMPLER, edm.sigma_steps(18)),
    (DPM_SAMPLER, dpm_solver.dpm_sigmas(10, denoise_to_zero=True)),
], ids=["edm", "dpm_solver_pp"])
def test_sdedit_strength_zero_returns_input(sampler, sigmas):
    x = CORR.sample(jax.random.key(6), 16)
    out = editing.sdedit(sampler, CORR.denoiser, jax.random.key(7), x, strength=0.0,
                         sigmas=sigmas)
    np.testing.assert_array_equal(out, x)


def test_sdedit_strength_sets_start_level_and_stays_close_to_input():
    sigmas = edm.sigma_steps(18)
    sub = editing.truncate_sigmas(sigmas, 0.3)
    np.testing.assert_array_equal(sub, sigmas[13:])
    x = CORR.sample(jax.random.key(8), 128)
    small = jax.jit(lambda x: editing.sdedit(EDM_SAMPLER, CORR.denoiser, jax.random.key(9), x,
                                             strength=0.3, sigmas=sigmas))(x)
    small_move = float(jnp.sqrt(jnp.mean(jnp.sum((small - x) ** 2, -1))))
    assert 0.0 < small_move < 2.0 * float(sub[0])
