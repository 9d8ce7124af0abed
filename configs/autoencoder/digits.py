"""The KL autoencoder of latent diffusion (Rombach et al. 2022) on the embedded 8x8 digits.

8x8x1 -> 4x4x2 latents (one downsampling, 2 channels: 32 numbers for 64 pixels), 32/64
channels, one residual block per level, attention in the middle; L1 reconstruction +
1e-4 KL (`autoencoder.kl_weight`), optional perceptual term (`autoencoder.perceptual_weight`) in
the digits classifier's feature space or LPIPS (`autoencoder.perceptual`, `lpips_weights`).
Adam 1e-3, 2000 steps of batch 64: a few minutes on a 2-core CPU. Its work directory is what
`configs/latent/digits_edm.py` reads (`latent.autoencoder_workdir`). Not a paper setting.
"""
import ml_collections

from configs import base


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/autoencoder/digits.py")
    config = base.base_config()
    config.method = "autoencoder"
    config.model = ml_collections.ConfigDict(dict(
        name="autoencoder_kl", dtype="float32", class_conditional=False, ch=32, ch_mult=(1, 2),
        num_res_blocks=1, z_channels=2, attention=True))
    # perceptual: digits (the shipped classifier's features) | lpips (needs lpips_weights)
    config.autoencoder = ml_collections.ConfigDict(dict(
        kl_weight=1e-4, perceptual_weight=0.0, perceptual="digits", lpips_weights="",
        reconstruction="l1"))
    config.data.update(dataset="digits", random_flip=False)
    config.training.update(num_steps=2000, batch_size=64, checkpoint_every=1000, log_every=100,
                           ema_decay=0.999, ema_warmup="power")
    config.optim.update(name="adam", lr=1e-3, warmup_steps=100, grad_clip=1.0)
    config.sampling.update(num_samples=64, batch_size=64, method="prior", temperature=1.0)
    config.eval.update(num_samples=1000, batch_size=500)
    return config
