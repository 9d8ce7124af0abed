"""How a diffusion method holds its network: a Flax module `model` called as
F(x, noise conditioning, cond) with float32 parameters, dropout active only in training."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax import guidance
from diffusion_jax.methods.base import Method


class NetworkMethod(Method):
    """A method around one network `model` (a field of the method, like `image_shape`,
    `num_classes` and `caption_length`)."""

    def example_noise_input(self) -> jax.Array:
        """A (1,) noise conditioning to initialise the network with."""
        return jnp.zeros((1,))

    def init_params(self, rng: jax.Array):
        """The parameters of `model` for one (1, *image_shape) image, with an example label or
        caption when the model is conditional (`guidance.example_condition`)."""
        x = jnp.zeros((1,) + tuple(self.image_shape), jnp.float32)
        cond = guidance.example_condition(self.num_classes, self.caption_length)
        return jax.jit(self.model.init)(rng, x, self.example_noise_input(), cond)["params"]

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The raw network F(x, t[, cond]); `rng` draws the dropout masks when `train`."""
        rngs = {"dropout": rng} if train else None
        return self.model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)


def train_condition(method, batch: dict, rng: jax.Array):
    """The condition of a training batch: its labels (or caption tokens), each dropped to the null
    condition (`guidance.null_condition`: the null label, or the empty caption) with probability
    `method.label_dropout` (classifier-free guidance training); None when unconditional."""
    if not (method.num_classes or method.caption_length):
        return None
    return guidance.drop_labels(rng, batch["label"], method.label_dropout,
                                guidance.null_condition(method.num_classes, method.caption_length))
