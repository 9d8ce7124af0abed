"""Latent diffusion (Rombach et al. 2022): any diffusion method trained and sampled in the
latent space of a frozen KL autoencoder (`methods.autoencoder`).

The method's aux state (`init_aux` / `load_aux`, kept in the train state and its checkpoints)
holds the autoencoder's EMA parameters, restored from the newest checkpoint of the
autoencoder's own run, and the latent scale factor s = 1 / std of encoder latents over
`scale_examples` training images (LDM Sec. 4.3.2 and App. G: unit-variance latents, so the
inner method's sigma_data and noise levels fit), plus the inner method's aux if it has one.
Training encodes each batch, z = s (mean + std n) of q(z | x) under stop-gradient, and calls
the inner loss on z; with a latent cache the posterior moments of the whole training set are
encoded once to an .npy file and batches are drawn from it. Sampling runs the inner sampler on
latent-shaped noise (`latent_shape`) and decodes D(z / s).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.models.autoencoder import DiagonalGaussian
from diffusion_jax.training.step import has_aux as _has_aux


@dataclasses.dataclass(frozen=True)
class LatentDiffusion:
    inner: Any  # a method built for latent_shape
    autoencoder: Any  # methods.autoencoder.Autoencoder (its module and shapes)
    autoencoder_workdir: str
    dataset: str = "digits"
    data_dir: str = ""
    scale_examples: int = 512
    cache_dir: str = ""

    @property
    def image_shape(self) -> tuple:
        return tuple(self.autoencoder.image_shape)

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.inner.image_shape)

    @property
    def network_shape(self) -> tuple:
        """The input shape of `apply`: the inner network runs on latents."""
        return self.latent_shape

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    @property
    def caption_length(self) -> int:
        return getattr(self.inner, "caption_length", 0)

    def init_params(self, rng):
        return self.inner.init_params(rng)

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The inner network on latents x."""
        return self.inner.apply(params, x, t, cond, train=train, rng=rng)

    # -- aux state: the frozen autoencoder and the latent scale --------------------------------
    def init_aux(self, params, rng):
        ae_rng, inner_rng = jax.random.split(rng)
        aux = {"autoencoder": self.autoencoder.init_params(ae_rng),
               "scale": jnp.ones((), jnp.float32)}
        if _has_aux(self.inner):
            aux["inner"] = self.inner.init_aux(params, inner_rng)
        return aux

    def load_aux(self, aux):
        """The autoencoder's EMA weights from `autoencoder_workdir` and the latent scale."""
        from diffusion_jax.training.loop import restore_run

        _, _, state = restore_run(self.autoencoder_workdir)
        if jax.tree.structure(state.ema_params) != jax.tree.structure(aux["autoencoder"]):
            raise ConfigError(f"the autoencoder in {self.autoencoder_workdir!r} does not match "
                              f"its config.json")
        aux = dict(aux, autoencoder=state.ema_params)
        aux["scale"] = jnp.asarray(self.latent_scale(state.ema_params), jnp.float32)
        if _has_aux(self.inner) and hasattr(self.inner, "load_aux"):
            aux["inner"] = self.inner.load_aux(aux["inner"])
        return aux

    def update_aux(self, aux, params, step):
        if _has_aux(self.inner) and hasattr(self.inner, "update_aux"):
            return dict(aux, inner=self.inner.update_aux(aux["inner"], params, step))
        return aux

    def latent_scale(self, ae_params) -> float:
        """1 / std of posterior samples of the first `scale_examples` training images."""
        images = _training_images(self.dataset, self.data_dir, self.scale_examples)
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
    def encode(self, aux, x, rng):
        """s z, z ~ q(z | x), under stop-gradient."""
        z = self.autoencoder.encode(aux["autoencoder"], x).sample(rng)
        return jax.lax.stop_gradient(aux["scale"] * z)

    def decode(self, aux, z):
        return self.autoencoder.decode(aux["autoencoder"], z / aux["scale"])

    def training_data(self, aux, source, decode):
        """The training (source, decode) the loop reads: unchanged, or with `cache_dir` the
        posterior moments (mean, log variance) of every training image, encoded once to
        `cache_dir/<dataset>_train_latent_moments.npy` (reused while it exists; every process
        writes the same file atomically), from which `loss` draws z."""
        if not self.cache_dir:
            return source, decode
        path = os.path.join(self.cache_dir, f"{self.dataset}_train_latent_moments.npy")
        if not os.path.exists(path):
            images = np.stack([decode(source[i])[0] for i in range(len(source))])
            out = self.encode_moments(aux["autoencoder"], images)
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, out)
            os.replace(tmp, path)
        cached = np.load(path, mmap_mode="r")
        if cached.shape != (len(source),) + self.moments_shape:
            raise ConfigError(f"latent cache {path} holds {cached.shape}, not the moments "
                              f"{self.moments_shape} of {len(source)} examples: delete it")
        labels = [decode(source[i])[1] for i in range(len(source))]
        return CachedLatents(cached, labels), lambda ex: (np.asarray(ex["image"]), ex["label"])

    @property
    def moments_shape(self) -> tuple:
        h, w, c = self.latent_shape
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
            z = jax.lax.stop_gradient(aux["scale"] * q.sample(rng))
        else:
            z = self.encode(aux, x, rng)
        return dict(batch, image=z)

    def loss(self, params, batch, rng, *, aux, step=0):
        encode_rng, inner_rng = jax.random.split(rng)
        latents = self._latent_batch(batch, encode_rng, aux)
        if _has_aux(self.inner):
            return self.inner.loss(params, latents, inner_rng, aux=aux["inner"], step=step)
        return self.inner.loss(params, latents, inner_rng)

    @functools.cached_property
    def sample(self):
        """sample(params, rng, x_init, cond=None, *, aux, **inner options): the inner sampler
        from latent noise x_init (B, *latent_shape), decoded to images (with the inner method's
        statistics when it returns them). Its keyword options are the inner method's."""
        def sample(params, rng, x_init, cond=None, *, aux, **options):
            out = self.inner.sample(params, rng, x_init, cond, **self._inner_aux(aux), **options)
            z, stats = out if isinstance(out, tuple) else (out, None)
            images = self.decode(aux, z)
            return images if stats is None else (images, stats)

        inner = inspect.signature(self.inner.sample)
        keep = [p for n, p in inner.parameters.items()
                if n != "aux" and p.kind != inspect.Parameter.VAR_KEYWORD]
        aux = inspect.Parameter("aux", inspect.Parameter.KEYWORD_ONLY)
        sample.__signature__ = inner.replace(parameters=keep + [aux])
        return sample

    def denoiser(self, params, cond=None, *, aux):
        """The inner method's D(z, sigma) on scaled latents z (e.g. a latent-space teacher)."""
        if not hasattr(self.inner, "denoiser"):
            raise ConfigError(f"{type(self.inner).__name__} has no denoiser")
        return self.inner.denoiser(params, cond, **self._inner_aux(aux))

    def edit(self, params, rng, x, mask, cond=None, *, aux, task: str, strength: float,
             **options):
        """SDEdit in latent space: encode x (posterior mean), the inner method's SDEdit at
        `strength`, decode. Inpainting needs a pixel mask the latents do not have."""
        if task != "sdedit" or not hasattr(self.inner, "edit"):
            raise ConfigError(f"latent diffusion edits by sdedit only (edit.task={task!r})")
        z = aux["scale"] * self.autoencoder.encode(aux["autoencoder"], x).mode()
        z = self.inner.edit(params, rng, z, jnp.zeros(z.shape, bool), cond, task=task,
                            strength=strength, **self._inner_aux(aux), **options)
        return self.decode(aux, z)

    def _inner_aux(self, aux) -> dict:
        return {"aux": aux["inner"]} if _has_aux(self.inner) else {}


class CachedLatents:
    """A random-access source of cached posterior moments with the data set's labels."""

    def __init__(self, moments: np.ndarray, labels):
        self.moments, self.labels = moments, labels

    def __len__(self) -> int:
        return len(self.moments)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.moments[index], "label": self.labels[index]}


def _training_images(dataset: str, data_dir: str, n: int) -> np.ndarray:
    from diffusion_jax.data.datasets import open_dataset

    _, source, decode = open_dataset(dataset, "train", data_dir=data_dir or None)
    return np.stack([decode(source[i])[0] for i in range(min(n, len(source)))])
