"""Stable Diffusion's released weights as our parameter trees and module configs.

Two layouts are read. A diffusers model directory (`model_index.json`, `unet/`, `text_encoder/`,
`vae/`, `tokenizer/`, `scheduler/`), each network a `config.json` and a `.safetensors` file
(fp16 or fp32); and a single CompVis / Stability checkpoint (`model.diffusion_model.*`,
`cond_stage_model.transformer.*` for CLIP or `cond_stage_model.model.*` for OpenCLIP,
`first_stage_model.*`), whose keys are first renamed to diffusers' (`single_file_components`)
and then go through the same map. Every map is a plain function of a state dict
`dict[str, np.ndarray]` (torch layout: NCHW convolutions (out, in, kh, kw), Linear (out, in)),
so any file reader can feed it; `read_safetensors` is the one used here (the `safetensors`
package's numpy API, no torch).

The map from our parameter paths to diffusers keys is a list of renaming rules per network;
kernels are transposed to flax's (kh, kw, in, out) / (in, out), 1x1-convolution kernels used as
Linear layers (SD 1.x's transformer projections, the CompVis VAE attention) are squeezed, and
every array becomes float32 numpy on the host. A missing, unexpected or misshapen tensor is a
ConfigError naming it: a checkpoint either fills the whole tree or is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Optional

import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.importers.stable_diffusion_configs import RELEASED
from diffusion_jax.models.clip_text import TEXT_RULES, CLIPTextEncoder, text_encoder_config
from diffusion_jax.models.sd_unet import SDUNet
from diffusion_jax.models.vae import AutoencoderKL
from diffusion_jax.processes.schedules import cosine_betas
from diffusion_jax.tokenizer import CLIPTokenizer
from diffusion_jax.weight_files import (StateDict, abstract_params, params_from_state_dict,
                                        read_json, read_safetensors)


# ---- configs: diffusers / transformers config.json -> our module's keyword arguments

def _require(config: dict, name: str, expected: dict) -> None:
    """ConfigError unless every key of `expected` present in `config` has the expected value
    (the settings our modules implement)."""
    wrong = [f"{k}={config[k]!r} (need {v!r})" for k, v in expected.items()
             if config.get(k, v) != v]
    if wrong:
        raise ConfigError(f"{name} config has unsupported settings: {', '.join(wrong)}")


def unet_config(config: dict) -> dict:
    """`SDUNet` keyword arguments of a diffusers `UNet2DConditionModel` config.json."""
    _require(config, "unet", {
        "act_fn": "silu", "center_input_sample": False, "class_embed_type": None,
        "addition_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None,
        "time_embedding_type": "positional", "time_cond_proj_dim": None,
        "resnet_time_scale_shift": "default", "only_cross_attention": False,
        "dual_cross_attention": False, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "mid_block_scale_factor": 1, "downsample_padding": 1, "conv_in_kernel": 3,
        "conv_out_kernel": 3, "attention_type": "default", "resnet_out_scale_factor": 1.0,
        "timestep_post_act": None, "reverse_transformer_layers_per_block": None,
        "time_embedding_dim": None, "time_embedding_act_fn": None, "resnet_skip_time_act": False,
        "cross_attention_norm": None})
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    valid_down = {"CrossAttnDownBlock2D", "DownBlock2D"}
    mirrored = [b.replace("Down", "Up") for b in reversed(down)]
    if not set(down) <= valid_down or up != mirrored:
        raise ConfigError(f"unet block types {down} / {up}: need down blocks among "
                          f"{sorted(valid_down)} and the up blocks mirroring them")
    levels = len(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = [heads] * levels if isinstance(heads, int) else list(heads)
    depth = config.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        raise ConfigError(f"unet transformer_layers_per_block {depth!r}: one int per U-Net")
    return dict(in_channels=config.get("in_channels", 4),
                out_channels=config.get("out_channels", 4),
                block_out_channels=tuple(config["block_out_channels"]),
                down_attention=tuple(b == "CrossAttnDownBlock2D" for b in down),
                layers_per_block=config.get("layers_per_block", 2), num_heads=tuple(heads),
                transformer_depth=depth,
                cross_attention_dim=config.get("cross_attention_dim", 1280),
                flip_sin_to_cos=config.get("flip_sin_to_cos", True),
                freq_shift=float(config.get("freq_shift", 0)),
                norm_num_groups=config.get("norm_num_groups", 32),
                norm_eps=config.get("norm_eps", 1e-5), dropout=config.get("dropout", 0.0))


def vae_config(config: dict) -> dict:
    """`vae.AutoencoderKL` keyword arguments of a diffusers `AutoencoderKL` config.json."""
    _require(config, "vae", {"act_fn": "silu", "latents_mean": None, "latents_std": None,
                             "shift_factor": None})
    down, up = set(config["down_block_types"]), set(config["up_block_types"])
    if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
        raise ConfigError(f"vae block types {sorted(down)} / {sorted(up)}: need "
                          f"DownEncoderBlock2D / UpDecoderBlock2D")
    return dict(in_channels=config.get("in_channels", 3),
                out_channels=config.get("out_channels", 3),
                latent_channels=config.get("latent_channels", 4),
                block_out_channels=tuple(config["block_out_channels"]),
                layers_per_block=config.get("layers_per_block", 2),
                norm_num_groups=config.get("norm_num_groups", 32),
                mid_attention=config.get("mid_block_add_attention", True),
                use_quant_conv=config.get("use_quant_conv", True),
                use_post_quant_conv=config.get("use_post_quant_conv", True))


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The training noise schedule and inference settings of a diffusers scheduler config
    (missing keys take `DDIMScheduler`'s defaults). alpha_bar_t = prod_{s <= t} (1 - beta_s)
    over t = 0..num_train_timesteps - 1, as diffusers indexes its timesteps."""

    class_name: str
    betas: np.ndarray  # (num_train_timesteps,) float64
    beta_schedule: str
    prediction_type: str  # "epsilon", "v_prediction" or "sample"
    steps_offset: int
    timestep_spacing: str  # "leading", "trailing" or "linspace"
    set_alpha_to_one: bool
    clip_sample: bool


