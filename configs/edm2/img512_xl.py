"""EDM2-XL on ImageNet-512 (Karras et al. 2024, Table 2; NVlabs/edm2 preset
`edm2-img512-xl`): FID 1.96 without guidance (Heun, 32 steps, 63 NFE; post-hoc EMA sigma_rel
0.085).

The MP U-Net with 384 channels and dropout 0.1 on 64x64x4 latents, class-conditional:
1,119,283,749 parameters (1,119.3M); ref lr 0.0070, 1280 Mi images at batch 2048
(655,360 steps), P_mean -0.4, P_std 1.0, t_ref 70k iterations. The rest of the recipe and
its departures (bfloat16, the extra traditional EMA): `recipe.py`.
"""
from configs.edm2 import recipe


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/img512_xl.py")
    return recipe.get_config("img512", "xl")
