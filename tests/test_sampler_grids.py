"""Timestep spacings of discrete models against diffusers (tests/data/samplers_grids.npz, written
by tools/make_sampler_fixtures.py), and the checks on custom grids."""
import os

import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import grids

GRIDS = np.load(os.path.join(os.path.dirname(__file__), "data", "samplers_grids.npz"))
CASES = [(spacing, offset, n) for spacing, offset in (("leading", 0), ("leading", 1),
                                                      ("trailing", 0))
         for n in (1, 7, 10, 50, 999)]


@pytest.mark.parametrize("spacing,offset,num_steps", CASES)
def test_spaced_timesteps_are_diffusers(spacing, offset, num_steps):
    """The timesteps of DDIMScheduler and LMSDiscreteScheduler (T = 1000) with this spacing."""
    timesteps = grids.spaced_timesteps(1000, num_steps, spacing, offset)
    name = f"{spacing}_offset{offset}_{num_steps}"
    np.testing.assert_array_equal(timesteps, GRIDS[f"{name}.ddim_timesteps"])
    np.testing.assert_array_equal(timesteps, GRIDS[f"{name}.lms_timesteps"])


@pytest.mark.parametrize("spacing,offset,num_steps", CASES)
def test_spaced_sigmas_are_diffusers(spacing, offset, num_steps):
    """Stable Diffusion's schedule at those timesteps, then 0: LMSDiscreteScheduler's sigmas (its
    alphas_cumprod is a float32 cumprod, ours a float64 one: measured up to 8.7e-6 apart)."""
    schedule = schedules.make_schedule("scaled_linear", 1000)
    sigmas = grids.spaced_sigmas(schedule, num_steps, spacing, offset)
    np.testing.assert_allclose(sigmas, GRIDS[f"{spacing}_offset{offset}_{num_steps}.lms_sigmas"],
                               rtol=2e-5)


def test_trailing_starts_at_the_last_timestep_and_leading_does_not():
    assert grids.spaced_timesteps(1000, 10, "trailing")[0] == 999
    assert grids.spaced_timesteps(1000, 10, "leading", 1)[0] == 901
    np.testing.assert_array_equal(grids.spaced_timesteps(1000, 4, "trailing"), [999, 749, 499, 249])


def test_timestep_sigmas_finals():
    schedule = schedules.make_schedule("linear", 1000)
    sigma = lambda t: np.sqrt((1 - schedule.alpha_bars[t]) / schedule.alpha_bars[t])
    for final, tail in (("zero", [0.0]), ("sigma_min", [sigma(0)]), ("none", [])):
        np.testing.assert_allclose(grids.timestep_sigmas(schedule, [999, 500, 20], final),
                                   [sigma(999), sigma(500), sigma(20)] + tail, rtol=1e-6)


@pytest.mark.parametrize("timesteps,match", [
    ([999, 500, 500], "strictly decreasing"), ([1000, 10], r"\[0, 999\]"), ([10, -1], r"\[0, 999\]"),
    ([999.0, 10.0], "integers"), ([], "integers")])
def test_invalid_timesteps_raise(timesteps, match):
    with pytest.raises(ConfigError, match=match):
        grids.timestep_sigmas(schedules.make_schedule("linear", 1000), timesteps)


def test_invalid_spacings_raise():
    with pytest.raises(ConfigError, match="leading, trailing"):
        grids.spaced_timesteps(1000, 10, "linspace")
    with pytest.raises(ConfigError, match="steps_offset"):
        grids.spaced_timesteps(1000, 10, "trailing", 1)
    with pytest.raises(ConfigError, match="num_steps"):
        grids.spaced_timesteps(1000, 1001, "leading")
    with pytest.raises(ConfigError, match="none, sigma_min, zero"):
        grids.spaced_sigmas(schedules.make_schedule("linear", 1000), 10, "leading", final="inf")


# Align Your Steps' published 10-step Stable Diffusion 1.5 noise levels (Sabour et al. 2024)
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def test_custom_sigmas_accept_a_published_grid_and_reject_malformed_ones():
    sd = schedules.make_schedule("scaled_linear", 1000)
    sd_sigmas = np.sqrt((1 - np.asarray(sd.alpha_bars)) / np.asarray(sd.alpha_bars))
    lo, hi = float(sd_sigmas[0]), float(sd_sigmas[-1])
    np.testing.assert_allclose(grids.custom_sigmas(AYS_SD15 + [0.0], lo, hi), AYS_SD15 + [0.0])
    for bad, match in (([14.0, 6.0, 6.0], "strictly decreasing"), ([5.0, 0.0, -1.0], "positive"),
                       ([3.0, 0.0, 0.0], "decreasing"), ([2.0, -0.5], "positive"),
                       ([20.0, 1.0], "range"), ([5.0, 0.01], "range"), ([5.0], "two values")):
        with pytest.raises(ConfigError, match=match):
            grids.custom_sigmas(bad, lo, hi)


def test_loglinear_interp_keeps_the_grid_and_interpolates_log_sigma():
    """Interpolating onto as many points returns the grid; onto 2N - 1 points puts the geometric
    mean between neighbours; a final 0 stays."""
    sigmas = np.array(AYS_SD15)
    np.testing.assert_allclose(grids.loglinear_interp(sigmas, sigmas.size), sigmas, rtol=1e-6)
    fine = np.asarray(grids.loglinear_interp(np.append(sigmas, 0.0), 2 * sigmas.size - 1))
    assert fine[-1] == 0.0 and fine.size == 2 * sigmas.size
    np.testing.assert_allclose(fine[:-1:2], sigmas, rtol=1e-6)
    np.testing.assert_allclose(fine[1:-1:2], np.sqrt(sigmas[:-1] * sigmas[1:]), rtol=1e-6)
