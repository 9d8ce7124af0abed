"""DDPM through the EDM fast samplers, the methods' `edit`, guidance options from the config,
and editing PNG inputs from the launcher's sample mode."""
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import edit, random_params, sample, tiny_ddpm_config

from diffusion_jax import analytic, builders, denoisers, launcher
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods import ddpm
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import edm as edm_samplers, solvers
from test_edm_method import tiny_edm_config

SCHEDULE = schedules.make_schedule("linear", 1000)
DATA = analytic.gaussian(jnp.array([0.3, -0.5]), jnp.array([[0.3, 0.2], [0.2, 0.4]]))


METHOD = ddpm.DDPM(model=analytic.DiscreteEpsNetwork(DATA, SCHEDULE.alpha_bars), schedule=SCHEDULE,
                   image_shape=(1, 1, 2))
SIGMA_MIN, SIGMA_MAX = (float(s) for s in denoisers.discrete_sigmas(SCHEDULE)[jnp.array([0, -1])])


def test_ddpm_through_heun_is_heun_on_the_exact_denoiser():
    x_init = jax.random.normal(jax.random.key(0), (64, 1, 1, 2))
    out = sample(METHOD, None, jax.random.key(1), x_init, method="heun", num_steps=18)
    sigmas = edm_samplers.sigma_steps(18, SIGMA_MIN, SIGMA_MAX)
    exact = edm_samplers.edm_sample(DATA.denoiser, jax.random.key(1), (64, 2), sigmas=sigmas,
                                    x_init=sigmas[0] * x_init.reshape(64, 2))
    np.testing.assert_allclose(out.reshape(64, 2), exact, atol=2e-4)
    assert float(jnp.std(exact)) > 0.3  # not collapsed


def _assert_gaussian_moments(x, data, z=4.0):
    """Sample mean and covariance of x within z standard errors of those of `data` (the
    covariance's from Gaussian fourth moments)."""
    x, n = np.asarray(x, np.float64), x.shape[0]
    mean, cov = np.asarray(data.mean, np.float64), np.asarray(data.covariance, np.float64)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(np.diag(cov) / n))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), z * cov_se)


WRONG_DATA = analytic.gaussian(DATA.mean, 1.15 * DATA.covariance)
WRONG_METHOD = ddpm.DDPM(model=analytic.DiscreteEpsNetwork(WRONG_DATA, SCHEDULE.alpha_bars),
                         schedule=SCHEDULE, image_shape=(1, 1, 2))


@pytest.mark.parametrize("method,spacing", [("euler", "uniform"), ("dpm_solver", "logsnr"),
                                            ("dpm_solver_pp_2m", "uniform"),
                                            ("dpm_solver_pp_2m_sde", "quadratic")])
def test_ddpm_fast_samplers_reproduce_the_data_moments(method, spacing):
    """100 steps on the exact epsilon of anisotropic, correlated Gaussian data: mean and full
    covariance within 4 standard errors of 4000 samples. Negative control, rejected by the same
    check (verified for every sampler): the epsilon of data with a 15% larger covariance."""
    x_init = jax.random.normal(jax.random.key(2), (4000, 1, 1, 2))

    def run(m):
        return jax.jit(lambda x: sample(m, None, jax.random.key(3), x, method=method,
                                        num_steps=100, spacing=spacing))(x_init).reshape(-1, 2)
    _assert_gaussian_moments(run(METHOD), DATA)
    with pytest.raises(AssertionError):
        _assert_gaussian_moments(run(WRONG_METHOD), DATA)


def test_ddim_is_euler_on_its_sigma_grid():
    """Deterministic DDIM from x_T equals the Euler ODE step over sigma_i at its timesteps started
    at x_T sqrt(1 + sigma_T^2): the form in which editing runs the DDIM chain."""
    x_T = jax.random.normal(jax.random.key(4), (32, 1, 1, 2))
    ddim = sample(METHOD, None, jax.random.key(5), x_T, method="ddim", num_steps=20)
    solver = METHOD.sampler(method="ddim", num_steps=20)
    sigmas = solvers.sigma_grid(solver, solvers.DenoiserModel(None, schedule=SCHEDULE))
    euler = solvers.grid_sampler(solver)(METHOD.conditional_denoiser(None), jax.random.key(5),
                                         x_T.shape, sigmas=sigmas,
                                         x_init=jnp.sqrt(1.0 + sigmas[0] ** 2) * x_T)
    np.testing.assert_allclose(euler, ddim, atol=1e-4)


@pytest.mark.parametrize("method", METHOD.sampler_names)
def test_ddpm_inpainting_keeps_known_pixels_for_every_sampler(method):
    x = DATA.sample(jax.random.key(6), 8).reshape(8, 1, 1, 2)
    mask = jnp.broadcast_to(jnp.array([True, False]), x.shape)
    out = edit(METHOD, None, jax.random.key(7), x, mask, task="inpaint", strength=1.0,
               method=method, num_steps=10)
    np.testing.assert_array_equal(out[..., 0], x[..., 0])
    assert float(jnp.std(out[..., 1] - x[..., 1])) > 0.05


