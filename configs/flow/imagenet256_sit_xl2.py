"""SiT-XL/2 on ImageNet 256 (Ma et al. 2024, Table 4 / README: FID-50K 2.06, IS 270.27 with
classifier-free guidance 1.5 and the SDE sampler, 250 steps; willisma/SiT#31 for the setting).

The DiT-XL/2 backbone (`models.dit` preset 'DiT-XL/2': depth 28, width 1152, 16 heads, patch 2,
`learn_sigma` as SiT builds it, whose second half of the output is dropped: 674,834,720
parameters, FRONTIER.md section 2) on 32x32x4 latents, class-conditional (1000 classes and the
null label, label dropout 0.1); the linear path with velocity prediction, t ~ U[0, 1], SiT's
unweighted loss; the network sees t_ours (SiT feeds t_SiT = 1 - t; a SiT checkpoint import
must map t -> 1 - t and v -> -v). AdamW lr 1e-4, weight decay 0, no warmup, no clipping,
global batch 256, EMA 0.9999, 7M steps (SiT's 1400 epochs of ImageNet at batch 256). Sampler:
SiT's SDE, Euler-Maruyama with w_t = sigma_t (its CLI default), 250 points (249 steps and the
'mean' last step of size 0.04: 250 NFE), guidance 1.5 on all four channels
(`--config.sampling.guidance_channels=3` is DiT's 3-of-4 setting).

Latents: ImageNet train images (TFDS `imagenet2012`, prepared by the user in `data.data_dir`)
centre-cropped to 256 as ADM does (`data.datasets.adm_crop`), encoded by the SD VAE
(`latent.vae='sd-vae-ft-ema'`, its diffusers directory in `latent.vae_dir`) as posterior
samples times 0.18215, and decoded by the same VAE after sampling. With `latent.cache_dir` the
posterior moments of every image are encoded once (`--mode=encode_latents`, resumable and
sharded over processes), as the papers train on precomputed latents. `--mode=info` prints the
parameter count (no weights needed).
"""
import ml_collections

from configs import base
from configs.flow import cifar10_rectified_flow

BATCH = 256


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/flow/imagenet256_sit_xl2.py")
    config = base.base_config()
    config.method = "flow"
    config.model = ml_collections.ConfigDict(dict(
        name="dit", dtype="bfloat16", class_conditional=True, remat=False, preset="DiT-XL/2",
        learn_sigma=True))
    config.flow = ml_collections.ConfigDict(dict(cifar10_rectified_flow.flow_defaults(),
                                                 label_dropout=0.1))
    config.data.update(dataset="imagenet256", random_flip=False)
    config.latent.update(vae="sd-vae-ft-ema", scale=0.18215)
    config.training.update(num_steps=7_000_000, batch_size=BATCH, checkpoint_every=50_000,
                           log_every=100, ema_decay=0.9999)
    config.optim.update(name="adamw", lr=1e-4, warmup_steps=0, grad_clip=0.0, beta1=0.9,
                        beta2=0.999, eps=1e-8, weight_decay=0.0)
    config.sampling.update(num_samples=64, batch_size=64, method="flow_sde", num_steps=250,
                           **dict(cifar10_rectified_flow.flow_sampling_defaults(),
                                  guidance_scale=1.5))
    config.eval.update(num_samples=50_000, batch_size=250)
    return config
