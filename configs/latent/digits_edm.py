"""Latent EDM on the embedded digits: `configs/edm/digits.py` trained on the 4x4x2 latents of
the KL autoencoder of `configs/autoencoder/digits.py`, whose run `latent.autoencoder_workdir`
names (train it first: `python3 launch.py --config=configs/autoencoder/digits.py
--workdir=runs/ae_digits`). Latents are scaled to unit variance (the scale is computed from the
training data when the run starts), so sigma_data is 1. Samples are decoded to 8x8 digits.
Not a paper setting (latent diffusion: Rombach et al. 2022).
"""
from configs.edm import digits


def get_config(arg=None):
    config = digits.get_config(arg)
    config.latent.update(autoencoder_workdir="runs/ae_digits", cache_dir="", scale_examples=512)
    config.edm.sigma_data = 1.0
    config.model.update(nf=32, ch_mult=(1, 2), attn_resolutions=(4,))
    return config
