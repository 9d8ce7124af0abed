"""From config to objects: the one place where config names map to models, methods, data.

Configs are read here and in the launcher only; the modules below take plain arguments.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax.numpy as jnp

from diffusion_jax import preconditioning
from diffusion_jax.data.datasets import DATASETS, DatasetSpec
from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.losses import consistency as consistency_objectives
from diffusion_jax.losses import lpips, weighting
from diffusion_jax.methods import consistency, scm, score_sde
from diffusion_jax.methods.autoencoder import Autoencoder
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.methods.edm import EDM
from diffusion_jax.methods.edm2 import EDM2
from diffusion_jax.methods.flow import DISTILL_LOSSES, PREDICTIONS as FLOW_PREDICTIONS, Flow
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.methods.meanflow import TIME_INPUTS as MEANFLOW_TIME_INPUTS, MeanFlow
from diffusion_jax.methods.stable_diffusion import StableDiffusion
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.clip_text import CLIPTextEncoder
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.edm2_unet import EDM2UNet
from diffusion_jax.models.lora import LORA_PARAMS, LoRA
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.sd_unet import SDUNet
from diffusion_jax.models.text_encoder import (ByteTextEncoder, PrecomputedTextEncoder,
                                               TextConditioned, load_embedding_table)
from diffusion_jax.models.unet import UNet
from diffusion_jax.models.vae import AutoencoderKL as SDAutoencoderKL
from diffusion_jax.processes import interpolants, parameterization, schedules, sde as sdes
from diffusion_jax.samplers import edm as edm_samplers
from diffusion_jax.samplers import sampler as sampler_lib
from diffusion_jax.training.optim import make_optimizer

MODELS = {"unet": UNet, "ncsnpp": NCSNpp, "dit": DiT, "autoencoder_kl": AutoencoderKL,
          "edm2_unet": EDM2UNet}
CLIP_CONTEXT_LENGTH = 77  # CLIP's text positions: Stable Diffusion's caption tokens
TEXT_ENCODERS = ("bytes", "precomputed")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NOT_CONFIGURABLE = {"parent", "name", "out_channels", "num_classes"}
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "lora_merge")
LORA_MODELS = ("unet", "ncsnpp", "dit")


def dataset_spec(config) -> DatasetSpec:
    choose("data set (data.dataset)", config.data.dataset, DATASETS)
    spec = DATASETS[config.data.dataset]
    if spec.any_size:
        raise ConfigError(f"data set {config.data.dataset!r} has images of any size: it trains "
                          f"a method with its own resolution ({', '.join(PRETRAINED_METHODS)})")
    return spec


def num_classes(config) -> int:
    """Classes the model is conditioned on: 0 unless `model.class_conditional`."""
    return dataset_spec(config).num_classes if config.model.get("class_conditional", False) else 0


def caption_length(config) -> int:
    """Caption tokens the model is conditioned on: CLIP's 77 for Stable Diffusion, else 0 unless
    `text.encoder` is not 'none'."""
    if config.get("method") == "stable_diffusion":
        return CLIP_CONTEXT_LENGTH
    t = config.get("text")
    if t is None or t.encoder == "none":
        return 0
    choose("text encoder (text.encoder)", t.encoder, TEXT_ENCODERS)
    length = dataset_spec(config).caption_length
    if not length:
        raise ConfigError(f"text.encoder={t.encoder!r} needs a captioned data set (shapes); "
                          f"{config.data.dataset!r} has no captions")
    if config.model.get("class_conditional", False):
        raise ConfigError("model.class_conditional and text.encoder exclude each other")
    if config.data.random_flip:
        raise ConfigError("data.random_flip would swap left and right against the captions; "
                          "set it to False")
    return length


def build_text_encoder(config, dtype):
    """The caption encoder of `text.encoder`: 'bytes' (a transformer trained with the model) or
    'precomputed' (embeddings looked up in the file `text.embeddings`)."""
    t, length = config.text, caption_length(config)
    if t.encoder == "bytes":
        return ByteTextEncoder(width=t.width, num_layers=t.num_layers, num_heads=t.num_heads,
                               max_length=length, dtype=dtype)
    if not t.embeddings:
        raise ConfigError("text.encoder='precomputed' needs text.embeddings (an .npz with "
                          "'captions' and 'embeddings')")
    load_embedding_table(t.embeddings, length)  # a one-line error now if the file is bad
    return PrecomputedTextEncoder(file=t.embeddings, width=t.width, max_length=length, dtype=dtype)


def check_file(key: str, path: str) -> None:
    """ConfigError when the file a config key names (if any) does not exist."""
    if path and not os.path.isfile(path):
        raise ConfigError(f"{key}: {path!r} does not exist")


def build_mesh(config):
    """The (data, fsdp) device mesh of `config.mesh` over every device of every process."""
    from diffusion_jax import parallel

    try:
        return parallel.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def lora_rank(config) -> int:
    """`model.lora_rank`: the rank of the LoRA adapters (0 = none)."""
    return config.model.get("lora_rank", 0)


def build_model(config):
    """The network named by `model.name`, with every other `model` key as a constructor argument;
    with `model.lora_rank` r > 0, that network with LoRA adapters of rank r and scale
    `lora_alpha` / r on the projections `lora_targets` matches (`models.lora.LoRA`)."""
    network = _build_network(config)
    rank = lora_rank(config)
    if not rank:
        return network
    if rank < 0 or config.model.name not in LORA_MODELS:
        raise ConfigError(f"model.lora_rank must be >= 0 and LoRA needs model.name in "
                          f"{', '.join(LORA_MODELS)}; got {rank} and {config.model.name!r}")
    return LoRA(network, rank, float(config.model.lora_alpha), config.model.get("lora_targets", ""))


def _build_network(config):
    cfg = config.model
    choose("model (model.name)", cfg.name, MODELS)
    module = MODELS[cfg.name]
    fields = {f.name for f in dataclasses.fields(module)} - _NOT_CONFIGURABLE
    kwargs = {}
    for key, value in cfg.items():
        if key in ("name", "class_conditional") + LORA_KEYS:
            continue
        if key not in fields:
            raise ConfigError(f"unknown key model.{key} for model {cfg.name!r}; valid: "
                              f"{', '.join(sorted(fields | {'name', 'class_conditional'}))}")
        if key == "dtype":
            choose("model.dtype", value, DTYPES)
            value = DTYPES[value]
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    length = caption_length(config)
    if "num_classes" not in {f.name for f in dataclasses.fields(module)}:
        if num_classes(config) or length:
            raise ConfigError(f"model {cfg.name!r} takes no condition (model.class_conditional, "
                              f"text.encoder)")
        return module(**kwargs)
    if not length:
        if kwargs.get("cross_attention"):
            raise ConfigError("model.cross_attention needs a text encoder (text.encoder)")
        return module(num_classes=num_classes(config), **kwargs)
    if "cross_attention" not in fields:
        raise ConfigError(f"model {cfg.name!r} has no cross-attention for text.encoder; use "
                          f"unet, ncsnpp or dit")
    backbone = module(num_classes=0, **{**kwargs, "cross_attention": True})
    return TextConditioned(backbone=backbone, encoder=build_text_encoder(config, backbone.dtype),
                           caption_length=length)


def trainable_pattern(config) -> str:
    """The regular expression over parameter paths of the parameters a run trains
    (`training.trainable`; "" = every parameter); with LoRA the adapters, and the parameters
    `training.trainable` adds (e.g. a new label embedding)."""
    trainable = config.training.get("trainable", "")
    if not lora_rank(config):
        return trainable
    return LORA_PARAMS + (f"|(?:{trainable})" if trainable else "")


def build_optimizer(config):
    """The optimizer of `config.optim` (its schedule counting `training.batch_size` images a
    step), updating only the `trainable_pattern` parameters."""
    return make_optimizer(config.optim, trainable_pattern(config), config.training.batch_size)


def guide_workdir(config) -> str:
    """The autoguidance guide's run (`guidance.guide_workdir`; "" = none, as in a config written
    before the key)."""
    return config.get("guidance", {}).get("guide_workdir", "")


def check_guidance(config):
    """Classifier-free guidance options (`sampling.guidance_scale`, `negative_prompt`) that the
    configured model cannot follow, as a ConfigError before anything runs. With an autoguidance
    guide (`guide_workdir`), any model may be guided, and CFG's own options are refused."""
    if guide_workdir(config):
        s = config.sampling
        if (s.get("negative_label", -1) >= 0 or s.get("negative_prompt", "")
                or s.get("guidance_channels", 0)):
            raise ConfigError("autoguidance (guidance.guide_workdir) replaces classifier-free "
                              "guidance's unconditional branch: sampling.negative_label, "
                              "negative_prompt and guidance_channels do not apply with it")
        return
    if (config.sampling.get("guidance_scale", 1.0) != 1.0 and not num_classes(config)
            and not caption_length(config)):
        raise ConfigError("sampling.guidance_scale != 1 needs model.class_conditional=True or "
                          "a text encoder (text.encoder)")
    if config.sampling.get("negative_prompt", "") and not caption_length(config):
        raise ConfigError("sampling.negative_prompt needs a text-conditional model (text.encoder)")


