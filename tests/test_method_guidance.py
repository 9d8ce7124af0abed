"""Classifier-free guidance through the DDPM and score-SDE methods: the guided epsilon and score
of an exact class-conditional Gaussian mixture against their closed forms, the samplers of each
code path guided, the moments guidance scales 0 and 1 sample, and tiny conditional networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, sample, tiny_ddpm_config

from configs.score_sde import digits_vp
from diffusion_jax import analytic, builders, text
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.methods.score_sde import ScoreSDE
from diffusion_jax.processes import schedules, sde as sde_lib
from diffusion_jax.samplers.sampler import Sampler

# Class c of two is N(mu_c, s^2 I) with weight pi_c; the null label 2 queries the mixture.
PI, MU, S2 = np.array([0.3, 0.7]), np.array([[-1.0, 0.5], [1.0, -0.5]]), 0.2
MIXTURE = analytic.GaussianMixture(jnp.asarray(PI), jnp.asarray(MU),
                                   jnp.asarray(S2 * np.eye(2)[None].repeat(2, 0)),
                                   jnp.array([0, 1]))
NULL = 2
SCHEDULE = schedules.make_schedule("linear", 1000)
SDES = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(sigma_max=20.0)}


def closed_form_scores(x, alpha, sigma):
    """(score of class c at each x for c = 0, 1: (2, B, d), the mixture's score (B, d)) of
    x_t = alpha x0 + sigma n: class c is N(alpha mu_c, v I) with v = alpha^2 s^2 + sigma^2, and
    the mixture's score is the class scores weighted by the posterior class probabilities."""
    x, alpha, sigma = (np.asarray(a, np.float64) for a in (x, alpha, sigma))
    v = (alpha**2 * S2 + sigma**2)[None, :, None]
    diff = x[None] - alpha[None, :, None] * MU[:, None]  # (2, B, d)
    scores = -diff / v
    log_post = np.log(PI)[:, None] - 0.5 * np.sum(diff**2, -1) / v[..., 0]
    post = np.exp(log_post - log_post.max(0))
    post /= post.sum(0)
    return scores, np.einsum("cb,cbd->bd", post, scores)


def guided_closed_form(x, alpha, sigma, labels, w):
    """(1 - w) score_u + w score_c, Ho & Salimans 2022, Eq. 6 (their w + 1 is our w)."""
    scores, uncond = closed_form_scores(x, alpha, sigma)
    cond = scores[np.asarray(labels), np.arange(len(labels))]
    return (1.0 - w) * uncond + w * cond


def G(**options):
    """The guidance of the sampling options `options`."""
    return Sampler(**options).guidance


def ddpm_method(data=MIXTURE, num_classes=2):
    return DDPM(model=analytic.DiscreteEpsNetwork(data, SCHEDULE.alpha_bars), schedule=SCHEDULE,
                image_shape=(2,), num_classes=num_classes)


class ExactScoreNetwork:
    """Stands in for a flax module: the output of a perfectly trained class-conditional
    score network of MIXTURE in the paper's parameterisation (VP: -sigma(t) score at input
    999 t; VE: the score at input sigma(t))."""

    def __init__(self, sde):
        self.sde, self.ve = sde, isinstance(sde, sde_lib.VESDE)

    def apply(self, variables, x, c, cond=None, train=False, rngs=None):
        t = self.sde.t_of_edm_sigma(c) if self.ve else c / (self.sde.N - 1)
        score = MIXTURE.vp_score(x, self.sde.alpha(t), self.sde.sigma(t), cond)
        return score if self.ve else -self.sde.sigma(t)[:, None] * score


def sde_method(name):
    return ScoreSDE(model=ExactScoreNetwork(SDES[name]), sde=SDES[name], image_shape=(2,),
                    num_classes=2)


def _inputs(n=16, seed=0):
    return 1.5 * jax.random.normal(jax.random.key(seed), (n, 2)), jnp.arange(n) % 2


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_ddpm_guided_epsilon_is_the_closed_form_combination(w):
    """eps_w = -sigma_t ((1 - w) score_u + w score_c) at the schedule's timesteps."""
    x, labels = _inputs()
    t = 30.0 + 64.0 * jnp.arange(16, dtype=jnp.float32)
    eps = jax.jit(ddpm_method().eps_fn({}, labels, G(guidance_scale=w)))(x, t)
    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[np.asarray(t, int)]
    alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
    expected = -sigma[:, None] * guided_closed_form(x, alpha, sigma, labels, w)
    np.testing.assert_allclose(eps, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("w", [0.0, 3.0])
def test_score_sde_guided_score_is_the_closed_form_combination(name, w):
    x, labels = _inputs()
    t = jnp.linspace(0.02, 1.0, 16)
    sde = SDES[name]
    score = jax.jit(sde_method(name).score_fn({}, labels, G(guidance_scale=w)))(x, t)
    expected = guided_closed_form(x, sde.alpha(t), sde.sigma(t), labels, w)
    np.testing.assert_allclose(score, expected, rtol=1e-3, atol=1e-3)  # float32 t(sigma(t))


def test_negative_label_replaces_the_unconditional_branch():
    x, labels = _inputs()
    t = jnp.linspace(0.02, 1.0, 16)
    sde, w = SDES["vp"], 2.5
    score = jax.jit(sde_method("vp").score_fn({}, labels, G(guidance_scale=w,
                                                              negative_label=1)))(x, t)
    scores, _ = closed_form_scores(x, sde.alpha(t), sde.sigma(t))
    expected = (1.0 - w) * scores[1] + w * scores[np.asarray(labels), np.arange(16)]
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)


def test_ddpm_guidance_interval_is_in_the_sigma_of_the_timestep():
    """Guided where sigma_t / alpha_t lies in [0.5, 5], the conditional epsilon elsewhere."""
    x, labels = _inputs()
    t = 30.0 + 64.0 * jnp.arange(16, dtype=jnp.float32)
    method, w = ddpm_method(), 3.0
    eps = lambda **guide: jax.jit(method.eps_fn({}, labels, G(**guide)))(x, t)  # noqa: E731
    limited = eps(guidance_scale=w, guidance_sigma_lo=0.5, guidance_sigma_hi=5.0)
    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[np.asarray(t, int)]
    inside = (np.sqrt((1 - ab) / ab) >= 0.5) & (np.sqrt((1 - ab) / ab) <= 5.0)
    assert 0 < inside.sum() < 16
    expected = np.where(inside[:, None], eps(guidance_scale=w), eps())
    np.testing.assert_allclose(limited, expected, rtol=1e-5, atol=1e-6)


class MeanTokenNetwork:
    """Stands in for a caption-conditional flax module: predicts x_t times the mean token."""

    def apply(self, variables, x_t, t, cond=None, train=False, rngs=None):
        return x_t * jnp.mean(cond, axis=1, keepdims=True)


@pytest.mark.parametrize("negative_prompt", ["", "a blue square"])
def test_caption_guidance_is_from_the_empty_caption_or_the_negative_prompt(negative_prompt):
    length, w = 16, 2.0
    method = DDPM(model=MeanTokenNetwork(), schedule=SCHEDULE, image_shape=(2,),
                  caption_length=length)
    x, _ = _inputs(2)
    tokens = jnp.asarray(text.tokenize_all(["a red circle", "a green triangle"], length))
    eps = method.eps_fn({}, tokens, G(guidance_scale=w, negative_prompt=negative_prompt))(
        x, jnp.full((2,), 10.0))
    m_c = np.mean(np.asarray(tokens), axis=1, keepdims=True)
    m_u = np.mean(text.tokenize(negative_prompt, length))  # the empty caption: all PAD = 0
    np.testing.assert_allclose(eps, x * (m_u + w * (m_c - m_u)), rtol=1e-6)


def _samples(method, x_init, cond, options, **guide):
    sampler = method.sampler(**options, **guide)
    return jax.jit(lambda rng, cond: method.sample({}, rng, x_init, cond, sampler=sampler)[0])(
        jax.random.key(2), cond)


def _assert_scale_zero_samples_the_null_label(method, options):
    """w = 0 samples what the unconditional (null-label) model samples, step for step, which
    differs from what the labels sample unguided."""
    x_init, labels = _inputs(64, seed=1)
    guided = _samples(method, x_init, labels, options, guidance_scale=0.0)
    null = _samples(method, x_init, jnp.full_like(labels, NULL), options)
    np.testing.assert_allclose(guided, null, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(_samples(method, x_init, labels, options) - null))) > 0.1


