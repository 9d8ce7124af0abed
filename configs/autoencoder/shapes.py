"""The KL autoencoder of latent diffusion on the generated captioned shapes: 16x16x3 -> 8x8x4
latents (256 numbers for 768), otherwise `configs/autoencoder/digits.py` (L1 + 1e-4 KL; the
digits-classifier perceptual term does not apply to RGB; `autoencoder.perceptual=lpips` with
`lpips_weights` does). The first stage of `configs/latent/shapes_text_edm.py`. Not a paper
setting.
"""
from configs.autoencoder import digits


def get_config(arg=None):
    config = digits.get_config(arg)
    config.data.update(dataset="shapes", random_flip=False)
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4)
    config.training.update(num_steps=3000, batch_size=64)
    return config
