"""An imported network as a work directory that `--mode=sample` and `--mode=eval` restore like
any training run's, and the config that describes it."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError


def write_imported_run(workdir: str, config, params, step: int = 0) -> None:
    """Writes `workdir/config.json` (the resolved `config`) and an orbax checkpoint at `step`
    of the train state with params = ema_params = `params` (a fresh optimizer state, the
    method's initial aux state, seed `training.seed`). ConfigError when `params` is not the
    parameter tree of the network `config` builds."""
    from diffusion_jax import builders, workdir as workdir_io
    from diffusion_jax.data.loader import LoaderState
    from diffusion_jax.training.checkpoint import Checkpointer
    from diffusion_jax.training.optim import make_optimizer
    from diffusion_jax.training.state import create_train_state

    method = builders.build_method(config)
    expected = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32), params)
    if jax.tree.structure(expected) != jax.tree.structure(got) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got))):
        raise ConfigError("the imported parameters do not match the network of the config")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    optimizer = make_optimizer(config.optim, batch_size=config.training.batch_size)
    rng, aux_rng = jax.random.split(jax.random.PRNGKey(config.training.seed))
    aux = method.init_aux(params, aux_rng)
    state = create_train_state(params, optimizer, rng, aux)
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    os.makedirs(workdir, exist_ok=True)
    workdir_io.write_config(workdir, config)
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(step, state, LoaderState().as_dict())
    checkpointer.wait()
    checkpointer.close()


def network_config(base_model, module, kwargs: dict):
    """The `model` ConfigDict of an imported network: `base_model` (a config's `model`) with the
    constructor arguments `kwargs` of `module`. Keys the base has take the new values; other
    keys are added only where they differ from the module's default. A released network of
    the base config's architecture thus has exactly the base config's keys, and
    `launch_overrides` says what else the launcher must be told."""
    defaults = {f.name: f.default for f in dataclasses.fields(module)}
    model = base_model.to_dict()
    for key, value in kwargs.items():
        value = tuple(value) if isinstance(value, list) else value
        if key in model or defaults.get(key, dataclasses.MISSING) != value:
            model[key] = value
    import ml_collections

    return ml_collections.ConfigDict(model)


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def _format(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def launch_overrides(base, config) -> tuple[list[str], list[str]]:
    """(`--config.KEY=VALUE` arguments that turn the config file `base` into `config`, keys of
    `config` that `base` lacks). The launcher builds a run's config from a config file and
    such overrides, so sampling or evaluating an imported run takes `--config=BASE` and these;
    a key the base lacks cannot be given on the command line."""
    old, new = _flatten(base.to_dict()), _flatten(config.to_dict())
    overrides = [f"--config.{k}={_format(v)}" for k, v in sorted(new.items())
                 if k in old and old[k] != v]
    return overrides, sorted(k for k in new if k not in old)
