"""An experiment: base config, fixed overrides, axes, seeds, modes and metrics, expanded into
members, and the reversible names of their work directories.

Members are the cartesian product of the `grid` axes, times the `zipped` axes (varied in
lockstep), times `seeds` (values of `training.seed`). A member is the dict of its axis values;
a `config` axis (grid or zipped), if present, names different base config files.

A member's name lists its axis values in axis order, `key=value` joined by commas, e.g.
`config=digits_vp,sampling.method=heun,sampling.num_steps=18,training.seed=0`:
- bools, ints and floats as Python writes them (`True`, `18`, `0.001`, `1e-05`);
- strings as they are where that reads back as the same string (`heun`), else in single quotes
  (`'18'`), with every character outside `[A-Za-z0-9_.+-]` percent-encoded (`/` is `%2F`);
- tuples in parentheses with `;` between items (`(1;2)`, `(1;)`, `()`);
- a config file by its file name without `.py` (`configs/score_sde/digits_vp.py` -> `digits_vp`).
`parse_name` reads a name back to the same values; `Experiment.member_named` also maps a config
name back to its path. A member with no axes is named `base`.

Members whose axis values differ only in `sampling.*`, `eval.*` and `edit.*` keys share one
training run, named by its training axis values alone (`training_name`).
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import os
from urllib.parse import quote, unquote

from diffusion_jax.config_files import apply_overrides, load_config
from diffusion_jax.errors import ConfigError

MODES = ("train", "sample", "eval")
CONFIG_AXIS = "config"
SEED_KEY = "training.seed"
POST_TRAINING_PREFIXES = ("sampling.", "eval.", "edit.")  # keys that do not change training
BASE_NAME = "base"
_SAFE = "_.+-"  # besides letters and digits, the characters a name keeps as they are


def encode_value(value) -> str:
    """The filesystem-safe, reversible text of one axis value (see the module docstring)."""
    if isinstance(value, (tuple, list)):
        if any(isinstance(v, (tuple, list)) for v in value):
            raise ConfigError(f"nested tuples cannot be axis values: {value!r}")
        items = [encode_value(v) for v in value]
        return "(" + ";".join(items) + (";" if len(items) == 1 else "") + ")"
    if isinstance(value, str):
        text = quote(value, safe=_SAFE)
        return text if decode_value(text) == value else f"'{text}'"
    if isinstance(value, (bool, int, float)):
        return repr(value)
    raise ConfigError(f"axis values must be bools, numbers, strings or tuples, got {value!r}")


def decode_value(text: str):
    """The value `encode_value` wrote as `text`."""
    if text.startswith("(") and text.endswith(")"):
        items = text[1:-1].split(";") if text != "()" else []
        if items and items[-1] == "":  # the one-item tuple `(x;)`
            items = items[:-1]
        return tuple(decode_value(item) for item in items)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return unquote(text[1:-1])
    if text in ("inf", "-inf", "nan"):
        return float(text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return unquote(text)
    return value if isinstance(value, (bool, int, float)) else unquote(text)


def member_name(values: dict) -> str:
    """The directory name of the axis values `values` (a config path by its file name)."""
    pairs = [f"{key}={encode_value(config_label(v) if key == CONFIG_AXIS else v)}"
             for key, v in values.items()]
    return ",".join(pairs) or BASE_NAME


def parse_name(name: str) -> dict:
    """The axis values a member name encodes (`config` as the file name, without `.py`)."""
    if name == BASE_NAME:
        return {}
    values = {}
    for pair in name.split(","):
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{name!r} is not a member name: {pair!r} is not key=value")
        values[key] = decode_value(text)
    return values


def config_label(path: str) -> str:
    """A config file's name in member names: `configs/edm/digits_cond.py:arg` -> `digits_cond`
    (`digits_cond.arg` with an argument)."""
    file, _, arg = path.partition(":")
    stem = os.path.splitext(os.path.basename(file))[0]
    return f"{stem}.{arg}" if arg else stem


def is_training_key(key: str) -> bool:
    """Whether an override changes the training run (everything but sampling, eval, editing)."""
    return not key.startswith(POST_TRAINING_PREFIXES)


def training_name(values: dict) -> str:
    """The name of the training run of a member: its training axis values alone."""
    return member_name({k: v for k, v in values.items() if is_training_key(k)})


def _as_tuple(values) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A sweep of config overrides (see the module docstring).

    config: the base config file (`path.py[:arg]`), unless a `config` grid axis lists several.
    overrides: dotted keys set in every member (not part of member names).
    grid: key -> values; members take every combination. zipped: key -> values, all of one
    length, varied together. seeds: values of `training.seed`, the last axis.
    modes: `train`, then optionally `sample` and/or `eval`, in that order.
    metrics: the names collected into the results table (from the last training log line and
    `eval/step_<N>/metrics.json`); empty = all.
    published: member-name fragment (`sampling.method=ddim,sampling.num_steps=10`) -> the
    published number for every member whose name contains those pairs.
    """

    config: str
    overrides: dict = dataclasses.field(default_factory=dict)
    grid: dict = dataclasses.field(default_factory=dict)
    zipped: dict = dataclasses.field(default_factory=dict)
    seeds: tuple = ()
    modes: tuple = ("train",)
    metrics: tuple = ()
    description: str = ""
    published: dict = dataclasses.field(default_factory=dict)

    def axes(self) -> list[str]:
        """The keys that vary, in member-name order."""
        return list(self.grid) + list(self.zipped) + ([SEED_KEY] if self.seeds else [])

    def members(self) -> list[dict]:
        """Every member's axis values: grid (cartesian) x zipped (lockstep) x seeds."""
        lengths = {len(v) for v in self.zipped.values()}
        if len(lengths) > 1:
            raise ConfigError("zipped axes must have equal lengths, got "
                              + ", ".join(f"{k}: {len(v)}" for k, v in self.zipped.items()))
        zipped_rows = ([dict(zip(self.zipped, row)) for row in zip(*self.zipped.values())]
                       if self.zipped else [{}])
        grid_rows = [dict(zip(self.grid, row))
                     for row in itertools.product(*(_as_tuple(v) for v in self.grid.values()))]
        seeds = [{SEED_KEY: s} for s in self.seeds] or [{}]
        return [{**g, **z, **s} for g in grid_rows for z in zipped_rows for s in seeds]

    def config_files(self) -> list[str]:
        """The base config files of the members (the `config` axis, if any, else `config`)."""
        axis = self.grid.get(CONFIG_AXIS, self.zipped.get(CONFIG_AXIS, [self.config]))
        return list(dict.fromkeys(axis))

    def resolve(self, values: dict):
        """The ConfigDict a member runs with: its base config, the fixed overrides, its values."""
        values = dict(values)
        config = load_config(values.pop(CONFIG_AXIS, self.config))
        return apply_overrides(config, {**self.overrides, **values})

    def member_named(self, name: str) -> dict:
        """The axis values of the member called `name` (a config name mapped to its file)."""
        values = parse_name(name)
        if CONFIG_AXIS in values:
            by_label = {config_label(path): path for path in self.config_files()}
            if values[CONFIG_AXIS] not in by_label:
                raise ConfigError(f"no config named {values[CONFIG_AXIS]!r} in this experiment")
            values[CONFIG_AXIS] = by_label[values[CONFIG_AXIS]]
        return values

    def published_for(self, values: dict) -> str:
        """The published numbers of every `published` fragment that the member matches."""
        pairs = set(member_name(values).split(","))
        return "; ".join(text for fragment, text in self.published.items()
                         if set(fragment.split(",")) <= pairs)

    def validate(self) -> list[dict]:
        """Check the experiment and return its members; raises ConfigError on the first problem:
        bad modes, repeated keys, unequal zipped axes, and any member whose overrides name an
        unknown key or a value of the wrong type for its base config."""
        if (not self.modes or self.modes[0] != "train"
                or list(self.modes) != [m for m in MODES if m in self.modes]):
            raise ConfigError(f"modes must be 'train' then optionally 'sample', 'eval' in that "
                              f"order, got {tuple(self.modes)}")
        keys = list(self.overrides) + self.axes()
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ConfigError(f"keys set twice (overrides, grid, zipped, seeds): {repeated}")
        if CONFIG_AXIS in self.overrides:
            raise ConfigError("'config' is the base config field or an axis, not an override")
        labels = [config_label(path) for path in self.config_files()]
        if len(set(labels)) < len(labels):
            raise ConfigError(f"config files on the config axis need distinct names: {labels}")
        for key, values in {**self.grid, **self.zipped}.items():
            if not values:
                raise ConfigError(f"axis {key!r} has no values")
        members = self.members()
        names = [member_name(m) for m in members]
        if len(set(names)) < len(names):
            raise ConfigError("two members have the same axis values")
        for name in names:
            if len(name) > 255:
                raise ConfigError(f"member name longer than 255 characters: {name[:80]}...")
        resolved = {}
        for values in members:  # one load per config file, every member's keys and types
            path = values.get(CONFIG_AXIS, self.config)
            if path not in resolved:
                resolved[path] = load_config(path)
            apply_overrides(resolved[path], {**self.overrides,
                                             **{k: v for k, v in values.items()
                                                if k != CONFIG_AXIS}})
        for fragment in self.published:
            if not any(set(fragment.split(",")) <= set(n.split(",")) for n in names):
                raise ConfigError(f"published entry {fragment!r} matches no member")
        return members

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Experiment:
        data = dict(data)
        for key in ("seeds", "modes", "metrics"):
            data[key] = tuple(data[key])
        return cls(**data)