# One sampler of each code path: the DDPM chains call eps_fn, the EDM fast samplers (all of
# samplers.solvers.SOLVERS, deterministic or not) the denoiser; score-SDE PC and ODE call score_fn.
@pytest.mark.parametrize("options", [
    dict(method="ancestral", num_steps=50), dict(method="ddim", num_steps=20),
    dict(method="heun", num_steps=10), dict(method="dpm_solver_pp_2m_sde", num_steps=10),
], ids=lambda o: o["method"])
def test_ddpm_samplers_are_guided(options):
    _assert_scale_zero_samples_the_null_label(ddpm_method(), options)


@pytest.mark.parametrize("options", [
    dict(method="pc", num_steps=40, corrector="langevin"),
    dict(method="ode", ode_solver="heun", num_steps=20),
    dict(method="euler_ancestral", num_steps=10), dict(method="dpm_solver", num_steps=4),
], ids=lambda o: o["method"])
def test_score_sde_samplers_are_guided(options):
    _assert_scale_zero_samples_the_null_label(sde_method("vp"), options)


def assert_moments(x, mean, cov, z=5.0):
    """Sample mean within z standard errors, covariance entries within z Gaussian ones."""
    x, n = np.asarray(x, np.float64), x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(np.diag(cov) / n))
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * se)


