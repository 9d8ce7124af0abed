"""DDPM++ cont. (deep, VP) on CIFAR-10 (Song et al. 2021, Table 3: FID 2.41 / IS 9.68; NLL 3.13
bits/dim in Table 2; the released `configs/vp/cifar10_ddpmpp_deep_continuous.py`).

As `cifar10_ddpmpp_continuous.py` with 8 residual blocks per resolution: 106,632,579
parameters; 950k iterations (the deep models' count in the paper's App. H).
"""
from configs import base
from diffusion_jax.models import ncsnpp


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for {__name__}")
    config = base.score_sde_config("vpsde")
    config.model.update(ncsnpp.ddpmpp_cifar10_kwargs(deep=True))
    config.training.num_steps = 950_000
    return config
