"""How a diffusion method holds its network: a Flax module `model` called as
F(x, noise conditioning, cond) with float32 parameters, dropout active only in training."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax import guidance


def init_network(model, rng: jax.Array, image_shape, noise_conditioning: jax.Array,
                 num_classes: int = 0, caption_length: int = 0):
    """The parameters of `model` for one (1, *image_shape) image at `noise_conditioning` (1,),
    with an example label or caption when the model is conditional (`guidance.example_condition`)."""
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    cond = guidance.example_condition(num_classes, caption_length)
    return jax.jit(model.init)(rng, x, noise_conditioning, cond)["params"]


def apply_network(model, params, x, noise_conditioning, cond=None, *, train: bool = False,
                  rng=None):
    """F(x, noise_conditioning[, cond]); `rng` draws the dropout masks when `train`."""
    rngs = {"dropout": rng} if train else None
    return model.apply({"params": params}, x, noise_conditioning, cond, train=train, rngs=rngs)
