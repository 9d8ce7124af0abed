"""What the evaluation feature networks share: batched extraction (their weight files:
`diffusion_jax.weight_files`).

Extraction runs one jitted program on fixed-size batches (the last one zero-padded, so any
number of images compiles once); given a `Mesh`, each batch is split over its data axis and the
variables are replicated.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.parallel import DATA_AXIS, to_host


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value that every process holds in full."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def batched_feature_fn(apply: Callable, variables, batch_size: int, mesh: Mesh | None = None,
                       data_axis: str = DATA_AXIS
                       ) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """Returns `fn(images (N, ...)) -> tuple of numpy arrays (N, ...)` computing
    `apply(variables, batch)` batch by batch in one jitted program.

    With a `mesh`, `batch_size` must divide by the size of `data_axis`: each batch is placed
    with `NamedSharding(mesh, P(data_axis))` on its first dimension and the variables with
    `NamedSharding(mesh, P())` (replicated). On several hosts every process passes the same
    images and gets all the outputs back.
    """
    if mesh is None:
        program, put_batch = jax.jit(apply), jnp.asarray
    else:
        shards = mesh.shape[data_axis]
        if batch_size % shards:
            raise ValueError(f"batch_size {batch_size} must divide by the {shards} devices of "
                             f"mesh axis {data_axis!r}")
        batch_sharding = NamedSharding(mesh, P(data_axis))
        variables = jax.tree.map(lambda v: _global_array(np.asarray(v), NamedSharding(mesh, P())),
                                 variables)
        program = jax.jit(apply, out_shardings=batch_sharding)
        put_batch = lambda x: _global_array(x, batch_sharding)  # noqa: E731

    def fn(images: np.ndarray) -> tuple[np.ndarray, ...]:
        images = np.asarray(images, np.float32)
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            n = len(batch)
            if n < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:],
                                                        np.float32)])
            outputs.append([to_host(y)[:n] for y in program(variables, put_batch(batch))])
        if not outputs:
            shapes = jax.eval_shape(apply, variables,
                                    jax.ShapeDtypeStruct((batch_size,) + images.shape[1:],
                                                         jnp.float32))
            return tuple(np.zeros((0,) + s.shape[1:], s.dtype) for s in shapes)
        return tuple(np.concatenate(column) for column in zip(*outputs))

    return fn