SCHEDULES = tuple(schedules.BETA_SCHEDULES) + ("shifted_cosine",)


def build_weighting(section, key: str, sigma_data: float = 0.5) -> weighting.Weighting:
    """The loss weighting of a method's config section `key` (`loss_weighting`: a name of
    `losses.weighting.WEIGHTINGS`, with `min_snr_gamma`, `p2_k`, `p2_gamma`; 'edm' uses
    `sigma_data`); keys a config written before them lacks take their defaults."""
    name = section.get("loss_weighting", "uniform")
    choose(f"loss weighting ({key}.loss_weighting)", name, weighting.WEIGHTINGS)
    default = weighting.Weighting()
    return weighting.Weighting(name, min_snr_gamma=section.get("min_snr_gamma",
                                                               default.min_snr_gamma),
                               p2_k=section.get("p2_k", default.p2_k),
                               p2_gamma=section.get("p2_gamma", default.p2_gamma),
                               sigma_data=sigma_data)


def build_schedule(config, image_shape) -> schedules.DiscreteSchedule:
    """The DDPM schedule of `diffusion.schedule`: linear and scaled_linear from beta_start to
    beta_end, cosine, or shifted_cosine (Hoogeboom et al. 2023) for images of `resolution` (0:
    the network input's height) against `base_resolution`; `zero_terminal_snr` rescales it
    (Lin et al. 2024)."""
    d = config.diffusion
    choose("beta schedule (diffusion.schedule)", d.schedule, SCHEDULES)
    kwargs = {}
    if d.schedule in ("linear", "scaled_linear"):
        kwargs = {"beta_start": d.beta_start, "beta_end": d.beta_end}
    elif d.schedule == "shifted_cosine":
        kwargs = {"resolution": d.get("resolution", 0) or int(image_shape[0]),
                  "base_resolution": d.get("base_resolution", 64)}
    return schedules.make_schedule(d.schedule, d.num_timesteps,
                                   zero_terminal_snr=d.get("zero_terminal_snr", False), **kwargs)