def scheduler_betas(config: dict) -> np.ndarray:
    """beta_t of diffusers' beta schedules: `scaled_linear` (Stable Diffusion's, sqrt(beta)
    linear from sqrt(beta_start) to sqrt(beta_end)), `linear`, `squaredcos_cap_v2` (Nichol &
    Dhariwal's cosine) or the config's `trained_betas`."""
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], np.float64)
    steps = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    schedule = config.get("beta_schedule", "linear")
    builders = {
        "scaled_linear": lambda: np.linspace(start ** 0.5, end ** 0.5, steps) ** 2,
        "linear": lambda: np.linspace(start, end, steps),
        "squaredcos_cap_v2": lambda: cosine_betas(steps),
    }
    if schedule not in builders:
        raise ConfigError(f"unknown beta_schedule {schedule!r}; valid: {', '.join(builders)}")
    return np.asarray(builders[schedule](), np.float64)


def scheduler_config(config: dict) -> SchedulerConfig:
    if config.get("rescale_betas_zero_snr", False):
        raise ConfigError("scheduler rescale_betas_zero_snr=True is not supported")
    return SchedulerConfig(
        class_name=config.get("_class_name", "DDIMScheduler"), betas=scheduler_betas(config),
        beta_schedule="trained" if config.get("trained_betas") is not None
        else config.get("beta_schedule", "linear"),
        prediction_type=config.get("prediction_type", "epsilon"),
        steps_offset=config.get("steps_offset", 0),
        timestep_spacing=config.get("timestep_spacing", "leading"),
        set_alpha_to_one=config.get("set_alpha_to_one", True),
        clip_sample=config.get("clip_sample", True))


# ---- key maps: our parameter path ("down_0/res_1/conv1/kernel") -> diffusers key

