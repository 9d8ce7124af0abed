"""Weight files of the frozen networks (feature networks, LPIPS): flat `.npz` files whose keys are
'/'-joined variable paths ('params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/.../mean'),
float32 arrays.

And the released PyTorch checkpoints' state dicts (`dict[str, np.ndarray]` in torch layout:
NCHW convolutions (out, in, kh, kw), Linear (out, in)) read into our parameter trees through a
list of renaming rules per network (`params_from_state_dict`), shared by the Stable Diffusion
importer and the CLIP score's CLIP model.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError

StateDict = dict[str, np.ndarray]


def flatten_variables(variables) -> dict[str, np.ndarray]:
    """Nested variables -> {'collection/module/.../leaf': float32 array}."""
    return {"/".join(str(k.key) for k in path): np.asarray(leaf, np.float32)
            for path, leaf in jax.tree.flatten_with_path(variables)[0]}


def unflatten_variables(flat) -> dict:
    """Inverse of `flatten_variables`."""
    variables: dict = {}
    for name, value in flat.items():
        node = variables
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = jnp.asarray(value)
    return variables


def save_variables(path, variables) -> None:
    with open(path, "wb") as f:
        np.savez(f, **flatten_variables(variables))


def load_variables(path, missing_message: str) -> dict:
    """Reads a weight file; a missing file raises FileNotFoundError with `missing_message`."""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"{missing_message} (looked for {path!r})")
    with np.load(path) as data:
        return unflatten_variables({name: data[name] for name in data.files})


def read_safetensors(path: str) -> StateDict:
    """The tensors of a `.safetensors` file as numpy, floating point upcast to float32."""
    from safetensors.numpy import load_file

    if not os.path.exists(path):
        raise ConfigError(f"weights file {path!r} does not exist")
    return {k: v.astype(np.float32, copy=False) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in load_file(path).items()}


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def torch_key(path: str, rules) -> str:
    """The diffusers / transformers key of our parameter `path` ("a/b/kernel")."""
    for pattern, replacement in rules:
        path = re.sub(pattern, replacement, path)
    return re.sub(r"/(kernel|scale|embedding)$", "/weight", path).replace("/", ".")


def _to_flax(path: str, value: np.ndarray, shape: tuple) -> np.ndarray:
    """A torch tensor in flax's layout for our leaf `path` of `shape` (the caller checks it)."""
    if not path.endswith("kernel"):
        return value
    if len(shape) == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
        return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
    if value.ndim == 4 and value.shape[2:] == (1, 1):  # a 1x1 convolution used as Linear
        value = value.reshape(value.shape[:2])
    return value.T if value.ndim == 2 else value  # Linear (out, in) -> (in, out)


def params_from_state_dict(state_dict: StateDict, shapes, rules, name: str,
                           ignore: Callable[[str], bool] = lambda key: False) -> dict:
    """Our parameter tree of the abstract `shapes` (`jax.eval_shape` of init's "params") filled
    from `state_dict` through `rules`; keys for which `ignore` holds may be left unused.
    ConfigError listing the missing, unexpected and misshapen tensors."""
    flat = flax.traverse_util.flatten_dict(shapes, sep="/")
    params, used, missing, misshapen = {}, set(), [], []
    for path, leaf in flat.items():
        key = torch_key(path, rules)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax(path, np.asarray(state_dict[key]), tuple(leaf.shape))
        if value.shape != tuple(leaf.shape):
            misshapen.append(f"{key} {tuple(state_dict[key].shape)} (need {tuple(leaf.shape)})")
            continue
        params[path] = np.asarray(value, np.float32)
    unexpected = sorted(k for k in set(state_dict) - used if not ignore(k))
    problems = [f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected),
                                     ("misshapen", misshapen)) if items]
    if problems:
        raise ConfigError(f"{name} weights do not match its config ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(misshapen)} misshapen); "
                          + "; ".join(problems))
    return flax.traverse_util.unflatten_dict(params, sep="/")


def abstract_params(module, *args) -> dict:
    """The parameter shapes of `module.init(rng, *args)`, computed without weights."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
