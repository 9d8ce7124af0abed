"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1) on the
dense and 1x1-convolution projections of any network of this package (the attention q/k/v/out
projections, the U-Net's and NCSN++'s 1x1 shortcuts and embedding projections, DiT's MLPs).

A projection h = W x becomes h = W x + (alpha / r) B A x, with the base weight W frozen and the
adapter A (d_in x r) ~ N(0, 1/r^2) (peft's "gaussian" initialisation, std 1/r), B (r x d_out) = 0,
so that a network with fresh adapters is its base network. The adapters are parameters beside
the kernel they adapt (`<module>/lora_A`, `<module>/lora_B`), saved with the run, and enter the
network as the merged kernel W + (alpha / r) A B (Flax kernels are d_in x d_out): the same
product, one matrix multiply per projection, at in x out x r extra FLOPs per call.
"""
from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError

# the '/'-joined parameter paths of the adapters (what a LoRA run trains)
LORA_PARAMS = r"(^|/)lora_[AB]$"


def adaptable(kernel_shape) -> bool:
    """Whether a kernel is a projection LoRA adapts: dense (d_in, d_out) or 1x1 convolution
    (1, 1, d_in, d_out)."""
    return len(kernel_shape) == 2 or (len(kernel_shape) == 4 and tuple(kernel_shape[:2]) == (1, 1))


def target_modules(params, targets: str) -> list[tuple]:
    """The module paths (key tuples) of the adaptable kernels of `params` whose '/'-joined path
    `targets` (a regular expression, `re.search`; "" = all) matches."""
    pattern = re.compile(targets)
    return [k[:-1] for k, v in flax.traverse_util.flatten_dict(params).items()
            if k[-1] == "kernel" and adaptable(jnp.shape(v)) and pattern.search("/".join(k[:-1]))]


def add_adapters(params, rng: jax.Array, rank: int, targets: str = ""):
    """`params` with adapters `lora_A` ~ N(0, 1/rank^2) (d_in, rank) and `lora_B` = 0
    (rank, d_out) beside every kernel of `target_modules(params, targets)`."""
    flat = flax.traverse_util.flatten_dict(params)
    for i, key in enumerate(target_modules(params, targets)):
        kernel = flat[key + ("kernel",)]
        d_in, d_out = kernel.shape[-2:]
        flat[key + ("lora_A",)] = jax.random.normal(jax.random.fold_in(rng, i), (d_in, rank),
                                                    jnp.float32) / rank
        flat[key + ("lora_B",)] = jnp.zeros((rank, d_out), jnp.float32)
    return flax.traverse_util.unflatten_dict(flat)


def merge_lora(params, scale: float):
    """The parameters with every adapter merged into its kernel, W + scale A B (scale =
    alpha / r), and the adapters removed: the base network's tree, which computes what the
    adapted network does (a tree without adapters is returned unchanged)."""
    flat = flax.traverse_util.flatten_dict(params)
    merged = {k: v for k, v in flat.items() if k[-1] not in ("lora_A", "lora_B")}
    for key in flat:
        if key[-1] == "lora_A":
            module = key[:-1]
            kernel = flat[module + ("kernel",)]
            delta = scale * flat[key] @ flat[module + ("lora_B",)]
            merged[module + ("kernel",)] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(merged)


@dataclasses.dataclass(frozen=True)
class LoRA:
    """`network` (a Flax module) with LoRA adapters of rank `rank` and scale `alpha / rank` on
    the projections `targets` matches, called like the module: `init(rng, *inputs)` gives the
    base network's variables (the same as `network.init(rng, ...)`) plus the adapters,
    `apply(variables, *inputs, **options)` the adapted network (or the base network, for a
    merged tree)."""

    network: nn.Module
    rank: int
    alpha: float
    targets: str = ""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def init(self, rng: jax.Array, *args, **kwargs):
        variables = self.network.init(rng, *args, **kwargs)
        if not target_modules(variables["params"], self.targets):
            raise ConfigError(f"model.lora_targets {self.targets!r} matches no dense or 1x1 "
                             f"projection of the network")
        return {**variables, "params": add_adapters(variables["params"],
                                                    jax.random.fold_in(rng, 0x104A), self.rank,
                                                    self.targets)}

    def apply(self, variables, *args, **kwargs):
        return self.network.apply({**variables, "params": merge_lora(variables["params"],
                                                                     self.scale)},
                                  *args, **kwargs)