def check_zero_terminal_snr(config) -> None:
    """Lin et al. 2024 (Sec. 3): a zero-terminal-SNR schedule needs v-prediction and samples from
    the last timestep, the 'trailing' grid, with a shared solver."""
    d, s = config.diffusion, config.sampling
    if d.prediction != "v":
        raise ConfigError(f"diffusion.zero_terminal_snr needs diffusion.prediction='v', got "
                          f"{d.prediction!r}: at alpha_T = 0 only a v-network's x0 is exact")
    if s.get("spacing") != "trailing" or s.get("method") in ("ancestral", "ddim"):
        raise ConfigError("diffusion.zero_terminal_snr samples from the last timestep: set "
                          "sampling.spacing='trailing' and a shared solver as sampling.method "
                          "(e.g. euler, which is DDIM, or unipc)")


def build_ddpm(config, model, image_shape):
    """DDPM (Ho et al. 2020) around `model` on the schedule of `build_schedule`, with the
    prediction target and loss weighting of `config.diffusion`; a `model.learn_sigma` network
    (DiT) learns the variance too (improved DDPM's hybrid loss)."""
    d = config.diffusion
    choose("prediction target (diffusion.prediction)", d.prediction,
           parameterization.PREDICTION_TARGETS)
    if d.get("zero_terminal_snr", False):
        check_zero_terminal_snr(config)
    check_guidance(config)
    return DDPM(model=model, schedule=build_schedule(config, image_shape),
                image_shape=image_shape, prediction=d.prediction,
                num_classes=num_classes(config), label_dropout=d.get("label_dropout", 0.0),
                caption_length=caption_length(config),
                num_levels=dataset_spec(config).num_levels,
                loss_weighting=build_weighting(d, "diffusion"),
                learn_sigma=bool(config.model.get("learn_sigma", False)))


def build_edm(config, model, image_shape):
    """EDM (Karras et al. 2022) around `model`, which gets c_noise of `edm.precond` as noise input;
    training noise levels and loss weight of that column of Table 1 ('edm': ln sigma ~
    N(P_mean, P_std^2); 'vp', 've', 'iddpm': the paper's own, `preconditioning.COLUMNS`), the
    weight replaced by an SNR weighting of the x0 error unless `edm.loss_weighting` is
    'precond'."""
    e = config.edm
    choose("preconditioning (edm.precond)", e.precond, preconditioning.COLUMNS)
    scheme = (preconditioning.EDMPrecond(e.sigma_data, e.P_mean, e.P_std) if e.precond == "edm"
              else preconditioning.COLUMNS[e.precond]())
    check_guidance(config)
    precond_weight = e.get("loss_weighting", "precond") == "precond"
    if not precond_weight:
        choose("loss weighting (edm.loss_weighting)", e.loss_weighting,
               ("precond",) + tuple(weighting.WEIGHTINGS))
    return EDM(model=model, image_shape=image_shape, scheme=scheme,
               num_classes=num_classes(config), label_dropout=e.label_dropout,
               caption_length=caption_length(config),
               loss_weighting=None if precond_weight else build_weighting(e, "edm", e.sigma_data))


