"""Config files (`path.py[:arg]` with `get_config(arg)`) and dotted-key overrides of them.

Used by `launch.py` (its `--config.a.b=value` flags) and by experiment sweeps, which check every
override key of every member against its base config before anything runs. Imports no JAX, so a
bad key is reported in a fraction of a second.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys

from ml_collections import config_dict

from diffusion_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def load_config(spec: str) -> config_dict.ConfigDict:
    """The ConfigDict of `path.py[:arg]`: `get_config(arg)`, or `get_config()` without `:arg`.
    A relative path that does not exist from the working directory is read from the repository
    root, whose `configs` package the config files import."""
    path, _, arg = spec.partition(":")
    if not os.path.isabs(path) and not os.path.isfile(path):
        path = os.path.join(ROOT, path)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {spec.partition(':')[0]!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_launch_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # a config file's own error, e.g. an unknown argument
        raise ConfigError(f"config {spec!r}: {e}") from None


def check_key(config: config_dict.ConfigDict, key: str) -> None:
    """Raise ConfigError unless the dotted `key` names an existing field; the message says
    which part is missing and lists its siblings."""
    node, path = config, []
    for part in key.split("."):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            where = ".".join(path) or "the config root"
            valid = sorted(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
            raise ConfigError(f"unknown config key {key!r}: {where} has no {part!r}; valid: "
                              f"{', '.join(valid)}")
        node, path = node[part], path + [part]


def apply_overrides(config: config_dict.ConfigDict, overrides: dict) -> config_dict.ConfigDict:
    """A copy of `config` with each dotted key set to its value (type-checked by ConfigDict:
    an int may become a float, nothing else changes type)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        check_key(config, key)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if isinstance(value, list) and isinstance(node[leaf], tuple):  # a tuple read from JSON
            value = tuple(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"override {key}={value!r}: {e}") from None
    return config
