"""NCSN++ cont. (VE) on CIFAR-10 (Song et al. 2021, Table 3: FID 2.38 / IS 9.83 with PC; the
released `configs/ve/cifar10_ncsnpp_continuous.py`).

Network `ncsnpp.ncsnpp_cifar10_kwargs()` (128 channels, (1, 2, 2, 2), 4 BigGAN blocks, FIR
[1, 3, 3, 1] resampling, residual input pyramid, Fourier features (scale 16) of log sigma,
output divided by sigma): 62,758,915 parameters. VE SDE, DSM with the squared error summed over
pixels, t ~ U(1e-5, 1); Adam 2e-4, warmup 5000, clip 1, EMA 0.999, batch 128, 1.3M iterations,
random flips. Sampler: reverse-diffusion predictor + one Langevin corrector step at snr 0.16,
N = 1000 (2000 network evaluations), end time 1e-5, noise-free last step.

Departure in form only: the paper trains VE on [0, 1] data with sigma 0.01..50; data here are
in [-1, 1], where the same process has sigma 0.02..100 (see `configs/base.score_sde_config`).
"""
from configs import base
from diffusion_jax.models import ncsnpp


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for {__name__}")
    config = base.score_sde_config("vesde")
    config.model.update(ncsnpp.ncsnpp_cifar10_kwargs(continuous=True))
    return config
