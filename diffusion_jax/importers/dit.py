"""DiT and MeanFlow-DiT weights as the parameter tree of `diffusion_jax.models.dit.DiT`.

`from_state_dict` reads the PyTorch state dict of the official DiT `models.py` (Peebles & Xie
2023; also SiT's, the same module): the released `DiT-XL-2-256x256.pt` is such a dict, a
training checkpoint of their `train.py` holds one under "ema". Linear weights (out, in) become
kernels (in, out); the patch convolution (D, C, p, p) becomes (p, p, C, D); `pos_embed` is the
fixed sine-cosine table, recomputed by the model, and is dropped:

    x_embedder.proj.{weight,bias}          -> x_embedder/{kernel,bias}
    t_embedder.mlp.{0,2}.{weight,bias}     -> t_embedder/mlp_{0,2}/{kernel,bias}
    y_embedder.embedding_table.weight      -> y_embedder/embedding
    blocks.i.attn.{qkv,proj}.*             -> blocks_i/attn/{qkv,proj}/*
    blocks.i.mlp.{fc1,fc2}.*               -> blocks_i/mlp/{fc1,fc2}/*
    blocks.i.adaLN_modulation.1.*          -> blocks_i/adaLN_modulation/*
    final_layer.{linear,adaLN_modulation.1}.* -> final_layer/{linear,adaLN_modulation}/*

`from_meanflow` reads the flax parameters of the official MeanFlow `models/models_dit.py`
(Geng et al. 2025), flattened with "/" (`flax.traverse_util.flatten_dict(tree, sep="/")`, a
leading "params/" and "net/" allowed); its layers are the same with different names and an
`h_embedder` like `t_embedder`. Both are pure functions of numpy arrays (torch is needed only to
unpickle a `.pt`: `{k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}`).
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from diffusion_jax.errors import CheckpointError

_linear = {"weight": ("kernel", np.transpose), "bias": ("bias", None)}
_DIT_RULES = [
    (r"x_embedder\.proj\.(weight|bias)", r"x_embedder",
     {"weight": ("kernel", lambda w: w.transpose(2, 3, 1, 0)), "bias": ("bias", None)}),
    (r"t_embedder\.mlp\.(0|2)\.(weight|bias)", r"t_embedder/mlp_\1", _linear),
    (r"y_embedder\.embedding_table\.(weight)", r"y_embedder",
     {"weight": ("embedding", None)}),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks_\1/attn/\2", _linear),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks_\1/mlp/\2", _linear),
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks_\1/adaLN_modulation", _linear),
    (r"final_layer\.(linear)\.(weight|bias)", r"final_layer/\1", _linear),
    (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final_layer/adaLN_modulation", _linear),
]
_DIT_DROPPED = ("pos_embed",)

_same = {"kernel": ("kernel", None), "bias": ("bias", None)}
_MEANFLOW_RULES = [
    (r"x_embedder/proj/(kernel|bias)", r"x_embedder", _same),
    (r"(t|h)_embedder/mlp/layers_(0|2)/_flax_linear/(kernel|bias)", r"\1_embedder/mlp_\2", _same),
    (r"y_embedder/embedding_table/_flax_embedding/(embedding)", r"y_embedder",
     {"embedding": ("embedding", None)}),
    (r"blocks/layers_(\d+)/attn/(qkv|proj)/_flax_linear/(kernel|bias)", r"blocks_\1/attn/\2",
     _same),
    (r"blocks/layers_(\d+)/mlp/(fc1|fc2)/_flax_linear/(kernel|bias)", r"blocks_\1/mlp/\2", _same),
    (r"blocks/layers_(\d+)/adaLN_modulation/layers_1/_flax_linear/(kernel|bias)",
     r"blocks_\1/adaLN_modulation", _same),
    (r"final_layer/linear/_flax_linear/(kernel|bias)", r"final_layer/linear", _same),
    (r"final_layer/adaLN_modulation/layers_1/_flax_linear/(kernel|bias)",
     r"final_layer/adaLN_modulation", _same),
]


def _convert(flat: Mapping[str, np.ndarray], rules, dropped, what: str) -> dict:
    params: dict = {}
    for key, value in flat.items():
        if key in dropped:
            continue
        for pattern, path, leaves in rules:
            match = re.fullmatch(pattern, key)
            if match:
                break
        else:
            raise CheckpointError(f"{what}: unexpected parameter {key!r}")
        leaf, transform = leaves[match.group(match.lastindex)]
        node = params
        for part in match.expand(path).split("/"):
            node = node.setdefault(part, {})
        value = np.asarray(value, np.float32)
        node[leaf] = transform(value) if transform is not None else value
    return params


def from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """The `DiT` parameters {'x_embedder': ..., 'blocks_0': ...} of an official DiT / SiT state
    dict (numpy arrays); CheckpointError for a key that is not a DiT parameter."""
    return _convert(state_dict, _DIT_RULES, _DIT_DROPPED, "DiT state dict")


def from_meanflow(flat: Mapping[str, np.ndarray]) -> dict:
    """The `DiT(h_embedding=True)` parameters of an official MeanFlow network's flattened flax
    parameters (numpy arrays); CheckpointError for a key that is not one of them."""
    flat = {re.sub(r"^(params/)?(net/)?", "", k): v for k, v in flat.items()}
    return _convert(flat, _MEANFLOW_RULES, (), "MeanFlow params")