def build_edm2(config, model, image_shape):
    """EDM2 (Karras et al. 2024) on the MP U-Net `model` (`model.name='edm2_unet'`, whose
    log-variance head the loss needs): EDM preconditioning with `edm2.sigma_data`, training
    levels ln sigma ~ N(`edm2.P_mean`, `edm2.P_std`^2), the uncertainty-weighted loss, forced
    weight normalisation."""
    e = config.edm2
    if not isinstance(model, EDM2UNet):
        raise ConfigError(f"method 'edm2' needs model.name='edm2_unet' (its loss reads the "
                          f"network's log-variance head), got {config.model.name!r}")
    if not 0.0 <= e.label_dropout < 1.0:
        raise ConfigError(f"edm2.label_dropout must be in [0, 1), got {e.label_dropout}")
    check_guidance(config)
    return EDM2(model=model, image_shape=image_shape,
                scheme=preconditioning.EDMPrecond(e.sigma_data, e.P_mean, e.P_std),
                num_classes=num_classes(config), label_dropout=e.label_dropout,
                caption_length=caption_length(config))


def build_sde(config) -> sdes.SDE:
    """The forward SDE of `sde.name` (vpsde | subvpsde | vesde) with its `sde` parameters."""
    s = config.sde
    choose("SDE (sde.name)", s.name, sdes.SDES)
    if s.name == "vesde":
        return sdes.VESDE(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.N)
    return sdes.SDES[s.name](beta_min=s.beta_min, beta_max=s.beta_max, N=s.N)


def build_score_sde(config, model, image_shape):
    """Score SDE (Song et al. 2021): `model` is the score network on `build_sde(config)`."""
    s = config.sde
    choose("loss reduction (sde.reduce)", s.reduce, ("mean", "sum"))
    if s.importance_weighting and not s.likelihood_weighting:
        raise ConfigError("sde.importance_weighting samples t for the likelihood weighting; "
                          "set sde.likelihood_weighting=True")
    loss_weighting = build_weighting(s, "sde")
    if loss_weighting.name != "uniform" and s.likelihood_weighting:
        raise ConfigError(f"sde.loss_weighting={loss_weighting.name!r} replaces "
                          f"sde.likelihood_weighting; set one of them")
    check_guidance(config)
    spec = dataset_spec(config)
    return score_sde.ScoreSDE(
        model=model, sde=build_sde(config), image_shape=image_shape,
        num_classes=num_classes(config), label_dropout=s.label_dropout,
        num_levels=spec.num_levels, train_eps=s.train_eps,
        likelihood_weighting=s.likelihood_weighting,
        importance_weighting=s.importance_weighting, reduce=s.reduce,
        caption_length=caption_length(config), loss_weighting=loss_weighting)


def build_flow(config, model, image_shape):
    """Flow matching (`methods.flow`) around `model`: the interpolant `flow.interpolant`
    (linear with `sigma_min`, gvp, vp), `flow.prediction`, `flow.t_distribution` (logit-normal
    with `logit_mean`, `logit_std`; uniform on [train_eps, 1 - train_eps]), SiT's
    `flow.loss_weighting` of the noise and score losses, the network's `time_scale`."""
    f = config.flow
    choose("interpolant (flow.interpolant)", f.interpolant, interpolants.PATHS)
    choose("prediction (flow.prediction)", f.prediction, FLOW_PREDICTIONS)
    choose("training time distribution (flow.t_distribution)", f.t_distribution,
           interpolants.T_DISTRIBUTIONS)
    choose("loss weighting (flow.loss_weighting)", f.loss_weighting, interpolants.WEIGHTINGS)
    if f.loss_weighting != "none" and f.prediction == "velocity":
        raise ConfigError("flow.loss_weighting weighs the noise and score losses (SiT); the "
                          "velocity loss has none: set flow.loss_weighting='none'")
    if f.sigma_min and f.interpolant != "linear":
        raise ConfigError("flow.sigma_min applies to flow.interpolant='linear' only")
    if not 0.0 <= f.sigma_min < 1.0 or not 0.0 <= f.train_eps < 0.5:
        raise ConfigError(f"flow.sigma_min must be in [0, 1) and flow.train_eps in [0, 0.5), "
                          f"got {f.sigma_min}, {f.train_eps}")
    path = (interpolants.Linear(f.sigma_min) if f.interpolant == "linear"
            else interpolants.PATHS[f.interpolant]())
    check_guidance(config)
    coupled = bool(f.get("coupling_dir", ""))
    if coupled and config.data.random_flip:
        raise ConfigError("flow.coupling_dir trains on fixed reflow pairs, which a flip would "
                          "break: set data.random_flip=False")
    check_flow_distillation(f)
    if f.distill_loss != "l2" and is_latent(config):
        raise ConfigError("an LPIPS flow.distill_loss compares images: it needs a flow on pixels, "
                          "not on latents (latent.vae / latent.autoencoder_workdir)")
    return Flow(model=model, image_shape=image_shape, path=path, prediction=f.prediction,
                t_distribution=f.t_distribution, logit_mean=f.logit_mean,
                logit_std=f.logit_std, loss_weighting=f.loss_weighting, train_eps=f.train_eps,
                time_scale=f.time_scale, num_classes=num_classes(config),
                label_dropout=f.label_dropout, caption_length=caption_length(config),
                coupled=coupled, distill_steps=f.distill_steps, distill_loss=f.distill_loss,
                lpips_weights=f.lpips_weights, lpips_resize=f.lpips_resize)


