"""Sampling throughput of the DDPM CIFAR-10 U-Net: one network evaluation and whole samplers,
ours beside diffusers'.

    python benchmarks/sampler_throughput.py [--batch 1024] [--dtype bfloat16]
        [--samplers ancestral,ddim,dpm_solver_pp_2m,heun] [--steps_scale 1] [--repeats 3]
        [--image_size 32] [--tiny] [--compilation_cache_dir DIR]

The network is configs/ddpm/cifar10.py's U-Net (35,746,307 params) with `model.dtype` =
`--dtype` (float32 params, random weights: speed does not depend on them). Rows:
- `eval`: one network evaluation eps(x_t, t) at batch `--batch`;
- whole samplers through `DDPM.sample`, each ONE jitted program (noise drawn inside it; the
  samplers loop with jax.lax, no Python loop per step): `ancestral` 1000 steps (sigma_t^2 =
  beta_t), `ddim` 50 (eta 0), `dpm_solver_pp_2m` DPM-Solver++(2M) 20 steps (time-uniform),
  `heun` EDM Heun 18 steps = 35 evaluations (rho 7 grid on the schedule's sigma range); every
  step count times `--steps_scale` (at least 2; e.g. 0.01 for a CPU smoke run).
Protocol: the program is compiled ahead of time (`jit(...).lower(...).compile()`: the compile s
column; with the persistent compilation cache a second launch loads it instead), called once
as a warm-up, then timed over `--repeats` calls (median), each call blocked until its output is
ready on the device; the host transfer of the images is NOT timed. images/s = batch / s.
With torch + diffusers + CUDA importable, the same run times diffusers' UNet2DModel of the same
configuration (`_diffusers.unet`) under torch.compile, bf16 autocast (tf32 when --dtype float32)
and torch.inference_mode: one evaluation, and the scheduler loops (a Python loop per step,
around the compiled network) DDPMScheduler (1000 steps, variance fixed_large = beta_t, no
clipping), DDIMScheduler (50, eta 0), DPMSolverMultistepScheduler (20, solver_order 2,
algorithm_type dpmsolver++) and HeunDiscreteScheduler with use_karras_sigmas (18 steps: its
1 + 2 x 17 = 35 evaluations, EDM's Heun with a final Euler step), with the same warm-up /
median protocol (torch.cuda.synchronize after each call; noise drawn on the GPU, inside the
timing) and the ratio ours / theirs printed per row, beside diffusers' network evaluations
per sample as its loop counts them. `--tiny` shrinks both networks for a CPU smoke
run; `--torch_device cpu` runs the diffusers rows on the CPU (a check that they run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import _common  # noqa: E402
import _diffusers  # noqa: E402
from diffusion_jax.samplers import solvers  # noqa: E402

# sampler -> (DDPM.sample options, full step count)
SAMPLERS = {
    "ancestral": (dict(method="ancestral", variance="beta"), 1000),
    "ddim": (dict(method="ddim", eta=0.0), 50),
    "dpm_solver_pp_2m": (dict(method="dpm_solver_pp_2m", spacing="uniform"), 20),
    "heun": (dict(method="heun", rho=7.0), 18),
}


def scaled_steps(sampler: str, scale: float) -> int:
    return max(2, round(SAMPLERS[sampler][1] * scale))


def time_compiled(fn, args, repeats: int):
    """(compile s, median s per call) of jit(fn) on args: AOT compile, one warm-up call, then
    `repeats` timed calls blocked until ready."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return compile_s, statistics.median(times)


def _nfe(sampler) -> int:
    """Network evaluations: a shared solver's count, or one per step of a DDPM chain."""
    return solvers.nfe(sampler) if sampler.method in solvers.SOLVERS else sampler.num_steps


def time_ours(method, params, batch: int, samplers, steps_scale: float, repeats: int):
    """[(row, evaluations, s per batch, compile s)]: one evaluation, then each sampler."""
    shape = (batch,) + tuple(method.image_shape)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    t = jnp.full((batch,), 500.0)
    rows = []
    compile_s, s = time_compiled(lambda p, x, t: method.apply(p, x, t), (params, x, t), repeats)
    rows.append(("eval", 1, s, compile_s))
    print(f"  timed eval: {batch / s:,.1f} images/s", flush=True)
    for name in samplers:
        options, _ = SAMPLERS[name]
        n = scaled_steps(name, steps_scale)

        sampler = method.sampler(num_steps=n, **options)

        def sample(params, rng, sampler=sampler):
            noise_rng, rng = jax.random.split(rng)
            x_init = jax.random.normal(noise_rng, shape)
            return method.sample(params, rng, x_init, sampler=sampler)

        compile_s, s = time_compiled(sample, (params, jax.random.PRNGKey(1)), repeats)
        rows.append((f"{name} {n} steps", _nfe(sampler), s, compile_s))
        print(f"  timed {name}: {s:.3f} s per batch", flush=True)
    return rows


