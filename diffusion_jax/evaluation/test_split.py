"""Test-split evaluations of methods that have more than samples: an autoencoder's
reconstruction error and the bits/dim of a method with a likelihood (or a bound on it)."""
from __future__ import annotations

import inspect

import jax
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.data.datasets import open_dataset


def reconstruction_error(config, mesh, method, params) -> dict:
    """Mean squared error per pixel of an autoencoder's reconstructions of the first
    `eval.num_reference` test images (in [-1, 1]), batches split over the mesh."""
    _, source, decode = open_dataset(config.data.dataset, "test",
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download)
    n = min(config.eval.num_reference, len(source))
    ndev, nproc = mesh.devices.size, jax.process_count()
    batch = -(-min(500, n) // ndev) * ndev
    shard = parallel.batch_sharded(mesh)
    fn = jax.jit(lambda p, x: jax.numpy.mean(jax.numpy.square(method.reconstruct(p, x) - x),
                                             axis=(1, 2, 3)), in_shardings=(None, shard),
                 out_shardings=shard)
    errors = []
    for b in range(-(-n // batch)):
        images = np.stack([decode(source[min(b * batch + i, n - 1)])[0] for i in range(batch)])
        per_process = batch // nproc
        local = images[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
        errors.append(parallel.to_host(fn(params, parallel.global_batch(local, mesh)))[
            :n - b * batch])
    return {"reconstruction_mse": float(np.concatenate(errors).mean())}


def bits_per_dim_options(method, config) -> dict:
    """The keywords of `method.bits_per_dim` among the likelihood settings: `eval.bpd_divergence`,
    `bpd_rtol`, `bpd_atol` (score SDEs' ODE), `eval.bpd_timesteps` and the model's
    `sampling.variance`, `clip_x0` (the DDPM bound)."""
    e, s = config.eval, config.sampling
    settings = dict(divergence=e.bpd_divergence, rtol=e.bpd_rtol, atol=e.bpd_atol,
                    timesteps=e.bpd_timesteps, variance=s.get("variance"),
                    clip_x0=s.get("clip_x0"))
    accepted = inspect.signature(method.bits_per_dim).parameters
    return {k: v for k, v in settings.items() if k in accepted}


def bits_per_dim(config, mesh, method, params) -> dict:
    """Test-set bits/dim of a method with a likelihood (`method.bits_per_dim`): the first
    `eval.bpd_num_examples` test images as they are stored, quantised (score SDEs dequantise
    them themselves, the DDPM bound's decoder is discrete), in batches of `eval.bpd_batch_size`
    sharded over the mesh (each process feeds its slice of a batch), with the options of
    `bits_per_dim_options`."""
    e = config.eval
    _, source, decode = open_dataset(config.data.dataset, "test",
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download)
    n = min(e.bpd_num_examples, len(source))
    ndev, nproc = mesh.devices.size, jax.process_count()
    batch = -(-min(e.bpd_batch_size, n) // ndev) * ndev
    options = bits_per_dim_options(method, config)
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(lambda p, rng, x: method.bits_per_dim(p, rng, x, **options),
                 in_shardings=(None, rep, shard), out_shardings=(shard, rep))
    rng = jax.random.PRNGKey(config.sampling.seed + 2000)
    bpd, nfe = [], []
    for b in range(-(-n // batch)):
        index = [min(b * batch + i, n - 1) for i in range(batch)]  # the last batch padded
        images = np.stack([decode(source[i])[0] for i in index])
        per_process = batch // nproc
        local = images[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
        bits, evaluations = fn(params, jax.random.fold_in(rng, b),
                               parallel.global_batch(local, mesh))
        bpd.append(parallel.to_host(bits)[:n - b * batch])
        nfe.append(float(evaluations))
    bpd = np.concatenate(bpd)
    return {"bits_per_dim": float(bpd.mean()),
            "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if n > 1 else 0.0,
            "bits_per_dim_examples": n, "bits_per_dim_nfe": float(np.mean(nfe))}


