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


def create_train_state(params, optimizer, rng: jax.Array, aux=None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params), rng=rng, aux={} if aux is None else aux)
