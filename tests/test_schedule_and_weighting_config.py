"""Schedules and loss weightings from the config, through the methods that use them.

Schedules: `diffusion.schedule` builds diffusers' alphas_cumprod (tests/data/samplers_schedules.npz),
`diffusion.zero_terminal_snr` the rescaled schedule for training and its clipped form for the
grid and the denoiser, with the prerequisites of Lin et al. 2024 checked when the config is built.

Weightings: for each method's switch, a network whose error is known in closed form,
delta(SNR) = 1 / sqrt(w(SNR)) on every pixel (per-pixel mean, DDPM and score SDE) or
1 / sqrt(P w(SNR)) (pixel sum over P pixels, EDM), makes the method's own loss exactly
mean_b w(SNR_b) delta(SNR_b)^2 = 1 whatever noise levels the loss draws, iff the method applies
the weight w written below from the papers. Negative controls: the same network under another
weighting (or other parameters) gives a loss far from 1.
"""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_ddpm_config

from configs.score_sde import digits_vp
from diffusion_jax import builders
from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import solvers
from test_edm_method import TINY_MODEL as TINY_NCSNPP, tiny_edm_config

FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "data", "samplers_schedules.npz"))
GAMMA, P2_K, P2_GAMMA, SIGMA_DATA = 2.0, 1.5, 0.5, 0.5
PARAMETERS = dict(min_snr_gamma=GAMMA, p2_k=P2_K, p2_gamma=P2_GAMMA)

# the weight of the squared error of each prediction target as the papers write it
CLOSED_FORMS = {
    ("min_snr", "epsilon"): lambda s: np.minimum(s, GAMMA) / s,  # Hang et al. 2023, Eq. 9
    ("min_snr", "v"): lambda s: np.minimum(s, GAMMA) / (s + 1),
    ("min_snr", "x0"): lambda s: np.minimum(s, GAMMA),
    ("p2", "epsilon"): lambda s: 1.0 / (P2_K + s) ** P2_GAMMA,  # Choi et al. 2022, Eq. 8
    ("p2", "v"): lambda s: s / ((P2_K + s) ** P2_GAMMA * (s + 1)),
    ("edm", "epsilon"): lambda s: (s + SIGMA_DATA**-2) / s,  # lambda(sigma) at sigma^2 = 1/SNR
    ("edm", "x0"): lambda s: s + SIGMA_DATA**-2,
    ("snr_plus_one", "v"): lambda s: np.ones_like(s),  # the v loss itself
    ("snr_plus_one", "epsilon"): lambda s: (s + 1) / s,
    ("uniform", "epsilon"): lambda s: np.ones_like(s),
}


def _digits_batch(n=64):
    return {"image": jnp.zeros((n, 8, 8, 1)), "label": jnp.zeros(n, jnp.int32)}


class DiscreteKnownError(nn.Module):
    """A DDPM network for x0 = 0: x_t = sigma_t eps, so it returns the exact target at timestep
    t plus deltas[t] on every pixel."""

    alpha_bars: tuple
    deltas: tuple
    prediction: str

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        i = jnp.round(t).astype(jnp.int32)
        alpha_bar = jnp.asarray(self.alpha_bars, jnp.float32)[i][:, None, None, None]
        alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        eps = x / sigma
        target = {"epsilon": eps, "x0": jnp.zeros_like(x), "v": alpha * eps}[self.prediction]
        return target + jnp.asarray(self.deltas, jnp.float32)[i][:, None, None, None]


def _ddpm(loss_weighting, prediction, **diffusion):
    config = tiny_ddpm_config()
    config.diffusion.update({**PARAMETERS, **diffusion}, loss_weighting=loss_weighting,
                            prediction=prediction)
    return builders.build_method(config)


def _ddpm_loss_with_known_error(method, closed_form, seed=0):
    alpha_bars = np.asarray(method.schedule.alpha_bars, np.float64)
    deltas = 1.0 / np.sqrt(closed_form(alpha_bars / (1.0 - alpha_bars)))
    model = DiscreteKnownError(tuple(alpha_bars), tuple(deltas), method.prediction)
    method = dataclasses.replace(method, model=model)
    params = method.init_params(jax.random.key(0))
    return float(method.loss(params, _digits_batch(), jax.random.key(seed))[0])


