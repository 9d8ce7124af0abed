"""The autoencoder of latent diffusion as a method, trained by the same launcher and loop.

Loss (Rombach et al. 2022, App. G, without the adversarial term): the reconstruction error of
a posterior sample, |x - D(z)|_1 (or squared) summed over pixels, + kl_weight KL(q(z|x) || N(0, I))
(closed form, `DiagonalGaussian.kl`) + perceptual_weight times a perceptual distance between x
and D(z): `perceptual='digits'`, the squared distance of their features under the shipped digits
classifier (`evaluation.digits_features`; 8x8 digits only), or `'lpips'`, LPIPS-VGG16
(`losses.lpips`; the weights file `lpips_weights`, made by tools/convert_lpips_weights.py, is
not shipped; images under 16x16 are resized to 32x32 for it); each a mean over the batch.
The perceptual network's frozen weights are aux state, a `requirements()` entry the launcher
layer reads. `sample` decodes latents drawn from the prior N(0, I) (it fits the protocol; images
come out well only as far as the KL term makes the posterior match the prior) and `reconstruct`
is the autoencoder's real use.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation import digits_features
from diffusion_jax.losses import lpips
from diffusion_jax.methods.base import Method, WeightsFile
from diffusion_jax.samplers.sampler import Sampler

RECONSTRUCTION_LOSSES = ("l1", "l2")
PERCEPTUAL_DISTANCES = ("digits", "lpips")


@dataclasses.dataclass(frozen=True)
class Autoencoder(Method):
    model: Any  # models.autoencoder.AutoencoderKL
    image_shape: tuple
    kl_weight: float = 1e-4
    perceptual_weight: float = 0.0
    reconstruction: str = "l1"
    perceptual: str = "digits"
    lpips_weights: str = ""
    num_classes: int = 0
    caption_length: int = 0

    default_sampler: ClassVar[Sampler] = Sampler(method="prior")
    reconstructs: ClassVar[bool] = True

    def __post_init__(self):
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise ConfigError(f"unknown reconstruction loss {self.reconstruction!r}; valid: "
                              f"{', '.join(RECONSTRUCTION_LOSSES)}")
        if self.perceptual not in PERCEPTUAL_DISTANCES:
            raise ConfigError(f"unknown perceptual distance {self.perceptual!r} "
                              f"(autoencoder.perceptual); valid: {', '.join(PERCEPTUAL_DISTANCES)}")
        if (self.perceptual_weight and self.perceptual == "digits"
                and tuple(self.image_shape) != (8, 8, 1)):
            raise ConfigError("autoencoder.perceptual='digits' uses the digits classifier: "
                              f"8x8x1 images only, not {tuple(self.image_shape)}")
        if self.perceptual_weight and self.perceptual == "lpips" and not self.lpips_weights:
            raise ConfigError("autoencoder.perceptual='lpips' needs autoencoder.lpips_weights: "
                              "the .npz made by tools/convert_lpips_weights.py")

    @property
    def noise_shape(self) -> tuple:
        return self.model.latent_shape(self.image_shape)

    def init_params(self, rng: jax.Array):
        x = jnp.zeros((1,) + tuple(self.image_shape), jnp.float32)
        return jax.jit(self.model.init)(rng, x)["params"]

    def apply(self, params, x, t=None, cond=None, *, train: bool = False, rng=None):
        """The reconstruction of x through the posterior mean (t and cond are ignored)."""
        return self.model.apply({"params": params}, x)[0]

    def encode(self, params, x):
        """The posterior q(z | x), a `DiagonalGaussian`."""
        return self.model.apply({"params": params}, x, method="encode")

    def decode(self, params, z):
        return self.model.apply({"params": params}, z, method="decode")

    def reconstruct(self, params, x):
        return self.decode(params, self.encode(params, x).mode())

    # --- the perceptual network's frozen weights --------------------------------------------
    def requirements(self) -> dict:
        if not self.perceptual_weight:
            return {}
        if self.perceptual == "lpips":
            return {"perceptual": WeightsFile("lpips", self.lpips_weights)}
        return {"perceptual": WeightsFile("digits_classifier")}

    def init_aux(self, params, rng):
        if not self.perceptual_weight:
            return {}
        shapes = (lpips.abstract_lpips_params() if self.perceptual == "lpips" else
                  jax.eval_shape(digits_features.DigitsClassifier().init, rng,
                                 jnp.zeros((1, 8, 8, 1)))["params"])
        return {"perceptual": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)}

    def _perceptual_distance(self, weights):
        """d(x, y) -> (B,) of `perceptual` with its network's `weights`."""
        if self.perceptual == "lpips":
            resize = None if min(self.image_shape[:2]) >= lpips.MIN_SIZE else 32
            return lpips.lpips_distance_fn(weights, resize_to=resize)
        classifier = digits_features.DigitsClassifier()
        features = lambda x: classifier.apply({"params": weights}, x)[0]  # noqa: E731
        return lambda x, y: jnp.sum(jnp.square(features(x) - features(y)), axis=-1)

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        x = batch["image"]
        posterior = self.encode(params, x)
        x_rec = self.decode(params, posterior.sample(rng))
        err = jnp.abs(x - x_rec) if self.reconstruction == "l1" else jnp.square(x - x_rec)
        rec = jnp.mean(jnp.sum(err, axis=(1, 2, 3)))
        kl = jnp.mean(posterior.kl())
        loss = rec + self.kl_weight * kl
        metrics = {"reconstruction": rec, "kl": kl,
                   "mse": jnp.mean(jnp.square(x - x_rec))}
        if self.perceptual_weight:
            perceptual = jnp.mean(self._perceptual_distance(aux["perceptual"])(x, x_rec))
            loss = loss + self.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        return loss, metrics

    def chains(self) -> dict:
        return {"prior": (self._prior, None)}

    def _prior(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """Decoded prior latents: D(temperature x_init), x_init ~ N(0, I) of `noise_shape`."""
        return self.decode(params, sampler.temperature * x_init), {}
