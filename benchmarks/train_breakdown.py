"""Where a training step's time goes: the CIFAR-10 networks' step timed component by component.

    python benchmarks/train_breakdown.py [--networks ddpm,score_sde_ddpmpp,edm_ddpmpp]
        [--dtypes bfloat16] [--batch 128] [--steps 20] [--image_size 32]
        [--input_dataset digits] [--tiny] [--compilation_cache_dir DIR] [--trace_dir DIR]

For each network (`_common.NETWORKS`) and compute dtype (`model.dtype`, params float32), on
random data split over every local device, each row but the input ones is its own compiled
program, timed as the median of `--steps` calls after a warm-up call, each blocked until ready:

- `forward`: the method's loss (`method.loss`: noise and time draws, the network
  in training mode with dropout, the loss);
- `forward+backward`: `jax.value_and_grad` of that loss;
- `optimizer+EMA`: the config's optax optimizer (`update`, `apply_updates`) and the EMA of
  `training/step.py`, on fixed gradients;
- `full step`: `jit_train_step`, the training program; every share is of this row;
- `full step, model.attn_resolutions=()`: the full step without the attention blocks at the
  attention resolutions (the middle block's attention stays: no config key removes it);
- `full step, model.dropout=0`: the full step without dropout (and its random bits);
- `input: BatchLoader <data set> <shape>`: the mean time per batch over `--steps` batches
  that `BatchLoader` delivers from `--input_dataset`'s training split, from a fresh iterator,
  alone on the host (in training it runs beside the steps), at the data set's own image shape
  (digits: 8x8x1, not the network's);
- `input: host->device <shape>`: `parallel.global_batch` (what `prefetch_to_device` does) of
  one float32 batch of the network's image shape, the median of `--steps` copies.

Columns: ms per step; its share of the full step; images/s = batch / (s per step); GFLOP per
image of the row's program (matrix products and convolutions, `diffusion_jax.model_size`), so
forward+backward / forward shows the backward's cost (3 when it costs twice the forward); for
the input rows, their images/s over the full step's and whether the input keeps up with it.
`--tiny` shrinks every network to about 0.2M parameters for a CPU smoke run.
`--trace_dir DIR` records the timed full steps with `jax.profiler.trace` into
DIR/<network>_<dtype> (TensorBoard's profile plugin, or plugins/profile/*/perfetto_trace.json.gz
in Perfetto).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common  # noqa: E402
from diffusion_jax import parallel  # noqa: E402
from diffusion_jax.data.datasets import open_dataset  # noqa: E402
from diffusion_jax.data.loader import BatchLoader  # noqa: E402
from diffusion_jax.model_size import jaxpr_flops  # noqa: E402
from diffusion_jax.training.loop import initial_state  # noqa: E402
from diffusion_jax.training.optim import make_optimizer  # noqa: E402
from diffusion_jax.training.step import ema_update, jit_train_step  # noqa: E402

ABLATIONS = {"model.attn_resolutions=()": {"attn_resolutions": ()},
             "model.dropout=0": {"dropout": 0.0}}


def setup(config, image_size: int, mesh):
    method = _common.build_method(config, image_size)
    optimizer = make_optimizer(config.optim, batch_size=config.training.batch_size)
    return method, optimizer, initial_state(method, optimizer, 0, mesh)


def compile_with_flops(jitted, *args):
    """(the compiled program, its FLOPs) of a jax.jit function on `args`, traced once."""
    traced = jitted.trace(*args)
    return traced.lower().compile(), jaxpr_flops(traced.jaxpr.jaxpr)


def time_components(method, optimizer, state, decay: float, batch, steps: int):
    """[(component, s per step, FLOPs)] of the loss, its gradient and the optimizer + EMA."""
    loss = method.loss
    grad = jax.value_and_grad(loss, has_aux=True)
    args = (state.params, batch, jax.random.PRNGKey(1), state.aux, state.step)

    def update(params, opt_state, ema, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, ema_update(ema, params, decay)

    forward = compile_with_flops(jax.jit(loss), *args)
    backward = compile_with_flops(jax.jit(grad), *args)
    _, grads = backward[0](*args)
    update_args = (state.params, state.opt_state, state.ema_params, grads)
    optimizer_ema = compile_with_flops(jax.jit(update), *update_args)
    return [(name, _common.median_seconds(lambda: program(*fn_args), steps), flops)
            for name, (program, flops), fn_args in (("forward", forward, args),
                                                    ("forward+backward", backward, args),
                                                    ("optimizer+EMA", optimizer_ema,
                                                     update_args))]


def time_full_step(method, optimizer, state, decay: float, batch, steps: int, mesh,
                   context=None):
    """(s per step, FLOPs) of `jit_train_step`; the steps run inside `context` if given."""
    step, flops = compile_with_flops(jit_train_step(method, optimizer, decay, mesh), state,
                                     batch)

    def call():
        nonlocal state
        state, metrics = step(state, batch)
        return state, metrics

    return _common.median_seconds(call, steps, context), flops


def loader_seconds(dataset: str, batch: int, steps: int, random_flip: bool):
    """(image shape, s per batch) of `BatchLoader` over `dataset`'s training split, from a
    fresh iterator (its prefetch buffer starts empty)."""
    spec, source, decode = open_dataset(dataset, "train")
    batches = iter(BatchLoader(source, decode, global_batch=batch, seed=0,
                               random_flip=random_flip))
    t = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = (time.perf_counter() - t) / steps
    batches.close()
    return spec.image_shape, seconds


def transfer_seconds(batch: int, image_size: int, steps: int, mesh) -> float:
    """s per host->device copy of one float32 batch, split over the mesh as in training."""
    host = {"image": np.random.default_rng(0).standard_normal(
                (batch, image_size, image_size, 3), np.float32),
            "label": np.zeros((batch,), np.int32)}
    return _common.median_seconds(lambda: parallel.global_batch(host, mesh), steps)


def breakdown(network: str, dtype: str, args, mesh):
    """[(component, s per step, FLOPs; None for the input rows)]."""
    config = _common.network_config(network, dtype, args.image_size, args.tiny)
    batch = _common.random_batch(args.batch, args.image_size, mesh)
    decay = config.training.ema_decay
    method, optimizer, state = setup(config, args.image_size, mesh)
    rows = time_components(method, optimizer, state, decay, batch, args.steps)
    trace = (jax.profiler.trace(os.path.join(args.trace_dir, f"{network}_{dtype}"),
                                create_perfetto_trace=True) if args.trace_dir else None)
    rows.append(("full step", *time_full_step(method, optimizer, state, decay, batch,
                                              args.steps, mesh, trace)))
    for label, overrides in ABLATIONS.items():
        ablated = config.copy_and_resolve_references()
        ablated.model.update(overrides)
        rows.append((f"full step, {label}", *time_full_step(
            *setup(ablated, args.image_size, mesh), decay, batch, args.steps, mesh)))
    shape, seconds = loader_seconds(args.input_dataset, args.batch, args.steps,
                                    config.data.random_flip)
    rows.append((f"input: BatchLoader {args.input_dataset} {'x'.join(map(str, shape))}",
                 seconds, None))
    rows.append((f"input: host->device {args.image_size}x{args.image_size}x3",
                 transfer_seconds(args.batch, args.image_size, args.steps, mesh), None))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(_common.NETWORKS),
                        help=f"comma-separated, of {', '.join(_common.NETWORKS)}")
    parser.add_argument("--dtypes", default="bfloat16", help="compute dtypes (model.dtype)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--input_dataset", default="digits",
                        help="data set BatchLoader reads for the input rows (must be offline)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny networks (16 channels, 1 block): CPU smoke runs only")
    parser.add_argument("--compilation_cache_dir", default=_common.DEFAULT_CACHE_DIR,
                        help="persistent XLA compilation cache ('' = off)")
    parser.add_argument("--trace_dir", default="",
                        help="record the timed full steps with jax.profiler.trace here")
    args = parser.parse_args(argv)
    networks = _common.parse_networks(args.networks)
    _common.enable_compilation_cache(args.compilation_cache_dir)
    mesh = parallel.make_mesh()
    print(f"{_common.device_line()}, batch {args.batch}, {args.image_size}x{args.image_size}, "
          f"median of {args.steps}{', tiny networks' if args.tiny else ''}")
    table = []
    for network in networks:
        for dtype in args.dtypes.split(","):
            rows = breakdown(network, dtype, args, mesh)
            full = next(s for component, s, _ in rows if component == "full step")
            table.append((network, dtype, full, rows))
            print(f"  timed {network} {dtype}: full step {1e3 * full:.4g} ms", flush=True)
    print("\n| network | dtype | component | ms per step | share of full step | images/s "
          "| GFLOP per image | input / full step |")
    print("|---|---|---|---|---|---|---|---|")
    for network, dtype, full, rows in table:
        for component, seconds, flops in rows:
            gflop = "n/a" if flops is None else f"{flops / args.batch / 1e9:.4g}"
            keeps_up = (f"{full / seconds:.2f}x ({'keeps up' if seconds <= full else 'too slow'})"
                        if component.startswith("input:") else "")
            print(f"| {network} | {dtype} | {component} | {1e3 * seconds:.4g} | "
                  f"{100 * seconds / full:.1f}% | {args.batch / seconds:,.1f} | {gflop} | "
                  f"{keeps_up} |")


if __name__ == "__main__":
    main()
