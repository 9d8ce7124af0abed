"""diffusers' UNet2DModel with the DDPM CIFAR-10 configuration (configs/ddpm/cifar10.py), the
PyTorch baseline both benchmark scripts time. torch and diffusers are optional: `available()`
is False without them or without the device, and nothing here is imported at module level.
The device is "cuda" for real numbers; "cpu" (`--torch_device cpu`) only checks that the
comparison code runs."""
from __future__ import annotations

import statistics
import time


def available(device: str = "cuda") -> bool:
    """torch and diffusers importable and `device` present."""
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU, which runs eagerly)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def median_seconds(call, repeats: int, device: str, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of call() after `warmup` untimed ones (which compile
    a torch.compile'd network), each waited for on `device`."""
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_training_modes(name: str, make_model, make_optimizer, loss_of, batch: int, steps: int,
                        device: str):
    """(mode, images/s) rows of a PyTorch training step in the four modes users pick: eager and
    torch.compile, tf32 and bf16 autocast. make_model() builds a fresh network on `device`,
    make_optimizer(params) its optimizer, loss_of(forward) the loss of one batch through
    `forward` (the network, compiled or not)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    for compiled in (False, True):
        for autocast in (False, True):
            model = make_model()
            opt = make_optimizer(model.parameters())
            forward = torch.compile(model) if compiled else model

            def step():
                with torch.autocast(device, torch.bfloat16, enabled=autocast):
                    loss = loss_of(forward)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            seconds = median_seconds(step, steps, device, warmup=5)
            rows.append((f"{name} {'compiled' if compiled else 'eager'} "
                         f"{'bf16' if autocast else 'tf32'}", batch / seconds))
    return rows


def unet(image_size: int = 32, device: str = "cuda", tiny: bool = False):
    """The DDPM CIFAR-10 U-Net in diffusers (35.7M parameters at ch 128, ch_mult (1, 2, 2, 2),
    2 blocks, attention at 16x16, dropout 0.1) on `device`; `tiny`: the shape of
    `_common.network_config(..., tiny=True)` (16 channels, (1, 2), 1 block, attention at the
    second level) for smoke runs."""
    from diffusers import UNet2DModel

    if tiny:
        shape = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:
        shape = dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                       "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    return UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, dropout=0.1,
                       attention_head_dim=None, downsample_padding=0, **shape).to(device)


def ddpm_scheduler_kwargs() -> dict:
    """The DDPM CIFAR-10 schedule: T = 1000, linear betas 1e-4..0.02, epsilon prediction."""
    return dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                beta_end=0.02, prediction_type="epsilon")
