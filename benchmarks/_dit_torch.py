"""The official DiT PyTorch model (facebookresearch/DiT `models.py`, which needs timm) as the
baseline of the `sit_xl2` training row. Its code is not vendored: `--dit_repo DIR` names a
checkout, whose `models.DiT` is imported from there; without it (or without torch/timm) the
row is skipped. DiT-XL/2 at 32x32x4 latents: depth 28, width 1152, 16 heads, patch 2,
learn_sigma, 1000 classes (675,129,632 parameters in DiT's count, which includes the frozen
position table; 674,834,720 without it, ours)."""
from __future__ import annotations

import os
import sys

import _diffusers


def available(dit_repo: str, device: str = "cuda") -> bool:
    """torch and timm importable, `device` present, and `dit_repo` a DiT checkout."""
    if not dit_repo or not os.path.isfile(os.path.join(dit_repo, "models.py")):
        return False
    try:
        import timm  # noqa: F401
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def dit(dit_repo: str, image_size: int, device: str, tiny: bool):
    """DiT-XL/2 (or, `tiny`, two blocks of width 64 like `_common.TINY_DIT`) on `device`."""
    sys.path.insert(0, os.path.abspath(dit_repo))
    from models import DiT

    size = dict(depth=2, hidden_size=64, num_heads=2) if tiny else dict(
        depth=28, hidden_size=1152, num_heads=16)
    return DiT(input_size=image_size, patch_size=2, in_channels=4, num_classes=1000,
               learn_sigma=True, class_dropout_prob=0.1, **size).to(device)


def time_training(dit_repo: str, batch: int, steps: int, image_size: int, device: str = "cuda",
                  tiny: bool = False):
    """(mode, images/s) rows of DiT's training step (forward on noisy latents, the velocity
    loss on the first 4 output channels as SiT has it, backward, AdamW 1e-4), eager and
    torch.compile, tf32 and bf16 autocast; [] when `available` is False."""
    if not available(dit_repo, device):
        return []
    import torch

    x = torch.randn(batch, 4, image_size, image_size, device=device)
    t = torch.rand(batch, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return _diffusers.time_training_modes(
        "official DiT", lambda: dit(dit_repo, image_size, device, tiny),
        lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0),
        lambda forward: torch.nn.functional.mse_loss(forward(x, t, y)[:, :4], x),
        batch, steps, device)
