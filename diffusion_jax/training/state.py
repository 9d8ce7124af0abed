"""The training state: everything a step reads and a checkpoint must hold."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # float32 master weights
    ema_params: Any  # exponential moving average of params, used for sampling
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step k uses fold_in(rng, k)
    # state a method keeps besides its trained parameters ({} for most): a frozen teacher, a
    # target network, a frozen autoencoder (`method.init_aux`, docs/ARCHITECTURE.md)
    aux: Any
    # one power-function EMA of params per `ema.sigma_rels` (EDM2 post-hoc EMA,
    # `posthoc_ema.update_power_emas_at_step`); () when off, and then not in checkpoints
    power_emas: Any = ()


def create_train_state(params, optimizer, rng: jax.Array, aux=None,
                       num_power_emas: int = 0) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params), rng=rng, aux={} if aux is None else aux,
                      power_emas=tuple(jax.tree.map(jnp.copy, params)
                                       for _ in range(num_power_emas)))
