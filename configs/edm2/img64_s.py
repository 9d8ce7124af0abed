"""EDM2-S on ImageNet-64 (Karras et al. 2024, Table 3; NVlabs/edm2 preset `edm2-img64-s`):
FID 1.58 without guidance (Heun, 32 steps, 63 NFE, post-hoc EMA).

The MP U-Net with 192 channels and no dropout on 64x64x3 RGB, class-conditional:
280,209,381 parameters; ref lr 0.0100, 1024 Mi images at batch 2048 (524,288 steps), P_mean
-0.8, P_std 1.6, t_ref 35k iterations. Data: TFDS `imagenet_resized/64x64` (box-downsampled
whole images; NVlabs' dataset tool centre-crops first). The rest of the recipe and its
departures: `recipe.py`.
"""
from configs.edm2 import recipe


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/img64_s.py")
    return recipe.get_config("img64", "s")
