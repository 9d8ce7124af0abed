"""Stable Diffusion as a method (`methods.stable_diffusion`): the whole pipeline on the tiny
random SD 1.5 model (`tests/data/sd_tiny/sd15`) against diffusers' own runs on it
(`pipeline_reference.npz`, written by tools/make_sd_fixtures.py): StableDiffusionPipeline with
DPMSolverMultistepScheduler, guidance 7.5, 20 steps, per-prompt negative prompts, given
latents; and StableDiffusionImg2ImgPipeline at strength 0.75 with its noises recorded.
"""
import dataclasses
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


@pytest.mark.slow
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


@pytest.mark.slow
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


PROMPT, NEGATIVE = "a red cube on a blue table", "blurry, low quality"


@pytest.mark.slow
def test_sample_mode_runs_from_a_model_directory_and_matches_the_python_api(tmp_path):
    """`--mode=sample --prompt --negative_prompt` on a model directory with no training
    checkpoint writes PNGs and .npz from the directory's weights; the Python API
    (`pipeline.StableDiffusion`) gives the same images for the same prompt, negative prompt
    and seed, through its per-image (prompt, negative) condition pairs."""
    from diffusion_jax import launcher
    from diffusion_jax.pipeline import StableDiffusion

    config = tiny_config()
    config.sampling.update(num_samples=4, batch_size=4, seed=42)
    workdir = str(tmp_path / "run")
    assert launcher.run(config, workdir, "sample", prompt=PROMPT, negative_prompt=NEGATIVE) == 0
    assert os.path.isfile(os.path.join(workdir, "samples", "sample_0_42_prompt.png"))
    cli = np.load(os.path.join(workdir, "samples", "sample_0_42_prompt.npz"))["images"]
    assert cli.shape == (4, 32, 32, 3) and np.all(np.abs(cli) <= 1.0)

    pipe = StableDiffusion.load(TINY)
    api = pipe([PROMPT] * 4, NEGATIVE, num_steps=20, guidance_scale=7.5, seed=42,
               output="array")
    assert max_err(api, cli) < 1e-5
    pil = pipe(PROMPT, NEGATIVE, num_images=4, seed=42)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]),
                                  np.asarray(np.round((np.clip(api, -1, 1) + 1) * 127.5),
                                             np.uint8))
    # negative controls: without the negative prompt, or with another seed, the images differ
    assert max_err(pipe([PROMPT] * 4, seed=42, output="array"), cli) > 1e-2
    assert max_err(pipe([PROMPT] * 4, NEGATIVE, seed=43, output="array"), cli) > 1e-2


@pytest.mark.slow
def test_sample_mode_without_weights_is_a_config_error(tmp_path):
    from diffusion_jax import launcher
    from diffusion_jax.errors import ConfigError

    config = load_config("configs/stable_diffusion/sd15.py")
    config.sd.tokenizer_dir = os.path.join(TINY, "tokenizer")
    with pytest.raises(ConfigError, match="sd.model_dir"):
        launcher.run(config, str(tmp_path), "sample", prompt=PROMPT)


def edit_inputs():
    ref = reference()
    x = jnp.asarray(2.0 * ref["img2img_image"] - 1.0)
    mask = np.zeros(x.shape, bool)
    mask[:, :, :16] = True  # the left half is known
    return x, jnp.asarray(mask), jnp.asarray(prompt_pairs(ref))


@pytest.mark.slow
def test_inpainting_on_the_base_model_keeps_the_known_pixels():
    """Replacement in latent space, then the known pixels pasted: exactly the input where the
    mask is True; generated (different) pixels elsewhere."""
    method, params, aux = loaded()
    x, mask, cond = edit_inputs()
    sampler = method.default_sampler
    out = jax.jit(lambda x, m, c: method.edit(params, jax.random.PRNGKey(0), x, m, c, aux=aux,
                                             sampler=sampler, task="inpaint", strength=1.0))(
        x, mask, cond)
    out, x, mask = np.asarray(out), np.asarray(x), np.asarray(mask)
    np.testing.assert_array_equal(out[mask], x[mask])
    assert np.mean(np.abs(out[~mask] - x[~mask])) > 0.05  # negative control: the hole changed
    assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)


@pytest.mark.slow
def test_inpainting_unet_is_conditioned_on_mask_and_masked_latents():
    """A 9-channel U-Net (the sd-*-inpainting layout, random weights): its input is
    [z_t, m, s E(x_masked)] with m = 1 on the latent cells to generate; the known pixels are
    kept, and the result depends on the known pixels through that conditioning (negative
    control: other known pixels, other hole)."""
    method, _, aux = loaded()
    method = dataclasses.replace(method, unet=method.unet.clone(in_channels=9))
    assert method.inpainting and method.network_shape == (16, 16, 9)
    params = method.init_params(jax.random.PRNGKey(1))
    x, mask, cond = edit_inputs()
    run = jax.jit(lambda x, m: method.edit(params, jax.random.PRNGKey(0), x, m, cond, aux=aux,
                                          sampler=method.default_sampler.replace(num_steps=4),
                                          task="inpaint", strength=1.0))
    out = np.asarray(run(x, mask))
    np.testing.assert_array_equal(out[np.asarray(mask)], np.asarray(x)[np.asarray(mask)])
    other = np.asarray(run(-x, mask))
    hole = ~np.asarray(mask)
    assert np.mean(np.abs(other[hole] - out[hole])) > 1e-3


