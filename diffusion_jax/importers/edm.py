"""EDM's released networks (Karras et al. 2022; NVlabs/edm) -> our EDM configs and NCSN++ params.

The released CIFAR-10 snapshots (`edm-cifar10-32x32-{uncond,cond}-{vp,ve}.pkl`) are plain
pickles of `dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...)` whose classes
are NVlabs' "persistent" classes (`torch_utils.persistence`): each object pickles as
`_reconstruct_persistent_obj(meta)` with the source code of its module, its class name and its
state. Unpickling normally executes that source; here it is never run: a small stand-in for
`_reconstruct_persistent_obj` returns a `PersistentObject` (class name and state, the source
dropped), through the restricted unpickler of `torch_files`, so only tensors and plain values
come back. A state dict (`net.state_dict()` saved by `torch.save`, keys `model.enc...`) works
too.

`ema` is `EDMPrecond` (or `VPPrecond` / `VEPrecond`) around a `SongUNet`; its architecture is
read from the tensor names and shapes (resolutions, channels, blocks, attention, Fourier or
positional embedding, residual encoder, resampling filter), its preconditioning from the
class name and `sigma_data`. The mapping onto `models.ncsnpp.NCSNpp` (the EDM presets of
`ncsnpp.py`):
  - `map_noise.freqs` -> `fourier_proj/W`; `map_layer0/1` -> `temb_dense0/1`;
  - `map_label` (a Linear of the one-hot label times sqrt(label_dim)) -> `label_emb`, row c =
    sqrt(label_dim) W[:, c] + b, and row label_dim (our null label) = b, EDM's output for the
    all-zero label that `EDMPrecond` passes when there is none; `map_augment` is dropped (the
    augmentation labels are None when sampling);
  - each `UNetBlock` -> a `ResnetBlockBigGANpp` (norm0, conv0, affine, norm1, conv1, skip) and,
    with attention, an `AttnBlockpp` (norm2, qkv, proj): EDM's qkv output channel 3 c + j is
    our [q | k | v] column j C + c;
  - `enc.*_aux_residual` -> the residual pyramid's `Downsample_i`; `dec.*_aux_norm`, `_aux_conv`
    -> `norm_out`, `conv_out`.
The 'skip' encoder and decoder of SongUNet and `DhariwalUNet` (ADM) are not imported.
"""
from __future__ import annotations

import copy
import math
import re

import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.importers import torch_files
from diffusion_jax.importers.run import network_config
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.up_down import fir_kernel_2d

PRECONDITIONINGS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
_VP_DEFAULTS = dict(beta_d=19.9, beta_min=0.1, M=1000)


