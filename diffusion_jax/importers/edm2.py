"""NVlabs/edm2 `Precond` state dicts -> the variables of `models.edm2_unet.EDM2UNet`.

The names match one for one (`models/edm2_unet.py`): the state dict key
`unet.enc.64x64_block0.conv_res0.weight` is `params/enc_64x64_block0/conv_res0/weight`,
`unet.out_gain` is `params/out_gain`, `logvar_linear.weight` is `params/logvar_linear/weight`,
and the Fourier buffers `unet.emb_fourier.{freqs, phases}` and `logvar_fourier.{freqs, phases}`
go to the `constants` collection (`mp_layers.MPFourier`). Convolution weights go from torch's
(out, in, kh, kw) to (kh, kw, in, out), linear ones from (out, in) to (in, out); the q/k/v
channel order of attn_qkv is kept (`mp_layers.cosine_attention` reads it). Everything becomes
float32 (NVlabs' released pickles hold float16). A released pickle's network is
`pickle.load(f)["ema"]` (with NVlabs' code importable), whose `state_dict()` is this input.
"""
from __future__ import annotations

import numpy as np

from diffusion_jax.errors import CheckpointError

PARAM_LEAVES = ("weight", "emb_gain", "out_gain")
CONSTANT_LEAVES = ("freqs", "phases")


def _path(key: str) -> list[str]:
    """'unet.enc.64x64_block0.conv_res0.weight' -> ['enc_64x64_block0', 'conv_res0', 'weight']."""
    parts = key.split(".")
    if parts[0] == "unet":
        parts = parts[1:]
    if parts[0] in ("enc", "dec") and len(parts) > 2:
        parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
    return parts


def _convert(leaf: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if leaf != "weight":
        return value
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    raise CheckpointError(f"an EDM2 weight must have 2 or 4 dimensions, got shape {value.shape}")


def import_precond(state_dict: dict) -> dict:
    """{'params': ..., 'constants': ...} of `EDM2UNet` (with its log-variance head) from the
    state dict of NVlabs' `Precond` (name -> numpy array); `EDM2UNet.apply` takes both."""
    variables = {"params": {}, "constants": {}}
    for key, value in state_dict.items():
        path = _path(key)
        leaf = path[-1]
        if leaf in PARAM_LEAVES:
            collection = "params"
        elif leaf in CONSTANT_LEAVES:
            collection = "constants"
        else:
            raise CheckpointError(f"unknown EDM2 state dict entry {key!r}; its last name must be "
                                  f"one of: {', '.join(PARAM_LEAVES + CONSTANT_LEAVES)}")
        node = variables[collection]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[leaf] = _convert(leaf, value)
    return variables
