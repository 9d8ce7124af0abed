"""Devices, meshes and shardings: data parallelism and fully-sharded data parallelism over
every device of every host.

Training and sampling are `jax.jit` programs over a two-axis `Mesh` (`data`, `fsdp`) that spans
all devices. The batch is split along its first dimension over both axes. Parameters, their EMA
and the optimizer state are replicated over `data` and, when the `fsdp` axis has more than one
device, split over it along their largest divisible dimension (ZeRO-3 / FSDP through GSPMD:
XLA inserts the all-gathers before use and the reduce-scatters of the gradients). On several
hosts each process feeds only its own slice of the global batch
(`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import collections
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


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


_barrier_counts = collections.Counter()  # a coordination-service barrier id is used once


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Every process waits here until all arrive, on jax.distributed's coordination service (not
    a device collective); nothing with one process. Processes that reach their first
    collective minutes apart (compilation, data loading, a latent cache's uneven shards) would
    otherwise time out the CPU backend's Gloo context, which waits a fixed 30 s. The n-th wait
    of a `name` is barrier `name#n` on every process (all call it in the same order)."""
    if jax.process_count() == 1:
        return
    import orbax.checkpoint as ocp

    _barrier_counts[name] += 1
    ocp.multihost.get_jax_distributed_client().wait_at_barrier(
        f"diffusion_jax:{name}#{_barrier_counts[name]}", timeout_in_ms=timeout_s * 1000)


def make_mesh(devices=None, data: int = -1, fsdp: int = 1) -> Mesh:
    """A (`data`, `fsdp`) mesh of data x fsdp devices (default: all); -1 = the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of mesh.data and mesh.fsdp may be -1")
    data = n // fsdp if data == -1 else data
    fsdp = n // data if fsdp == -1 else fsdp
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """The batch dimension split over every device of the mesh: the first dimension, or the one
    after `leading` unsplit axes (a stack of batches for several steps per call)."""
    return NamedSharding(mesh, P(*([None] * leading), tuple(mesh.axis_names)))


def fsdp_sharding(mesh: Mesh, shape: tuple) -> NamedSharding:
    """Split the largest dimension of `shape` divisible by the `fsdp` axis size over that axis
    (replicated over `data`); replicated when there is none or the axis has one device."""
    size = mesh.shape.get(FSDP_AXIS, 1)
    divisible = [d for d in range(len(shape)) if shape[d] % size == 0]
    if size == 1 or not divisible:
        return replicated(mesh)
    dim = max(divisible, key=lambda d: shape[d])
    return NamedSharding(mesh, P(*([None] * dim + [FSDP_AXIS])))


def state_shardings(mesh: Mesh, abstract_tree):
    """Shardings for a train-state pytree of ShapeDtypeStructs: `fsdp_sharding` for every array
    with at least one dimension (parameters, EMA, optimizer moments), replicated scalars."""
    return jax.tree.map(lambda s: fsdp_sharding(mesh, s.shape) if s.ndim else replicated(mesh),
                        abstract_tree)


def global_batch(local_arrays, mesh: Mesh, leading: int = 0):
    """Assemble each process's local batch slices into global arrays split over every device
    along the batch dimension (after `leading` unsplit axes, see `batch_sharded`)."""
    sharding = batch_sharded(mesh, leading)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a),
                        local_arrays)


def prefetch_to_device(items, mesh: Mesh, size: int = 2):
    """Yields (`global_batch(b, mesh, leading)`, *tag) for each (process-local batch b,
    leading, tag) of `items`, keeping `size` batches already on their way to the devices, so the
    host->device copy of the next batch overlaps the current step (transfers are asynchronous).
    The tag travels with its batch (the training loop passes the step count and the data
    position after it, for checkpoints)."""
    queue = collections.deque()
    for local, leading, tag in items:
        queue.append((global_batch(local, mesh, leading), *tag))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def to_host(x) -> np.ndarray:
    """Gather a (possibly multi-host sharded) array to a numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