def time_diffusers(batch: int, samplers, steps_scale: float, repeats: int, image_size: int,
                   dtype: str, device: str = "cuda", tiny: bool = False):
    """({row: s per batch}, {row: network evaluations}) for diffusers (same row names as
    `time_ours`), empty without it. The scheduler loops count their network calls."""
    if not _diffusers.available(device):
        return {}, {}
    import torch
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           HeunDiscreteScheduler)

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    net = torch.compile(_diffusers.unet(image_size, device, tiny).eval())
    calls = [0]
    autocast = dtype == "bfloat16"
    shape = (batch, 3, image_size, image_size)
    sched = _diffusers.ddpm_scheduler_kwargs()
    schedulers = {
        "ancestral": lambda: DDPMScheduler(**sched, variance_type="fixed_large",
                                           clip_sample=False),
        "ddim": lambda: DDIMScheduler(**sched, clip_sample=False),
        "dpm_solver_pp_2m": lambda: DPMSolverMultistepScheduler(
            **sched, solver_order=2, algorithm_type="dpmsolver++"),
        "heun": lambda: HeunDiscreteScheduler(**sched, use_karras_sigmas=True),
    }

    def timed(call):
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=autocast):
            return _diffusers.median_seconds(call, repeats, device)

    x = torch.randn(shape, device=device)
    t = torch.full((batch,), 500, device=device)
    rows = {"eval": timed(lambda: net(x, t).sample)}
    evaluations = {}
    for name in samplers:
        n = scaled_steps(name, steps_scale)
        scheduler = schedulers[name]()

        def loop(scheduler=scheduler):
            scheduler.set_timesteps(n, device=device)  # also resets the multistep state
            xt = torch.randn(shape, device=device) * scheduler.init_noise_sigma
            for step_t in scheduler.timesteps:
                eps = net(scheduler.scale_model_input(xt, step_t), step_t).sample
                calls[0] += 1
                xt = scheduler.step(eps.float(), step_t, xt).prev_sample
            return xt

        calls[0] = 0
        rows[f"{name} {n} steps"] = timed(loop)
        evaluations[f"{name} {n} steps"] = calls[0] // (repeats + 1)
        print(f"  timed diffusers {name}: {rows[f'{name} {n} steps']:.3f} s per batch",
              flush=True)
    return rows, evaluations


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (model.dtype)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help=f"comma-separated, of {', '.join(SAMPLERS)}")
    parser.add_argument("--steps_scale", type=float, default=1.0,
                        help="multiply every step count (at least 2 steps)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny network (16 channels, 1 block): CPU smoke runs only")
    parser.add_argument("--torch_device", default="cuda",
                        help="device of the diffusers rows ('cpu': check that they run)")
    parser.add_argument("--compilation_cache_dir", default=_common.DEFAULT_CACHE_DIR,
                        help="persistent XLA compilation cache ('' = off)")
    args = parser.parse_args(argv)
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise SystemExit(f"unknown sampler(s) {', '.join(unknown)}; valid: {', '.join(SAMPLERS)}")
    _common.enable_compilation_cache(args.compilation_cache_dir)
    config = _common.network_config("ddpm", args.dtype, args.image_size, args.tiny)
    method = _common.build_method(config, args.image_size)
    params = method.init_params(jax.random.PRNGKey(0))
    print(f"{_common.device_line()}, DDPM U-Net {args.dtype}, batch {args.batch}, "
          f"{args.image_size}x{args.image_size}, median of {args.repeats}"
          f"{', tiny network' if args.tiny else ''}")
    ours = time_ours(method, params, args.batch, samplers, args.steps_scale, args.repeats)
    theirs, their_nfe = time_diffusers(args.batch, samplers, args.steps_scale, args.repeats,
                                       args.image_size, args.dtype, args.torch_device, args.tiny)
    print("\n| row | network evaluations | ours s per batch | ours images/s | ours compile s "
          "| diffusers evaluations | diffusers s per batch | diffusers images/s "
          "| ours / diffusers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row, nfe, s, compile_s in ours:
        ref = theirs.get(row)
        their_cells = (f"{their_nfe.get(row, 1)} | {ref:.4g} | {args.batch / ref:,.1f} | "
                       f"{ref / s:.2f}x" if ref else "n/a | n/a | n/a | n/a")
        print(f"| {row} | {nfe} | {s:.4g} | {args.batch / s:,.1f} | {compile_s:.1f} | "
              f"{their_cells} |")


if __name__ == "__main__":
    main()
