"""diffusers `UNet2DModel` checkpoints <-> our DDPM U-Net (`models.unet.UNet`).

The `google/ddpm-*` releases (Ho et al. 2020, converted by diffusers) are directories with
`config.json` and `diffusion_pytorch_model.safetensors` or `.bin` (and `scheduler_config.json`
at the top of the repository). Their layout is the U-Net of Ho et al.: `block_out_channels`
= ch x ch_mult, `layers_per_block` residual blocks, `AttnDownBlock2D` / `AttnUpBlock2D` at the
attention resolutions (one head of all channels: `attention_head_dim=None`), stride-2
convolutions padded at the bottom and right (`downsample_padding=0`), `norm_num_groups`
GroupNorm groups, a sinusoidal embedding [sin, cos] of the timestep with frequencies
10000^(-k / (half - 1)) (`flip_sin_to_cos=False`, `freq_shift=1`). Other settings raise
ConfigError.

Tensors map one to one (convolutions OIHW -> HWIO, linear layers (out, in) -> (in, out),
GroupNorm weight -> scale), except attention: diffusers' separate `to_q`, `to_k`, `to_v`
projections are our one `qkv` Dense ([q | k | v] along its output). Checkpoints of diffusers
before 0.14 name them `query`, `key`, `value`, `proj_attn`; both are read. Export writes the
current names.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.importers import torch_files
from diffusion_jax.importers.run import network_config
from diffusion_jax.models.layers import group_count
from diffusion_jax.models.unet import UNet

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
EXPORT_WEIGHTS = "diffusion_pytorch_model.safetensors"
# the diffusers settings that are our U-Net's, and their values
REQUIRED = dict(act_fn="silu", attention_head_dim=None, center_input_sample=False,
                class_embed_type=None, downsample_padding=0, downsample_type="conv",
                flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1,
                norm_eps=1e-6, num_class_embeds=None, resnet_time_scale_shift="default",
                time_embedding_type="positional", upsample_type="conv", add_attention=True,
                attn_norm_num_groups=None, time_embedding_dim=None,
                mid_block_type="UNetMidBlock2D")
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def unet_layout(num_levels: int, num_res_blocks: int, attention_levels) -> list[tuple]:
    """(our module name, diffusers prefix, kind) of every block, in the order `UNet` creates
    them (which numbers our `ResnetBlock_i`, `AttnBlock_i`, `Downsample_i`, `Upsample_i`).
    kind: 'resnet', 'attn', 'down', 'up'."""
    counts = dict(ResnetBlock=0, AttnBlock=0, Downsample=0, Upsample=0)
    layout = []

    def add(cls, prefix, kind):
        layout.append((f"{cls}_{counts[cls]}", prefix, kind))
        counts[cls] += 1

    for level in range(num_levels):
        for i in range(num_res_blocks):
            add("ResnetBlock", f"down_blocks.{level}.resnets.{i}", "resnet")
            if level in attention_levels:
                add("AttnBlock", f"down_blocks.{level}.attentions.{i}", "attn")
        if level != num_levels - 1:
            add("Downsample", f"down_blocks.{level}.downsamplers.0", "down")
    add("ResnetBlock", "mid_block.resnets.0", "resnet")
    add("AttnBlock", "mid_block.attentions.0", "attn")
    add("ResnetBlock", "mid_block.resnets.1", "resnet")
    for up, level in enumerate(reversed(range(num_levels))):
        for i in range(num_res_blocks + 1):
            add("ResnetBlock", f"up_blocks.{up}.resnets.{i}", "resnet")
            if level in attention_levels:
                add("AttnBlock", f"up_blocks.{up}.attentions.{i}", "attn")
        if level != 0:
            add("Upsample", f"up_blocks.{up}.upsamplers.0", "up")
    return layout


def _conv(w):
    return np.asarray(w, np.float32).transpose(2, 3, 1, 0)


def _dense(w):
    return np.asarray(w, np.float32).T


def _vector(v):
    return np.asarray(v, np.float32)


def model_kwargs(diffusers_config: dict) -> dict:
    """Our `UNet` constructor arguments for a diffusers `UNet2DModel` config (ConfigError for
    settings our U-Net does not have)."""
    c = diffusers_config
    if c.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"not a UNet2DModel config: _class_name {c['_class_name']!r}")
    for key, value in REQUIRED.items():
        if key in c and c[key] != value:
            raise ConfigError(f"diffusers UNet2DModel with {key}={c[key]!r} is not the DDPM "
                              f"U-Net (needs {key}={value!r})")
    if c.get("in_channels", 3) != c.get("out_channels", 3):
        raise ConfigError("diffusers UNet2DModel with in_channels != out_channels")
    channels = list(c["block_out_channels"])
    ch = channels[0]
    if any(b % ch for b in channels):
        raise ConfigError(f"block_out_channels {channels} are not multiples of the first")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    valid = {"DownBlock2D", "AttnDownBlock2D"}
    if set(down) - valid or set(up) - {"UpBlock2D", "AttnUpBlock2D"} or len(down) != len(up):
        raise ConfigError(f"unsupported block types {down} / {up}; valid: DownBlock2D, "
                          "AttnDownBlock2D and their UpBlock2D mirrors")
    attention = [i for i, t in enumerate(down) if t == "AttnDownBlock2D"]
    if [len(up) - 1 - i for i, t in enumerate(up) if t == "AttnUpBlock2D"][::-1] != attention:
        raise ConfigError("the attention levels of down_block_types and up_block_types differ")
    size = int(c["sample_size"])
    kwargs = dict(ch=ch, ch_mult=tuple(b // ch for b in channels),
                  num_res_blocks=int(c["layers_per_block"]),
                  attn_resolutions=tuple(size >> i for i in attention), resamp_with_conv=True)
    if "dropout" in c:
        kwargs["dropout"] = float(c["dropout"])
    groups = int(c.get("norm_num_groups", 32))
    widths = norm_channels(ch, kwargs["ch_mult"], kwargs["num_res_blocks"])
    if any(group_count(w) != groups for w in widths):  # else the default rule gives them
        kwargs["num_groups"] = groups
    return kwargs


def norm_channels(ch: int, ch_mult, num_res_blocks: int) -> list[int]:
    """The channel counts of every GroupNorm of the U-Net (residual block inputs and outputs,
    attention, the output norm), in the order `UNet` applies them."""
    h, skips, widths = ch, [ch], []
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            widths += [h, ch * mult]
            h = ch * mult
            skips.append(h)
        if level != len(ch_mult) - 1:
            skips.append(h)
    widths += [h, h, h, h, h]
    for mult in reversed(ch_mult):
        for _ in range(num_res_blocks + 1):
            widths += [h + skips.pop(), ch * mult]
            h = ch * mult
    return widths + [h]


def _attention_levels(kwargs: dict, size: int) -> list[int]:
    return [i for i in range(len(kwargs["ch_mult"])) if size >> i in kwargs["attn_resolutions"]]


def params_from_state_dict(state: dict, kwargs: dict, size: int) -> dict:
    """Our U-Net params (nested dicts of float32 arrays) from a diffusers state dict."""
    state = {_current_name(k): v for k, v in state.items()}
    used = set()

    def get(name):
        if name not in state:
            raise ConfigError(f"the diffusers checkpoint has no tensor {name}")
        used.add(name)
        return state[name]

    def leaves(prefix, kind):
        return {"kernel": kind(get(f"{prefix}.weight")), "bias": _vector(get(f"{prefix}.bias"))}

    def norm(prefix):
        return {"scale": _vector(get(f"{prefix}.weight")), "bias": _vector(get(f"{prefix}.bias"))}

    params = {"conv_in": leaves("conv_in", _conv),
              "temb_dense0": leaves("time_embedding.linear_1", _dense),
              "temb_dense1": leaves("time_embedding.linear_2", _dense),
              "GroupNorm_0": norm("conv_norm_out"), "conv_out": leaves("conv_out", _conv)}
    for ours, prefix, kind in unet_layout(len(kwargs["ch_mult"]), kwargs["num_res_blocks"],
                                          _attention_levels(kwargs, size)):
        if kind == "resnet":
            block = {"GroupNorm_0": norm(f"{prefix}.norm1"),
                     "Conv_0": leaves(f"{prefix}.conv1", _conv),
                     "Dense_0": leaves(f"{prefix}.time_emb_proj", _dense),
                     "GroupNorm_1": norm(f"{prefix}.norm2"),
                     "Conv_1": leaves(f"{prefix}.conv2", _conv)}
            if f"{prefix}.conv_shortcut.weight" in state:
                block["nin_shortcut"] = leaves(f"{prefix}.conv_shortcut", _conv)
        elif kind == "attn":
            q, k, v = (leaves(f"{prefix}.{n}", _dense) for n in ("to_q", "to_k", "to_v"))
            block = {"GroupNorm_0": norm(f"{prefix}.group_norm"),
                     "qkv": {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], 1),
                             "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])},
                     "proj_out": leaves(f"{prefix}.to_out.0", _dense)}
        else:
            block = {"Conv_0": leaves(f"{prefix}.conv", _conv)}
        params[ours] = block
    unused = sorted(set(state) - used)
    if unused:
        raise ConfigError(f"the diffusers checkpoint has tensors this U-Net does not: "
                          f"{unused[:4]}")
    return params


def _current_name(name: str) -> str:
    """A pre-0.14 diffusers attention tensor name in today's naming."""
    parts = name.split(".")
    if "attentions" in parts and len(parts) >= 2 and parts[-2] in _OLD_ATTENTION_NAMES:
        return ".".join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    return name


