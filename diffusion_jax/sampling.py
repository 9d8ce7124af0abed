"""Generating images with any method's sampler, batched and sharded over every device."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import images as image_io
from diffusion_jax import parallel
from diffusion_jax.errors import ConfigError
from diffusion_jax.progress import Progress
from diffusion_jax.samplers.sampler import Sampler


def make_sample_fn(method, mesh, sampler: Sampler, batch_size: int):
    """jit(params, aux, rng, label_offset, conditions=None) -> (a batch of images split over
    the mesh's data axis, {statistic: scalar}) by `method.sample` with `sampler`.

    The statistics are the sampler's, e.g. {"nfe": network evaluations} (an adaptive ODE
    solver's count depends on the batch). The initial noise (of `method.noise_shape`) and the
    class labels ((offset + i) mod num_classes) are made inside the program, laid out over the
    devices, so no host array is fed to it (multi-host safe). `conditions`, when given, is the
    batch's condition (e.g. caption tokens (B, L)), the same host array on every process. `aux`
    is the train state's aux.
    """
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    shape = (batch_size,) + tuple(method.noise_shape)

    def sample(params, aux, rng, label_offset, conditions=None):
        noise_rng, sample_rng = jax.random.split(rng)
        x_init = jax.lax.with_sharding_constraint(jax.random.normal(noise_rng, shape), shard)
        cond = None
        if conditions is not None:
            cond = jax.lax.with_sharding_constraint(conditions, shard)
        elif method.num_classes:
            cond = (jnp.arange(batch_size) + label_offset) % method.num_classes
            cond = jax.lax.with_sharding_constraint(cond.astype(jnp.int32), shard)
        return method.sample(params, sample_rng, x_init, cond, aux=aux, sampler=sampler)

    # params keep their layout (replicated, or FSDP-sharded: XLA gathers them where used)
    return jax.jit(sample, in_shardings=(None, None, rep, rep, rep), out_shardings=(shard, rep))


def class_labels(num: int, num_classes: int, offset: int = 0):
    """Labels offset, offset + 1, ... mod num_classes (None when unconditional)."""
    if not num_classes:
        return None
    return ((np.arange(num) + offset) % num_classes).astype(np.int32)


def generate(method, params, rng, num: int, batch_size: int, mesh, sampler: Sampler,
             start_batch: int = 0, on_batch=None, aux=None, conditions=None, sample_fn=None,
             desc: str = "") -> np.ndarray:
    """`num` images in batches of `batch_size` (a multiple of the device count).

    Batch b uses fold_in(rng, b) and class labels continuing from b * batch_size, or rows
    b * batch_size, ... of `conditions` (a host array (num, ...), e.g. caption tokens), so a
    resumed generation (`start_batch`) draws the same images. `on_batch(b, images, labels,
    statistics)` is called after each batch (to save it); the concatenated images of the
    batches run are returned. `aux`: the train state's aux, for a method that keeps aux state.
    `sample_fn`: a `make_sample_fn` program to reuse (compiled once, e.g. for grids at every
    checkpoint). `desc` names the phase for the progress display (none when empty).
    """
    ndev = mesh.devices.size
    if batch_size % ndev:
        raise ConfigError(f"sampling batch size {batch_size} is not divisible by the "
                          f"{ndev} devices")
    fn = sample_fn or make_sample_fn(method, mesh, sampler, batch_size)
    num_batches = -(-num // batch_size)
    progress = Progress(num_batches, desc, "batch", bool(desc) and jax.process_index() == 0,
                        initial=start_batch)
    if start_batch < num_batches:
        progress.note(f"{num} images in {num_batches} batches of {batch_size} with "
                      f"{sampler.method}; the first batch compiles the sampler")
    out = []
    for b in range(start_batch, num_batches):
        batch_conditions = None
        if conditions is not None:
            rows = np.minimum(np.arange(b * batch_size, (b + 1) * batch_size), num - 1)
            batch_conditions = np.asarray(conditions)[rows]  # the last batch padded
        imgs, stats = fn(params, {} if aux is None else aux, jax.random.fold_in(rng, b),
                         b * batch_size, batch_conditions)
        imgs = parallel.to_host(imgs)[:min(batch_size, num - b * batch_size)]
        if on_batch is not None:
            labels = (class_labels(batch_size, method.num_classes, b * batch_size)
                      if batch_conditions is None else batch_conditions)
            on_batch(b, imgs, None if labels is None else labels[:len(imgs)],
                     {k: float(v) for k, v in stats.items()})
        out.append(imgs)
        progress.update(1, line=True)
    progress.close()
    if not out:
        return np.zeros((0,) + tuple(method.image_shape), np.float32)
    return np.concatenate(out)


def save_samples(directory: str, name: str, images: np.ndarray, labels=None,
                 captions=None, png_dir: str = "") -> str:
    """`name.png` (grid, small images enlarged) and `name.npz` in `directory`: `images` clipped to
    the data range [-1, 1] (what the grid and the metrics see), `raw_images` as the sampler
    returned them, the labels, and the captions of a text-conditional model. With `png_dir`, one
    PNG per image there too (`000000.png`, ...: the input of external FID tools)."""
    os.makedirs(directory, exist_ok=True)
    upscale = max(1, 64 // images.shape[1])
    png = os.path.join(directory, f"{name}.png")
    image_io.save_grid(png, images[:256], upscale=upscale)
    arrays = {"images": np.clip(images, -1.0, 1.0), "raw_images": images}
    if labels is not None:
        arrays["labels"] = labels
    if captions is not None:
        arrays["captions"] = np.asarray(captions)
    np.savez_compressed(os.path.join(directory, f"{name}.npz"), **arrays)
    if png_dir:
        image_io.save_each(png_dir, images)
    return png


def edit(method, params, rng, x: np.ndarray, mask: np.ndarray, batch_size: int, mesh,
         sampler: Sampler, *, task: str, strength: float, aux=None,
         conditions=None) -> np.ndarray:
    """`method.edit` of host images `x` with `mask` (True = known) in batches of `batch_size`
    (a multiple of the device count; the last batch padded by repeating its last image).

    Every process passes the same arrays; batch b uses fold_in(rng, b). `conditions` (a host
    array (N, ...), e.g. caption tokens) are the images' conditions; without them a
    class-conditional model edits with the null label (the inputs' classes are unknown).
    """
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    def run(params, aux, rng, x, mask, cond):
        x, mask = (jax.lax.with_sharding_constraint(a, shard) for a in (x, mask))
        if cond is not None:
            cond = jax.lax.with_sharding_constraint(cond, shard)
        elif method.num_classes:
            cond = jnp.full((x.shape[0],), method.num_classes, jnp.int32)
        return method.edit(params, rng, x, mask, cond, aux=aux, sampler=sampler, task=task,
                           strength=strength)

    fn = jax.jit(run, in_shardings=(None, None, rep, rep, rep, rep), out_shardings=shard)
    pad_rows = lambda a, pad: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])  # noqa: E731
    out = []
    for b in range(-(-len(x) // batch_size)):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        xb, mb = x[rows], mask[rows]
        pad = batch_size - len(xb)
        cb = None if conditions is None else pad_rows(np.asarray(conditions)[rows], pad)
        out.append(parallel.to_host(fn(params, {} if aux is None else aux,
                                       jax.random.fold_in(rng, b), pad_rows(xb, pad),
                                       pad_rows(mb, pad), cb))[:len(xb)])
    return np.concatenate(out)
