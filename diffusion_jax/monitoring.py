"""What a training run shows while it runs, as `training.loop.Hooks`: `plots/loss.png` (loss and
gradient norm against step), TensorBoard event files (`logging.tensorboard`, written with
tensorboardX: no TensorFlow), an optional Weights & Biases run (`logging.wandb_project`; never
contacted unless set), and a grid of `training.preview_samples` samples at every checkpoint
(`samples/step_<N>.png`). `metrics.jsonl` stays the source of truth: every sink gets its rows.
A consistency model whose one-step samples lose their spread (`onestep_spread`, the standard
deviation of one-step samples of a fixed noise batch over the data batch's, below
COLLAPSE_SPREAD, from a tenth of the way into training on: a network at initialisation has
little spread yet) is collapsing towards a constant function: one warning line says so.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import jax

from diffusion_jax import plots, sampling
from diffusion_jax import workdir as workdir_io
from diffusion_jax.errors import ConfigError
from diffusion_jax.training.loop import Hooks

PLOT_EVERY_S = 10.0  # redraw plots/loss.png at most this often between checkpoints
COLLAPSE_SPREAD = 0.5  # `onestep_spread` below this fraction of the data's: a collapsing model


def check(config) -> None:
    """ConfigError now for a logging option that cannot work (W&B asked for, not installed)."""
    if config.logging.wandb_project:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logging.wandb_project is set but wandb is not installed "
                              "(pip install wandb), or leave it empty")


def training_hooks(config, workdir: str, mesh, method, sampler, conditions=None) -> Hooks:
    """The hooks of one training run in `workdir` (process 0 calls them; only process 0 opens
    the TensorBoard writer and the W&B run, so other processes create no files there)."""
    on_log, on_checkpoint = [], []
    main = jax.process_index() == 0
    plot_path = os.path.join(workdir, "plots", "loss.png")
    last_plot = [0.0]

    def plot(step, metrics=None, force=False):
        if force or time.monotonic() - last_plot[0] >= PLOT_EVERY_S:
            plots.plot_training(workdir_io.read_metrics(workdir), plot_path)
            last_plot[0] = time.monotonic()

    on_log.append(lambda step, metrics: plot(step))
    on_log.append(collapse_warning(config.training.num_steps))
    on_checkpoint.append(lambda step, state: plot(step, force=True))
    if config.logging.tensorboard and main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

        def tensorboard(step, metrics):
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        on_log.append(tensorboard)
    if config.logging.wandb_project and main:
        import wandb

        run = wandb.init(project=config.logging.wandb_project, dir=workdir, resume="allow",
                         id=config.logging.wandb_run_id or None, config=config.to_dict())
        on_log.append(lambda step, metrics: run.log(metrics, step=step))
    if config.training.preview_samples:
        on_checkpoint.append(_preview(config, workdir, mesh, method, sampler, conditions))
    return Hooks(tuple(on_log), tuple(on_checkpoint))


def collapse_warning(num_steps: int):
    """on_log: one warning line, the first time `onestep_spread` is below COLLAPSE_SPREAD at a
    step >= num_steps / 10."""
    warned = [False]

    def warn(step, metrics):
        spread = metrics.get("onestep_spread")
        if (spread is not None and spread < COLLAPSE_SPREAD and 10 * step >= num_steps
                and not warned[0]):
            warned[0] = True
            print(f"warning: step {step}: one-step samples have {spread:.2f} of the data's "
                  f"spread (onestep_spread < {COLLAPSE_SPREAD}): the consistency model is "
                  f"collapsing towards a constant", file=sys.stderr, flush=True)
    return warn


def _preview(config, workdir, mesh, method, sampler, conditions):
    """on_checkpoint: `training.preview_samples` samples of the EMA weights with the configured
    sampler, as `samples/step_<N>.png` (not at the last step when `training.sample_at_end`
    samples there); the program is compiled once for the whole run."""
    n = config.training.preview_samples
    batch = -(-n // mesh.devices.size) * mesh.devices.size
    fn = sampling.make_sample_fn(method, mesh, sampler, batch)
    rng = jax.random.PRNGKey(config.sampling.seed)

    def preview(step, state):
        if step == config.training.num_steps and config.training.sample_at_end:
            return  # the launcher samples `sampling.num_samples` as samples/step_<N>.png next
        images = sampling.generate(method, state.ema_params, rng, n, batch, mesh, sampler,
                                   aux=state.aux, conditions=conditions, sample_fn=fn)
        labels = (sampling.class_labels(n, method.num_classes) if conditions is None
                  else conditions)
        sampling.save_samples(os.path.join(workdir, "samples"), f"step_{step}", images, labels,
                              captions=None if conditions is None else
                              [method.detokenize(c) for c in conditions])
    return preview
