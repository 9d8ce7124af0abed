"""One process of a two-process training run on loopback (used by test_training.py).

usage: python distributed_worker.py PORT PROCESS_ID WORKDIR [FSDP]
FSDP: the size of the mesh's fsdp axis (default 1: data parallel; 2: the parameters, their EMA
and the optimizer state split over the two processes). Prints `checksum: X` of the final
parameters.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers import tiny_ddpm_config  # noqa: E402


def main(port: str, process_id: str, workdir: str, fsdp: str = "1"):
    from diffusion_jax import parallel
    from diffusion_jax.launcher import train

    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id))
    assert jax.process_count() == 2 and jax.device_count() == 2
    config = tiny_ddpm_config(num_steps=6, checkpoint_every=3)
    config.mesh.fsdp = int(fsdp)
    state, _ = train(config, workdir)
    leaves = [parallel.to_host(x) for x in jax.tree.leaves(state.params)]
    print(f"checksum: {sum(float(np.sum(np.abs(x), dtype=np.float64)) for x in leaves):.10e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