def check_flow_distillation(f) -> None:
    """`flow.distill_steps` k > 0 distils reflow pairs (`flow.coupling_dir`) for k Euler steps;
    an LPIPS `flow.distill_loss` (one step only, as RectifiedFlow asserts) compares the one-step
    sample eps - v of a velocity network on the linear path. The pairs and the weights file
    `flow.lpips_weights` are needed when a run starts (`Flow.init_aux`), not to build."""
    choose("distillation loss (flow.distill_loss)", f.distill_loss, DISTILL_LOSSES)
    if f.distill_steps < 0:
        raise ConfigError(f"flow.distill_steps must be >= 0, got {f.distill_steps}")
    if f.distill_loss == "l2":
        return
    if f.distill_steps != 1:
        raise ConfigError(f"flow.distill_loss={f.distill_loss!r} is one-step distillation: set "
                          f"flow.distill_steps=1 (got {f.distill_steps})")
    if f.prediction != "velocity" or f.interpolant != "linear" or f.sigma_min:
        raise ConfigError("an LPIPS flow.distill_loss takes the one-step sample eps - v: it "
                          "needs flow.prediction='velocity' on the linear path, sigma_min 0")
    check_file("flow.lpips_weights", f.lpips_weights)
    if f.lpips_resize < lpips.MIN_SIZE:
        raise ConfigError(f"flow.lpips_resize must be >= {lpips.MIN_SIZE}, got {f.lpips_resize}")


def build_meanflow(config, model, image_shape):
    """MeanFlow (`methods.meanflow`) around `model`, a DiT with `h_embedding=True`: the (t, r)
    sampler `meanflow.P_mean`, `P_std`, `data_proportion`; training-time guidance `omega`,
    `kappa` on [`t_start`, `t_end`] (class-conditional models); the adaptive weight `norm_p`,
    `norm_eps`; `label_dropout`; the network's `time_inputs` and `time_scale`."""
    m = config.meanflow
    choose("MeanFlow time inputs (meanflow.time_inputs)", m.time_inputs, MEANFLOW_TIME_INPUTS)
    if config.model.name != "dit" or not config.model.get("h_embedding", False):
        raise ConfigError("method 'meanflow' needs model.name='dit' with model.h_embedding=True "
                          "(the second time input h = t - r)")
    if caption_length(config):
        raise ConfigError("method 'meanflow' is class-conditional or unconditional; set "
                          "text.encoder='none'")
    if not (0.0 <= m.data_proportion <= 1.0 and 0.0 <= m.label_dropout < 1.0
            and 0.0 <= m.t_start <= m.t_end <= 1.0 and m.norm_eps > 0.0 and m.kappa < 1.0):
        raise ConfigError(f"meanflow: need data_proportion in [0, 1], label_dropout in [0, 1), "
                          f"0 <= t_start <= t_end <= 1, norm_eps > 0 and kappa < 1; got "
                          f"{m.data_proportion}, {m.label_dropout}, [{m.t_start}, {m.t_end}], "
                          f"{m.norm_eps}, {m.kappa}")
    if (m.omega != 1.0 or m.kappa != 0.0 or m.label_dropout) and not num_classes(config):
        raise ConfigError("meanflow.omega, meanflow.kappa and meanflow.label_dropout guide a "
                          "class-conditional model: set model.class_conditional=True")
    check_guidance(config)
    return MeanFlow(model=model, image_shape=image_shape, P_mean=m.P_mean, P_std=m.P_std,
                    data_proportion=m.data_proportion, omega=m.omega, kappa=m.kappa,
                    t_start=m.t_start, t_end=m.t_end, norm_p=m.norm_p, norm_eps=m.norm_eps,
                    time_inputs=m.time_inputs, time_scale=m.time_scale,
                    num_classes=num_classes(config), label_dropout=m.label_dropout)