@pytest.mark.parametrize("method", ["ancestral", "ddim", "heun", "dpm_solver_pp_2m"])
def test_ddpm_sdedit_at_strength_zero_returns_the_input(method):
    x = DATA.sample(jax.random.key(8), 8).reshape(8, 1, 1, 2)
    out = edit(METHOD, None, jax.random.key(9), x, None, task="sdedit", strength=0.0,
               method=method, num_steps=10)
    np.testing.assert_array_equal(out, x)


def test_unknown_edit_task_is_a_config_error():
    x = jnp.zeros((2, 1, 1, 2))
    with pytest.raises(ConfigError, match="inpaint, sdedit"):
        edit(METHOD, None, jax.random.key(0), x, None, task="outpaint", strength=0.5)


@pytest.fixture(scope="module")
def edm_cond():
    method = builders.build_method(tiny_edm_config(
        __import__("configs.edm.digits_cond", fromlist=["get_config"]).get_config))
    # random weights everywhere: the zero-initialised output layer would hide the labels
    return method, random_params(jax.eval_shape(method.init_params, jax.random.key(0)), seed=1)


def test_edm_edit_inpaints_known_pixels_and_sdedit_zero_is_identity(edm_cond):
    method, params = edm_cond
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1, maxval=1)
    mask = jnp.zeros(x.shape, bool).at[:, :4].set(True)
    cond = jnp.full((4,), method.num_classes)
    out = edit(method, params, jax.random.key(2), x, mask, cond, task="inpaint", strength=1.0,
               method="dpm_solver_pp_2m", num_steps=4)
    np.testing.assert_array_equal(out[:, :4], x[:, :4])
    same = edit(method, params, jax.random.key(2), x, mask, cond, task="sdedit", strength=0.0)
    np.testing.assert_array_equal(same, x)


@pytest.mark.slow
def test_edm_guidance_options(edm_cond):
    method, params = edm_cond
    x_init = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    cond = jnp.arange(4)
    run = lambda **o: sample(method, params, jax.random.key(4), x_init, cond, num_steps=3, **o)
    plain = run()
    # an interval that holds no sampled sigma: the conditional model, unguided
    np.testing.assert_allclose(run(guidance_scale=3.0, guidance_sigma_lo=1e3,
                                   guidance_sigma_hi=1e4), plain, atol=1e-6)
    guided = run(guidance_scale=3.0)
    negative = run(guidance_scale=3.0, negative_label=7)
    assert float(jnp.max(jnp.abs(guided - plain))) > 1e-3
    assert float(jnp.max(jnp.abs(negative - guided))) > 1e-3


def _write_png(path, array):
    Image.fromarray(array).save(path)


@pytest.mark.slow
def test_sample_mode_edits_png_inputs_end_to_end(tmp_path):
    config = tiny_ddpm_config(num_steps=2)
    config.compilation_cache_dir = ""
    workdir = str(tmp_path / "run")
    assert launcher.run(config, workdir, "train") == 0
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    _write_png(inputs / "a.png", rng.integers(0, 256, (8, 8), np.uint8))
    _write_png(inputs / "b.png", rng.integers(0, 256, (16, 16, 3), np.uint8))  # resized, grey
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :3] = 255
    _write_png(tmp_path / "mask.png", mask)
    config.edit.update(task="inpaint", input=str(inputs), mask=str(tmp_path / "mask.png"))
    config.sampling.update(method="ddim", num_steps=5)
    assert launcher.run(config, workdir, "sample") == 0
    files = np.load(os.path.join(workdir, "samples", "edit_inpaint_step_2.npz"))
    assert files["results"].shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(files["results"][:, :, :3], files["inputs"][:, :, :3])
    np.testing.assert_allclose(files["inputs"][0, ..., 0],
                               np.asarray(Image.open(inputs / "a.png")) / 127.5 - 1, atol=1e-6)
    assert os.path.isfile(os.path.join(workdir, "samples", "edit_inpaint_step_2.png"))
    config.edit.update(task="sdedit", strength=0.3)
    assert launcher.run(config, workdir, "sample") == 0
    assert os.path.isfile(os.path.join(workdir, "samples", "edit_sdedit_step_2.png"))
    config.edit.input = str(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="does not exist"):
        launcher.run(config, workdir, "sample")


@pytest.mark.slow
def test_sampler_nfe_experiment_quick(tmp_path, capsys):
    from experiments import sampler_nfe

    assert sampler_nfe.run(str(tmp_path), "quick") == 0
    table = capsys.readouterr().out
    assert "| mixture | EDM Heun | 20 |" in table and "| digits | DDIM | 10 |" in table
    rows = list(csv.DictReader(open(tmp_path / "sampler_nfe.csv")))
    mixture = {(r["sampler"], int(r["nfe"])): float(r["ode_error"]) for r in rows
               if r["setting"] == "mixture" and r["sampler"] == "EDM Heun"}
    assert mixture[("EDM Heun", 20)] < mixture[("EDM Heun", 10)]
    assert (tmp_path / "sampler_nfe.png").is_file()