UNET_RULES = (
    (r"^down_(\d+)/", r"down_blocks/\1/"),
    (r"^up_(\d+)/", r"up_blocks/\1/"),
    (r"^mid/", "mid_block/"),
    (r"^time_embed/", "time_embedding/"),
    (r"^norm_out/", "conv_norm_out/"),
    (r"/res_(\d+)/", r"/resnets/\1/"),
    (r"/attn_(\d+)/", r"/attentions/\1/"),
    (r"/block_(\d+)/", r"/transformer_blocks/\1/"),
    (r"/(down|up)sample/", r"/\1samplers/0/conv/"),
    (r"/attn([12])/(q|k|v)/", r"/attn\1/to_\2/"),
    (r"/attn([12])/out/", r"/attn\1/to_out/0/"),
    (r"/ff/proj/", "/ff/net/0/proj/"),
    (r"/ff/out/", "/ff/net/2/"),
)

VAE_RULES = (
    (r"^(encoder|decoder)/(down|up)_(\d+)/", r"\1/\2_blocks/\3/"),
    (r"^(encoder|decoder)/mid/", r"\1/mid_block/"),
    (r"/norm_out/", "/conv_norm_out/"),
    (r"/res_(\d+)/", r"/resnets/\1/"),
    (r"/mid_block/attn_norm/", "/mid_block/attentions/0/group_norm/"),
    (r"/mid_block/attn/(q|k|v)/", r"/mid_block/attentions/0/to_\1/"),
    (r"/mid_block/attn/out/", "/mid_block/attentions/0/to_out/0/"),
    (r"/(down|up)sample/", r"/\1samplers/0/conv/"),
)


def unet_params(state_dict: StateDict, config: dict) -> dict:
    """`SDUNet(**config)` parameters of a diffusers U-Net state dict."""
    module = SDUNet(**config)
    return params_from_state_dict(state_dict, abstract_params(module, *module.example_inputs()),
                                  UNET_RULES, "unet")


def vae_params(state_dict: StateDict, config: dict) -> dict:
    """`vae.AutoencoderKL(**config)` parameters of a diffusers AutoencoderKL state dict, in the
    current attention names or the deprecated ones (query, key, value, proj_attn) that older
    files such as `sd-vae-ft-mse` may have."""
    module = AutoencoderKL(**config)
    size = 2 ** (len(module.block_out_channels) - 1)
    shapes = abstract_params(module, jnp.zeros((1, size, size, module.in_channels)))
    renamed = {re.sub(r"attentions\.0\.(query|key|value|proj_attn)\.",
                      lambda m: f"attentions.0.{DEPRECATED_VAE_ATTENTION[m.group(1)]}.", k): v
               for k, v in state_dict.items()}
    return params_from_state_dict(renamed, shapes, VAE_RULES, "vae")


DEPRECATED_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v",
                            "proj_attn": "to_out.0"}


def text_encoder_params(state_dict: StateDict, config: dict) -> dict:
    """`CLIPTextEncoder(**config)` parameters of a transformers CLIPTextModel state dict, with or
    without the `text_model.` prefix (files written before / since transformers 5)."""
    module = CLIPTextEncoder(**config)
    shapes = abstract_params(module, jnp.zeros((1, module.max_length), jnp.int32))
    stripped = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    return params_from_state_dict(stripped, shapes, TEXT_RULES, "text_encoder",
                                  ignore=lambda k: k == "embeddings.position_ids")


# ---- the single-file (CompVis / Stability) layout -> diffusers keys

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX, OPEN_CLIP_PREFIX = "cond_stage_model.transformer.", "cond_stage_model.model."

RESNET_NAMES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"),
                ("emb_layers.1", "time_emb_proj"), ("out_layers.0", "norm2"),
                ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def _resnet(rest: str) -> str:
    for old, new in RESNET_NAMES:
        rest = rest.replace(old, new)
    return rest