def build_autoencoder(config, model, image_shape=None):
    """The KL autoencoder of latent diffusion (`methods.autoencoder`), decoding to the data's
    channels."""
    a = config.autoencoder
    shape = dataset_spec(config).image_shape
    if config.get("latent") is not None and config.latent.autoencoder_workdir:
        raise ConfigError("method 'autoencoder' does not run in latent space; "
                          "latent.autoencoder_workdir must be empty")
    check_file("autoencoder.lpips_weights", a.lpips_weights)
    return Autoencoder(model=model.clone(out_channels=shape[-1]), image_shape=shape,
                       kl_weight=a.kl_weight, perceptual_weight=a.perceptual_weight,
                       reconstruction=a.reconstruction, perceptual=a.perceptual,
                       lpips_weights=a.lpips_weights)


def build_teacher(workdir: str, student_config):
    """The method of the training run in `workdir` (its config.json), checked to be a usable
    consistency-distillation teacher for `student_config`: it has a denoiser and the same data
    shape and classes. (Without a teacher, a CD model can still be built, e.g. for --mode=info;
    creating its train state is then a ConfigError.)"""
    from diffusion_jax import workdir as workdir_io

    teacher = build_method(workdir_io.read_config(workdir))
    if not teacher.has_denoiser:
        raise ConfigError(f"the teacher in {workdir!r} ({type(teacher).__name__}) has no "
                          f"denoiser; distil from an edm, score_sde or ddpm run")
    if tuple(teacher.image_shape) != tuple(dataset_spec(student_config).image_shape) or \
            teacher.num_classes != num_classes(student_config):
        raise ConfigError(f"the teacher in {workdir!r} was trained on images "
                          f"{tuple(teacher.image_shape)} with {teacher.num_classes} classes; this "
                          f"config has {tuple(dataset_spec(student_config).image_shape)} and "
                          f"{num_classes(student_config)}")
    return teacher


def build_consistency(config, model, image_shape):
    """Consistency model (Song et al. 2023) on `model`: CD from `consistency.teacher_workdir`,
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
    check_file("consistency.lpips_weights", c.lpips_weights)
    distill = c.training_mode == "cd"
    if c.init_from_teacher and not distill:
        raise ConfigError("consistency.init_from_teacher needs consistency.training_mode=cd")
    return consistency.Consistency(
        model=model, image_shape=image_shape,
        num_classes=num_classes(config), training_mode=c.training_mode,
        sigma_data=c.sigma_data, sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho,
        distance=c.distance, huber_c=c.huber_c, weighting=c.weighting, num_scales=c.num_scales,
        teacher=(build_teacher(c.teacher_workdir, config)
                 if distill and c.teacher_workdir else None),
        teacher_workdir=c.teacher_workdir, teacher_solver=c.teacher_solver,
        target_ema=c.target_ema, init_from_teacher=c.init_from_teacher,
        total_steps=config.training.num_steps, s0=c.s0, s1=c.s1, mu0=c.mu0, P_mean=c.P_mean,
        P_std=c.P_std, lpips_weights=c.lpips_weights, lpips_resize=c.lpips_resize)


def build_scm(config, model, image_shape):
    """sCM (Lu & Song 2024) on `model`: sCT, or sCD from `scm.teacher_workdir`, as
    `scm.training_mode` says. `init_from_teacher` needs c_noise 'edm' and an EDM-preconditioned
    teacher with sigma_data = scm.sigma_d (then the teacher's network is a TrigFlow model)."""
    c = config.scm
    choose("sCM training mode (scm.training_mode)", c.training_mode, scm.TRAINING_MODES)
    choose("sCM noise conditioning (scm.c_noise)", c.c_noise, scm.C_NOISE)
    distill = c.training_mode == "scd"
    if c.init_from_teacher and not distill:
        raise ConfigError("scm.init_from_teacher needs scm.training_mode=scd")
    if c.P_std <= 0 or c.sigma_d <= 0 or c.sigma_max <= 0:
        raise ConfigError(f"scm.P_std, scm.sigma_d and scm.sigma_max must be positive; got "
                          f"{c.P_std}, {c.sigma_d}, {c.sigma_max}")
    teacher = build_teacher(c.teacher_workdir, config) if distill and c.teacher_workdir else None
    if c.init_from_teacher and teacher is not None:
        scheme = getattr(teacher, "scheme", None)
        if c.c_noise != "edm" or not isinstance(scheme, preconditioning.EDMPrecond) or \
                scheme.sigma_data != c.sigma_d:
            raise ConfigError("scm.init_from_teacher needs scm.c_noise=edm and an EDM teacher "
                              "(edm.precond=edm) with sigma_data = scm.sigma_d")
    return scm.SCM(
        model=model, image_shape=image_shape, num_classes=num_classes(config),
        label_dropout=c.label_dropout, training_mode=c.training_mode, sigma_d=c.sigma_d,
        c_noise=c.c_noise, P_mean=c.P_mean, P_std=c.P_std,
        tangent_warmup_steps=c.tangent_warmup_steps, tangent_c=c.tangent_c,
        adaptive_weighting=c.adaptive_weighting, sigma_max=c.sigma_max, teacher=teacher,
        teacher_workdir=c.teacher_workdir, init_from_teacher=c.init_from_teacher)


METHODS = {"ddpm": build_ddpm, "edm": build_edm, "score_sde": build_score_sde,
           "consistency": build_consistency, "autoencoder": build_autoencoder,
           "flow": build_flow, "meanflow": build_meanflow, "scm": build_scm,
           "edm2": build_edm2}


SD_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}


