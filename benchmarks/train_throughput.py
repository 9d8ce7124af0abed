"""Training throughput of the DDPM CIFAR-10 U-Net (35.7M parameters), ours beside diffusers'.

    python benchmarks/train_throughput.py [--batch 128] [--steps 20] [--image_size 32]

One training step = forward + epsilon MSE loss + backward + Adam (+ EMA for ours), on random
data, batch sharded over every local device. Prints one table: images/s (median over the timed
steps) and model FLOP utilisation, MFU = images/s x 3 x forward FLOPs / ceiling, where the
ceiling is a bf16 matrix product measured in the same run (8192^3 on a GPU). When torch and
diffusers are importable, diffusers' UNet2DModel with the same configuration is timed in the
same run (eager and torch.compile, tf32 and bf16 autocast) and the ratio printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.ddpm import cifar10  # noqa: E402
from diffusion_jax import builders, parallel  # noqa: E402
from diffusion_jax.flops import count_flops  # noqa: E402
from diffusion_jax.training.loop import initial_state  # noqa: E402
from diffusion_jax.training.optim import make_optimizer  # noqa: E402
from diffusion_jax.training.step import jit_train_step  # noqa: E402


def matmul_ceiling(n: int) -> float:
    """FLOP/s of a bf16 n^3 matrix product (the practical peak of this device)."""
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def time_ours(dtype: str, batch: int, steps: int, image_size: int):
    config = cifar10.get_config()
    config.model.dtype = dtype
    config.optim.warmup_steps = 0
    method = builders.build_method(config)
    method = dataclasses.replace(method, image_shape=(image_size, image_size, 3))
    optimizer = make_optimizer(config.optim)
    mesh = parallel.make_mesh()
    state = initial_state(method, optimizer, 0, mesh)
    step = jit_train_step(method, optimizer, 0.9999, mesh)
    data = jax.random.normal(jax.random.PRNGKey(0), (batch, image_size, image_size, 3))
    batch_arrays = jax.device_put({"image": data, "label": jnp.zeros((batch,), jnp.int32)},
                                  parallel.batch_sharded(mesh))
    t0 = time.perf_counter()
    state, _ = step(state, batch_arrays)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    tt = jax.ShapeDtypeStruct((1,), jnp.float32)
    flops = count_flops(lambda p, x, t: method.apply(p, x, t), state.params, x, tt)
    return batch / statistics.median(times), flops, compile_s


def time_diffusers(batch: int, steps: int, image_size: int):
    """(mode, images/s) rows for diffusers' UNet2DModel, or [] when torch/diffusers are absent."""
    try:
        import torch
        from diffusers import UNet2DModel
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    for compiled in (False, True):
        for autocast in (False, True):
            model = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3,
                                block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D",
                                                  "DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D",
                                                "UpBlock2D"), dropout=0.1).cuda()
            opt = torch.optim.Adam(model.parameters(), lr=2e-4)
            fwd = torch.compile(model) if compiled else model
            x = torch.randn(batch, 3, image_size, image_size, device="cuda")
            t = torch.randint(0, 1000, (batch,), device="cuda")

            def step():
                with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                    loss = torch.nn.functional.mse_loss(fwd(x, t).sample, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(5):
                step()
            torch.cuda.synchronize()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            mode = f"diffusers {'compiled' if compiled else 'eager'} {'bf16' if autocast else 'tf32'}"
            rows.append((mode, batch / statistics.median(times)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--matmul", type=int, default=0, help="ceiling matmul size (0: auto)")
    args = parser.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    ceiling = matmul_ceiling(args.matmul or (8192 if on_gpu else 1024))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
          f"bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s")
    rows = []
    for dtype in ("float32", "bfloat16"):
        ips, flops, compile_s = time_ours(dtype, args.batch, args.steps, args.image_size)
        rows.append((f"diffusion_jax {dtype}", ips, 3 * flops * ips / ceiling, compile_s))
    for mode, ips in time_diffusers(args.batch, args.steps, args.image_size):
        rows.append((mode, ips, 3 * flops * ips / ceiling, float("nan")))
    reference = next((r[1] for r in rows if r[0] == "diffusers compiled bf16"), None)
    print(f"\n| mode | train images/s | MFU | compile s | vs diffusers compiled bf16 |")
    print("|---|---|---|---|---|")
    for mode, ips, mfu, compile_s in rows:
        ratio = f"{ips / reference:.2f}x" if reference else "n/a"
        print(f"| {mode} | {ips:,.1f} | {100 * mfu:.1f}% | {compile_s:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