def state_dict_from_params(params: dict, kwargs: dict, size: int) -> dict[str, np.ndarray]:
    """The diffusers state dict of our U-Net params (the inverse of `params_from_state_dict`)."""
    state = {}

    def put(prefix, p, kind):
        w = np.asarray(p["kernel"], np.float32)
        state[f"{prefix}.weight"] = w.transpose(3, 2, 0, 1) if kind == "conv" else w.T
        state[f"{prefix}.bias"] = np.asarray(p["bias"], np.float32)

    def put_norm(prefix, p):
        state[f"{prefix}.weight"] = np.asarray(p["scale"], np.float32)
        state[f"{prefix}.bias"] = np.asarray(p["bias"], np.float32)

    put("conv_in", params["conv_in"], "conv")
    put("time_embedding.linear_1", params["temb_dense0"], "dense")
    put("time_embedding.linear_2", params["temb_dense1"], "dense")
    for ours, prefix, kind in unet_layout(len(kwargs["ch_mult"]), kwargs["num_res_blocks"],
                                          _attention_levels(kwargs, size)):
        p = params[ours]
        if kind == "resnet":
            put_norm(f"{prefix}.norm1", p["GroupNorm_0"])
            put(f"{prefix}.conv1", p["Conv_0"], "conv")
            put(f"{prefix}.time_emb_proj", p["Dense_0"], "dense")
            put_norm(f"{prefix}.norm2", p["GroupNorm_1"])
            put(f"{prefix}.conv2", p["Conv_1"], "conv")
            if "nin_shortcut" in p:
                put(f"{prefix}.conv_shortcut", p["nin_shortcut"], "conv")
        elif kind == "attn":
            put_norm(f"{prefix}.group_norm", p["GroupNorm_0"])
            kernels = np.split(np.asarray(p["qkv"]["kernel"]), 3, axis=1)
            biases = np.split(np.asarray(p["qkv"]["bias"]), 3)
            for name, w, b in zip(("to_q", "to_k", "to_v"), kernels, biases):
                put(f"{prefix}.{name}", {"kernel": w, "bias": b}, "dense")
            put(f"{prefix}.to_out.0", p["proj_out"], "dense")
        else:
            put(f"{prefix}.conv", p["Conv_0"], "conv")
    put_norm("conv_norm_out", params["GroupNorm_0"])
    put("conv_out", params["conv_out"], "conv")
    return state


