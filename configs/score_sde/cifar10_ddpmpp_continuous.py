"""DDPM++ cont. (VP) on CIFAR-10 (Song et al. 2021, Table 3: FID 2.55 / IS 9.58 with the PC
sampler; the released `configs/vp/cifar10_ddpmpp_continuous.py`).

Network `ncsnpp.ddpmpp_cifar10_kwargs()` (128 channels, (1, 2, 2, 2), 4 BigGAN blocks per
resolution, attention at 16, skip rescaling, positional embedding of 999 t, no FIR, no
progressive paths): 61,804,419 parameters. VP SDE beta 0.1..20, DSM with reduce-mean, t ~ U(1e-5,
1); Adam 2e-4, warmup 5000, clip 1, EMA 0.9999, batch 128, 1.3M iterations, random flips.
Sampler: Euler-Maruyama predictor, no corrector, N = 1000, end time 1e-3, noise-free last step.
`--mode=eval` also reports test-set bits/dim (ODE, Rademacher probes, rtol = atol = 1e-5).
Needs the TFDS cifar10 data set prepared in `data.data_dir`.
"""
from configs import base
from diffusion_jax.models import ncsnpp


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for {__name__}")
    config = base.score_sde_config("vpsde")
    config.model.update(ncsnpp.ddpmpp_cifar10_kwargs())
    return config
