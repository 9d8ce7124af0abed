"""Stable Diffusion as a method (`methods.stable_diffusion`): the whole pipeline on the tiny
random SD 1.5 model (`tests/data/sd_tiny/sd15`) against diffusers' own runs on it
(`pipeline_reference.npz`, written by tools/make_sd_fixtures.py): StableDiffusionPipeline with
DPMSolverMultistepScheduler, guidance 7.5, 20 steps, per-prompt negative prompts, given
latents; and StableDiffusionImg2ImgPipeline at strength 0.75 with its noises recorded.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import builders, parallel, runs
from diffusion_jax.config_files import load_config
from diffusion_jax.methods import stable_diffusion as sd_method
from diffusion_jax.samplers import editing, grids, solvers

DATA = os.path.join(os.path.dirname(__file__), "data", "sd_tiny")
TINY = os.path.join(DATA, "sd15")


def tiny_config(**sd):
    config = load_config("configs/stable_diffusion/sd15.py")
    config.sd.update(dict(dict(model_dir=TINY), **sd))
    return config


@functools.lru_cache(maxsize=None)
def loaded(**sd):
    """(method, params, aux) of the tiny model, its weights as sample mode reads them."""
    config = tiny_config(**sd)
    method = builders.build_method(config)
    state = runs.pretrained_state(method, config, parallel.make_mesh(jax.devices()[:1]))
    return method, state.params, state.aux


@functools.lru_cache(maxsize=None)
def reference():
    return dict(np.load(os.path.join(DATA, "pipeline_reference.npz")))


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_the_schedule_and_grid_are_diffusers():
    method, _, _ = loaded()
    ref = reference()
    scheduler = json.loads(str(ref["scheduler_config"]))
    assert (scheduler["beta_schedule"], scheduler["prediction_type"]) == ("scaled_linear",
                                                                         method.prediction)
    sigmas = grids.timestep_sigmas(method.schedule, ref["timesteps"])
    # float64 schedule vs diffusers' float32 cumprod: measured 2.6e-6 relative
    np.testing.assert_allclose(sigmas, ref["sigmas"], rtol=1e-5)
    assert method.noise_shape == ref["latents"].shape[1:]


def test_prompts_tokenize_and_encode_as_diffusers():
    method, _, aux = loaded()
    ref = reference()
    prompts = ["a red cube on a blue table", "an astronaut riding a horse"]
    np.testing.assert_array_equal(method.tokenize(prompts), ref["prompt_ids"])
    np.testing.assert_array_equal(method.tokenize(["", "blurry, low quality"]),
                                  ref["negative_ids"])
    assert max_err(method.encode_text(aux, ref["prompt_ids"]), ref["prompt_embeds"]) < 2e-5


def reference_run(sigmas, x_init, cond, sampler=None):
    """Final latents of the method's guided denoiser under DPM-Solver++(2M) on the grid `sigmas`
    (diffusers' timesteps), from `x_init` at sigmas[0] (EDM convention)."""
    method, params, aux = loaded()
    sampler = sampler or method.default_sampler
    model = method.denoiser_model(params, jnp.asarray(cond), aux, sampler)
    sample_fn = solvers.grid_sampler(sampler)
    run = jax.jit(lambda x: sample_fn(model.denoiser, jax.random.PRNGKey(0), x.shape,
                                      sigmas=jnp.asarray(sigmas, jnp.float32), x_init=x,
                                      cond=jnp.asarray(cond)))
    return np.asarray(run(jnp.asarray(x_init)))


def prompt_pairs(ref):
    return np.stack([ref["prompt_ids"], ref["negative_ids"]], axis=1)  # (2, 2, 77)


def test_text_to_image_equals_diffusers_pipeline():
    """StableDiffusionPipeline, DPMSolverMultistepScheduler, guidance 7.5, per-prompt negative
    prompts, 20 steps on timesteps 999, 949, ..., 50: the same final latents. diffusers' x_T
    (init_noise_sigma 1, VP) is x = sqrt(1 + sigma_0^2) x_T in the EDM convention."""
    method, _, aux = loaded()
    ref = reference()
    sigmas = grids.timestep_sigmas(method.schedule, ref["timesteps"])
    x_init = ref["latents"] * np.sqrt(1.0 + float(sigmas[0]) ** 2)
    final = reference_run(sigmas, x_init, prompt_pairs(ref))
    scale = float(np.max(np.abs(ref["final_latents"])))
    err = max_err(final, ref["final_latents"])
    assert err < 1e-5 * scale, (err, scale)  # measured 1.6e-6 (t2i), 1.5e-6 (img2img)
    # negative control: the unguided run (scale 1) is far from the guided reference
    unguided = reference_run(sigmas, x_init, prompt_pairs(ref),
                             method.default_sampler.replace(guidance_scale=1.0))
    assert max_err(unguided, ref["final_latents"]) > 100 * err
    decoded = np.asarray(jax.jit(method.decode)(aux, jnp.asarray(ref["final_latents"])))
    assert max_err(decoded, np.clip(ref["decoded"], -1, 1)) < 1e-4


def test_img2img_equals_diffusers_pipeline():
    """StableDiffusionImg2ImgPipeline at strength 0.75: the init latents are s (mean + std n) of
    the VAE posterior of 2 x - 1; the run is the last int(0.75 * 20) = 15 steps (749, ..., 50)
    of the text-to-image grid from add_noise(init, noise, 749) = init + sigma_749 noise (EDM),
    which `editing.truncate_sigmas` at `img2img_strength` selects."""
    method, _, aux = loaded()
    ref = reference()
    posterior = method.posterior(aux, 2.0 * jnp.asarray(ref["img2img_image"]) - 1.0)
    init = method.scaling_factor * (posterior.mean + posterior.std
                                    * jnp.asarray(ref["img2img_posterior_noise"]))
    assert max_err(init, ref["img2img_init_latents"]) < 1e-4
    full = grids.timestep_sigmas(method.schedule, ref["timesteps"])
    sub = editing.truncate_sigmas(full, sd_method.img2img_strength(20, 0.75))
    np.testing.assert_allclose(sub, grids.timestep_sigmas(method.schedule,
                                                          ref["img2img_timesteps"]), rtol=1e-6)
    assert int(ref["img2img_latent_timestep"][0]) == int(ref["img2img_timesteps"][0]) == 749
    x_init = ref["img2img_init_latents"] + float(sub[0]) * ref["img2img_noise"]
    final = reference_run(sub, x_init, prompt_pairs(ref))
    scale = float(np.max(np.abs(ref["img2img_final_latents"])))
    err = max_err(final, ref["img2img_final_latents"])
    assert err < 1e-5 * scale, (err, scale)  # measured 1.6e-6 (t2i), 1.5e-6 (img2img)
    # diffusers runs int(N s) steps where the generic SDEdit runs round(N s): at s = 0.78 the
    # first starts at step 5 (15 steps), the second at step 4
    assert editing.start_step(20, sd_method.img2img_strength(20, 0.78)) == 5
    assert editing.start_step(20, 0.78) == 4
