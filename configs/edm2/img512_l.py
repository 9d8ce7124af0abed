"""EDM2-L on ImageNet-512 (Karras et al. 2024, Table 2; NVlabs/edm2 preset
`edm2-img512-l`): FID 2.06 without guidance (Heun, 32 steps, 63 NFE; post-hoc EMA sigma_rel
0.085).

The MP U-Net with 320 channels and dropout 0.1 on 64x64x4 latents, class-conditional:
777,498,085 parameters (777.5M); ref lr 0.0080, 1792 Mi images at batch 2048
(917,504 steps), P_mean -0.4, P_std 1.0, t_ref 70k iterations. The rest of the recipe and
its departures (bfloat16, the extra traditional EMA): `recipe.py`.
"""
from configs.edm2 import recipe


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/img512_l.py")
    return recipe.get_config("img512", "l")