def build_stable_diffusion(config) -> StableDiffusion:
    """Stable Diffusion (`methods.stable_diffusion`) with the networks, schedule, prediction
    target, latent scale and tokenizer of `sd.model_dir` (a diffusers model directory) or
    `sd.checkpoint` (a single file, with the configs of `sd.base`: a released name or a model
    directory), or, with neither, of the released `sd.base` (no weights: --mode=info).
    `model.dtype` is every network's compute dtype, `model.remat` the U-Net's; `sd.resolution`
    (0: the U-Net's trained size) sets the image size."""
    from diffusion_jax.importers import stable_diffusion as sd_import

    s, m = config.sd, config.model
    choose("model (model.name)", m.name, ("sd_unet",))
    choose("model.dtype", m.dtype, DTYPES)
    if s.model_dir and s.checkpoint:
        raise ConfigError("set one of sd.model_dir and sd.checkpoint")
    if s.model_dir and not os.path.isdir(s.model_dir):
        raise ConfigError(f"sd.model_dir {s.model_dir!r} is not a directory")
    check_file("sd.checkpoint", s.checkpoint)
    source = s.model_dir or s.checkpoint
    configs = sd_import.read_configs(source, s.base, s.tokenizer_dir)
    choose("scheduler prediction_type", configs.scheduler.prediction_type, SD_PREDICTIONS)
    dtype = DTYPES[m.dtype]
    unet = SDUNet(**configs.unet_config, dtype=dtype, remat=m.remat)
    text_encoder = CLIPTextEncoder(**configs.text_encoder_config, dtype=dtype)
    vae = SDAutoencoderKL(**configs.vae_config, dtype=dtype)
    factor = 2 ** (len(vae.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.block_out_channels) - 1)
    resolution = s.resolution or configs.sample_size * factor
    if resolution % (factor * unet_factor):
        raise ConfigError(f"sd.resolution {resolution} must be a multiple of "
                          f"{factor * unet_factor} (the VAE's and the U-Net's downsampling)")
    if not 0 <= s.clip_skip < text_encoder.num_layers:
        raise ConfigError(f"sd.clip_skip must be in [0, {text_encoder.num_layers}), got "
                          f"{s.clip_skip}")
    if not 0.0 <= s.label_dropout < 1.0:
        raise ConfigError(f"sd.label_dropout must be in [0, 1), got {s.label_dropout}")
    return StableDiffusion(
        unet=unet, text_encoder=text_encoder, vae=vae,
        schedule=schedules.from_betas(configs.scheduler.betas),
        image_shape=(resolution, resolution, vae.out_channels),
        prediction=SD_PREDICTIONS[configs.scheduler.prediction_type],
        scaling_factor=configs.scaling_factor, tokenizer=configs.tokenizer, source=source,
        base=s.base, variant=s.variant, clip_skip=s.clip_skip, label_dropout=s.label_dropout,
        caption_length=CLIP_CONTEXT_LENGTH)


# methods whose networks come from released files, not from `model.*` and the data set
PRETRAINED_METHODS = {"stable_diffusion": build_stable_diffusion}


def build_method(config):
    """The method (loss + samplers) named by `config.method` around the configured network;
    with `latent.autoencoder_workdir`, that method on the autoencoder's latents
    (`methods.latent.LatentDiffusion`)."""
    choose("method", config.method, {**METHODS, **PRETRAINED_METHODS})
    if config.method in PRETRAINED_METHODS:
        method = PRETRAINED_METHODS[config.method](config)
        build_sampler(config, method)
        return method
    spec = dataset_spec(config)
    if not is_latent(config):
        method = METHODS[config.method](config, build_model(config), spec.image_shape)
    else:
        method = build_latent(config, config.latent)
    build_sampler(config, method)  # a one-line error now for a sampler the method cannot run
    return method


