"""Reflow (Liu et al. 2023, Sec. 2.3 and Alg. 1): the coupling a trained flow's ODE defines,
and the straightness that reflow improves.

A k-rectified flow maps noise eps to a sample x = ODE(eps); the (k + 1)-rectified flow is the
same flow-matching objective on the fixed pairs (x, eps) (`methods.flow.Flow.coupled`), whose
trajectories are straighter, so fewer steps suffice. The pairs are written like a latent cache
(`data.cache`: resumable shards, each process its own): pair i is drawn from noise
fold_in(split(key(seed))[0], i) with label i mod num_classes, so a resumed or re-sharded pass writes the
same pairs. The batches are sharded over the devices of one process (several processes would
each need their own shards in lockstep: not done, a ConfigError). Straightness (Liu et al., Eq. 6): S = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt
along the ODE's trajectories, here on an Euler grid and averaged over dimensions.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.data import cache as data_cache
from diffusion_jax.errors import ConfigError
from diffusion_jax.samplers.sampler import Sampler


def pair_noise(key: jax.Array, indices: jax.Array, shape: tuple) -> jax.Array:
    """The noise of pairs `indices` (B,): normal(fold_in(key, i), shape) each."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(indices)


def make_pair_fn(method, mesh, sampler: Sampler, batch_size: int) -> Callable:
    """jit(params, aux, key, indices (batch_size,) int32) -> pairs (B, H, W, 2 C): each pair's
    sample by `method.sample` with `sampler` from its noise, then the noise; the batch laid out
    over the mesh's data axis."""
    shard = parallel.batch_sharded(mesh)
    shape = tuple(method.noise_shape)

    def pairs(params, aux, key, indices):
        noise_key, sample_key = jax.random.split(key)
        noise = jax.lax.with_sharding_constraint(pair_noise(noise_key, indices, shape), shard)
        cond = None
        if method.num_classes:
            cond = jax.lax.with_sharding_constraint(indices % method.num_classes, shard)
        images, _ = method.sample(params, sample_key, noise, cond, aux=aux, sampler=sampler)
        return jnp.concatenate([images, noise], axis=-1)

    return jax.jit(pairs)


class _Indices:
    """The pair indices 0..n-1 as a source for `data.cache.write_cache`."""

    def __init__(self, n: int, num_classes: int):
        self.n, self.num_classes = n, num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return np.float32(i), np.int32(i % self.num_classes if self.num_classes else 0)


def write_pairs(path: str, method, params, aux, mesh, sampler: Sampler, *, num_pairs: int,
                seed: int = 0, batch_size: int = 256, shard_size: int = 4096,
                progress: Optional[Callable[[int], None]] = None) -> int:
    """The reflow coupling of `method` (a flow on pixels) at `params` in the cache directory
    `path`: `num_pairs` pairs [ODE sample, noise], generated in batches of `batch_size` (a
    multiple of the device count), shard by shard; returns the shards this process wrote."""
    if method.noise_shape != method.image_shape:
        raise ConfigError("reflow pairs a sample with its noise: a model on pixels (not latent) "
                          "is needed")
    if jax.process_count() > 1:
        raise ConfigError("--mode=reflow_pairs runs on one process (over all its devices)")
    if num_pairs < 1 or batch_size % mesh.devices.size:
        raise ConfigError(f"reflow.num_pairs must be >= 1 and sampling.batch_size a multiple "
                          f"of the {mesh.devices.size} devices; got {num_pairs}, {batch_size}")
    fn = make_pair_fn(method, mesh, sampler, batch_size)
    key = jax.random.key(seed)

    def encode(indices: np.ndarray) -> np.ndarray:
        out = []
        for lo in range(0, len(indices), batch_size):
            chunk = indices[lo:lo + batch_size].astype(np.int32)
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
            out.append(parallel.to_host(fn(params, aux, key, padded))[:len(chunk)])
        return np.concatenate(out)

    h, w, c = method.image_shape
    return data_cache.write_cache(
        path, encode, (h, w, 2 * c), _Indices(num_pairs, method.num_classes), lambda ex: ex,
        shard_size=shard_size, encoder=f"reflow pairs, seed {seed}, sampler {sampler.method} "
        f"{sampler.num_steps} steps", progress=progress)


def straightness(velocity: Callable, x_noise: jax.Array, num_steps: int = 64,
                 cond=None) -> jax.Array:
    """S of the flow dZ/dt = v(Z, t) from Z = x_noise at t = 1 to t = 0 (our time: t = 1 noise),
    on `num_steps` Euler steps: the mean over steps and examples of ||v_k - mean_j v_j||^2 /
    dimensions, (Z_1 - Z_0) being the mean velocity of the discretised path."""
    ts = jnp.linspace(1.0, 0.0, num_steps + 1)

    def step(x, k):
        t = jnp.full((x.shape[0],), ts[k])
        v = velocity(x, t) if cond is None else velocity(x, t, cond)
        return x + (ts[k + 1] - ts[k]) * v, v

    _, vs = jax.lax.scan(step, x_noise, jnp.arange(num_steps))
    return jnp.mean((vs - vs.mean(axis=0)) ** 2)
