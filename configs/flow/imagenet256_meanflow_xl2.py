"""MF-XL/2 on ImageNet 256 (Geng et al. 2025, "Mean Flows for One-step Generative Modeling",
Table 2: 1-NFE FID-50K 3.43, 240 epochs from scratch; 2-NFE 2.93).

The DiT-XL/2 backbone with MeanFlow's h embedder (`models.dit` preset 'DiT-XL/2',
`h_embedding=True`, no learned sigma: 676,440,592 parameters, the paper's 676M and
FRONTIER.md section 6) on 32x32x4 latents, class-conditional (1000 classes and the null label),
fed (t, h = t - r) unscaled, in float32 as the official code trains (`half_precision=False`).
MeanFlow (`methods.meanflow`, the official `configs/default.py`): (t, r) from logit-normal
(-0.4, 1.0), 25% with r != t; adaptive weight p = 1, c = 0.01; class dropout 0.1.
Training-time guidance: omega = 0.2, kappa = 1 - omega / omega' = 0.92 for the effective scale
omega' = 2.5, triggered on t in [0, 0.75]. UNVERIFIED: the paper's per-size guidance table
(Table 4) was not readable here; these are diffuse_nnx's `configs/mf_imagenet.py` values
(two third-party PyTorch ports use the same omega, omega' with the interval [0.3, 0.8]); the
official default (omega 1.0, kappa 0.5, [0, 1]) is its MF-B/4 setting.
Optimiser: Adam(W) lr 1e-4 constant, betas (0.9, 0.95), weight decay 0, no warmup or clipping;
batch 256; 240 epochs = 1,200,960 steps (5004 steps per epoch of ImageNet's 1,281,167 images,
drop_last); EMA 0.9999 constant. Sampler: one step z_0 = z_1 - u(z_1, 1, 0)
(`--config.sampling.num_steps=2` for 2-NFE).

Latents: as `imagenet256_sit_xl2.py` (ImageNet centre-cropped to 256, `latent.vae`), with
MeanFlow's `sd-vae-ft-mse` times 0.18215; its weights in `latent.vae_dir`, the cache in
`latent.cache_dir` (`--mode=encode_latents`). `--mode=info` prints the parameter count.
"""
import ml_collections

from configs import base

BATCH = 256
STEPS_PER_EPOCH = 1_281_167 // BATCH


def meanflow_defaults() -> dict:
    """The `meanflow` section as the official `configs/default.py` (MF-B/4): (t, r) sampler
    P_mean, P_std and the r = t share data_proportion; training-time guidance omega, kappa on
    [t_start, t_end]; adaptive weight norm_p, norm_eps; label_dropout; the network's time
    inputs ('t_h': (t, t - r); 't_r': (t, r)) times time_scale."""
    return dict(P_mean=-0.4, P_std=1.0, data_proportion=0.75, omega=1.0, kappa=0.5,
                t_start=0.0, t_end=1.0, norm_p=1.0, norm_eps=0.01, label_dropout=0.1,
                time_inputs="t_h", time_scale=1.0)


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/flow/imagenet256_meanflow_xl2.py")
    config = base.base_config()
    config.method = "meanflow"
    config.model = ml_collections.ConfigDict(dict(
        name="dit", dtype="float32", class_conditional=True, remat=False, preset="DiT-XL/2",
        h_embedding=True))
    config.meanflow = ml_collections.ConfigDict(dict(meanflow_defaults(), omega=0.2,
                                                     kappa=1.0 - 0.2 / 2.5, t_end=0.75))
    config.data.update(dataset="imagenet256", random_flip=False)
    config.latent.update(vae="sd-vae-ft-mse", scale=0.18215)
    config.training.update(num_steps=240 * STEPS_PER_EPOCH, batch_size=BATCH,
                           checkpoint_every=50_000, log_every=100, ema_decay=0.9999)
    config.optim.update(name="adamw", lr=1e-4, warmup_steps=0, grad_clip=0.0, beta1=0.9,
                        beta2=0.95, eps=1e-8, weight_decay=0.0)
    config.sampling.update(num_samples=64, batch_size=64, method="meanflow", num_steps=1,
                           **base.guidance_defaults())
    config.eval.update(num_samples=50_000, batch_size=250)
    return config
