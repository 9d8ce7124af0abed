"""DiT-XL/2 on ImageNet 256 (Peebles & Xie 2023, Table 4 and README: FID-50K 2.27, IS 278.24
with classifier-free guidance 1.5 on 3 of the 4 latent channels, 250 DDPM steps).

The DDPM family, as DiT's `create_diffusion`: T = 1000 linear betas 1e-4..0.02, epsilon
prediction, learned variance (`model.learn_sigma`, improved DDPM's 'learned range') trained with
the hybrid loss MSE + L_vlb (`methods.ddpm`); the DiT-XL/2 backbone (depth 28, width 1152, 16
heads, patch 2, adaLN-Zero, 8 output channels: 674,834,720 parameters on 32x32x4 latents with
1001 label embeddings, FRONTIER.md section 2's 674.8M and 118.6 GMAC; `--mode=info`),
class-conditional with label dropout 0.1. AdamW lr 1e-4,
weight decay 0, no warm-up or clipping, global batch 256, EMA 0.9999, horizontal flips. The
training length of the released 2.27 model is not stated in the code (the paper's figure is 7M
steps; FRONTIER.md marks it unverified): 7M here. Sampling: the ancestral chain respaced to 250
steps as DiT's `space_timesteps(1000, "250")` (`sampling.spacing='adm'`), sigma_t^2 learned,
no x0 clipping, guidance 1.5 on channels 0-2 (`guidance_channels=3`; the variance output and
channel 3 conditional, as DiT's `forward_with_cfg`).

Latents: ImageNet (TFDS `imagenet2012` in `data.data_dir`) centre-cropped to 256 as ADM does,
flipped, encoded by the SD VAE (`latent.vae='sd-vae-ft-ema'`, weights in `latent.vae_dir`) as
posterior samples x 0.18215; with `latent.cache_dir` the moments of each image and of its
mirror image are encoded once (`--mode=encode_latents`). A released DiT checkpoint's weights
load with `importers.dit.from_state_dict`.
"""
import ml_collections

from configs import base

BATCH = 256


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/flow/imagenet256_dit_xl2.py")
    config = base.ddpm_config()
    config.model = ml_collections.ConfigDict(dict(
        name="dit", dtype="bfloat16", class_conditional=True, remat=False, preset="DiT-XL/2",
        learn_sigma=True))
    config.diffusion.update(schedule="linear", num_timesteps=1000, beta_start=1e-4,
                            beta_end=0.02, prediction="epsilon", label_dropout=0.1)
    config.data.update(dataset="imagenet256", random_flip=True)
    config.latent.update(vae="sd-vae-ft-ema", scale=0.18215)
    config.training.update(num_steps=7_000_000, batch_size=BATCH, checkpoint_every=50_000,
                           log_every=100, ema_decay=0.9999)
    config.optim.update(name="adamw", lr=1e-4, warmup_steps=0, grad_clip=0.0, beta1=0.9,
                        beta2=0.999, eps=1e-8, weight_decay=0.0)
    config.sampling.update(num_samples=64, batch_size=64, method="ancestral", num_steps=250,
                           spacing="adm", variance="learned", clip_x0=False,
                           guidance_scale=1.5, guidance_channels=3)
    config.eval.update(num_samples=50_000, batch_size=250)
    return config
