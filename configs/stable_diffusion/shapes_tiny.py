"""Stable Diffusion's fine-tuning recipe on a CPU: the tiny random SD 1.5-shaped model of the
tests (`tests/data/sd_tiny/sd15`, written by diffusers' `save_pretrained`: a 2-level U-Net of
width 16/32 with cross-attention to a 3-layer CLIP text transformer of width 32, a 2-level VAE)
fine-tuned on the captioned shapes at 16 x 16 (8 x 8 x 4 latents): 300 steps of batch 32, AdamW
1e-3, EMA 0.99, caption dropout 0.1, then 16 samples with DPM-Solver++(2M), 20 steps, guidance
3. It exercises the whole path (frozen CLIP tokens and text encoder, VAE latents, the loss,
checkpoints, sampling from the fine-tuned run) in a few minutes; the random VAE makes the
samples meaningless as images. Not a paper setting.
"""
import os

from configs.base import stable_diffusion_config

TINY_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tests", "data", "sd_tiny", "sd15")


def get_config(arg=None):
    config = stable_diffusion_config("sd15")
    config.sd.update(model_dir=TINY_MODEL, resolution=16)
    config.data.dataset = "shapes"
    config.training.update(num_steps=300, batch_size=32, checkpoint_every=100, log_every=20,
                           ema_decay=0.99)
    config.optim.update(lr=1e-3, warmup_steps=20)
    config.sampling.update(num_samples=16, batch_size=16, guidance_scale=3.0)
    config.eval.update(num_samples=64, batch_size=32, num_reference=512)
    return config
