"""Beta schedules against diffusers (tests/data/samplers_schedules.npz, written by
tools/make_sampler_fixtures.py) and in closed form: scaled-linear, zero terminal SNR, shifted cosine."""
import os

import numpy as np
import pytest

from diffusion_jax import denoisers
from diffusion_jax.processes import schedules

SCHEDULES = np.load(os.path.join(os.path.dirname(__file__), "data", "samplers_schedules.npz"))
DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear",
                   "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name", sorted(DIFFUSERS_NAMES))
def test_alphas_cumprod_are_diffusers(name, zero_snr):
    """DDPMScheduler(beta_schedule, rescale_betas_zero_snr).alphas_cumprod, which it multiplies
    out in float32 (ours in float64): measured at most 6e-7 apart, 4e-5 relative."""
    ours = np.asarray(schedules.make_schedule(name, 1000, zero_terminal_snr=zero_snr).alpha_bars)
    theirs = SCHEDULES[f"{DIFFUSERS_NAMES[name]}_zero_snr{int(zero_snr)}.alphas_cumprod"]
    np.testing.assert_allclose(ours, theirs, rtol=5e-5, atol=1e-8)
    if zero_snr:
        assert ours[-1] == theirs[-1] == 0.0


def test_zero_snr_rescaling_is_diffusers_in_float64():
    """diffusers' rescale_zero_terminal_snr on float64 betas: the same numbers to rounding (betas
    are 1 - alpha, so a few ulps of 1 absolute)."""
    rescaled = schedules.rescale_zero_terminal_snr(SCHEDULES["scaled_linear_float64.betas"])
    np.testing.assert_allclose(rescaled, SCHEDULES["scaled_linear_float64.rescaled_betas"],
                               rtol=0, atol=1e-15)


def test_clipped_terminal_alpha_bar_is_diffusers_samplers():
    """UniPCMultistepScheduler(rescale_betas_zero_snr=True) sets alphas_cumprod[-1] = 2^-24."""
    clipped = schedules.clip_terminal_alpha_bar(
        schedules.make_schedule("scaled_linear", 1000, zero_terminal_snr=True))
    theirs = SCHEDULES["unipc_scaled_linear_zero_snr.alphas_cumprod"]
    np.testing.assert_allclose(clipped.alpha_bars, theirs, rtol=5e-5, atol=1e-8)
    assert clipped.alpha_bars[-1] == np.float32(2.0**-24) == theirs[-1]


def test_scaled_linear_has_linear_square_roots():
    betas = schedules.scaled_linear_betas(1000)
    np.testing.assert_allclose(np.sqrt(betas[[0, -1]]), np.sqrt([0.00085, 0.012]), rtol=1e-14)
    np.testing.assert_allclose(np.diff(np.sqrt(betas)), (0.012**0.5 - 0.00085**0.5) / 999,
                               rtol=1e-9)


def test_zero_terminal_snr_is_an_affine_map_of_root_alpha_bar():
    """Lin et al. 2024, Algorithm 1: sqrt(alpha_bar') = (sqrt(alpha_bar) - sqrt(alpha_bar_T))
    sqrt(alpha_bar_1) / (sqrt(alpha_bar_1) - sqrt(alpha_bar_T)); first value kept, last 0."""
    betas = schedules.linear_betas(1000)
    root = np.sqrt(np.cumprod(1.0 - betas))
    rescaled = np.cumprod(1.0 - schedules.rescale_zero_terminal_snr(betas))
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    np.testing.assert_allclose(np.sqrt(rescaled), expected, rtol=1e-12, atol=1e-15)
    assert rescaled[-1] == 0.0 and abs(rescaled[0] - root[0] ** 2) < 1e-15


def test_clipping_puts_the_first_trailing_step_on_the_last_timestep():
    """With alpha_bar_T = 0, sigma_T is infinite and a sampler's first level can only be found on
    the clipped schedule: sigma_T = 4096 maps to timestep T - 1 there (negative control: on the
    unclipped schedule the same level maps to T - 2)."""
    zero_snr = schedules.make_schedule("scaled_linear", 1000, zero_terminal_snr=True)
    clipped = schedules.clip_terminal_alpha_bar(zero_snr)
    sigma_T = denoisers.discrete_sigmas(clipped)[-1]
    assert abs(float(sigma_T) - np.sqrt(2.0**24 - 1)) < 1e-3
    assert np.isinf(denoisers.discrete_sigmas(zero_snr)[-1])
    np.testing.assert_array_equal(clipped.alpha_bars[:-1], zero_snr.alpha_bars[:-1])
    assert float(denoisers.discrete_t_of_sigma(clipped)(sigma_T[None])[0]) == 999
    assert float(denoisers.discrete_t_of_sigma(zero_snr)(sigma_T[None])[0]) == 998


def test_cosine_logsnr_is_the_clipped_cosine_schedule():
    """sigmoid(log SNR(t)) = cos^2(theta), theta = t_min + t (t_max - t_min), log SNR from 15 to -15."""
    t = np.linspace(0.0, 1.0, 101)
    t_min, t_max = np.arctan(np.exp(-7.5)), np.arctan(np.exp(7.5))
    alpha_bar = 1.0 / (1.0 + np.exp(-schedules.cosine_logsnr(t)))
    np.testing.assert_allclose(alpha_bar, np.cos(t_min + t * (t_max - t_min)) ** 2, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(schedules.cosine_logsnr(np.array([0.0, 1.0])), [15.0, -15.0],
                               rtol=1e-12)


@pytest.mark.parametrize("resolution", [64, 128, 512])
def test_shifted_cosine_divides_the_snr_by_the_squared_resolution_ratio(resolution):
    """Hoogeboom et al. 2023: SNR_d(t) = SNR_64(t) (64 / d)^2 at every t, and the T-step chain
    has alpha_bar_i = sigmoid(log SNR((i + 1) / T))."""
    t = np.linspace(0.0, 1.0, 33)
    np.testing.assert_allclose(
        np.exp(schedules.shifted_cosine_logsnr(t, resolution)),
        np.exp(schedules.cosine_logsnr(t)) * (64.0 / resolution) ** 2, rtol=1e-12)
    alpha_bars = np.cumprod(1.0 - schedules.shifted_cosine_betas(1000, resolution))
    logsnr = schedules.shifted_cosine_logsnr(np.arange(1, 1001) / 1000, resolution)
    np.testing.assert_allclose(alpha_bars, 1.0 / (1.0 + np.exp(-logsnr)), rtol=1e-10)
