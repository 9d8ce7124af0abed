"""Consistency training on CIFAR-10 (Song et al. 2023, Table 1 and Table 3; FID 8.70 with one
step, 5.83 with two).

`base.consistency_config("ct")`: the EDM NCSN++ network (56,395,651 parameters) from random
initialisation, LPIPS distance, the N(k) curriculum with s0 = 2, s1 = 150 over K = 800k steps
and the target EMA mu(k) = exp(s0 ln(0.9) / N(k)), RAdam 4e-4, batch 512. LPIPS needs
`--config.consistency.lpips_weights=lpips_vgg.npz` (`tools/convert_lpips_weights.py`).
"""
from configs import base


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/consistency/cifar10_ct.py")
    return base.consistency_config("ct")