def diffusers_config(kwargs: dict, image_shape) -> dict:
    """The `UNet2DModel` config.json of our U-Net `kwargs` on images of `image_shape`
    (ConfigError for a U-Net diffusers cannot express)."""
    size, _, channels = image_shape
    ch, mult = int(kwargs["ch"]), tuple(int(m) for m in kwargs["ch_mult"])
    if mult[0] != 1:
        raise ConfigError("diffusers' UNet2DModel needs ch_mult[0] = 1 (its first block has "
                          "the width of conv_in)")
    if not kwargs.get("resamp_with_conv", True):
        raise ConfigError("diffusers' UNet2DModel resamples with convolutions "
                          "(resamp_with_conv=True)")
    if kwargs.get("cross_attention") or kwargs.get("num_classes"):
        raise ConfigError("only unconditional U-Nets are exported to diffusers")
    groups = {group_count(c, num_groups=int(kwargs.get("num_groups", 0)))
              for c in norm_channels(ch, mult, int(kwargs["num_res_blocks"]))}
    if len(groups) != 1:
        raise ConfigError(f"this U-Net's GroupNorm group counts differ by layer "
                          f"({sorted(groups)}); diffusers has one norm_num_groups: set "
                          "model.num_groups")
    levels = _attention_levels(kwargs, size)
    down = ["AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(len(mult))]
    up = ["AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(len(mult)))]
    return dict(REQUIRED, _class_name="UNet2DModel", sample_size=int(size),
                in_channels=int(channels), out_channels=int(channels),
                block_out_channels=[ch * m for m in mult],
                layers_per_block=int(kwargs["num_res_blocks"]), down_block_types=down,
                up_block_types=up, norm_num_groups=groups.pop(),
                dropout=float(kwargs.get("dropout", 0.0)))


def weight_file(directory: str) -> str:
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"{directory!r} has no {' or '.join(WEIGHT_FILES)} (a diffusers "
                      "UNet2DModel directory, e.g. google/ddpm-cifar10-32 or its unet/)")


def _scheduler_config(directory: str) -> dict | None:
    for path in (os.path.join(directory, "scheduler_config.json"),
                 os.path.join(directory, os.pardir, "scheduler", "scheduler_config.json")):
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None


def apply_scheduler(config, scheduler: dict) -> None:
    """The forward process of a diffusers `DDPMScheduler` config (T, linear betas). Its
    `variance_type` and `clip_sample` are diffusers' pipeline settings, not the paper's
    sampler (Ho et al.'s CIFAR-10 samples with sigma_t^2 = beta_t and clips the predicted x0,
    `scripts/run_cifar.py`, `p_sample`), so the base config's sampler is kept."""
    if scheduler.get("beta_schedule", "linear") != "linear" or scheduler.get("trained_betas"):
        raise ConfigError(f"diffusers scheduler beta_schedule {scheduler.get('beta_schedule')!r}:"
                          " only 'linear' is imported")
    if scheduler.get("prediction_type", "epsilon") != "epsilon":
        raise ConfigError("only epsilon-prediction diffusers models are imported")
    config.diffusion.update(schedule="linear",
                            num_timesteps=int(scheduler["num_train_timesteps"]),
                            beta_start=float(scheduler["beta_start"]),
                            beta_end=float(scheduler["beta_end"]), prediction="epsilon")


def import_unet(directory: str, base_config):
    """(config, params) of the diffusers `UNet2DModel` in `directory`: `base_config` (a DDPM
    config, e.g. `configs/ddpm/cifar10.py`) with the network keys of its `config.json` and, when
    a `scheduler_config.json` is beside it (or in ../scheduler/), its forward process
    (`apply_scheduler`); params from its weight file. ConfigError when the data set's image shape is not
    the network's."""
    from diffusion_jax import builders

    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{directory!r} has no config.json (a diffusers UNet2DModel directory)")
    with open(path) as f:
        unet_config = json.load(f)
    kwargs = model_kwargs(unet_config)
    config = copy.deepcopy(base_config)
    if config.method != "ddpm" or config.model.name != "unet":
        raise ConfigError("a diffusers UNet2DModel imports into a DDPM config (method ddpm, "
                          "model unet), e.g. configs/ddpm/cifar10.py")
    shape = builders.dataset_spec(config).image_shape
    size, channels = int(unet_config["sample_size"]), int(unet_config["in_channels"])
    if tuple(shape) != (size, size, channels):
        raise ConfigError(f"the diffusers U-Net is for {size}x{size}x{channels} images; the data "
                          f"set {config.data.dataset!r} has {tuple(shape)}")
    if config.model.get("class_conditional", False):
        raise ConfigError("a diffusers UNet2DModel is imported unconditional; the base config "
                          "has model.class_conditional=True")
    config.model = network_config(config.model, UNet, kwargs)
    scheduler = _scheduler_config(directory)
    if scheduler is not None:
        apply_scheduler(config, scheduler)
    params = params_from_state_dict(torch_files.load_state_dict(weight_file(directory)), kwargs,
                                    size)
    return config, params


def export_unet(directory: str, config, params) -> None:
    """Writes our U-Net `params` (of a DDPM `config`) as a diffusers `UNet2DModel` directory:
    `config.json` and `diffusion_pytorch_model.safetensors`, loadable with
    `UNet2DModel.from_pretrained(directory)`."""
    from diffusion_jax import builders

    if config.model.name != "unet":
        raise ConfigError(f"only the DDPM U-Net (model.name='unet') is exported to diffusers; "
                          f"this run has {config.model.name!r}")
    kwargs = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
    shape = builders.dataset_spec(config).image_shape
    if builders.num_classes(config):
        raise ConfigError("only unconditional U-Nets are exported to diffusers")
    unet_config = diffusers_config(kwargs, shape)
    state = state_dict_from_params(_to_numpy(params), kwargs, shape[0])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(unet_config, f, indent=2, sort_keys=True)
    torch_files.save_safetensors(os.path.join(directory, EXPORT_WEIGHTS), state,
                                 metadata={"format": "pt"})


def _to_numpy(tree):
    """Nested mappings of (jax or numpy) arrays as nested dicts of numpy arrays."""
    if hasattr(tree, "items"):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
