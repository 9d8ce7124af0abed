"""What the benchmark scripts share: the networks they time, the bf16 ceiling, the XLA cache,
the timing loop."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp

from configs.ddpm import cifar10 as ddpm_cifar10
from configs.edm import cifar10_uncond as edm_cifar10
from configs.flow import imagenet256_sit_xl2 as sit_xl2
from configs.score_sde import cifar10_ddpmpp_continuous as score_sde_cifar10
from diffusion_jax import builders, parallel
from diffusion_jax.methods.latent import LatentDiffusion

# name -> (config file, get_config, image channels): the CIFAR-10 networks of the three papers
# and SiT-XL/2 (the DiT-XL/2 backbone with learn_sigma) on 256x256 ImageNet latents (32x32x4)
NETWORKS = {
    "ddpm": ("configs/ddpm/cifar10.py", ddpm_cifar10.get_config, 3),  # U-Net, 35,746,307 params
    "score_sde_ddpmpp": ("configs/score_sde/cifar10_ddpmpp_continuous.py",
                         score_sde_cifar10.get_config, 3),  # DDPM++ cont., 61,804,419 params
    "edm_ddpmpp": ("configs/edm/cifar10_uncond.py", edm_cifar10.get_config, 3),  # 55.73M params
    "sit_xl2": ("configs/flow/imagenet256_sit_xl2.py", sit_xl2.get_config, 4),  # 674,834,720
}
# `--tiny` DiT: two blocks of width 64 (a smoke run of the same code, not a benchmark)
TINY_DIT = dict(preset="", depth=2, hidden_size=64, num_heads=2, patch_size=2)
DEFAULT_CACHE_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR", "~/.cache/diffusion_jax/xla")


def parse_networks(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {', '.join(unknown)}; valid: {', '.join(NETWORKS)}")
    return names


def network_config(network: str, dtype: str, image_size: int, tiny: bool = False):
    """The network's paper config with `model.dtype` = dtype (compute; params stay float32) and
    no learning-rate warm-up. `tiny`: 16 channels, multipliers (1, 2) ((2, 2) for EDM), one block
    per resolution, attention at image_size / 2 (the DiT: `TINY_DIT`) -- for CPU smoke runs
    only."""
    config = NETWORKS[network][1]()
    config.model.dtype = dtype
    config.optim.warmup_steps = 0
    if tiny and config.model.name == "dit":
        config.model.update(TINY_DIT)
    elif tiny:
        width = "ch" if config.model.name == "unet" else "nf"
        config.model.update({width: 16, "ch_mult": (2, 2) if network == "edm_ddpmpp" else (1, 2),
                             "num_res_blocks": 1, "attn_resolutions": (image_size // 2,)})
    return config


def channels(network: str) -> int:
    """Image channels of the network's data (3 for CIFAR-10, 4 for SD-VAE latents)."""
    return NETWORKS[network][2]


def build_method(config, image_size: int, num_channels: int = 3):
    """The config's method on image_size x image_size x num_channels images; a latent model's
    inner method (the backbone timed on latent-shaped inputs, without the VAE)."""
    method = builders.build_method(config)
    if isinstance(method, LatentDiffusion):
        method = method.inner
    return dataclasses.replace(method, image_shape=(image_size, image_size, num_channels))


def enable_compilation_cache(directory: str) -> None:
    """The persistent XLA compilation cache (as `config.compilation_cache_dir` in the launcher):
    a second launch loads its programs instead of compiling them. '' leaves it off."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def median_seconds(fn, steps: int, context=None) -> float:
    """Median seconds of `steps` calls of fn() after one warm-up call (which compiles a lazily
    jitted fn), each blocked until its result is ready. The timed calls run inside `context`
    when one is given (e.g. `jax.profiler.trace`)."""
    jax.block_until_ready(fn())
    times = []
    with context or contextlib.nullcontext():
        for _ in range(steps):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_batch(batch: int, image_size: int, mesh, steps_per_call: int = 1,
                 num_channels: int = 3):
    """A training batch of standard-normal images and zero labels, split over the mesh; with
    `steps_per_call` k > 1, a stack of k such batches (the input of `jit_train_step(...,
    steps_per_call=k)`)."""
    stack = (steps_per_call,) if steps_per_call > 1 else ()
    image = jax.random.normal(jax.random.PRNGKey(0),
                              stack + (batch, image_size, image_size, num_channels))
    return jax.device_put({"image": image, "label": jnp.zeros(stack + (batch,), jnp.int32)},
                          parallel.batch_sharded(mesh, len(stack)))


def matmul_ceiling(n: int) -> float:
    """FLOP/s of a bf16 n^3 matrix product (the practical peak of this device)."""
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / median_seconds(lambda: f(a, a), 10)


def device_line() -> str:
    return f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}"