@pytest.mark.slow
@pytest.mark.devices(2)
def test_fine_tuning_trains_the_unet_and_keeps_text_encoder_and_vae_frozen(tmp_path):
    """configs/stable_diffusion/shapes_tiny.py for 3 steps (bf16 compute, remat, the U-Net and
    its optimizer state sharded over fsdp = 2): the loss is finite, the U-Net moves away from
    the released one, the text encoder and VAE (aux) stay the released weights exactly, and
    sample mode then restores the checkpoint (not the model directory)."""
    from diffusion_jax import launcher

    config = load_config("configs/stable_diffusion/shapes_tiny.py")
    config.training.update(num_steps=3, batch_size=8, checkpoint_every=3, log_every=1,
                           sample_at_end=False)
    config.model.update(dtype="bfloat16", remat=True)
    config.mesh.fsdp = 2
    config.sampling.update(num_samples=8, batch_size=8, num_steps=4)
    workdir = str(tmp_path / "ft")
    state, interrupted = launcher.train(config, workdir)
    assert not interrupted and int(state.step) == 3
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 3 and all(np.isfinite(losses))
    method, params, aux = loaded()
    moved = max(max_err(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                              jax.tree.leaves(params)))
    assert moved > 1e-5  # negative control of the equalities below: training changes weights
    for name in ("text_encoder", "vae"):
        for a, b in zip(jax.tree.leaves(state.aux[name]), jax.tree.leaves(aux[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, restored = runs.restore_or_pretrained(config, workdir, builders.build_mesh(config))
    assert int(restored.step) == 3
    assert launcher.run(config, str(tmp_path / "samples"), "sample",
                        train_workdir=workdir) == 0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sdedit", "inpaint"])
def test_edit_mode_equals_the_python_api(tmp_path, task):
    """`--mode=sample --config.edit.task=sdedit --config.edit.strength=0.75` (img2img) and
    `edit.task=inpaint` with a mask PNG edit the PNG inputs towards --prompt, away from
    --negative_prompt: the same images as `pipe.img2img` / `pipe.inpaint` with the same seed;
    inpainting keeps the known pixels."""
    from PIL import Image

    from diffusion_jax import images as image_io
    from diffusion_jax import launcher
    from diffusion_jax.pipeline import StableDiffusion

    x, mask, _ = edit_inputs()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, image in enumerate(image_io.to_uint8(np.asarray(x))):
        Image.fromarray(image).save(inputs / f"{i}.png")
    mask_png = tmp_path / "mask.png"
    Image.fromarray(np.where(np.asarray(mask)[0, ..., 0], 255, 0).astype(np.uint8)).save(mask_png)
    config = tiny_config()
    config.edit.update(task=task, input=str(inputs), strength=0.75,
                       mask=str(mask_png) if task == "inpaint" else "")
    config.sampling.update(batch_size=2, seed=42)
    workdir = str(tmp_path / "run")
    assert launcher.run(config, workdir, "sample", prompt=PROMPT, negative_prompt=NEGATIVE) == 0
    cli = np.load(os.path.join(workdir, "samples", f"edit_{task}_step_0.npz"))
    pipe = StableDiffusion.load(TINY)
    images = [Image.open(inputs / f"{i}.png") for i in range(2)]
    if task == "sdedit":
        api = pipe.img2img(images, PROMPT, NEGATIVE, strength=0.75, seed=42, output="array")
    else:
        api = pipe.inpaint(images, Image.open(mask_png), PROMPT, NEGATIVE, seed=42,
                           output="array")
        known = cli["masks"]
        np.testing.assert_array_equal(cli["results"][known], cli["inputs"][known])
    assert max_err(api, cli["results"]) < 1e-5
    # negative control: the edit changed the images
    assert np.mean(np.abs(cli["results"] - cli["inputs"])) > 0.02


def test_caption_folder_reads_pairs_resized_and_tokenized(tmp_path):
    """data set 'folder': image + same-stem .txt caption (or metadata.jsonl), in name order,
    resized on the shorter side and centre-cropped to the model's shape, captions through the
    method's tokenizer; an image without a caption is a DataError."""
    from PIL import Image

    from diffusion_jax.data.datasets import captions, open_dataset
    from diffusion_jax.errors import DataError

    method, _, _ = loaded()
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, 4:12] = 255  # the centre 8 columns white: what the crop keeps
    Image.fromarray(wide).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("an astronaut riding a horse\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red cube on a blue table")
    _, source, decode = open_dataset("folder", "train", data_dir=str(tmp_path),
                                     image_shape=(8, 8, 3), tokenize=method.tokenize)
    (a, a_tokens), (b, b_tokens) = decode(source[0]), decode(source[1])
    np.testing.assert_array_equal(np.stack([a_tokens, b_tokens]), reference()["prompt_ids"])
    assert a.shape == b.shape == (8, 8, 3)
    np.testing.assert_allclose(a, -1.0)
    np.testing.assert_allclose(b, 1.0, atol=1e-6)
    assert captions("folder", "test", data_dir=str(tmp_path))[1] == "an astronaut riding a horse"
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.png", "text": "from metadata"}) + "\n")
    assert captions("folder", "train", data_dir=str(tmp_path)) == ["from metadata"]
    (tmp_path / "metadata.jsonl").unlink()
    Image.fromarray(wide).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="c.txt"):
        open_dataset("folder", "train", data_dir=str(tmp_path), image_shape=(8, 8, 3))
