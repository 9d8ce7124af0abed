"""Training throughput of the CIFAR-10 networks (DDPM U-Net, score-SDE DDPM++, EDM DDPM++) and
SiT-XL/2, ours beside diffusers' and the official DiT's.

    python benchmarks/train_throughput.py [--networks ddpm,score_sde_ddpmpp,edm_ddpmpp,sit_xl2]
        [--dtypes float32,bfloat16] [--batch 128] [--steps 20] [--image_size 32] [--tiny]
        [--steps_per_call 1,4] [--dit_repo DIR] [--compilation_cache_dir DIR]

Networks (`_common.NETWORKS`): `ddpm` = configs/ddpm/cifar10.py (U-Net, 35,746,307 params),
`score_sde_ddpmpp` = configs/score_sde/cifar10_ddpmpp_continuous.py (DDPM++ cont.,
61,804,419), `edm_ddpmpp` = configs/edm/cifar10_uncond.py (EDM's DDPM++, 55.73M), `sit_xl2` =
configs/flow/imagenet256_sit_xl2.py (the DiT-XL/2 backbone, 674,834,720, on `--image_size`^2 x 4
latents: 32 is ImageNet 256), each in float32 and bfloat16 compute (`model.dtype`, params
float32), all at the same `--batch`. One training step = the method's loss (DDPM simple loss,
VP DSM, EDM loss, the velocity loss of flow matching) + backward + Adam/AdamW (+ EMA), on
random data, batch sharded over every local device. Prints one table: parameters,
forward GFLOP per image, images/s (median over the timed steps, each blocked until ready),
model FLOP utilisation MFU = images/s x 3 x forward FLOPs / ceiling, where the ceiling is a
bf16 matrix product measured in the same run (8192^3 on a GPU), and compile s (the first step,
compile included; with the persistent compilation cache a second launch loads it instead).
`--steps_per_call 1,4` adds a row per value: that many steps scanned in one jitted call
(`training.steps_per_call`), timed per call and divided by the count.
When torch and diffusers are importable with CUDA, diffusers' UNet2DModel with the DDPM U-Net's
configuration (`_diffusers.unet`) is timed in the same run (eager and torch.compile, tf32 and
bf16 autocast) and the DDPM rows print their ratio to it; with `--dit_repo` (a checkout of
facebookresearch/DiT) the official DiT-XL/2 is timed the same way beside `sit_xl2`
(`_dit_torch`). `--tiny` shrinks every network,
diffusers' too, to a few hundred thousand parameters for a CPU smoke run; `--torch_device cpu`
then runs the diffusers rows on the CPU (a check that they run, not a comparison).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import _common  # noqa: E402
import _diffusers  # noqa: E402
import _dit_torch  # noqa: E402
from diffusion_jax import parallel  # noqa: E402
from diffusion_jax.model_size import count_flops, count_params  # noqa: E402
from diffusion_jax.training.loop import initial_state  # noqa: E402
from diffusion_jax.training.optim import make_optimizer  # noqa: E402
from diffusion_jax.training.step import jit_train_step  # noqa: E402


def time_ours(network: str, dtype: str, batch: int, steps: int, image_size: int,
              tiny: bool = False, steps_per_call: int = 1):
    """(images/s, forward FLOPs per image, params, compile s) of one network's training step,
    with `steps_per_call` steps scanned in each jitted call (`training.steps_per_call`)."""
    config = _common.network_config(network, dtype, image_size, tiny)
    num_channels = _common.channels(network)
    method = _common.build_method(config, image_size, num_channels)
    optimizer = make_optimizer(config.optim, batch_size=config.training.batch_size)
    mesh = parallel.make_mesh()
    state = initial_state(method, optimizer, 0, mesh)
    step = jit_train_step(method, optimizer, 0.9999, mesh, steps_per_call=steps_per_call)
    batch_arrays = _common.random_batch(batch, image_size, mesh, steps_per_call, num_channels)
    t0 = time.perf_counter()
    state, _ = step(state, batch_arrays)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0

    def one_call():
        nonlocal state
        state, metrics = step(state, batch_arrays)
        return metrics
    seconds = _common.median_seconds(one_call, steps)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, num_channels), jnp.float32)
    tt = jax.ShapeDtypeStruct((1,), jnp.float32)
    flops = count_flops(lambda p, x, t: method.apply(p, x, t), state.params, x, tt)
    return steps_per_call * batch / seconds, flops, count_params(state.params), compile_s


def time_diffusers(batch: int, steps: int, image_size: int, device: str = "cuda",
                   tiny: bool = False):
    """(mode, images/s) rows for diffusers' UNet2DModel, or [] when torch/diffusers are absent."""
    if not _diffusers.available(device):
        return []
    import torch

    x = torch.randn(batch, 3, image_size, image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    return _diffusers.time_training_modes(
        "diffusers", lambda: _diffusers.unet(image_size, device, tiny),
        lambda params: torch.optim.Adam(params, lr=2e-4),
        lambda forward: torch.nn.functional.mse_loss(forward(x, t).sample, x),
        batch, steps, device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(_common.NETWORKS),
                        help=f"comma-separated, of {', '.join(_common.NETWORKS)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (model.dtype)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--steps_per_call", default="1",
                        help="comma-separated: training steps scanned per jitted call (one row each)")
    parser.add_argument("--matmul", type=int, default=0, help="ceiling matmul size (0: auto)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny networks (16 channels, 1 block): CPU smoke runs only")
    parser.add_argument("--dit_repo", default="",
                        help="a facebookresearch/DiT checkout: time the official DiT beside sit_xl2")
    parser.add_argument("--torch_device", default="cuda",
                        help="device of the diffusers rows ('cpu': check that they run)")
    parser.add_argument("--compilation_cache_dir", default=_common.DEFAULT_CACHE_DIR,
                        help="persistent XLA compilation cache ('' = off)")
    args = parser.parse_args(argv)
    networks = _common.parse_networks(args.networks)
    _common.enable_compilation_cache(args.compilation_cache_dir)
    on_gpu = jax.default_backend() == "gpu"
    ceiling = _common.matmul_ceiling(args.matmul or (8192 if on_gpu else 1024))
    print(f"{_common.device_line()}, bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s, "
          f"batch {args.batch}, {args.image_size}x{args.image_size}"
          f"{', tiny networks' if args.tiny else ''}")
    rows = []  # (network, params, flops, mode, images/s, compile s)
    for network in networks:
        for dtype in args.dtypes.split(","):
            for k in map(int, args.steps_per_call.split(",")):
                ips, flops, params, compile_s = time_ours(network, dtype, args.batch, args.steps,
                                                          args.image_size, args.tiny, k)
                mode = f"diffusion_jax {dtype}" + (f" {k} steps/call" if k > 1 else "")
                rows.append((network, params, flops, mode, ips, compile_s))
                print(f"  timed {network} {mode}: {ips:,.1f} images/s", flush=True)
        if network == "ddpm":
            for mode, ips in time_diffusers(args.batch, args.steps, args.image_size,
                                            args.torch_device, args.tiny):
                rows.append((network, params, flops, mode, ips, float("nan")))
        if network == "sit_xl2":
            for mode, ips in _dit_torch.time_training(args.dit_repo, args.batch, args.steps,
                                                      args.image_size, args.torch_device,
                                                      args.tiny):
                rows.append((network, params, flops, mode, ips, float("nan")))
    references = {"ddpm": "diffusers compiled bf16", "sit_xl2": "official DiT compiled bf16"}
    reference = {net: next((r[4] for r in rows if r[0] == net and r[3] == mode), None)
                 for net, mode in references.items()}
    print("\n| network | params | forward GFLOP | mode | train images/s | MFU | compile s "
          "| vs PyTorch compiled bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for network, params, flops, mode, ips, compile_s in rows:
        ratio = f"{ips / reference[network]:.2f}x" if reference.get(network) else "n/a"
        print(f"| {network} | {params:,} | {flops / 1e9:.4g} | {mode} | {ips:,.1f} | "
              f"{100 * 3 * flops * ips / ceiling:.1f}% | {compile_s:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