def build_sampler(config, method) -> sampler_lib.Sampler:
    """The `Sampler` of `config.sampling`, from the method's defaults; ConfigError for an unknown
    key, a sampler the method does not run, or options it cannot follow (`check_sampler`: a grid
    the model rejects)."""
    sampler = sampler_lib.from_config(config.sampling, method.default_sampler)
    if sampler.method not in method.sampler_names:
        raise ConfigError(f"unknown sampler (sampling.method) {sampler.method!r} for method "
                          f"{config.method!r}; valid: {', '.join(method.sampler_names)}")
    method.check_sampler(sampler)
    return sampler


def is_latent(config) -> bool:
    """Whether `config.method` runs on an autoencoder's latents: a trained autoencoder run
    (`latent.autoencoder_workdir`) or a released VAE (`latent.vae`)."""
    latent = config.get("latent")
    return (latent is not None and config.method != "autoencoder"
            and bool(latent.autoencoder_workdir or latent.get("vae", "")))


def build_latent(config, latent) -> LatentDiffusion:
    """`config.method` on the latents of the autoencoder trained in `latent.autoencoder_workdir`
    (its network and data set are read from the config.json there), or of the released VAE
    `latent.vae` (`build_released_vae_latent`)."""
    from diffusion_jax import workdir as workdir_io

    if latent.get("vae", ""):
        return build_released_vae_latent(config, latent)
    try:
        ae_config = workdir_io.read_config(latent.autoencoder_workdir)
    except ConfigError:
        raise ConfigError(f"latent.autoencoder_workdir {latent.autoencoder_workdir!r} has no "
                          f"config.json: train an autoencoder there (configs/autoencoder/)"
                          ) from None
    if ae_config.get("method") != "autoencoder":
        raise ConfigError(f"latent.autoencoder_workdir {latent.autoencoder_workdir!r} holds a "
                          f"{ae_config.get('method')!r} run, not an autoencoder")
    if ae_config.data.dataset != config.data.dataset:
        raise ConfigError(f"the autoencoder was trained on {ae_config.data.dataset!r}, this "
                          f"config uses {config.data.dataset!r}")
    autoencoder = build_autoencoder(ae_config, build_model(ae_config))
    inner = METHODS[config.method](config, build_model(config), autoencoder.noise_shape)
    return LatentDiffusion(inner=inner, autoencoder=autoencoder,
                           autoencoder_workdir=latent.autoencoder_workdir,
                           dataset=config.data.dataset, scale_examples=latent.scale_examples,
                           cache_dir=latent.cache_dir, fixed_scale=latent_scale(latent),
                           scaling=latent.get("scaling", "std"),
                           cache_views=2 if config.data.random_flip else 1)


def latent_scale(latent, default: float = 0.0) -> float:
    """`latent.scale` (> 0: fixed; 0: `default`, where 0 is calibrated on training images)."""
    scale = float(latent.get("scale", 0.0))
    if scale < 0 or not math.isfinite(scale):
        raise ConfigError(f"latent.scale must be a finite number >= 0 (0: calibrated), got "
                          f"{scale}")
    return scale or default


def build_released_vae_latent(config, latent) -> LatentDiffusion:
    """`config.method` on the latents of a released VAE (`importers.stable_diffusion.
    released_vae`): the architecture of `latent.vae` (a name of `RELEASED_VAES`, or a VAE
    directory), the weights of `latent.vae_dir` (restored when a run starts), the scale
    `latent.scale` or else the VAE config's scaling factor (0.18215; not with EDM2's
    per-channel `latent.scaling='edm2'`)."""
    from diffusion_jax.importers import stable_diffusion as sd_importer

    vae, scaling_factor = sd_importer.released_vae(latent.vae_dir or latent.vae)
    autoencoder = Autoencoder(model=vae, image_shape=dataset_spec(config).image_shape)
    inner = METHODS[config.method](config, build_model(config), autoencoder.noise_shape)
    return LatentDiffusion(inner=inner, autoencoder=autoencoder, autoencoder_workdir="",
                           dataset=config.data.dataset, scale_examples=latent.scale_examples,
                           cache_dir=latent.cache_dir, vae_dir=latent.get("vae_dir", ""),
                           fixed_scale=latent_scale(
                               latent, scaling_factor if latent.get("scaling", "std") == "std"
                               else 0.0),
                           scaling=latent.get("scaling", "std"),
                           cache_views=2 if config.data.random_flip else 1)
