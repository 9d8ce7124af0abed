"""Converts pytorch-fid's Inception-v3 FID weights (`pt_inception-2015-12-05-6726825d.pth`, a
port of the TensorFlow graph of 2015-12-05) into the `.npz` read by
`diffusion_jax.evaluation.inception.load_inception_params`; point the config key
`eval.inception_weights` at the result.

Getting the `.pth` (on a machine with internet access; this project downloads nothing): it is
the release asset `fid_weights/pt_inception-2015-12-05-6726825d.pth` of
github.com/mseitzer/pytorch-fid (`FID_WEIGHTS_URL` in `pytorch_fid/inception.py`; as torch hub
names files, the suffix is the start of its SHA-256). Running pytorch-fid once also leaves it
in `~/.cache/torch/hub/checkpoints/`. Then:

    python tools/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth inception_fid.npz

Needs `torch` only to unpickle the state dict. The mapping is one to one: torchvision names
(`Mixed_5b.branch1x1.conv.weight`) become Flax paths (`params/Mixed_5b/branch1x1/conv/kernel`);
convolution kernels go from OIHW to HWIO, the classifier from (out, in) to (in, out), and the
BatchNorm running statistics into the `batch_stats` collection. The result is checked against
the parameter tree of `FIDInceptionV3` before it is written.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def convert_state_dict(state_dict) -> dict[str, np.ndarray]:
    """Torch state dict (name -> array) -> flat Flax variables ('collection/module/.../leaf')."""
    flat = {}
    for name, value in state_dict.items():
        value = np.asarray(value, np.float32)
        *modules, leaf = name.split(".")
        if leaf == "num_batches_tracked" or modules[:1] == ["AuxLogits"]:
            continue
        prefix = "/".join(modules)
        if modules[-1] == "conv" and leaf == "weight":
            flat[f"params/{prefix}/kernel"] = value.transpose(2, 3, 1, 0)
        elif modules[-1] == "bn":
            key = {"weight": "params/{}/scale", "bias": "params/{}/bias",
                   "running_mean": "batch_stats/{}/mean", "running_var": "batch_stats/{}/var"}[leaf]
            flat[key.format(prefix)] = value
        elif modules == ["fc"]:
            flat[f"params/fc/{'kernel' if leaf == 'weight' else 'bias'}"] = (
                value.T if leaf == "weight" else value)
        else:
            raise ValueError(f"unexpected entry in the Inception state dict: {name}")
    return flat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torch_weights", help="pytorch-fid pt_inception-2015-12-05-*.pth")
    parser.add_argument("out", help="output .npz")
    args = parser.parse_args()
    import jax
    import torch

    from diffusion_jax.evaluation.inception import FIDInceptionV3

    state_dict = {k: v.numpy() for k, v in torch.load(args.torch_weights, map_location="cpu").items()}
    flat = convert_state_dict(state_dict)
    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                              jax.numpy.zeros((1, 299, 299, 3)))
    want = {"/".join(str(k.key) for k in path): leaf.shape
            for path, leaf in jax.tree.flatten_with_path(expected)[0]}
    got = {name: value.shape for name, value in flat.items()}
    if got != want:
        raise ValueError("converted weights do not match FIDInceptionV3's parameter tree: "
                         f"missing {sorted(set(want) - set(got))[:5]}, "
                         f"unexpected {sorted(set(got) - set(want))[:5]}")
    with open(args.out, "wb") as f:
        np.savez(f, **flat)
    print(f"wrote {args.out}: {len(flat)} arrays")


if __name__ == "__main__":
    main()
