"""Score SDE (VE) on the embedded 8x8 digits: the recipe of `cifar10_ncsnpp_continuous.py` (VE
SDE, DSM summed over pixels, small NCSN++ with Fourier features of log sigma and output divided
by sigma, reverse diffusion + Langevin at snr 0.16, end time 1e-5) sized as `digits_vp.py`.

sigma_max = 10 follows the paper's Technique 1 (about the largest distance between two training
images: 9.6 for the train digits in [-1, 1]); sigma_min = 0.01. Not a paper setting.
"""
from configs.score_sde.digits_vp import digits_config


def get_config(arg=None):
    config = digits_config("vesde", arg)
    config.sde.update(sigma_min=0.01, sigma_max=10.0)
    return config
