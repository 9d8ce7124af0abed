"""Weight files of the frozen networks (feature networks, LPIPS): flat `.npz` files whose keys are
'/'-joined variable paths ('params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/.../mean'),
float32 arrays."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np


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