@pytest.mark.parametrize("name,prediction", [k for k in CLOSED_FORMS if k[1] != "x0"] +
                         [("min_snr", "x0")])
def test_ddpm_loss_weighting_is_the_closed_form_of_snr(name, prediction):
    """diffusion.loss_weighting: the loss of the known-error network is 1 to float32 rounding
    (measured: exactly 1.0 in float32) for three draws of timesteps and noise."""
    method = _ddpm(name, prediction)
    for seed in range(3):
        assert _ddpm_loss_with_known_error(method, CLOSED_FORMS[name, prediction], seed) == \
            pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("name,prediction,other", [
    ("min_snr", "epsilon", dict(loss_weighting="uniform")),
    ("min_snr", "epsilon", dict(min_snr_gamma=5.0)),
    ("p2", "epsilon", dict(p2_gamma=1.0)),
    ("p2", "v", dict(p2_k=1.0)),
    ("snr_plus_one", "v", dict(loss_weighting="min_snr")),
])
def test_negative_control_another_weighting_misses_the_closed_form(name, prediction, other):
    """The check above rejects a method whose weighting or parameters differ from the closed
    form's: the loss is off by more than 5%."""
    other = dict(other)
    method = _ddpm(other.pop("loss_weighting", name), prediction, **other)
    loss = _ddpm_loss_with_known_error(method, CLOSED_FORMS[name, prediction])
    assert abs(loss - 1.0) > 0.05