@pytest.mark.parametrize("method,options", [
    (ddpm_method(), dict(method="ddim", num_steps=100)),
    (sde_method("vp"), dict(method="ode", ode_solver="heun", num_steps=50)),
], ids=["ddpm_ddim", "score_sde_ode"])
def test_scale_zero_samples_the_mixture_and_scale_one_the_class(method, options):
    x_init = jax.random.normal(jax.random.key(3), (4000, 2))
    labels = jnp.zeros(4000, jnp.int32)
    mix_mean = PI @ MU
    mix_cov = S2 * np.eye(2) + np.einsum("k,ki,kj->ij", PI, MU - mix_mean, MU - mix_mean)
    assert_moments(_samples(method, x_init, labels, options, guidance_scale=0.0), mix_mean,
                   mix_cov)
    assert_moments(_samples(method, x_init, labels, options, guidance_scale=1.0), MU[0],
                   S2 * np.eye(2))


def test_guidance_on_an_unconditional_model_is_a_value_error():
    x_init, _ = _inputs()
    unconditional = ddpm_method(analytic.gaussian(jnp.zeros(2), jnp.eye(2)), num_classes=0)
    with pytest.raises(ValueError, match="conditional model"):
        sample(unconditional, {}, jax.random.key(0), x_init, method="ddim", guidance_scale=2.0)
    method = ScoreSDE(model=ExactScoreNetwork(SDES["vp"]), sde=SDES["vp"], image_shape=(2,))
    with pytest.raises(ValueError, match="conditional model"):
        sample(method, {}, jax.random.key(0), x_init, method="heun", guidance_scale=2.0)


@pytest.mark.parametrize("family", ["ddpm", "score_sde"])
def test_guidance_config_needs_a_conditional_model(family):
    config = tiny_ddpm_config() if family == "ddpm" else digits_vp.get_config()
    config.sampling.guidance_scale = 3.0
    with pytest.raises(ConfigError, match="class_conditional"):
        builders.build_method(config)
    config.model.class_conditional = True
    assert builders.build_method(config).num_classes == 10


def _assert_guides_and_scale_one_is_the_unguided_program(config, options):
    """A tiny class-conditional network of `config` with random weights (so its labels matter;
    compiling a training step would take longer than this whole test): guidance 3 changes its
    samples through one batched 2B call; guidance 1 is the unguided program, bit for bit."""
    config.model.class_conditional = True
    method = builders.build_method(config)
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    b = 3
    x_init = jax.random.normal(jax.random.key(5), (b, 8, 8, 1))
    labels = jnp.arange(b, dtype=jnp.int32)

    def run(**guide):
        lowered = jax.jit(lambda p: sample(method, p, jax.random.key(6), x_init, labels,
                                           **options, **guide)).lower(params)
        return np.asarray(lowered.compile()(params)), lowered.as_text()

    pair = f"tensor<{2 * b}x8x8x1xf32>"  # the conditional and unconditional inputs, batched
    plain, plain_program = run()
    same, same_program = run(guidance_scale=1.0)
    guided, guided_program = run(guidance_scale=3.0)
    assert same_program == plain_program and pair not in plain_program
    np.testing.assert_array_equal(same, plain)
    assert pair in guided_program
    assert np.isfinite(guided).all() and float(np.max(np.abs(guided - plain))) > 1e-3


def test_tiny_conditional_ddpm_samples_guided_and_scale_one_is_unguided():
    config = tiny_ddpm_config()
    # 12 channels: GroupNorm groups of 3. With one channel a group (ch <= 32) it would remove
    # the label embedding, a per-channel shift, and no label would matter.
    config.model.update(ch=12, ch_mult=(1,))
    _assert_guides_and_scale_one_is_the_unguided_program(config, dict(method="ddim",
                                                                      num_steps=4))


def test_tiny_conditional_score_sde_samples_guided_and_scale_one_is_unguided():
    config = digits_vp.get_config()
    config.model.update(nf=8, ch_mult=(1,), attn_resolutions=())
    _assert_guides_and_scale_one_is_the_unguided_program(
        config, dict(method="pc", num_steps=4, denoise=False))