class PersistentObject:
    """An object of one of NVlabs' persistent classes: its class name and pickled state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, dict(state)

    def __repr__(self):
        return f"PersistentObject({self.class_name})"


class ModuleStandIn:
    """A plain `torch.nn` container (`ModuleDict`, ...) inside a pickle: its state only."""

    def __setstate__(self, state):
        self.state = dict(state)


def _reconstruct_persistent_obj(meta):
    """`torch_utils.persistence._reconstruct_persistent_obj` without executing the pickled
    module source: the class name and the state."""
    if meta.get("type") != "class":
        raise ConfigError(f"unsupported persistent object type {meta.get('type')!r}")
    return PersistentObject(meta["class_name"], meta.get("state") or {})


PERSISTENCE_CLASSES = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): dict,
    **{("torch.nn.modules.container", name): ModuleStandIn
       for name in ("ModuleDict", "ModuleList", "Sequential")},
}


def load_snapshot(path) -> dict:
    """The dict an EDM training snapshot pickles (`ema`, `loss_fn`, `augment_pipe`,
    `dataset_kwargs`), persistent objects as `PersistentObject`s, tensors as numpy arrays."""
    data = torch_files.load_pickle(path, PERSISTENCE_CLASSES)
    if not isinstance(data, dict) or "ema" not in data:
        raise ConfigError(f"{path!r} is not an EDM network snapshot (a pickled dict with 'ema')")
    return data


def module_state_dict(module, prefix: str = "") -> dict[str, np.ndarray]:
    """The `state_dict()` of an unpickled torch module: parameters and persistent buffers of
    it and its submodules, by dotted name."""
    state = module.state
    out = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _init_kwargs(obj) -> dict:
    return dict(obj.state.get("_init_kwargs") or {})


def architecture(state: dict) -> dict:
    """SongUNet's settings read from its state dict (keys `model.*`)."""
    names = set(state)
    if "model.out_conv.weight" in names:
        raise ConfigError("DhariwalUNet (ADM) is not imported; only SongUNet (DDPM++ / NCSN++)")
    conv = [n for n in names if re.fullmatch(r"model\.enc\.(\d+)x\1_conv\.weight", n)]
    if len(conv) != 1:
        raise ConfigError("not an EDM SongUNet state dict (no model.enc.<R>x<R>_conv.weight)")
    resolution = int(re.fullmatch(r"model\.enc\.(\d+)x\d+_conv\.weight", conv[0]).group(1))
    if any("_aux_skip" in n or "_aux_up" in n for n in names):
        raise ConfigError("SongUNet with the 'skip' encoder or decoder is not imported "
                          "(only EDM's standard / residual CIFAR-10 architectures)")
    w = state[conv[0]]
    model_channels, in_channels = int(w.shape[0]), int(w.shape[1])
    levels, mult, blocks, attn = 0, [], 0, []
    while f"model.enc.{resolution >> levels}x{resolution >> levels}_block0.conv0.weight" in names:
        res = resolution >> levels
        width = int(state[f"model.enc.{res}x{res}_block0.conv0.weight"].shape[0])
        mult.append(width // model_channels)
        if f"model.enc.{res}x{res}_block0.qkv.weight" in names:
            attn.append(res)
        levels += 1
    while f"model.enc.{resolution}x{resolution}_block{blocks}.conv0.weight" in names:
        blocks += 1
    fourier = "model.map_noise.freqs" in names
    noise_channels = int(state["model.map_layer0.weight"].shape[1])
    if noise_channels != model_channels * (2 if fourier else 1):
        raise ConfigError(f"SongUNet with {noise_channels} noise channels at {model_channels} "
                          f"model channels: our NCSN++ embeds the noise in "
                          f"{'2x' if fourier else '1x'} model_channels")
    residual = any("_aux_residual" in n for n in names)
    filters = [np.asarray(v, np.float32).reshape(np.shape(v)[-2:])
               for n, v in state.items() if n.endswith("resample_filter")]
    known = {2: fir_kernel_2d((1, 1)), 4: fir_kernel_2d((1, 3, 3, 1))}
    if not filters or any(f.shape[0] not in known or not np.allclose(f, known[f.shape[0]])
                          or f.shape != filters[0].shape for f in filters):
        raise ConfigError("the EDM state dict's resample_filter buffers are missing or not one "
                          "of SongUNet's [1, 1] and [1, 3, 3, 1]")
    label = state.get("model.map_label.weight")
    return dict(img_resolution=resolution, in_channels=in_channels, model_channels=model_channels,
                channel_mult=tuple(mult), num_blocks=blocks, attn_resolutions=tuple(attn),
                embedding_type="fourier" if fourier else "positional",
                encoder_type="residual" if residual else "standard",
                fir=filters[0].shape[0] == 4,
                label_dim=int(label.shape[1]) if label is not None else 0)


def model_kwargs(arch: dict, dropout: float) -> dict:
    """Our NCSNpp constructor arguments for SongUNet settings `arch` (EDM's presets in
    `ncsnpp.edm_ddpmpp_cifar10_kwargs` with the file's sizes)."""
    from diffusion_jax.models import ncsnpp

    kwargs = ncsnpp.edm_ncsnpp_cifar10_kwargs() if arch["fir"] else \
        ncsnpp.edm_ddpmpp_cifar10_kwargs()
    kwargs.update(nf=arch["model_channels"], ch_mult=arch["channel_mult"],
                  num_res_blocks=arch["num_blocks"], attn_resolutions=arch["attn_resolutions"],
                  dropout=float(dropout), embedding_type=arch["embedding_type"],
                  progressive_input="residual" if arch["encoder_type"] == "residual" else "none")
    return kwargs


def _layout(arch: dict) -> list[tuple]:
    """(our module, EDM prefix, kind) in the order NCSNpp creates its modules; kind: 'block',
    'attn', 'pyramid'."""
    counts = dict(ResnetBlockBigGANpp=0, AttnBlockpp=0, Downsample=0)
    layout = []

    def add(cls, prefix, kind):
        layout.append((f"{cls}_{counts[cls]}", prefix, kind))
        counts[cls] += 1

    def block(prefix, attention=False):
        add("ResnetBlockBigGANpp", prefix, "block")
        if attention:
            add("AttnBlockpp", prefix, "attn")

    r, n, mult = arch["img_resolution"], arch["num_blocks"], arch["channel_mult"]
    for level in range(len(mult)):
        res = r >> level
        for i in range(n):
            block(f"model.enc.{res}x{res}_block{i}", res in arch["attn_resolutions"])
        if level != len(mult) - 1:
            low = res >> 1
            block(f"model.enc.{low}x{low}_down")
            if arch["encoder_type"] == "residual":
                add("Downsample", f"model.enc.{low}x{low}_aux_residual", "pyramid")
    low = r >> (len(mult) - 1)
    block(f"model.dec.{low}x{low}_in0", True)
    block(f"model.dec.{low}x{low}_in1")
    for level in reversed(range(len(mult))):
        res = r >> level
        for i in range(n + 1):
            block(f"model.dec.{res}x{res}_block{i}", i == n and res in arch["attn_resolutions"])
        if level != 0:
            up = res << 1
            block(f"model.dec.{up}x{up}_up")
    return layout


def params_from_state_dict(state: dict, arch: dict) -> dict:
    """Our NCSNpp params from a SongUNet state dict (keys `model.*`); ConfigError on tensors
    left over or missing."""
    used = set()

    def get(name):
        if name not in state:
            raise ConfigError(f"the EDM state dict has no tensor {name}")
        used.add(name)
        return np.asarray(state[name], np.float32)

    def linear(prefix):
        return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

    def conv(prefix):
        return {"kernel": get(f"{prefix}.weight").transpose(2, 3, 1, 0),
                "bias": get(f"{prefix}.bias")}

    def norm(prefix):
        return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

    r = arch["img_resolution"]
    params = {"conv_in": conv(f"model.enc.{r}x{r}_conv"),
              "temb_dense0": linear("model.map_layer0"), "temb_dense1": linear("model.map_layer1"),
              "norm_out": norm(f"model.dec.{r}x{r}_aux_norm"),
              "conv_out": conv(f"model.dec.{r}x{r}_aux_conv")}
    if arch["embedding_type"] == "fourier":
        params["fourier_proj"] = {"W": get("model.map_noise.freqs")}
    if arch["label_dim"]:
        w, b = get("model.map_label.weight"), get("model.map_label.bias")
        table = math.sqrt(arch["label_dim"]) * w.T + b
        params["label_emb"] = {"embedding": np.concatenate([table, b[None]], axis=0)}
    for ours, prefix, kind in _layout(arch):
        if kind == "block":
            p = {"GroupNorm_0": norm(f"{prefix}.norm0"), "Conv_0": conv(f"{prefix}.conv0"),
                 "Dense_0": linear(f"{prefix}.affine"), "GroupNorm_1": norm(f"{prefix}.norm1"),
                 "Conv_1": conv(f"{prefix}.conv1")}
            if f"{prefix}.skip.weight" in state:
                p["skip"] = conv(f"{prefix}.skip")
        elif kind == "attn":
            qkv = get(f"{prefix}.qkv.weight")[:, :, 0, 0]
            channels = qkv.shape[1]
            kernel = qkv.reshape(channels, 3, channels).transpose(1, 0, 2).reshape(3 * channels,
                                                                                  channels).T
            bias = get(f"{prefix}.qkv.bias").reshape(channels, 3).T.reshape(-1)
            p = {"GroupNorm_0": norm(f"{prefix}.norm2"), "qkv": {"kernel": kernel, "bias": bias},
                 "proj_out": {"kernel": get(f"{prefix}.proj.weight")[:, :, 0, 0].T,
                              "bias": get(f"{prefix}.proj.bias")}}
        else:
            p = {"Conv2d_0": conv(prefix)}
        params[ours] = p
    ignored = {n for n in state
               if n.endswith("resample_filter") or n.startswith("model.map_augment.")}
    unused = sorted(set(state) - used - ignored)
    if unused:
        raise ConfigError(f"the EDM state dict has tensors this network does not: {unused[:4]}")
    return params


def import_network(path, base_config, dropout: float | None = None):
    """(config, params) of an EDM network: a snapshot pickle (`.pkl`, its `ema`) or a
    `torch.save`d state dict. `base_config` is an EDM config (`configs/edm/cifar10_uncond.py`
    or `cifar10_cond.py`); its model keys are replaced by the network's, `edm.precond` and
    `edm.sigma_data` by the preconditioning's, and `model.class_conditional` follows the
    label dimension (which must be the data set's class count). Dropout, which does not
    change sampling, is the snapshot's when it records one, else `dropout` or the config's."""
    from diffusion_jax import builders

    precond, sigma_data, recorded = "edm", None, {}
    if str(path).endswith(".pkl"):
        net = load_snapshot(path)["ema"]
        if not isinstance(net, PersistentObject) or net.class_name not in PRECONDITIONINGS:
            name = getattr(net, "class_name", type(net).__name__)
            raise ConfigError(f"the snapshot's network is {name}; valid: "
                              f"{', '.join(sorted(PRECONDITIONINGS))}")
        precond = PRECONDITIONINGS[net.class_name]
        recorded = _init_kwargs(net)
        if recorded.get("model_type", "SongUNet") != "SongUNet":
            raise ConfigError(f"EDM model_type {recorded['model_type']!r}: only SongUNet "
                              "(DDPM++ / NCSN++) is imported")
        if precond == "vp" and any(recorded.get(k, v) != v for k, v in _VP_DEFAULTS.items()):
            raise ConfigError("VPPrecond with other than the default beta_d, beta_min, M")
        sigma_data = net.state.get("sigma_data")
        state = module_state_dict(net)
    else:
        state = torch_files.load_state_dict(path)
    arch = architecture(state)
    config = copy.deepcopy(base_config)
    if config.method != "edm":
        raise ConfigError("an EDM network imports into an EDM config (method edm), e.g. "
                          "configs/edm/cifar10_uncond.py")
    shape = builders.dataset_spec(config).image_shape
    r = arch["img_resolution"]
    if tuple(shape) != (r, r, arch["in_channels"]):
        raise ConfigError(f"the EDM network is for {r}x{r}x{arch['in_channels']} images; the "
                          f"data set {config.data.dataset!r} has {tuple(shape)}")
    classes = builders.dataset_spec(config).num_classes
    if arch["label_dim"] and arch["label_dim"] != classes:
        raise ConfigError(f"the EDM network has {arch['label_dim']} classes; the data set "
                          f"{config.data.dataset!r} has {classes}")
    if dropout is None:
        dropout = recorded.get("dropout", config.model.get("dropout", 0.0))
    if config.model.name != "ncsnpp":
        raise ConfigError(f"an EDM network imports into a config with model.name 'ncsnpp'; "
                          f"the base config has {config.model.name!r}")
    config.model = network_config(config.model, NCSNpp, model_kwargs(arch, dropout))
    config.model.class_conditional = bool(arch["label_dim"])
    config.edm.precond = precond
    if sigma_data is not None:
        config.edm.sigma_data = float(sigma_data)
    return config, params_from_state_dict(state, arch)
