"""From config to objects: the one place where config names map to models, methods, data.

Configs are read here and in the launcher only; the modules below take plain arguments.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from diffusion_jax.data.datasets import DATASETS, DatasetSpec
from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.losses import consistency as consistency_objectives
from diffusion_jax.methods import consistency, ddpm, score_sde
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.methods.edm import EDM, FAST_SAMPLERS, PRECONDITIONINGS
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.unet import UNet
from diffusion_jax.processes import parameterization, schedules, sde as sdes
from diffusion_jax.samplers import edm as edm_samplers, ode, pc

MODELS = {"unet": UNet, "ncsnpp": NCSNpp}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NOT_CONFIGURABLE = {"parent", "name", "out_channels", "num_classes"}


def dataset_spec(config) -> DatasetSpec:
    choose("data set (data.dataset)", config.data.dataset, DATASETS)
    return DATASETS[config.data.dataset]


def num_classes(config) -> int:
    """Classes the model is conditioned on: 0 unless `model.class_conditional`."""
    return dataset_spec(config).num_classes if config.model.get("class_conditional", False) else 0


def build_mesh(config):
    """The (data, fsdp) device mesh of `config.mesh` over every device of every process."""
    from diffusion_jax import parallel

    try:
        return parallel.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    except ValueError as e:
        raise ConfigError(str(e)) from None


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


def build_sde(config) -> sdes.SDE:
    """The forward SDE of `sde.name` (vpsde | subvpsde | vesde) with its `sde` parameters."""
    s = config.sde
    choose("SDE (sde.name)", s.name, sdes.SDES)
    if s.name == "vesde":
        return sdes.VESDE(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.N)
    return sdes.SDES[s.name](beta_min=s.beta_min, beta_max=s.beta_max, N=s.N)


def build_score_sde(config, model):
    """Score SDE (Song et al. 2021): `model` is the score network on `build_sde(config)`."""
    s = config.sde
    choose("loss reduction (sde.reduce)", s.reduce, ("mean", "sum"))
    if s.importance_weighting and not s.likelihood_weighting:
        raise ConfigError("sde.importance_weighting samples t for the likelihood weighting; "
                          "set sde.likelihood_weighting=True")
    sampling = config.sampling
    choose("predictor (sampling.predictor)", sampling.predictor, pc.PREDICTORS)
    choose("corrector (sampling.corrector)", sampling.corrector, pc.CORRECTORS)
    choose("ODE solver (sampling.ode_solver)", sampling.ode_solver,
           {**ode.ADAPTIVE, **ode.FIXED_STAGES})
    spec = dataset_spec(config)
    return score_sde.ScoreSDE(
        model=model, sde=build_sde(config), image_shape=spec.image_shape,
        num_classes=num_classes(config), label_dropout=s.label_dropout,
        num_levels=spec.num_levels, train_eps=s.train_eps,
        likelihood_weighting=s.likelihood_weighting,
        importance_weighting=s.importance_weighting, reduce=s.reduce)


def build_teacher(workdir: str, student_config):
    """The method of the training run in `workdir` (its config.json), checked to be a usable
    consistency-distillation teacher for `student_config`: it has a denoiser and the same data
    shape and classes. (Without a teacher, a CD model can still be built, e.g. for --mode=info;
    creating its train state is then a ConfigError.)"""
    from diffusion_jax import workdir as workdir_io

    teacher = build_method(workdir_io.read_config(workdir))
    if not hasattr(teacher, "conditional_denoiser"):
        raise ConfigError(f"the teacher in {workdir!r} ({type(teacher).__name__}) has no "
                          f"denoiser; distil from an edm, score_sde or ddpm run")
    if tuple(teacher.image_shape) != tuple(dataset_spec(student_config).image_shape) or \
            teacher.num_classes != num_classes(student_config):
        raise ConfigError(f"the teacher in {workdir!r} was trained on images "
                          f"{tuple(teacher.image_shape)} with {teacher.num_classes} classes; this "
                          f"config has {tuple(dataset_spec(student_config).image_shape)} and "
                          f"{num_classes(student_config)}")
    return teacher


def build_consistency(config, model):
    """Consistency model (Song et al. 2023) on `model`: CD from `training.teacher_checkpoint`,
    CT or improved CT, as `consistency.training_mode` says."""
    c = config.consistency
    choose("consistency training mode (consistency.training_mode)", c.training_mode,
           consistency.TRAINING_MODES)
    choose("consistency distance (consistency.distance)", c.distance,
           consistency_objectives.DISTANCES)
    choose("consistency weighting (consistency.weighting)", c.weighting,
           consistency_objectives.WEIGHTINGS)
    choose("teacher ODE solver (consistency.teacher_solver)", c.teacher_solver,
           tuple(edm_samplers.ODE_STEPS))
    distill = c.training_mode == "cd"
    if c.init_from_teacher and not distill:
        raise ConfigError("consistency.init_from_teacher needs consistency.training_mode=cd")
    return consistency.Consistency(
        model=model, image_shape=dataset_spec(config).image_shape,
        num_classes=num_classes(config), training_mode=c.training_mode,
        sigma_data=c.sigma_data, sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho,
        distance=c.distance, huber_c=c.huber_c, weighting=c.weighting, num_scales=c.num_scales,
        teacher=(build_teacher(config.training.teacher_checkpoint, config)
                 if distill and config.training.teacher_checkpoint else None),
        teacher_workdir=config.training.teacher_checkpoint, teacher_solver=c.teacher_solver,
        target_ema=c.target_ema, init_from_teacher=c.init_from_teacher,
        total_steps=config.training.num_steps, s0=c.s0, s1=c.s1, mu0=c.mu0, P_mean=c.P_mean,
        P_std=c.P_std, lpips_weights=c.lpips_weights, lpips_resize=c.lpips_resize)


METHODS = {"ddpm": build_ddpm, "edm": build_edm, "score_sde": build_score_sde,
           "consistency": build_consistency}
SAMPLERS = {"ddpm": ddpm.SAMPLERS, "edm": FAST_SAMPLERS, "score_sde": score_sde.SAMPLERS,
            "consistency": consistency.SAMPLERS}


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
