"""optax optimisers from the `optim` config section: warmup, global-norm clipping, Adam family,
and freezing (only the parameters whose path matches `training.trainable` are updated)."""
from __future__ import annotations

import re

import flax.traverse_util
import optax

from diffusion_jax.errors import ConfigError, choose

OPTIMIZERS = {
    "adam": lambda lr, c: optax.adam(lr, b1=c.beta1, b2=c.beta2, eps=c.eps),
    "adamw": lambda lr, c: optax.adamw(lr, b1=c.beta1, b2=c.beta2, eps=c.eps,
                                       weight_decay=c.weight_decay),
    "radam": lambda lr, c: optax.radam(lr, b1=c.beta1, b2=c.beta2, eps=c.eps),
}


def learning_rate_schedule(optim) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then constant (Ho et al. 2020)."""
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


def make_optimizer(optim, trainable: str = "") -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (when > 0) followed by the named optimiser. With
    `trainable` (a regular expression over parameter paths) only the matching parameters are
    updated, their gradients alone clipped: `optax.multi_transform` with `optax.set_to_zero()`
    for the rest, which keep no optimizer state."""
    choose("optimizer (optim.name)", optim.name, OPTIMIZERS)
    steps = []
    if optim.grad_clip > 0:
        steps.append(optax.clip_by_global_norm(optim.grad_clip))
    steps.append(OPTIMIZERS[optim.name](learning_rate_schedule(optim), optim))
    if not trainable:
        return optax.chain(*steps)
    return optax.multi_transform({"trainable": optax.chain(*steps), "frozen": optax.set_to_zero()},
                                 lambda params: trainable_labels(params, trainable))