def compvis_unet_key(key: str, layers_per_block: int) -> str:
    """The diffusers key of an LDM `openaimodel.UNetModel` key (without `model.diffusion_model.`):
    input_blocks.{n} is down level (n - 1) // (L + 1), layer (n - 1) % (L + 1), the layer L being
    the level's downsampling; output_blocks.{n} is up level n // (L + 1), layer n % (L + 1),
    [resnet, transformer, upsample] or [resnet, upsample]; middle_block.{0, 1, 2} resnet,
    transformer, resnet."""
    fixed = {"time_embed.0.": "time_embedding.linear_1.",
             "time_embed.2.": "time_embedding.linear_2.", "input_blocks.0.0.": "conv_in.",
             "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    per = layers_per_block + 1
    if m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key):
        n, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, layer = (n - 1) // per, (n - 1) % per
        if rest.startswith("op."):
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        kind = "resnets" if part == 0 else "attentions"
        return f"down_blocks.{level}.{kind}.{layer}.{_resnet(rest) if part == 0 else rest}"
    if m := re.match(r"middle_block\.(\d)\.(.*)", key):
        part, rest = int(m.group(1)), m.group(2)
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{part // 2}.{_resnet(rest)}"
    if m := re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key):
        n, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, layer = n // per, n % per
        if part == 0:
            return f"up_blocks.{level}.resnets.{layer}.{_resnet(rest)}"
        if rest.startswith("conv."):
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{layer}.{rest}"
    raise ConfigError(f"unknown key model.diffusion_model.{key} in a single-file checkpoint")


def compvis_vae_key(key: str, levels: int) -> str:
    """The diffusers key of an LDM `AutoencoderKL` key (without `first_stage_model.`); the LDM
    decoder counts its levels from the highest resolution, diffusers from the deepest."""
    attention = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.",
                 "proj_out.": "to_out.0."}
    key = key.replace("nin_shortcut", "conv_shortcut").replace(".norm_out.", ".conv_norm_out.")
    if m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(.*)", key):
        part, rest = m.groups()
        for old, new in attention.items():
            if rest.startswith(old):
                return f"{part}.mid_block.attentions.0.{new}{rest[len(old):]}"
    if m := re.match(r"(encoder|decoder)\.mid\.block_([12])\.(.*)", key):
        return f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.{m.group(3)}"
    if m := re.match(r"encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.*)", key):
        inner = f"resnets.{m.group(3)}" if m.group(3) else "downsamplers.0"
        return f"encoder.down_blocks.{m.group(1)}.{inner}.{m.group(4)}"
    if m := re.match(r"decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.*)", key):
        inner = f"resnets.{m.group(3)}" if m.group(3) else "upsamplers.0"
        return f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.{inner}.{m.group(4)}"
    return key


def open_clip_to_transformers(state_dict: StateDict, num_layers: int) -> StateDict:
    """transformers CLIPTextModel keys of an OpenCLIP text tower (keys without
    `cond_stage_model.model.`): the packed in_proj split into q, k, v, resblocks from
    `num_layers` on dropped (SD 2 uses 23 of ViT-H's 24), text_projection and logit_scale
    dropped (no part of the U-Net's conditioning)."""
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    out = {}
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final."):]] = value
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key):
            layer, rest = int(m.group(1)), m.group(2)
            if layer >= num_layers:
                continue
            prefix = f"encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", np.split(value, 3, axis=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
                continue
            for old, new in names.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
            out[prefix + rest] = value
        elif key not in ("text_projection", "logit_scale", "attn_mask"):
            out[key] = value
    return out


def single_file_components(state_dict: StateDict, configs: dict) -> dict[str, StateDict]:
    """{"unet", "text_encoder", "vae"} state dicts in diffusers / transformers keys of a
    single-file checkpoint, using the diffusers-format `configs` (of `RELEASED`) for the block
    counts. Keys outside the three networks (the schedule buffers, `model_ema.*`, the VAE's
    training loss `first_stage_model.loss.*`) are left out: the U-Net is the non-EMA
    `model.diffusion_model`, which in the released "-emaonly" files holds the EMA weights."""
    def part(prefix):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

    layers = configs["unet"]["layers_per_block"]
    levels = len(configs["vae"]["block_out_channels"])
    unet = {compvis_unet_key(k, layers): v for k, v in part(UNET_PREFIX).items()}
    vae = {compvis_vae_key(k, levels): v for k, v in part(VAE_PREFIX).items()
           if not k.startswith("loss.")}
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state_dict):
        text = open_clip_to_transformers(part(OPEN_CLIP_PREFIX),
                                         configs["text_encoder"]["num_hidden_layers"])
    else:
        text = part(CLIP_PREFIX)
    for name, tensors in (("unet", unet), ("text encoder", text), ("vae", vae)):
        if not tensors:
            raise ConfigError(f"the single-file checkpoint has no {name} weights")
    return {"unet": unet, "text_encoder": text, "vae": vae}


