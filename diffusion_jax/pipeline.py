"""Stable Diffusion from Python (notebooks): load a released model once, then text-to-image,
image-to-image and inpainting on lists of prompts, over every local device.

    from diffusion_jax.pipeline import StableDiffusion
    pipe = StableDiffusion.load("stable-diffusion-v1-5")   # a diffusers model directory
    images = pipe(["an astronaut riding a horse"], ["blurry"], num_steps=20,
                  guidance_scale=7.5, seed=42)             # PIL images
    edited = pipe.img2img(images, ["a watercolour painting"], strength=0.75)

It holds what `--mode=sample` builds without a work directory: the config of
`configs/stable_diffusion/<base>.py` with the source's `sd.*` keys (`builders.build_method`),
the released weights as `runs.pretrained_state` reads them, a data-parallel mesh, and runs
`sampling.generate` / `sampling.edit` with a `Sampler` of the method's defaults. Images come
back as PIL images, or as float32 arrays (N, H, W, 3) in [-1, 1]; images given may be either.
Masks follow the launcher's convention: True (white) = a known pixel, kept.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import jax
import numpy as np
from PIL import Image

from diffusion_jax import builders, parallel, runs, sampling
from diffusion_jax import images as image_io
from diffusion_jax.config_files import load_config
from diffusion_jax.errors import ConfigError
from diffusion_jax.importers.stable_diffusion_configs import RELEASED
from diffusion_jax.samplers import sampler as sampler_lib

Prompts = Union[str, Sequence[str]]
OUTPUTS = ("pil", "array")


class StableDiffusion:
    """A loaded Stable Diffusion model: `method` (`methods.stable_diffusion.StableDiffusion`),
    its `params` (the U-Net) and `aux` (text encoder, VAE) on `mesh`."""

    def __init__(self, config, method, params, aux, mesh):
        self.config, self.method, self.params, self.aux, self.mesh = (config, method, params,
                                                                      aux, mesh)

    @classmethod
    def load(cls, source: str, *, base: str = "sd15", tokenizer_dir: str = "",
             dtype: str = "float32", variant: str = "", resolution: int = 0,
             mesh=None) -> "StableDiffusion":
        """The model of `source`: a diffusers model directory, or a single-file checkpoint with
        the configs of `base` (sd15, sd21, sd21_base, or a model directory) and the tokenizer of
        `tokenizer_dir`. `dtype`: the compute dtype (bfloat16 halves activation memory);
        `mesh`: default every device, data parallel."""
        name = base if base in RELEASED else "sd15"  # a model directory as base: its configs
        config = load_config(os.path.join("configs", "stable_diffusion", f"{name}.py"))
        directory = os.path.isdir(source)
        config.sd.update(model_dir=source if directory else "",
                         checkpoint="" if directory else source, base=base,
                         tokenizer_dir=tokenizer_dir, variant=variant, resolution=resolution)
        config.model.dtype = dtype
        mesh = parallel.make_mesh() if mesh is None else mesh
        method = builders.build_method(config)
        state = runs.pretrained_state(method, config, mesh)
        return cls(config, method, state.params, state.aux, mesh)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.method.image_shape)

    def sampler(self, method: str = "dpm_solver_pp_2m", num_steps: int = 20,
                guidance_scale: float = 7.5, **options) -> sampler_lib.Sampler:
        """The method's default sampler with these settings (any `Sampler` field)."""
        sampler = self.method.sampler(method=method, num_steps=num_steps,
                                      guidance_scale=guidance_scale, **options)
        sampler_lib.check(sampler)
        if sampler.method not in self.method.sampler_names:
            raise ConfigError(f"unknown sampler {sampler.method!r}; valid: "
                              f"{', '.join(self.method.sampler_names)}")
        return sampler

    def conditions(self, prompts: Prompts, negative_prompts: Optional[Prompts] = None,
                   num: Optional[int] = None) -> np.ndarray:
        """(N, 2, 77) tokens of each prompt and its negative prompt (empty when not given); a
        single prompt (or negative prompt) is repeated to N = `num`."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = [""] if negative_prompts is None else (
            [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts))
        n = num or max(len(prompts), len(negatives))
        for name, texts in (("prompts", prompts), ("negative prompts", negatives)):
            if len(texts) not in (1, n):
                raise ConfigError(f"{len(texts)} {name} for {n} images")
        repeat = lambda texts: texts * n if len(texts) == 1 else texts  # noqa: E731
        return np.stack([self.method.tokenize(repeat(prompts)),
                         self.method.tokenize(repeat(negatives))], axis=1)

    def _batch(self, num: int, batch_size: Optional[int]) -> int:
        devices = self.mesh.devices.size
        size = min(num, batch_size or 8)
        return -(-size // devices) * devices

    def __call__(self, prompts: Prompts, negative_prompts: Optional[Prompts] = None, *,
                 num_steps: int = 20, guidance_scale: float = 7.5, seed: int = 0,
                 sampler: str = "dpm_solver_pp_2m", num_images: Optional[int] = None,
                 batch_size: Optional[int] = None, output: str = "pil", **options):
        """Text-to-image: one image per prompt (or `num_images` of one prompt), guided away
        from the negative prompts, with the shared solver `sampler` in `num_steps` steps;
        `options`: other `Sampler` fields (e.g. spacing, eta). The same seed gives the same
        images."""
        conditions = self.conditions(prompts, negative_prompts, num_images)
        images = sampling.generate(
            self.method, self.params, jax.random.PRNGKey(seed), len(conditions),
            self._batch(len(conditions), batch_size), self.mesh,
            self.sampler(sampler, num_steps, guidance_scale, **options), aux=self.aux,
            conditions=conditions)
        return _output(images, output)

    def img2img(self, images, prompts: Prompts, negative_prompts: Optional[Prompts] = None, *,
                strength: float = 0.75, **options):
        """Image-to-image as diffusers' `StableDiffusionImg2ImgPipeline`: the images noised to
        the last int(strength N) of N steps, then denoised towards the prompts."""
        return self._edit(images, None, prompts, negative_prompts, "sdedit", strength, **options)

    def inpaint(self, images, masks, prompts: Prompts,
                negative_prompts: Optional[Prompts] = None, **options):
        """Inpainting: the pixels where `masks` is False (black) generated for the prompts, the
        others kept exactly; on the base model by replacement, on an inpainting checkpoint
        (9-channel U-Net) by its own conditioning."""
        return self._edit(images, masks, prompts, negative_prompts, "inpaint", 1.0, **options)

    def _edit(self, images, masks, prompts, negative_prompts, task, strength, *,
              num_steps: int = 20, guidance_scale: float = 7.5, seed: int = 0,
              sampler: str = "dpm_solver_pp_2m", batch_size: Optional[int] = None,
              output: str = "pil", **options):
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"strength must be in [0, 1], got {strength}")
        x = _as_images(images, self.image_shape)
        mask = (np.zeros(x.shape, bool) if masks is None
                else np.broadcast_to(_as_masks(masks, self.image_shape, len(x)), x.shape))
        conditions = self.conditions(prompts, negative_prompts, len(x))
        results = sampling.edit(
            self.method, self.params, jax.random.PRNGKey(seed), x, mask,
            self._batch(len(x), batch_size), self.mesh,
            self.sampler(sampler, num_steps, guidance_scale, **options), task=task,
            strength=strength, aux=self.aux, conditions=conditions)
        return _output(results, output)


def _output(images: np.ndarray, output: str):
    if output not in OUTPUTS:
        raise ConfigError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
    if output == "array":
        return images
    return [Image.fromarray(image) for image in image_io.to_uint8(images)]


def _as_images(images, shape) -> np.ndarray:
    """(N, H, W, 3) float32 in [-1, 1] of PIL images (resized to `shape`) or of such arrays."""
    if isinstance(images, Image.Image) or (isinstance(images, (list, tuple)) and images
                                          and isinstance(images[0], Image.Image)):
        images = [images] if isinstance(images, Image.Image) else images
        size = (shape[1], shape[0])
        return np.stack([np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), np.float32)
                         / 127.5 - 1.0 for im in images])
    array = np.asarray(images, np.float32)
    array = array[None] if array.ndim == 3 else array
    if array.shape[1:] != tuple(shape):
        raise ConfigError(f"images of shape {array.shape[1:]}; this model takes {tuple(shape)}")
    return array


def _as_masks(masks, shape, num: int) -> np.ndarray:
    """(N, H, W, 1) bool, True = known: PIL masks (white = known, nearest resize), or arrays of
    shape (H, W), (N, H, W) or (N, H, W, C); one mask serves every image."""
    if isinstance(masks, Image.Image) or (isinstance(masks, (list, tuple)) and masks
                                         and isinstance(masks[0], Image.Image)):
        masks = [masks] if isinstance(masks, Image.Image) else masks
        size = (shape[1], shape[0])
        masks = np.stack([np.asarray(m.convert("L").resize(size, Image.NEAREST)) >= 128
                          for m in masks])
    masks = np.asarray(masks, bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 3:
        masks = masks[..., None]
    if masks.shape[0] not in (1, num) or masks.shape[1:3] != tuple(shape[:2]):
        raise ConfigError(f"masks of shape {masks.shape}; need {num} masks of {shape[:2]}")
    return np.broadcast_to(masks, (num,) + masks.shape[1:])
