"""The EDM2 recipe shared by the paper configs (Karras et al. 2024, Sec. 2, Table 2;
NVlabs/edm2 `train_edm2.py` config_presets and `training/training_loop.py` defaults).

- Network: the MP U-Net (`models.edm2_unet`, `preset_kwargs(size)`: channels 128 / 192 / 256
  / 320 / 384 / 448 for XS / S / M / L / XL / XXL, dropout 0 for XS and S, 0.1 from M),
  class-conditional on the 1000 ImageNet classes without label dropout.
- Method `edm2`: EDM preconditioning with sigma_data 0.5, the uncertainty-weighted loss,
  forced weight normalisation; ln sigma ~ N(P_mean, P_std^2): ImageNet-512 -0.4, 1.0;
  ImageNet-64 -0.8, 1.6.
- Optimiser: Adam beta (0.9, 0.99), eps 1e-8, no gradient clipping; lr = ref_lr /
  sqrt(max(t / (t_ref batch), 1)) with a linear warm-up over 10 Mimg (t in images; t_ref 70k
  iterations at 512, 35k at 64), batch 2048; duration in images as the preset says.
- Sampler: EDM's Heun, 32 steps, sigma 0.002..80, rho 7, no churn: 63 network evaluations.

- Post-hoc EMA (Sec. 3; NVlabs `PowerFunctionEMA(stds=[0.050, 0.100])`, `snapshot_nimg`
  8Mi): the two power-function profiles tracked in training and snapshotted every 8Mi images
  (4096 steps); `--mode=posthoc_ema` reconstructs `ema.sigma_rel`, the FID-optimal width of
  the preset (Table 2 / NVlabs `generate_images.py` presets; 0.135 ... 0.070 at 512, unknown
  for img64, so 0 there: set it). Sample from the reconstruction's work directory.

Departures from NVlabs' training: the networks compute in bfloat16 (NVlabs: float16 with loss
scaling 1 and non-finite gradients zeroed; neither is needed in bfloat16); the run also keeps
a traditional EMA (50 Mimg half-life, ramp-up ratio 0.05, EDM's ImageNet-64 setting) as
`ema_params`, which NVlabs does not; `training.grad_accum_steps` (1 here)
splits the 2048-image batch when it does not fit the devices, as NVlabs' `batch_gpu` does.
ImageNet-512 (`imagenet512`, TFDS imagenet2012 centre-cropped as ADM, as NVlabs'
dataset_tool `center-crop-dhariwal` does) trains on sd-vae-ft-mse latents (`latent.vae`, its
diffusers directory in `latent.vae_dir`): posterior samples normalised per channel by EDM2's
fixed statistics (`latent.scaling='edm2'`, NVlabs `StabilityVAEEncoder`), encoded once with
`latent.cache_dir` (`--mode=encode_latents`). `--mode=info` prints the parameter count.
"""
import ml_collections

from configs import base
from diffusion_jax.models import edm2_unet

BATCH = 2048
MI = 1 << 20  # NVlabs counts durations in Mi images
RESOLUTIONS = {  # dataset, P_mean, P_std, t_ref (iterations)
    "img512": ("imagenet512", -0.4, 1.0, 70_000),
    "img64": ("imagenet64", -0.8, 1.6, 35_000),
}
PRESETS = {  # NVlabs config_presets: ref lr, duration (Mi images) at 512 and at 64
    "xs": (0.0120, 2048, 1024), "s": (0.0100, 2048, 1024), "m": (0.0090, 2048, 2048),
    "l": (0.0080, 1792, 1024), "xl": (0.0070, 1280, 640), "xxl": (0.0065, 896, None),
}
# the FID-optimal post-hoc EMA width without guidance at 512 (NVlabs generate_images.py presets)
SIGMA_REL_512 = {"xs": 0.135, "s": 0.130, "m": 0.100, "l": 0.085, "xl": 0.085, "xxl": 0.070}
SNAPSHOT_IMAGES = 8 * MI


def get_config(resolution: str, size: str) -> ml_collections.ConfigDict:
    """The preset `edm2-<resolution>-<size>` of NVlabs' train_edm2.py."""
    dataset, P_mean, P_std, t_ref = RESOLUTIONS[resolution]
    lr, duration_512, duration_64 = PRESETS[size]
    duration = duration_512 if resolution == "img512" else duration_64
    if duration is None:
        raise ValueError(f"NVlabs/edm2 has no preset edm2-{resolution}-{size}")
    config = base.base_config()
    config.method = "edm2"
    config.model.update(name="edm2_unet", dtype="bfloat16", class_conditional=True,
                        **{k: v for k, v in edm2_unet.preset_kwargs(size).items()
                           if k != "num_classes"})
    config.edm2 = ml_collections.ConfigDict(dict(sigma_data=0.5, P_mean=P_mean, P_std=P_std,
                                                 label_dropout=0.0))
    config.data.update(dataset=dataset, random_flip=False)
    if resolution == "img512":
        config.latent.update(vae="sd-vae-ft-mse", scaling="edm2")
    config.training.update(num_steps=duration * MI // BATCH, batch_size=BATCH,
                           grad_accum_steps=1, checkpoint_every=4096, log_every=128,
                           ema_decay=0.5 ** (BATCH / 50e6), ema_warmup="edm",
                           ema_rampup_ratio=0.05)
    config.ema.update(sigma_rels=(0.05, 0.10), snapshot_every=SNAPSHOT_IMAGES // BATCH,
                      sigma_rel=SIGMA_REL_512[size] if resolution == "img512" else 0.0)
    config.optim.update(name="adam", schedule="inverse_sqrt", lr=lr, ref_batches=float(t_ref),
                        rampup_images=10e6, warmup_steps=0, grad_clip=0.0, beta1=0.9,
                        beta2=0.99, eps=1e-8)
    config.sampling.update(num_samples=64, batch_size=64, method="heun", num_steps=32,
                           sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0, S_min=0.0,
                           S_max=1e9, S_noise=1.0, eta=1.0, spacing="logsnr",
                           **base.solver_defaults(), **base.guidance_defaults())
    config.eval.update(num_samples=50_000, batch_size=1000)
    return config