# ---- whole checkpoints

@dataclasses.dataclass(frozen=True)
class StableDiffusionWeights:
    """Everything a Stable Diffusion pipeline needs, as host float32 numpy trees:
    `SDUNet(**unet_config)` with `unet`, `CLIPTextEncoder(**text_encoder_config)` with
    `text_encoder`, `vae.AutoencoderKL(**vae_config)` with `vae`; diffusion runs on
    `scaling_factor * z` of VAE latents z; `sample_size` is the U-Net's trained latent
    resolution (the image is `sample_size * 2^(vae levels - 1)` pixels wide); `source_configs`
    holds the config files as read."""

    unet: dict
    unet_config: dict
    text_encoder: dict
    text_encoder_config: dict
    vae: dict
    vae_config: dict
    scaling_factor: float
    scheduler: SchedulerConfig
    tokenizer: Optional[CLIPTokenizer]
    sample_size: int
    source_configs: dict[str, Any]


def _assemble(states: dict[str, StateDict], configs: dict[str, dict],
              tokenizer: Optional[CLIPTokenizer]) -> StableDiffusionWeights:
    unet_kw, text_kw, vae_kw = (unet_config(configs["unet"]),
                                text_encoder_config(configs["text_encoder"]),
                                vae_config(configs["vae"]))
    return StableDiffusionWeights(
        unet=unet_params(states["unet"], unet_kw), unet_config=unet_kw,
        text_encoder=text_encoder_params(states["text_encoder"], text_kw),
        text_encoder_config=text_kw, vae=vae_params(states["vae"], vae_kw), vae_config=vae_kw,
        scaling_factor=float(configs["vae"].get("scaling_factor", 0.18215)),
        scheduler=scheduler_config(configs["scheduler"]), tokenizer=tokenizer,
        sample_size=int(configs["unet"].get("sample_size", 64)), source_configs=configs)


WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "text_encoder": "model",
                "vae": "diffusion_pytorch_model"}


def load_model_dir(path: str, variant: Optional[str] = None,
                   reader: Callable[[str], StateDict] = read_safetensors) -> StableDiffusionWeights:
    """A diffusers Stable Diffusion directory: `unet/`, `text_encoder/`, `vae/` (config.json and
    `<name>[.variant].safetensors`, e.g. variant "fp16"), `scheduler/scheduler_config.json`,
    `tokenizer/`. `reader` maps a weights file to a state dict."""
    configs = {"model_index": read_json(os.path.join(path, "model_index.json")),
               "scheduler": read_json(os.path.join(path, "scheduler", "scheduler_config.json"))}
    states = {}
    for name, stem in WEIGHT_FILES.items():
        configs[name] = read_json(os.path.join(path, name, "config.json"))
        file = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
        states[name] = reader(os.path.join(path, name, file))
    return _assemble(states, configs, CLIPTokenizer.from_dir(os.path.join(path, "tokenizer")))


