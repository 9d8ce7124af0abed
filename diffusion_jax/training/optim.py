"""optax optimisers from the `optim` config section: warmup, global-norm clipping, Adam family."""
from __future__ import annotations

import optax

from diffusion_jax.errors import choose

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


def make_optimizer(optim) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (when > 0) followed by the named optimiser."""
    choose("optimizer (optim.name)", optim.name, OPTIMIZERS)
    steps = []
    if optim.grad_clip > 0:
        steps.append(optax.clip_by_global_norm(optim.grad_clip))
    steps.append(OPTIMIZERS[optim.name](learning_rate_schedule(optim), optim))
    return optax.chain(*steps)
