"""optax optimisers from the `optim` config section: warmup or EDM2's inverse square root
decay, global-norm clipping, Adam family, and freezing (only the parameters whose path matches
`training.trainable` are updated)."""
from __future__ import annotations

import re

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.errors import ConfigError, choose

OPTIMIZERS = {
    "adam": lambda lr, c: optax.adam(lr, b1=c.beta1, b2=c.beta2, eps=c.eps),
    "adamw": lambda lr, c: optax.adamw(lr, b1=c.beta1, b2=c.beta2, eps=c.eps,
                                       weight_decay=c.weight_decay),
    "radam": lambda lr, c: optax.radam(lr, b1=c.beta1, b2=c.beta2, eps=c.eps),
}


SCHEDULES = ("constant", "inverse_sqrt")


def inverse_sqrt_schedule(ref_lr: float, ref_batches: float, rampup_images: float,
                          batch_size: int) -> optax.Schedule:
    """EDM2's inverse-square-root learning-rate decay (Karras et al. 2024, Sec. 2; NVlabs/edm2
    `training_loop.learning_rate_schedule`) at step k, t = k batch_size images seen before it:
    ref_lr / sqrt(max(t / (ref_batches batch_size), 1)) min(t / rampup_images, 1), each factor
    off when its key is 0. Step 0 has lr 0, as in NVlabs' loop."""
    def schedule(count):
        t = count * float(batch_size)
        lr = ref_lr
        if ref_batches > 0:
            lr = lr * jax.lax.rsqrt(jnp.maximum(t / (ref_batches * batch_size), 1.0))
        if rampup_images > 0:
            lr = lr * jnp.minimum(t / rampup_images, 1.0)
        return lr
    return schedule


def learning_rate_schedule(optim, batch_size: int = 0) -> optax.Schedule:
    """`optim.schedule` (absent: 'constant'): 'constant' is a linear warmup from 0 to `lr` over
    `warmup_steps`, then constant (Ho et al. 2020); 'inverse_sqrt' is `inverse_sqrt_schedule`
    of `lr`, `ref_batches` and `rampup_images` for the global `batch_size`, which it needs."""
    name = optim.get("schedule", "constant")
    choose("learning-rate schedule (optim.schedule)", name, SCHEDULES)
    if name == "inverse_sqrt":
        if batch_size <= 0:
            raise ConfigError("optim.schedule='inverse_sqrt' counts training images: it needs "
                              "the global batch size")
        return inverse_sqrt_schedule(optim.lr, optim.ref_batches, optim.rampup_images,
                                     batch_size)
    if optim.warmup_steps > 0:
        return optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
    return optax.constant_schedule(optim.lr)


def parameter_paths(params) -> list[str]:
    """The '/'-joined paths of the leaves of a parameter tree, e.g. 'down_0_0/conv1/kernel'."""
    return ["/".join(map(str, k)) for k in flax.traverse_util.flatten_dict(params)]


def trainable_labels(params, trainable: str):
    """The tree of `params` with 'trainable' at the leaves whose path `trainable` matches
    (`re.search`) and 'frozen' elsewhere; ConfigError when it matches no parameter."""
    flat = flax.traverse_util.flatten_dict(params)
    pattern = re.compile(trainable)
    labels = {k: "trainable" if pattern.search("/".join(map(str, k))) else "frozen"
              for k in flat}
    if "trainable" not in labels.values():
        raise ConfigError(f"training.trainable {trainable!r} matches no parameter path (e.g. "
                          f"{', '.join(parameter_paths(params)[:3])})")
    return flax.traverse_util.unflatten_dict(labels)


def make_optimizer(optim, trainable: str = "", batch_size: int = 0
                   ) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (when > 0) followed by the named optimiser on
    `learning_rate_schedule(optim, batch_size)`. With
    `trainable` (a regular expression over parameter paths) only the matching parameters are
    updated, their gradients alone clipped: `optax.multi_transform` with `optax.set_to_zero()`
    for the rest, which keep no optimizer state."""
    choose("optimizer (optim.name)", optim.name, OPTIMIZERS)
    steps = []
    if optim.grad_clip > 0:
        steps.append(optax.clip_by_global_norm(optim.grad_clip))
    steps.append(OPTIMIZERS[optim.name](learning_rate_schedule(optim, batch_size), optim))
    if not trainable:
        return optax.chain(*steps)
    return optax.multi_transform({"trainable": optax.chain(*steps), "frozen": optax.set_to_zero()},
                                 lambda params: trainable_labels(params, trainable))
