"""Stable Diffusion v2.1 (Stability AI's stabilityai/stable-diffusion-2-1 release): 768 x 768,
v-prediction, the 865,910,724-parameter U-Net (64 channels per attention head, linear
projections) on 96 x 96 x 4 latents, conditioned on the penultimate layer of OpenCLIP
ViT-H/14's text transformer; the SD VAE and schedule. Weights: `--config.sd.model_dir=DIR`, or
`--config.sd.checkpoint=v2-1_768-ema-pruned.safetensors` with `--config.sd.tokenizer_dir`.
Settings: `configs/base.py`, `stable_diffusion_config`.
"""
from configs.base import stable_diffusion_config


def get_config(arg=None):
    return stable_diffusion_config("sd21")
