"""The shared shape of a paper-table experiment: one row per published number, its CIFAR-10
config beside a CPU-sized digits config, run as zipped axes so each row is one member.

A paper file (`ddpm_cifar10.py`, `score_sde_cifar10.py`, `edm_cifar10.py`) lists its `Row`s and
calls `paper_experiment`. Without an argument it is the paper's setting on CIFAR-10 (pass the
data set and the FID Inception weights on the command line: `--config.data.data_dir=DIR
--config.eval.inception_weights=inception_fid.npz`); `:digits` (or `:quick`) runs the same rows
on the digits configs with a tiny network for a few steps, in a minute or two on a CPU, so that
tests exercise the whole pipeline. Its report puts the published CIFAR-10 number beside the
digits numbers and says that they are not comparable. A new paper table (e.g. consistency models on
CIFAR-10) is one more small file of rows.
"""
from __future__ import annotations

import dataclasses

from diffusion_jax.errors import ConfigError
from diffusion_jax.sweep import Experiment, member_name

# the CIFAR-10 metric names of --mode=eval and their digits counterparts (evaluation/metrics.py)
DIGITS_METRICS = {"fid": "digits_frechet_distance", "inception_score": "digits_classifier_score",
                  "kid": "digits_kid"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One published row: the paper's config, its digits analogue, the published number(s)
    (from ../shared/REFERENCE.md) and the row's own keys (same keys in every row)."""

    config: str
    digits: str
    published: str
    overrides: dict = dataclasses.field(default_factory=dict)


def paper_experiment(arg, rows: list[Row], *, name: str, description: str, metrics: tuple,
                     digits_overrides: dict, overrides: dict | None = None) -> Experiment:
    """The experiment of `rows` (arg None: CIFAR-10; `digits` / `quick`: the digits version)."""
    if arg not in (None, "", "digits", "quick"):
        raise ConfigError(f"unknown argument {arg!r} for experiments/{name}.py; valid: digits, "
                          f"quick")
    digits = arg in ("digits", "quick")
    keys = list(rows[0].overrides)
    if any(list(r.overrides) != keys for r in rows):
        raise ConfigError(f"every row of experiments/{name}.py must set the keys {keys}")
    zipped = {"config": [r.digits if digits else r.config for r in rows],
              **{k: [r.overrides[k] for r in rows] for k in keys}}
    published = {}
    for i, row in enumerate(rows):
        fragment = member_name({k: v[i] for k, v in zipped.items()})
        published[fragment] = f"CIFAR-10: {row.published}"
    if digits:
        metrics = tuple(DIGITS_METRICS.get(m, m) for m in metrics)
        description += (" Digits version: the rows on the 8x8 digits with a tiny network "
                        "trained for a few steps, a test of the pipeline, not a reproduction.")
    return Experiment(config=zipped["config"][0], zipped=zipped,
                      overrides=digits_overrides if digits else (overrides or {}),
                      modes=("train", "eval"), metrics=metrics, description=description,
                      published=published)
