"""The EDM method (Karras et al. 2022): loss, preconditioned denoiser, fast samplers, launcher."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT

from configs.edm import cifar10_uncond, digits, digits_cond
from diffusion_jax import builders, launcher, preconditioning
from diffusion_jax.errors import ConfigError
from diffusion_jax.launcher import train
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler

TINY_MODEL = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
TINY_OVERRIDES = ["--config.model.nf=8", "--config.model.ch_mult=(1,)",
                  "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()"]


def tiny_edm_config(get_config=digits.get_config, **training):
    """The digits EDM config with a one-level 8-channel DDPM++ and the given training overrides."""
    config = get_config()
    config.model.update(TINY_MODEL)
    config.training.update(dict(dict(num_steps=20, batch_size=32, checkpoint_every=100,
                                     log_every=10, sample_at_end=False), **training))
    config.optim.update(warmup_steps=0, lr=2e-3)
    return config


@pytest.mark.slow
def test_loss_is_finite_and_decreases_in_training(tmp_path):
    train(tiny_edm_config(num_steps=100), str(tmp_path))
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")]
    assert len(losses) == 10 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * losses[0]


def test_denoiser_of_a_zero_network_is_c_skip_x():
    method = builders.build_method(tiny_edm_config())
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          jax.eval_shape(method.init_params, jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    sigma = jnp.array([0.01, 1.0, 50.0])
    c_skip = preconditioning.EDMPrecond(0.5)(sigma).c_skip
    np.testing.assert_allclose(jax.jit(method.conditional_denoiser(params))(x, sigma),
                               c_skip[:, None, None, None] * x, rtol=1e-6)


@pytest.mark.parametrize("method", solvers.SOLVERS)
def test_fast_samplers_sample_gaussian_data_with_its_exact_denoiser(method):
    s = 0.5  # data N(0, s^2 I): D(x, sigma) = s^2 / (s^2 + sigma^2) x
    denoiser = lambda x, sigma: (s**2 / (s**2 + sigma**2))[:, None] * x
    x_init = jax.random.normal(jax.random.key(0), (4096, 2))
    out, _ = solvers.solve(Sampler(method=method, num_steps=256),
                           solvers.DenoiserModel(denoiser), jax.random.key(1), x_init)
    assert abs(float(jnp.std(out)) - s) < 0.02


def test_guided_samples_are_the_closed_form_combination_of_the_class_conditional_model():
    """One Euler step onto sigma = 0 is x = D_w(x, sigma_max), and D_w = D_u + w (D_c - D_u)
    is affine in w: the w = 3 sample is s(0) + 3 (s(1) - s(0)), with s(0) the unconditional
    (null-label) and s(1) the conditional sample. Control: the 1 + w convention of some codes
    (D_c + w (D_c - D_u)) is rejected by the same check."""
    config = tiny_edm_config(digits_cond.get_config)
    config.model.init_scale = 1.0  # a non-zero output layer, so labels matter at initialisation
    method = builders.build_method(config)
    params = method.init_params(jax.random.key(0))
    x_init = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    labels = jnp.arange(4, dtype=jnp.int32)
    sample = lambda w: np.asarray(method.sample(
        params, jax.random.key(2), x_init, labels,
        sampler=method.sampler(method="euler", num_steps=1, guidance_scale=w))[0], np.float64)
    s0, s1, s3 = sample(0.0), sample(1.0), sample(3.0)
    assert np.abs(s1 - s0).max() > 1e-3  # the labels matter, so the check below has teeth
    np.testing.assert_allclose(s3, s0 + 3.0 * (s1 - s0), atol=1e-4)
    assert not np.allclose(s3, s1 + 3.0 * (s1 - s0), atol=1e-4)


def test_guidance_on_an_unconditional_model_is_a_config_error():
    config = tiny_edm_config()
    config.sampling.guidance_scale = 2.0
    with pytest.raises(ConfigError, match="class_conditional"):
        builders.build_method(config)


def test_info_counts_the_papers_55_73m_parameters(capsys):
    assert launcher.info(cifar10_uncond.get_config()) == 0
    params = int(next(l for l in capsys.readouterr().out.splitlines()
                      if l.startswith("params:")).split()[1])
    assert abs(params - 55.73e6) / 55.73e6 < 1e-3


def tiny_launch(workdir, *extra):
    args = [sys.executable, os.path.join(ROOT, "launch.py"), "--config=configs/edm/digits.py",
            f"--workdir={workdir}", *TINY_OVERRIDES, "--config.training.num_steps=20",
            "--config.training.batch_size=32", "--config.training.log_every=10",
            "--config.training.checkpoint_every=20", "--config.sampling.num_samples=8",
            "--config.sampling.batch_size=8", "--config.sampling.num_steps=4", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_launch_trains_samples_and_resamples_with_dpm_solver(tmp_path):
    result = tiny_launch(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(tmp_path / "samples" / "step_20.npz")["images"]
    assert samples.shape == (8, 8, 8, 1) and np.isfinite(samples).all()
    os.remove(tmp_path / "samples" / "step_20.npz")
    result = tiny_launch(tmp_path, "--mode=sample", "--config.sampling.method=dpm_solver_pp_2m",
                         "--config.sampling.num_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(tmp_path / "samples" / "sample_20_1.npz")["images"]
    assert samples.shape == (8, 8, 8, 1) and np.isfinite(samples).all()
