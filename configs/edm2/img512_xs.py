"""EDM2-XS on ImageNet-512 (Karras et al. 2024, Table 2; NVlabs/edm2 preset
`edm2-img512-xs`): FID 3.53 without guidance (Heun, 32 steps, 63 NFE; post-hoc EMA sigma_rel
0.135).

The MP U-Net with 128 channels and dropout 0 on 64x64x4 latents, class-conditional:
124,713,253 parameters (124.7M); ref lr 0.0120, 2048 Mi images at batch 2048
(1,048,576 steps), P_mean -0.4, P_std 1.0, t_ref 70k iterations. The rest of the recipe and
its departures (bfloat16, the extra traditional EMA): `recipe.py`.
"""
from configs.edm2 import recipe


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/img512_xs.py")
    return recipe.get_config("img512", "xs")
