"""Latent diffusion (Rombach et al. 2022): any diffusion method trained and sampled in the
latent space of a frozen KL autoencoder (`methods.autoencoder`).

The method's aux state (kept in the train state and its checkpoints) holds the autoencoder's
parameters, restored by the launcher layer (`requirements()`) from the newest checkpoint of the
autoencoder's own run (its EMA), or with `vae_dir` from a released VAE (diffusers
`AutoencoderKL`: sd-vae-ft-ema / -mse, as DiT, SiT and MeanFlow use), and the latent scale
factor s: `fixed_scale` (0.18215 for the SD VAEs), else 1 / std of encoder latents over
`scale_examples` training images (LDM Sec. 4.3.2 and App. G: unit-variance latents, so the
inner method's sigma_data and noise levels fit), plus the inner method's aux if it has one.
With `scaling='edm2'` the latents are instead normalised per channel by the fixed statistics
of EDM2 (Karras et al. 2024; NVlabs/edm2 `training/encoders.py`
`StabilityVAEEncoder`): z' = (z - raw_mean) final_std / raw_std, raw_mean and raw_std the
channel means and standard deviations of sd-vae-ft-mse latents of ImageNet-512, final_std 0.5
(EDM2's sigma_data), so the scale is not calibrated and needs no training images.
Training encodes each batch, z = s (mean + std n) of q(z | x) under stop-gradient, and calls
the inner loss on z; with a latent cache (`latent_cache()`) the posterior moments of the whole
training set are encoded once (`data.cache`: resumable, sharded over processes; with
`cache_views` 2 each image also mirrored, the papers' flips) and batches are drawn from it. Sampling runs the
inner sampler on latent-shaped noise (`noise_shape`) and decodes D(z / s).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.base import (LatentCache, Method, PretrainedWeights, RunWeights,
                                        TrainingImages)
from diffusion_jax.models.autoencoder import DiagonalGaussian
from diffusion_jax.samplers.sampler import Sampler

SCALINGS = ("std", "edm2")
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # NVlabs/edm2 StabilityVAEEncoder defaults
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_FINAL_STD = 0.5


@dataclasses.dataclass(frozen=True)
class LatentDiffusion(Method):
    inner: Any  # a method built for latent_shape
    autoencoder: Any  # methods.autoencoder.Autoencoder (its module and shapes)
    autoencoder_workdir: str
    dataset: str = "digits"
    scale_examples: int = 512
    cache_dir: str = ""
    vae_dir: str = ""  # a released VAE directory: the autoencoder's weights come from there
    fixed_scale: float = 0.0  # > 0: the latent scale s, not calibrated
    cache_views: int = 1  # 2: the cache also holds the mirrored images' latents
    scaling: str = "std"  # 'std': fixed_scale, else 1 / std of calibration latents; 'edm2'

    def __post_init__(self):
        if self.scaling not in SCALINGS:
            raise ConfigError(f"unknown latent scaling {self.scaling!r} (latent.scaling); "
                              f"valid: {', '.join(SCALINGS)}")
        if self.scaling == "edm2" and self.noise_shape[-1] != len(EDM2_RAW_MEAN):
            raise ConfigError(f"latent.scaling='edm2' holds the statistics of the 4 channels of "
                              f"sd-vae-ft-mse latents; these latents have {self.noise_shape[-1]}")
        if self.scaling == "edm2" and self.fixed_scale:
            raise ConfigError(f"latent.scale={self.fixed_scale} has no effect with "
                              f"latent.scaling='edm2' (EDM2's per-channel statistics scale the "
                              f"latents): set latent.scale=0 or latent.scaling='std'")

    @property
    def image_shape(self) -> tuple:
        return tuple(self.autoencoder.image_shape)

    @property
    def noise_shape(self) -> tuple:
        return tuple(self.inner.image_shape)

    @property
    def network_shape(self) -> tuple:
        """The input shape of `apply`: the inner network runs on latents."""
        return self.noise_shape

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    @property
    def caption_length(self) -> int:
        return self.inner.caption_length

    @property
    def default_sampler(self) -> Sampler:
        return self.inner.default_sampler

    @property
    def has_denoiser(self) -> bool:
        return self.inner.has_denoiser

    @property
    def sampler_names(self) -> tuple:
        return self.inner.sampler_names

    def init_params(self, rng):
        return self.inner.init_params(rng)

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The inner network on latents x."""
        return self.inner.apply(params, x, t, cond, train=train, rng=rng)

    # -- aux state: the frozen autoencoder and the latent scale --------------------------------
    def requirements(self) -> dict:
        """The autoencoder run's EMA weights (or the released VAE of `vae_dir`), `scale_examples`
        training images to calibrate the scale (unless it is fixed or EDM2's), and the inner
        method's requirements."""
        needs = {"autoencoder": (PretrainedWeights(self.vae_dir, "vae") if self.vae_dir
                                 else RunWeights(self.autoencoder_workdir))}
        if self.scaling == "std" and not self.fixed_scale:
            needs["calibration"] = TrainingImages(self.scale_examples)
        inner = self.inner.requirements()
        return {**needs, "inner": inner} if inner else needs

    def init_aux(self, params, rng):
        ae_rng, inner_rng = jax.random.split(rng)
        aux = {"autoencoder": self.autoencoder.init_params(ae_rng),
               "scale": jnp.asarray(self.fixed_scale or 1.0, jnp.float32)}
        if self.scaling == "edm2":
            scale = EDM2_FINAL_STD / jnp.asarray(EDM2_RAW_STD, jnp.float32)
            aux.update(scale=scale, bias=-jnp.asarray(EDM2_RAW_MEAN, jnp.float32) * scale)
        inner = self.inner.init_aux(params, inner_rng)
        return {**aux, "inner": inner} if inner else aux

    def start(self, params, aux, resources):
        """The restored autoencoder weights, the latent scale of the calibration images (unless
        fixed), and the inner method's start."""
        ae_params = resources["autoencoder"]
        if jax.tree.structure(ae_params) != jax.tree.structure(aux["autoencoder"]):
            raise ConfigError(f"the autoencoder in {self.vae_dir or self.autoencoder_workdir!r} "
                              f"does not match its config.json")
        aux = dict(aux, autoencoder=ae_params)
        if self.scaling == "std" and not self.fixed_scale:
            aux["scale"] = jnp.asarray(self.latent_scale(ae_params, resources["calibration"]),
                                       jnp.float32)
        if "inner" in aux:
            params, inner = self.inner.start(params, aux["inner"], resources.get("inner", {}))
            aux["inner"] = inner
        return params, aux

    def update_aux(self, aux, params, step):
        if "inner" in aux:
            return dict(aux, inner=self.inner.update_aux(aux["inner"], params, step))
        return aux

    def constrain_params(self, params):
        return self.inner.constrain_params(params)

    def latent_scale(self, ae_params, images: np.ndarray) -> float:
        """1 / std of posterior samples of `images`."""
        mean, logvar = np.split(self.encode_moments(ae_params, images), 2, axis=-1)
        noise = np.random.default_rng(0).standard_normal(mean.shape)
        return float(1.0 / (mean + np.exp(0.5 * logvar) * noise).std())

    def encode_moments(self, ae_params, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Host images -> their posterior moments (N, h, w, 2 c), in batches of `batch` (the
        last one padded, so one program is compiled)."""
        out = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            out.append(np.asarray(self._moments_fn(ae_params, padded))[:len(chunk)])
        return np.concatenate(out)

    @functools.cached_property
    def _moments_fn(self):
        return jax.jit(lambda p, x: self.posterior_moments({"autoencoder": p}, x))

    # -- data ---------------------------------------------------------------------------------
    def normalize(self, aux, z):
        """The diffusion latent of an autoencoder latent z: s z, or s z + b per channel
        (`scaling='edm2'`)."""
        return aux["scale"] * z + aux.get("bias", 0.0)

    def denormalize(self, aux, z):
        """The inverse of `normalize`."""
        return (z - aux.get("bias", 0.0)) / aux["scale"]

    def encode(self, aux, x, rng):
        """normalize(z), z ~ q(z | x), under stop-gradient."""
        z = self.autoencoder.encode(aux["autoencoder"], x).sample(rng)
        return jax.lax.stop_gradient(self.normalize(aux, z))

    def decode(self, aux, z):
        return self.autoencoder.decode(aux["autoencoder"], self.denormalize(aux, z))

    def latent_cache(self) -> Optional[LatentCache]:
        """With `cache_dir`: the posterior moments (mean, log variance) of every training image
        (and of its mirror image with `cache_views` 2) in
        `cache_dir/<dataset>_train_latent_moments/`, from which `loss` draws z."""
        if not self.cache_dir:
            return None
        return LatentCache(os.path.join(self.cache_dir, f"{self.dataset}_train_latent_moments"),
                           lambda aux, images: self.encode_moments(aux["autoencoder"], images),
                           self.moments_shape, views=self.cache_views,
                           encoder=self.encoder_name)

    @property
    def encoder_name(self) -> str:
        """The absolute path of the VAE directory or autoencoder run that encodes the cache."""
        source = self.vae_dir or self.autoencoder_workdir
        return os.path.abspath(source) if source else ""

    @property
    def moments_shape(self) -> tuple:
        h, w, c = self.noise_shape
        return (h, w, 2 * c)

    def posterior_moments(self, aux, x):
        """(B, h, w, 2 c): mean and log variance of q(z | x), unscaled."""
        q = self.autoencoder.encode(aux["autoencoder"], x)
        return jnp.concatenate([q.mean, q.logvar], axis=-1)

    # -- protocol -----------------------------------------------------------------------------
    def _latent_batch(self, batch, rng, aux):
        x = batch["image"]
        if self.cache_dir:  # posterior moments from the cache
            q = DiagonalGaussian.from_moments(x)
            z = jax.lax.stop_gradient(self.normalize(aux, q.sample(rng)))
        else:
            z = self.encode(aux, x, rng)
        return dict(batch, image=z)

    def loss(self, params, batch, rng, aux, step):
        encode_rng, inner_rng = jax.random.split(rng)
        latents = self._latent_batch(batch, encode_rng, aux)
        return self.inner.loss(params, latents, inner_rng, aux.get("inner", {}), step)

    def sample(self, params, rng, x_init, cond=None, *, aux=None, sampler=None):
        """The inner sampler from latent noise x_init (B, *noise_shape), decoded to images."""
        z, stats = self.inner.sample(params, rng, x_init, cond, aux=aux.get("inner", {}),
                                     sampler=sampler)
        return self.decode(aux, z), stats

    def denoiser_model(self, params, cond, aux, sampler):
        """The inner method's denoiser on scaled latents z (e.g. a latent-space teacher)."""
        return self.inner.denoiser_model(params, cond, (aux or {}).get("inner", {}), sampler)

    def check_sampler(self, sampler):
        self.inner.check_sampler(sampler)

    def edit(self, params, rng, x, mask, cond=None, *, aux=None, sampler=None, task: str,
             strength: float):
        """SDEdit in latent space: encode x (posterior mean), the inner method's SDEdit at
        `strength`, decode. Inpainting needs a pixel mask the latents do not have."""
        if task != "sdedit":
            raise ConfigError(f"latent diffusion edits by sdedit only (edit.task={task!r})")
        z = self.normalize(aux, self.autoencoder.encode(aux["autoencoder"], x).mode())
        z = self.inner.edit(params, rng, z, jnp.zeros(z.shape, bool), cond,
                            aux=aux.get("inner", {}), sampler=sampler, task=task,
                            strength=strength)
        return self.decode(aux, z)
