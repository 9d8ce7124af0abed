"""Rectified flow on CIFAR-10 (Liu et al. 2023; gnobitab/RectifiedFlow
`configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py` on score_sde's DDPM++ defaults).

The linear path (sigma_min 0) with velocity prediction, t ~ U[1e-3, 1 - 1e-3] (their eps 1e-3),
the mean squared error over pixels; DDPM++ (`ncsnpp.ddpmpp_cifar10_kwargs`: 128 channels,
(1, 2, 2, 2), 4 BigGAN blocks, attention at 16, positional time embedding) with their dropout
0.15, conditioned on 999 t as their network is (in their time t = 1 is data: the same embedding
up to relabelling). Adam lr 2e-4, warmup 5000, clip 1, batch 128, 1.3M steps, EMA 0.999999,
random flips. Sampler: their RK45 at tolerance 1e-5 (here dopri5, rtol = atol = 1e-5). Their
published FIDs are not quoted (not found in their primary text; see FRONTIER.md 1b).
Needs the TFDS cifar10 data set prepared in `data.data_dir`.
"""
import ml_collections

from configs import base
from diffusion_jax.models import ncsnpp


def flow_defaults(interpolant: str = "linear", prediction: str = "velocity") -> dict:
    """The `flow` section: interpolant (linear | gvp | vp) with the linear path's sigma_min,
    prediction (velocity | noise | score), t_distribution (uniform on [train_eps,
    1 - train_eps] | logit_normal with logit_mean, logit_std | skewed), SiT's loss_weighting of
    the noise and score losses (none | velocity | likelihood), the network's time input
    time_scale t, classifier-free guidance training's label_dropout; coupling_dir: reflow pairs
    to train on (`diffusion_jax.reflow`: written there by --mode=reflow_pairs from a trained
    flow, read by --mode=train); distill_steps k > 0: distil those pairs for k Euler steps
    instead, with distill_loss l2 | lpips | lpips+l2 (LPIPS for k = 1 only, its weights .npz
    lpips_weights, images resized to lpips_resize)."""
    return dict(interpolant=interpolant, sigma_min=0.0, prediction=prediction,
                t_distribution="uniform", logit_mean=0.0, logit_std=1.0, loss_weighting="none",
                train_eps=0.0, time_scale=1.0, label_dropout=0.0, coupling_dir="",
                distill_steps=0, distill_loss="l2", lpips_weights="", lpips_resize=224)


def reflow_defaults() -> dict:
    """--mode=reflow_pairs (`diffusion_jax.reflow.write_pairs`): how many (sample, noise) pairs,
    the seed of their noise, the pairs per resumable shard."""
    return dict(num_pairs=50_000, seed=0, shard_size=4096)


def flow_sampling_defaults() -> dict:
    """The flow samplers' options (`samplers.flow`; SiT's defaults) and guidance off."""
    return dict(rtol=1e-3, atol=1e-6, diffusion_form="sigma", diffusion_norm=1.0,
                last_step="mean", last_step_size=0.04, sample_eps=-1.0, guidance_channels=0,
                **base.guidance_defaults())


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/flow/cifar10_rectified_flow.py")
    config = base.base_config()
    config.method = "flow"
    config.model.update(name="ncsnpp", **dict(ncsnpp.ddpmpp_cifar10_kwargs(), dropout=0.15))
    config.flow = ml_collections.ConfigDict(dict(flow_defaults(), train_eps=1e-3,
                                                 time_scale=999.0))
    config.reflow = ml_collections.ConfigDict(reflow_defaults())
    config.data.update(dataset="cifar10", random_flip=True)
    config.training.update(num_steps=1_300_000, batch_size=128, checkpoint_every=10_000,
                           log_every=100, ema_decay=0.999999)
    config.optim.update(name="adam", lr=2e-4, warmup_steps=5000, grad_clip=1.0, beta1=0.9,
                        beta2=0.999, eps=1e-8)
    config.sampling.update(num_samples=64, batch_size=64, method="flow_dopri5", num_steps=100,
                           **dict(flow_sampling_defaults(), rtol=1e-5, atol=1e-5))
    config.eval.update(num_samples=50_000, batch_size=1000)
    return config