class EDMKnownError(nn.Module):
    """An EDM network F under the EDM preconditioning with D(x, sigma) - x0 = delta(sigma) on every
    pixel for x0 = 0: sigma = exp(4 c_noise), x = input / c_in, F = (delta - c_skip x) / c_out."""

    closed_form: str
    target: str = "x0"
    pixels: int = 64

    @nn.compact
    def __call__(self, x_in, c_noise, cond=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        sigma = jnp.exp(4.0 * c_noise)[:, None, None, None]
        total = sigma**2 + SIGMA_DATA**2
        x = x_in * jnp.sqrt(total)
        c_skip, c_out = SIGMA_DATA**2 / total, sigma * SIGMA_DATA / jnp.sqrt(total)
        weight = CLOSED_FORMS_JNP[self.closed_form](1.0 / sigma**2)
        delta = 1.0 / jnp.sqrt(self.pixels * weight)
        return (delta - c_skip * x) / c_out


CLOSED_FORMS_JNP = {"edm": lambda s: s + SIGMA_DATA**-2,
                    "min_snr": lambda s: jnp.minimum(s, GAMMA),
                    "snr_plus_one": lambda s: s + 1.0}


@pytest.mark.parametrize("loss_weighting,closed_form", [
    ("precond", "edm"), ("edm", "edm"), ("min_snr", "min_snr"), ("snr_plus_one", "snr_plus_one"),
    pytest.param("precond", "min_snr", id="negative-control-precond-is-not-min_snr"),
    pytest.param("min_snr", "edm", id="negative-control-min_snr-is-not-edm"),
])
def test_edm_loss_weighting_of_the_x0_error(loss_weighting, closed_form):
    """edm.loss_weighting weights the denoiser's x0 error at SNR = 1 / sigma^2: 'precond' (the
    default, Table 1's lambda) and 'edm' are the same closed form (sigma^2 + sd^2) / (sigma sd)^2;
    the negative controls (another closed form) miss 1 by more than 5%."""
    config = tiny_edm_config()
    config.edm.update(loss_weighting=loss_weighting, **PARAMETERS)
    method = dataclasses.replace(builders.build_method(config),
                                 model=EDMKnownError(closed_form))
    params = method.init_params(jax.random.key(0))
    losses = [float(method.loss(params, _digits_batch(), jax.random.key(s))[0]) for s in range(3)]
    if loss_weighting == closed_form or (loss_weighting, closed_form) == ("precond", "edm"):
        np.testing.assert_allclose(losses, 1.0, rtol=1e-5)
    else:
        assert min(abs(l - 1.0) for l in losses) > 0.05


class VPKnownError(nn.Module):
    """A VP score-SDE noise-prediction network for x0 = 0: t = label / (N - 1), z = x / sigma(t),
    output z + delta(SNR(t)), so the DSM error sigma s + z is -delta on every pixel."""

    sde: object
    closed_form: tuple

    @nn.compact
    def __call__(self, x, label, cond=None, train=False):
        self.param("unused", nn.initializers.zeros, ())
        t = label / (self.sde.N - 1)
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        snr = (alpha / sigma) ** 2
        name, _ = self.closed_form
        weight = {"min_snr": lambda s: jnp.minimum(s, GAMMA) / s,
                  "p2": lambda s: 1.0 / (P2_K + s) ** P2_GAMMA}[name](snr)
        return x / sigma[:, None, None, None] + (1.0 / jnp.sqrt(weight))[:, None, None, None]


@pytest.mark.parametrize("loss_weighting,closed_form", [
    ("min_snr", "min_snr"), ("p2", "p2"),
    pytest.param("uniform", "min_snr", id="negative-control-uniform"),
    pytest.param("p2", "min_snr", id="negative-control-p2-is-not-min_snr"),
])
def test_score_sde_loss_weighting_of_the_noise_prediction_error(loss_weighting, closed_form):
    """sde.loss_weighting weights ||sigma s + z||^2, the error of eps = -sigma s, by w(SNR(t)),
    SNR = alpha(t)^2 / sigma(t)^2 (VP): the loss is 1 for the matching closed form; the
    negative controls miss it by more than 5%."""
    config = digits_vp.get_config()
    config.model.update(TINY_NCSNPP)
    config.sde.update(loss_weighting=loss_weighting, **PARAMETERS)
    method = builders.build_method(config)
    method = dataclasses.replace(method, model=VPKnownError(method.sde, (closed_form, "epsilon")))
    params = method.init_params(jax.random.key(0))
    losses = [float(method.loss(params, _digits_batch(), jax.random.key(s))[0]) for s in range(3)]
    if loss_weighting == closed_form:
        np.testing.assert_allclose(losses, 1.0, rtol=1e-4)
    else:
        assert min(abs(l - 1.0) for l in losses) > 0.05


@pytest.mark.parametrize("family,update,match", [
    ("ddpm", dict(diffusion=dict(loss_weighting="snr")), "min_snr, p2"),
    ("edm", dict(edm=dict(loss_weighting="lambda")), "p2, precond, snr_plus_one"),
    ("score_sde", dict(sde=dict(loss_weighting="min_snr", likelihood_weighting=True)),
     "set one of them"),
])
def test_weighting_errors_are_one_line_config_errors(family, update, match):
    config = {"ddpm": tiny_ddpm_config, "edm": tiny_edm_config,
              "score_sde": digits_vp.get_config}[family]()
    for section, values in update.items():
        config[section].update(values)
    with pytest.raises(ConfigError, match=match) as error:
        builders.build_method(config)
    assert "\n" not in str(error.value)


# --- schedules --------------------------------------------------------------------------------
def _ddpm_config(**diffusion):
    config = tiny_ddpm_config()
    config.diffusion.update(num_timesteps=1000, **diffusion)
    return config


def test_scaled_linear_from_the_config_is_diffusers():
    """diffusion.schedule=scaled_linear with Stable Diffusion's beta_start / beta_end gives
    DDPMScheduler('scaled_linear').alphas_cumprod (float32 products there: 5e-5 relative);
    negative control: 'linear' with the same betas is far from it."""
    sd = dict(beta_start=0.00085, beta_end=0.012)
    method = builders.build_method(_ddpm_config(schedule="scaled_linear", **sd))
    theirs = FIXTURES["scaled_linear_zero_snr0.alphas_cumprod"]
    np.testing.assert_allclose(method.schedule.alpha_bars, theirs, rtol=5e-5, atol=1e-8)
    linear = builders.build_method(_ddpm_config(schedule="linear", **sd))
    assert np.max(np.abs(np.asarray(linear.schedule.alpha_bars) - theirs)) > 1e-2


def _zero_snr_config(**sampling):
    config = _ddpm_config(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          zero_terminal_snr=True, prediction="v")
    config.sampling.update(dict(dict(method="unipc", spacing="trailing", num_steps=4), **sampling))
    return config


def test_zero_terminal_snr_trains_on_the_rescaled_schedule_and_samples_on_the_clipped_one():
    """Training: DDPMScheduler(rescale_betas_zero_snr=True).alphas_cumprod, alpha_bar_T = 0.
    Grid and denoiser: the clipped schedule of diffusers' samplers (alpha_bar_T = 2^-24), whose
    trailing grid starts at sigma_T = 4096 (the last timestep) and ends at 0."""
    config = _zero_snr_config()
    method = builders.build_method(config)
    np.testing.assert_allclose(method.schedule.alpha_bars,
                               FIXTURES["scaled_linear_zero_snr1.alphas_cumprod"],
                               rtol=5e-5, atol=1e-8)
    assert float(method.schedule.alpha_bars[-1]) == 0.0
    sampler = builders.build_sampler(config, method)
    model = method.denoiser_model(None, None, None, sampler)
    np.testing.assert_allclose(model.schedule.alpha_bars,
                               FIXTURES["unipc_scaled_linear_zero_snr.alphas_cumprod"],
                               rtol=5e-5, atol=1e-8)
    grid = np.asarray(solvers.sigma_grid(sampler, model))
    assert grid[0] == pytest.approx(4096.0, rel=1e-4) and grid[-1] == 0.0 and len(grid) == 5


@pytest.mark.slow
def test_zero_terminal_snr_samples_are_finite_from_pure_noise():
    """A v-network sampled with UniPC on the trailing grid from sigma_T = 4096: finite images
    (a tiny random network; the point is that nothing divides by alpha_T = 0)."""
    config = _zero_snr_config()
    config.diffusion.num_timesteps = 100
    method = builders.build_method(config)
    sampler = builders.build_sampler(config, method)
    params = method.init_params(jax.random.key(0))
    x, stats = method.sample(params, jax.random.key(1), jax.random.normal(jax.random.key(2),
                                                                        (2, 8, 8, 1)),
                             sampler=sampler)
    assert np.isfinite(np.asarray(x)).all() and int(stats["nfe"]) == 4


@pytest.mark.parametrize("change,match", [
    (dict(diffusion=dict(prediction="epsilon")), "prediction='v'"),
    (dict(sampling=dict(spacing="leading")), "trailing"),
    (dict(sampling=dict(method="ancestral")), "shared solver"),
    (dict(diffusion=dict(schedule="sigmoid")), "cosine, linear, scaled_linear, shifted_cosine"),
])
def test_zero_terminal_snr_prerequisites_are_config_errors(change, match):
    """Lin et al. 2024, Sec. 3: v-prediction, the trailing grid, a sampler that takes the last
    timestep; an unknown schedule lists the valid ones."""
    config = _zero_snr_config()
    for section, values in change.items():
        config[section].update(values)
    with pytest.raises(ConfigError, match=match) as error:
        builders.build_method(config)
    assert "\n" not in str(error.value)


def test_shifted_cosine_takes_the_image_resolution_by_default():
    """diffusion.schedule=shifted_cosine with resolution 0 is the schedule of the network input's
    8x8 images against base_resolution 64: its SNR is the cosine schedule's times (64 / 8)^2 at
    t = (i + 1) / T (Hoogeboom et al. 2023, Sec. 3.1); negative control: resolution=32."""
    method = builders.build_method(_ddpm_config(schedule="shifted_cosine"))
    alpha_bars = np.asarray(method.schedule.alpha_bars, np.float64)
    t = np.arange(1, 1001) / 1000
    cosine_snr = np.exp(schedules.cosine_logsnr(t))
    np.testing.assert_allclose(alpha_bars, cosine_snr * 64 / (1 + cosine_snr * 64), rtol=0,
                               atol=1e-6)
    other = builders.build_method(_ddpm_config(schedule="shifted_cosine", resolution=32))
    assert not np.allclose(other.schedule.alpha_bars, alpha_bars, rtol=1e-2)
