"""The component configs of the released Stable Diffusion checkpoints, as their diffusers model
directories' `config.json` / `scheduler_config.json` / `tokenizer_config.json` give them
(runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and -2-1-base; the inpainting
variants differ only in the U-Net's 9 input channels, which the importer reads off the weights).

A single-file checkpoint (CompVis / Stability layout) carries no config: `load_single_file`
takes one of these by name. Keys a config does not list have diffusers' defaults.
"""
from __future__ import annotations

_SD1_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}

_SD2_UNET = dict(_SD1_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, upcast_attention=True, sample_size=96)

_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

_CLIP_VIT_L = {
    "architectures": ["CLIPTextModel"],
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# OpenCLIP ViT-H/14's text tower without its last (24th) layer: SD 2 conditions on the
# penultimate layer, and diffusers ships the 23 it uses.
_OPEN_CLIP_VIT_H = dict(_CLIP_VIT_L, hidden_act="gelu", hidden_size=1024, intermediate_size=4096,
                        num_attention_heads=16, num_hidden_layers=23, projection_dim=512)

_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

RELEASED = {
    "sd15": {
        "unet": _SD1_UNET,
        "text_encoder": _CLIP_VIT_L,
        "vae": _VAE,
        "scheduler": dict(_SCHEDULER, _class_name="PNDMScheduler"),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
    },
    "sd21": {
        "unet": _SD2_UNET,
        "text_encoder": _OPEN_CLIP_VIT_H,
        "vae": dict(_VAE, sample_size=768),
        "scheduler": dict(_SCHEDULER, _class_name="DDIMScheduler",
                          prediction_type="v_prediction"),
        "tokenizer": {"pad_token": "!", "model_max_length": 77},
    },
    "sd21_base": {
        "unet": dict(_SD2_UNET, sample_size=64),
        "text_encoder": _OPEN_CLIP_VIT_H,
        "vae": _VAE,
        "scheduler": dict(_SCHEDULER, _class_name="PNDMScheduler", prediction_type="epsilon"),
        "tokenizer": {"pad_token": "!", "model_max_length": 77},
    },
}
