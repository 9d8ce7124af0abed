"""Experiments: sweeps of config overrides run as `launch.py` subprocesses, their live status,
and their results tables and plots (docs/ARCHITECTURE.md, "Experiment files").

- `spec.py`: `Experiment` (base config, overrides, grid / zipped axes, seeds, modes, metrics,
  published numbers), its members and their reversible directory names;
- `runner.py`: the directory layout, the commands, parallel workers, skip and resume;
- `status.py`: `status.json` and the live table;
- `report.py`: `results.md`, `results.csv`, `plots/`.
"""
from __future__ import annotations

import functools
import importlib.util
import os

from diffusion_jax.config_files import ROOT
from diffusion_jax.errors import ConfigError
from diffusion_jax.sweep.spec import Experiment, member_name, parse_name

__all__ = ["Experiment", "load_experiment", "member_name", "parse_name"]


def load_experiment(spec: str):
    """The experiment of `experiments/NAME.py[:arg]`: the `Experiment` its
    `get_experiment(arg)` returns, or, for a scripted study, its `run` with `arg` bound (call
    it with the work directory). A missing file, a file with neither function, or a
    `get_experiment` that raises (e.g. an unknown argument) is a ConfigError."""
    path, _, arg = spec.partition(":")
    if not os.path.isabs(path) and not os.path.isfile(path):
        path = os.path.join(ROOT, path)
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file {spec.partition(':')[0]!r} does not exist")
    name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"experiment file {path!r}: {type(e).__name__}: {e}") from None
    if hasattr(module, "get_experiment"):
        try:
            experiment = module.get_experiment(arg or None)
        except Exception as e:
            raise ConfigError(f"experiment {spec!r}: {e}") from None
        if not isinstance(experiment, Experiment):
            raise ConfigError(f"experiment {spec!r}: get_experiment returned "
                              f"{type(experiment).__name__}, not an Experiment")
        return experiment
    if hasattr(module, "run"):
        return functools.partial(module.run, arg=arg or None)
    raise ConfigError(f"experiment file {path!r} defines neither get_experiment(arg) nor "
                      f"run(workdir, arg)")