def load_single_file(state_dict: StateDict, base,
                     tokenizer: Optional[CLIPTokenizer] = None) -> StableDiffusionWeights:
    """A single-file CompVis / Stability checkpoint's state dict (read it with `read_safetensors`
    or the torch-file reader) with the configs of `base`: a name of `RELEASED` ("sd15", "sd21",
    "sd21_base") or a dict of diffusers-format {"unet", "text_encoder", "vae", "scheduler"}
    configs. The U-Net's input channels are read off its first convolution (9 for the
    inpainting checkpoints). Such files carry no tokenizer: pass the base model's."""
    if isinstance(base, str) and base not in RELEASED:
        raise ConfigError(f"unknown Stable Diffusion base {base!r}; valid: "
                          f"{', '.join(sorted(RELEASED))}")
    configs = {name: dict(config)
               for name, config in (RELEASED[base] if isinstance(base, str) else base).items()}
    states = single_file_components(state_dict, configs)
    if "conv_in.weight" in states["unet"]:
        configs["unet"]["in_channels"] = int(states["unet"]["conv_in.weight"].shape[1])
    return _assemble(states, configs, tokenizer)


# ---- one network at a time, and the configs alone

@dataclasses.dataclass(frozen=True)
class StableDiffusionConfigs:
    """What a Stable Diffusion model is without its weights: the module keyword arguments of
    `SDUNet`, `CLIPTextEncoder` and `vae.AutoencoderKL`, the latent `scaling_factor`, the
    training `scheduler`, the U-Net's latent `sample_size` and the `tokenizer` (None when the
    source has none)."""

    unet_config: dict
    text_encoder_config: dict
    vae_config: dict
    scaling_factor: float
    scheduler: SchedulerConfig
    sample_size: int
    tokenizer: Optional[CLIPTokenizer]


SINGLE_FILE_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"


def _single_file_in_channels(path: str) -> int:
    """The U-Net input channels of a single-file checkpoint (9 for the inpainting models), from
    a .safetensors header alone, or from a torch file's tensors."""
    if path.endswith(".safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int(np.frombuffer(f.read(8), "<u8")[0])))
        shape = header.get(SINGLE_FILE_CONV_IN, {}).get("shape")
    else:
        from diffusion_jax.importers.torch_files import load_state_dict

        tensor = load_state_dict(path).get(SINGLE_FILE_CONV_IN)
        shape = None if tensor is None else tensor.shape
    if shape is None:
        raise ConfigError(f"{path!r} has no {SINGLE_FILE_CONV_IN}: not a Stable Diffusion "
                          f"single-file checkpoint")
    return int(shape[1])


def _directory_configs(path: str) -> dict:
    configs = {"scheduler": read_json(os.path.join(path, "scheduler", "scheduler_config.json"))}
    for name in WEIGHT_FILES:
        configs[name] = read_json(os.path.join(path, name, "config.json"))
    return configs


def source_configs(source: str, base: str = "") -> dict:
    """The diffusers-format {"unet", "text_encoder", "vae", "scheduler"} configs of `source`: a
    model directory's files; for a single-file checkpoint (or no source) those of `base` (a
    name of `RELEASED`, or a model directory whose architecture the file shares), with the
    file's U-Net input channels."""
    if source and os.path.isdir(source):
        return _directory_configs(source)
    if source and not os.path.isfile(source):
        raise ConfigError(f"Stable Diffusion source {source!r} is neither a model directory "
                          f"nor a checkpoint file")
    if base and os.path.isdir(base):
        configs = _directory_configs(base)
    elif base in RELEASED:
        configs = {name: dict(config) for name, config in RELEASED[base].items()}
    else:
        raise ConfigError(f"unknown Stable Diffusion base {base!r}; valid: a model directory "
                          f"or {', '.join(sorted(RELEASED))}")
    if source:
        configs["unet"] = dict(configs["unet"], in_channels=_single_file_in_channels(source))
    return configs


def read_configs(source: str, base: str = "", tokenizer_dir: str = "") -> StableDiffusionConfigs:
    """`StableDiffusionConfigs` of `source` (see `source_configs`), with the tokenizer of
    `tokenizer_dir`, else of the `tokenizer/` of the model directory `source` or `base`; no
    weights are read."""
    configs = source_configs(source, base)
    for directory in (source, base):
        if not tokenizer_dir and directory and os.path.isdir(directory):
            tokenizer_dir = os.path.join(directory, "tokenizer")
    return StableDiffusionConfigs(
        unet_config=unet_config(configs["unet"]),
        text_encoder_config=text_encoder_config(configs["text_encoder"]),
        vae_config=vae_config(configs["vae"]),
        scaling_factor=float(configs["vae"].get("scaling_factor", 0.18215)),
        scheduler=scheduler_config(configs["scheduler"]),
        sample_size=int(configs["unet"].get("sample_size", 64)),
        tokenizer=CLIPTokenizer.from_dir(tokenizer_dir) if tokenizer_dir else None)


COMPONENT_PARAMS = {"unet": (unet_params, unet_config),
                    "text_encoder": (text_encoder_params, text_encoder_config),
                    "vae": (vae_params, vae_config)}


RELEASED_VAES = ("sd-vae-ft-ema", "sd-vae-ft-mse")
"""The released VAEs latent DiT / SiT / MeanFlow / EDM2 models use: fine-tuned decoders of SD
1.x's autoencoder, with its architecture (`RELEASED['sd15']['vae']`)."""


def _is_component_dir(path: str) -> bool:
    """A directory holding one network in diffusers' layout (config.json + weights), such as
    stabilityai/sd-vae-ft-ema, rather than a whole pipeline."""
    return os.path.isfile(os.path.join(path, "config.json"))


def vae_directory_config(path: str) -> dict:
    """The diffusers `AutoencoderKL` config.json of `path`: a VAE directory (sd-vae-ft-ema:
    config.json and diffusion_pytorch_model.safetensors) or a model directory's `vae/`."""
    if not os.path.isdir(path):
        raise ConfigError(f"VAE directory {path!r} does not exist")
    config = read_json(os.path.join(path, "config.json") if _is_component_dir(path)
                       else os.path.join(path, "vae", "config.json"))
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"{path!r} holds a {config['_class_name']}, not an AutoencoderKL")
    return config


