"""Devices, meshes and shardings: data parallelism over every device of every host.

Training and sampling are `jax.jit` programs over a `Mesh` whose `data` axis spans all
devices: parameters are replicated, the batch is split along its first dimension. On several
hosts each process feeds only its own slice of the global batch
(`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Start `jax.distributed` when asked explicitly or when the environment is multi-host.

    Explicit arguments win; otherwise JAX's own detection (Cloud TPU, SLURM, Open MPI) runs when
    `JAX_COORDINATOR_ADDRESS` or a SLURM/TPU multi-host environment is present.
    """
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named `data` over the given (default: all) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_arrays, mesh: Mesh):
    """Assemble each process's local batch slices into global arrays sharded over `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a),
                        local_arrays)


def to_host(x) -> np.ndarray:
    """Gather a (possibly multi-host sharded) array to a numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
