"""EDM2-S on ImageNet-512 (Karras et al. 2024, Table 2; NVlabs/edm2 preset
`edm2-img512-s`): FID 2.56 without guidance (Heun, 32 steps, 63 NFE; post-hoc EMA sigma_rel
0.130).

The MP U-Net with 192 channels and dropout 0 on 64x64x4 latents, class-conditional:
280,212,837 parameters (280.2M); ref lr 0.0100, 2048 Mi images at batch 2048
(1,048,576 steps), P_mean -0.4, P_std 1.0, t_ref 70k iterations. The rest of the recipe and
its departures (bfloat16, the extra traditional EMA): `recipe.py`.
"""
from configs.edm2 import recipe


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/img512_s.py")
    return recipe.get_config("img512", "s")