def released_vae(name: str) -> tuple[AutoencoderKL, float]:
    """(network, scaling factor) of a released VAE by name (`RELEASED_VAES`), or of the VAE
    directory `name`."""
    if name in RELEASED_VAES:
        config = RELEASED["sd15"]["vae"]
    elif os.path.isdir(name):
        config = vae_directory_config(name)
    else:
        raise ConfigError(f"unknown VAE {name!r}; valid: a VAE directory or "
                          f"{', '.join(RELEASED_VAES)}")
    return AutoencoderKL(**vae_config(config)), float(config.get("scaling_factor", 0.18215))


def load_component(source: str, component: str, base: str = "", variant: str = "") -> dict:
    """The parameters of one network ('unet', 'text_encoder' or 'vae') of `source`: a diffusers
    model directory (only that network's files are read; `variant` e.g. 'fp16'), a VAE
    directory (`vae_directory_config`), or a single-file checkpoint (.safetensors or a torch
    file such as .ckpt) with the configs of `base` (`source_configs`)."""
    if component not in COMPONENT_PARAMS:
        raise ConfigError(f"unknown Stable Diffusion component {component!r}; valid: "
                          f"{', '.join(COMPONENT_PARAMS)}")
    to_params, to_kwargs = COMPONENT_PARAMS[component]
    if component == "vae" and os.path.isdir(source) and _is_component_dir(source):
        file = f"{WEIGHT_FILES['vae']}.{variant}.safetensors" if variant else \
            f"{WEIGHT_FILES['vae']}.safetensors"
        return to_params(read_safetensors(os.path.join(source, file)),
                         to_kwargs(vae_directory_config(source)))
    configs = source_configs(source, base)
    if os.path.isdir(source):
        stem = WEIGHT_FILES[component]
        file = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
        state = read_safetensors(os.path.join(source, component, file))
    else:
        from diffusion_jax.importers.torch_files import load_state_dict

        state = single_file_components(load_state_dict(source), configs)[component]
    return to_params(state, to_kwargs(configs[component]))
