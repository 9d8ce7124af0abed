"""From config to objects: the one place where config names map to models, methods, data.

Configs are read here and in the launcher only; the modules below take plain arguments.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from diffusion_jax.data.datasets import DATASETS, DatasetSpec
from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.methods import ddpm
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.methods.edm import EDM, FAST_SAMPLERS, PRECONDITIONINGS
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.unet import UNet
from diffusion_jax.processes import parameterization, schedules

MODELS = {"unet": UNet, "ncsnpp": NCSNpp}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NOT_CONFIGURABLE = {"parent", "name", "out_channels", "num_classes"}


def dataset_spec(config) -> DatasetSpec:
    choose("data set (data.dataset)", config.data.dataset, DATASETS)
    return DATASETS[config.data.dataset]


def num_classes(config) -> int:
    """Classes the model is conditioned on: 0 unless `model.class_conditional`."""
    return dataset_spec(config).num_classes if config.model.get("class_conditional", False) else 0


def build_model(config):
    """The network named by `model.name`, with every other `model` key as a constructor argument."""
    cfg = config.model
    choose("model (model.name)", cfg.name, MODELS)
    module = MODELS[cfg.name]
    fields = {f.name for f in dataclasses.fields(module)} - _NOT_CONFIGURABLE
    kwargs = {}
    for key, value in cfg.items():
        if key in ("name", "class_conditional"):
            continue
        if key not in fields:
            raise ConfigError(f"unknown key model.{key} for model {cfg.name!r}; valid: "
                              f"{', '.join(sorted(fields | {'name', 'class_conditional'}))}")
        if key == "dtype":
            choose("model.dtype", value, DTYPES)
            value = DTYPES[value]
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return module(num_classes=num_classes(config), **kwargs)


def build_ddpm(config, model):
    d = config.diffusion
    choose("beta schedule (diffusion.schedule)", d.schedule, schedules.BETA_SCHEDULES)
    choose("prediction target (diffusion.prediction)", d.prediction,
           parameterization.PREDICTION_TARGETS)
    kwargs = ({"beta_start": d.beta_start, "beta_end": d.beta_end} if d.schedule == "linear"
              else {})
    return DDPM(model=model, schedule=schedules.make_schedule(d.schedule, d.num_timesteps, **kwargs),
                image_shape=dataset_spec(config).image_shape, prediction=d.prediction,
                num_classes=num_classes(config), label_dropout=d.get("label_dropout", 0.0))


def build_edm(config, model):
    """EDM (Karras et al. 2022) around `model`, which gets c_noise of `edm.precond` as noise input."""
    e = config.edm
    choose("preconditioning (edm.precond)", e.precond, PRECONDITIONINGS)
    if config.sampling.get("guidance_scale", 1.0) != 1.0 and not num_classes(config):
        raise ConfigError("sampling.guidance_scale != 1 needs model.class_conditional=True")
    return EDM(model=model, image_shape=dataset_spec(config).image_shape,
               num_classes=num_classes(config), label_dropout=e.label_dropout,
               sigma_data=e.sigma_data, P_mean=e.P_mean, P_std=e.P_std, precond=e.precond)


METHODS = {"ddpm": build_ddpm, "edm": build_edm}
SAMPLERS = {"ddpm": ddpm.SAMPLERS, "edm": FAST_SAMPLERS}


def build_method(config):
    """The method (loss + samplers) named by `config.method` around the configured network."""
    choose("method", config.method, METHODS)
    dataset_spec(config)
    method = METHODS[config.method](config, build_model(config))
    choose(f"sampler (sampling.method) for method {config.method!r}", config.sampling.method,
           SAMPLERS[config.method])
    return method


def sampler_kwargs(config) -> dict:
    """The sampling options of `config.sampling` that the method's `sample` takes."""
    s = config.sampling
    return {k: v for k, v in s.items() if k not in ("num_samples", "batch_size", "use_ema",
                                                     "every", "seed")}
