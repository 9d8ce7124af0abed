"""Converts the LPIPS-VGG16 v0.1 weights (VGG-16 trunk and lin layers) into one `.npz`.

The inputs are torchvision's VGG-16 trunk and the lpips package's "lin" layers; the output is
read by `diffusion_jax.losses.lpips.load_lpips_params`: point the config key
`consistency.lpips_weights` at it.

Getting the two `.pth` files (on a machine with internet access; this project downloads nothing):
  - `vgg16-397923af.pth`: torchvision's ImageNet VGG-16 (`torchvision.models.vgg16(weights=
    VGG16_Weights.IMAGENET1K_V1)`, model zoo file download.pytorch.org/models/vgg16-397923af.pth;
    as torch hub names files, the suffix is the start of its SHA-256). Loading the model once
    leaves it in `~/.cache/torch/hub/checkpoints/`. Only its `features.*` entries are used.
  - `vgg.pth`: the v0.1 lin weights, shipped inside the `lpips` pip package as
    `lpips/weights/v0.1/vgg.pth` (`pip install lpips`, then
    `python -c "import lpips, os; print(os.path.dirname(lpips.__file__))"` for the folder);
    also `lpips/weights/v0.1/vgg.pth` in github.com/richzhang/PerceptualSimilarity.
Then:

    python tools/convert_lpips_weights.py vgg16-397923af.pth vgg.pth lpips_vgg16.npz

Needs `torch` only to unpickle the state dicts; `convert_state_dicts` works on numpy arrays. The
mapping (convolution kernels go from torch's OIHW to Flax's HWIO, `w.transpose(2, 3, 1, 0)`):

    features.{0,2}.weight/bias            -> params/features/conv1_{1,2}/kernel/bias
    features.{5,7}.weight/bias            -> params/features/conv2_{1,2}/kernel/bias
    features.{10,12,14}.weight/bias       -> params/features/conv3_{1,2,3}/kernel/bias
    features.{17,19,21}.weight/bias       -> params/features/conv4_{1,2,3}/kernel/bias
    features.{24,26,28}.weight/bias       -> params/features/conv5_{1,2,3}/kernel/bias
    lin{0..4}.model.1.weight (1, C, 1, 1) -> params/lin{0..4}/kernel (1, 1, C, 1)

(the other `features.*` indices are the parameter-free ReLUs and max-pools; the VGG classifier
and the lin layers' dropout `model.0` hold nothing used). The result is checked against the
parameter tree of `diffusion_jax.losses.lpips.LPIPS` before it is written.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# torchvision `features` index of each VGG-16 convolution, in order conv1_1 ... conv5_3
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
NUM_LIN = 5


def _conv_names():
    from diffusion_jax.losses.lpips import CONV_NAMES
    return CONV_NAMES


def convert_state_dicts(vgg_state_dict, lin_state_dict) -> dict[str, np.ndarray]:
    """torchvision VGG-16 and lpips v0.1 lin state dicts (name -> array) -> flat Flax params
    ('params/features/conv1_1/kernel', ...), float32."""
    flat = {}
    for index, name in zip(VGG16_CONV_INDICES, _conv_names()):
        for leaf in ("weight", "bias"):
            key = f"features.{index}.{leaf}"
            if key not in vgg_state_dict:
                raise ValueError(f"the VGG-16 state dict has no {key} (is it torchvision's "
                                 "vgg16-397923af.pth?)")
            value = np.asarray(vgg_state_dict[key], np.float32)
            if leaf == "weight":
                flat[f"params/features/{name}/kernel"] = value.transpose(2, 3, 1, 0)
            else:
                flat[f"params/features/{name}/bias"] = value
    for index in range(NUM_LIN):
        key = f"lin{index}.model.1.weight"
        if key not in lin_state_dict:
            raise ValueError(f"the lin state dict has no {key} (is it lpips' weights/v0.1/vgg.pth?)")
        flat[f"params/lin{index}/kernel"] = np.asarray(lin_state_dict[key],
                                                       np.float32).transpose(2, 3, 1, 0)
    return flat


def write_npz(path, flat) -> None:
    """Checks `flat` against the LPIPS tree (ConfigError if it differs) and writes the `.npz`."""
    from diffusion_jax.losses.lpips import check_flat_params

    check_flat_params(flat, "the converted weights")
    with open(path, "wb") as f:
        np.savez(f, **flat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vgg_weights", help="torchvision vgg16-397923af.pth")
    parser.add_argument("lin_weights", help="lpips package lpips/weights/v0.1/vgg.pth")
    parser.add_argument("out", help="output .npz")
    args = parser.parse_args()
    import torch

    def load(path):
        return {k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}

    flat = convert_state_dicts(load(args.vgg_weights), load(args.lin_weights))
    write_npz(args.out, flat)
    print(f"wrote {args.out}: {len(flat)} arrays")


if __name__ == "__main__":
    main()
