"""Text-to-image latent diffusion on the captioned shapes, the Stable Diffusion recipe in
miniature (Rombach et al. 2022): `configs/text/shapes_edm.py` (EDM, U-Net with cross-attention
to a byte-token caption encoder, caption dropout 0.1, guidance 3) trained on the 8x8x4 latents
of `configs/autoencoder/shapes.py`, whose run `latent.autoencoder_workdir` names (train it
first: `python3 launch.py --config=configs/autoencoder/shapes.py --workdir=runs/ae_shapes`).
Latents are scaled to unit variance, so sigma_data is 1; samples are decoded to 16x16 RGB.
Not a paper setting.
"""
from configs.text import shapes_edm


def get_config(arg=None):
    config = shapes_edm.get_config(arg)
    config.latent.update(autoencoder_workdir="runs/ae_shapes", cache_dir="", scale_examples=512)
    config.edm.sigma_data = 1.0
    config.model.update(attn_resolutions=(4,))
    return config
