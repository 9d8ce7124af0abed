"""The launcher's modes: train, sample, eval, info, encode_latents, reflow_pairs. `launch.py`
parses flags and calls `run`."""
from __future__ import annotations

import contextlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import builders, edit_inputs, monitoring, parallel, runs, sampling
from diffusion_jax import workdir as workdir_io
from diffusion_jax.data.datasets import DATASETS, captions, open_dataset
from diffusion_jax.errors import CheckpointError, ConfigError, choose
from diffusion_jax.model_size import count_flops, count_params
from diffusion_jax.progress import Progress
from diffusion_jax.training import ema_snapshots, loop
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.optim import trainable_labels

MODES = ("train", "sample", "eval", "info", "encode_latents", "reflow_pairs",
         "posthoc_ema")


def training_settings(config) -> loop.Settings:
    """The loop's settings from `config.training` and `data.random_flip`."""
    t = config.training
    return loop.Settings(num_steps=t.num_steps, batch_size=t.batch_size,
                         checkpoint_every=t.checkpoint_every, log_every=t.log_every, seed=t.seed,
                         ema_decay=t.ema_decay, max_checkpoints=t.max_checkpoints,
                         grad_accum_steps=t.grad_accum_steps, steps_per_call=t.steps_per_call,
                         random_flip=config.data.random_flip and not _cached_latents(config),
                         ema_warmup=t.ema_warmup,
                         ema_rampup_ratio=t.ema_rampup_ratio,
                         ema_sigma_rels=tuple(config.ema.sigma_rels),
                         ema_snapshot_every=config.ema.snapshot_every)


def _cached_latents(config) -> bool:
    """Training reads a latent cache, whose examples include the mirrored images' latents when
    `data.random_flip` (so the loader flips nothing)."""
    return builders.is_latent(config) and bool(config.latent.cache_dir)


def run(config, workdir: str, mode: str, train_workdir: str | None = None, prompt: str = "",
        negative_prompt: str = "") -> int:
    """Run one mode; returns the process exit status. Sample and eval restore the newest
    checkpoint of `train_workdir` (default `workdir`) and write to `workdir`, so several
    evaluations of one training run (an experiment's members) keep their own outputs.
    `prompt` / `negative_prompt`: sample mode of a text-conditional model generates images of
    that caption, guided away from the negative one."""
    choose("mode", mode, MODES)
    if prompt or negative_prompt:
        if mode != "sample":
            raise ConfigError("--prompt and --negative_prompt are options of --mode=sample")
        if not builders.caption_length(config):
            raise ConfigError("--prompt and --negative_prompt need a text-conditional model "
                              "(text.encoder 'bytes' or 'precomputed'; see configs/text/)")
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir",
                          os.path.expanduser(config.compilation_cache_dir))
    d = config.distributed
    parallel.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
    if mode == "info":
        return info(config)
    method = builders.build_method(config)
    sampler = builders.build_sampler(config, method)
    if negative_prompt:
        sampler = sampler.replace(negative_prompt=negative_prompt)
    mesh = builders.build_mesh(config)
    validate(config, workdir, mode, train_workdir, mesh)
    if mode != "train":
        runs.check_guide(config, method, sampler)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --workdir {workdir!r}: {e.strerror}") from None
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            stack.enter_context(workdir_io.WorkdirLock(workdir, mode))
            workdir_io.write_config(workdir, config)
            with open(os.path.join(workdir, "run.json"), "w") as f:
                json.dump(workdir_io.run_metadata(config.training.seed), f, indent=2)
        return _run_mode(config, workdir, mode, train_workdir, prompt, mesh, method, sampler)


def _run_mode(config, workdir, mode, train_workdir, prompt, mesh, method, sampler) -> int:
    if mode == "encode_latents":
        return encode_latents(config, mesh, method)
    if mode == "train":
        state, interrupted = train(config, workdir, mesh, method, sampler)
        if interrupted:
            print(f"stopped by SIGTERM at step {int(state.step)}; checkpoint saved", flush=True)
            return 143
        if config.training.sample_at_end:
            return _sample(config, workdir, mesh, method, sampler,
                           runs.sampling_state(config, state),
                           name=f"step_{int(state.step)}")
        return 0
    if mode == "posthoc_ema":
        return posthoc_ema(config, workdir, train_workdir or workdir, mesh, method)
    method, state = runs.restore_or_pretrained(config, train_workdir or workdir, mesh)
    state = runs.sampling_state(config, state)
    method, state = runs.with_guide(config, method, state, mesh)
    if mode == "reflow_pairs":
        return _reflow_pairs(config, mesh, method, sampler, state)
    if mode == "sample":
        if config.edit.task != "none":
            return _edit(config, workdir, mesh, method, sampler, state, prompt)
        return _sample(config, workdir, mesh, method, sampler, state, prompt,
                       name=f"sample_{int(state.step)}_{config.sampling.seed}"
                       + ("_prompt" if prompt else ""))
    from diffusion_jax.evaluation.eval_mode import evaluate

    return evaluate(config, workdir, mesh, method, state, sampler,
                    caption_conditions(config, method, config.eval.num_samples))


def encode_latents(config, mesh, method) -> int:
    """Write the latent cache of the training set (`latent.cache_dir`, `data.cache`) ahead of
    training, every process its shards; a rerun, or the training run, reuses the shards there."""
    optimizer = builders.build_optimizer(config)
    placeholders = loop.abstract_state(method, optimizer, mesh).aux
    state = loop.initial_state(method, optimizer, config.training.seed, mesh,
                               lambda: runs.resolve(method.requirements(), config, placeholders))
    source, _ = runs.training_data(method, config)(state.aux)
    if jax.process_index() == 0:
        print(f"latent cache {method.latent_cache().path}: {len(source)} examples", flush=True)
    return 0


def validate(config, workdir: str, mode: str, train_workdir, mesh) -> None:
    """Every check that needs nothing heavy, before any file is written: the work directory,
    the counts and rates of the config, the training data set and its size, the checkpoint a
    sample or eval run restores, the logging options. Each failure is a one-line UserError."""
    _check_workdir(workdir)
    s, o = config.sampling, config.optim
    counts = [("sampling.num_samples", s.num_samples), ("sampling.batch_size", s.batch_size)]
    if mode == "eval":
        counts += [("eval.num_samples", config.eval.num_samples),
                   ("eval.batch_size", config.eval.batch_size)]
    for key, value in counts:
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"optim.lr must be a finite number > 0, got {o.lr}")
    if not (math.isfinite(o.grad_clip) and o.grad_clip >= 0) or o.warmup_steps < 0:
        raise ConfigError(f"optim.grad_clip must be finite and >= 0 and optim.warmup_steps >= 0, "
                          f"got {o.grad_clip} and {o.warmup_steps}")
    monitoring.check(config)
    if mode == "encode_latents" and not _cached_latents(config):
        raise ConfigError("--mode=encode_latents writes latent.cache_dir of a latent model: set "
                          "latent.cache_dir and latent.vae (or latent.autoencoder_workdir)")
    if mode == "reflow_pairs" and not (config.method == "flow" and config.get("reflow")
                                       and config.flow.get("coupling_dir")):
        raise ConfigError("--mode=reflow_pairs writes flow.coupling_dir from a flow run "
                          "(--train_workdir): set flow.coupling_dir (and reflow.num_pairs)")
    if mode in ("train", "encode_latents"):
        if builders.is_latent(config) and config.latent.vae and not config.latent.vae_dir:
            raise ConfigError(f"latent.vae={config.latent.vae!r} needs its weights: set "
                              f"latent.vae_dir to a diffusers AutoencoderKL directory "
                              f"(config.json and diffusion_pytorch_model.safetensors)")
        settings = training_settings(config)
        settings.check(mesh.devices.size)
        any_size = getattr(DATASETS.get(config.data.dataset), "any_size", False)
        _, source, _ = open_dataset(config.data.dataset, "train",
                                    data_dir=config.data.data_dir or None,
                                    download=config.data.download,
                                    image_shape=(8, 8, 3) if any_size else None)  # only counted
        if settings.batch_size > len(source):
            raise ConfigError(f"training.batch_size {settings.batch_size} is larger than the "
                              f"{len(source)} training examples of {config.data.dataset!r}")
        _check_fine_tuning(config, workdir)
        if builders.guide_workdir(config):
            raise ConfigError("guidance.guide_workdir (autoguidance) is read by --mode=sample "
                              "and --mode=eval; train the main model and the guide without it")
    elif mode == "posthoc_ema":
        ema_snapshots.check_sigma_rel(config.ema.sigma_rel)
        source = train_workdir or workdir
        ema_snapshots.target_step(ema_snapshots.list_snapshots(source),
                                  config.ema.snapshot_step, source)
        if loop.latest_checkpoint(source) is None:
            raise CheckpointError(f"no checkpoint in {source!r}: post-hoc EMA takes the "
                                  f"parameters, aux state and optimizer state from its newest")
    elif (config.method not in builders.PRETRAINED_METHODS
          and loop.latest_checkpoint(train_workdir or workdir) is None):
        raise CheckpointError(f"no checkpoint in {train_workdir or workdir!r}: train there first "
                              f"(--mode=train) or pass --train_workdir")


def posthoc_output(workdir: str, sigma_rel: float, step: int) -> str:
    """The work directory `--mode=posthoc_ema` writes: WORKDIR/posthoc_ema/sigma_rel_<s>_step_<n>."""
    return os.path.join(workdir, "posthoc_ema", f"sigma_rel_{sigma_rel:.4f}_step_{step}")


def posthoc_ema(config, workdir: str, train_workdir: str, mesh, method) -> int:
    """`--mode=posthoc_ema`: the EMA of width `ema.sigma_rel` as of snapshot `ema.snapshot_step`
    (0: the last) reconstructed from the snapshots of `train_workdir` (`ema_snapshots.
    reconstruct`), written as a work directory (`posthoc_output`) whose one checkpoint is the
    newest checkpoint of `train_workdir` with that EMA as `ema_params`, at the snapshot's step,
    without profiles. `--mode=sample|eval --train_workdir=<it>` restore it; use_ema (the default)
    samples the reconstruction. `posthoc_ema.json` there lists the snapshots and coefficients."""
    e = config.ema
    optimizer = builders.build_optimizer(config)
    source = Checkpointer(train_workdir, read_only=True)
    source_step = source.latest_step()
    abstract = loop.abstract_state(method, optimizer, mesh, source.power_ema_count())
    state, _ = source.restore(abstract, source_step)
    source.close()
    snapshots = ema_snapshots.list_snapshots(train_workdir)
    step = ema_snapshots.target_step(snapshots, e.snapshot_step, train_workdir)
    is_main = jax.process_index() == 0
    progress = Progress(sum(s.step <= step for s in snapshots), "posthoc_ema", unit="snapshot",
                        enabled=is_main)
    progress.note(f"sigma_rel {e.sigma_rel} at step {step} from the snapshots in "
                  f"{ema_snapshots.snapshot_directory(train_workdir)}")
    ema, info = ema_snapshots.reconstruct(train_workdir, e.sigma_rel, step, abstract.params,
                                          on_snapshot=lambda done, total: progress.update(
                                              1, line=True))
    progress.close()
    out = posthoc_output(workdir, e.sigma_rel, step)
    os.makedirs(out, exist_ok=True)
    info = dict(info, source_workdir=os.path.abspath(train_workdir), source_checkpoint=source_step)
    checkpointer = Checkpointer(out, max_to_keep=1, async_save=False)
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32), ema_params=ema,
                                          power_emas=()), {"posthoc_ema": info})
    checkpointer.close()
    if is_main:
        workdir_io.write_config(out, config)
        with open(os.path.join(out, "posthoc_ema.json"), "w") as f:
            json.dump(info, f, indent=2)
        print(f"wrote the post-hoc EMA (sigma_rel {e.sigma_rel}, step {step}, "
              f"{len(info['inputs'])} profiles) to {out}; sample or evaluate it with "
              f"--mode=sample|eval --train_workdir={out}", flush=True)
    return 0


def _check_fine_tuning(config, workdir: str) -> None:
    """`training.init_from` (checked only for a run that has no checkpoint of its own: a resumed
    run ignores it) and `training.trainable`, as one-line ConfigErrors."""
    if config.training.get("init_from") and loop.latest_checkpoint(workdir) is None:
        runs.check_init_from(config)
    trainable = builders.trainable_pattern(config)
    if trainable:
        method = builders.build_method(config)
        trainable_labels(jax.eval_shape(method.init_params, jax.random.PRNGKey(0)), trainable)


def _check_workdir(workdir: str) -> None:
    """ConfigError unless `workdir` is, or can be made, a writable directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} is a file, not a directory")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r} is not writable ({existing!r} is not a "
                          f"writable directory)")


def train(config, workdir: str, mesh=None, method=None, sampler=None):
    """`training.loop.train` of the configured method (built here unless given), optimizer, data,
    requirements and monitoring hooks (`monitoring.training_hooks`), on `mesh` (default:
    `builders.build_mesh(config)`); returns (final state, whether SIGTERM stopped it)."""
    mesh = builders.build_mesh(config) if mesh is None else mesh
    method = builders.build_method(config) if method is None else method
    sampler = builders.build_sampler(config, method) if sampler is None else sampler
    settings = training_settings(config)
    settings.check(mesh.devices.size)
    optimizer = builders.build_optimizer(config)
    placeholders = lambda: loop.abstract_state(method, optimizer, mesh).aux  # noqa: E731
    hooks = monitoring.training_hooks(
        config, workdir, mesh, method, sampler,
        caption_conditions(config, method, config.training.preview_samples))
    return loop.train(method, optimizer, mesh, settings, workdir,
                      runs.training_data(method, config),
                      lambda: runs.resolve(method.requirements(), config, placeholders()), hooks,
                      runs.init_from(config, mesh) if config.training.get("init_from") else None)


def _sample(config, workdir, mesh, method, sampler, state, prompt: str = "", *,
            name: str) -> int:
    """`sampling.num_samples` samples as `samples/<name>.png` and `.npz` (and one PNG per image
    in `sampling.save_pngs` when set)."""
    s = config.sampling
    params = state.ema_params if s.use_ema else state.params
    conditions = caption_conditions(config, method, s.num_samples, prompt)
    images = sampling.generate(method, params, jax.random.PRNGKey(s.seed), s.num_samples,
                               _fit_batch(s.batch_size, mesh), mesh, sampler, aux=state.aux,
                               conditions=conditions, desc="sample")
    if jax.process_index() == 0:
        labels = (sampling.class_labels(len(images), method.num_classes) if conditions is None
                  else conditions)
        png = sampling.save_samples(os.path.join(workdir, "samples"), name, images, labels,
                                    captions=None if conditions is None else
                                    [method.detokenize(c) for c in conditions],
                                    png_dir=s.save_pngs)
        print(f"wrote {len(images)} samples to {png}", flush=True)
    return 0


def _reflow_pairs(config, mesh, method, sampler, state) -> int:
    """`reflow.num_pairs` (sample, noise) pairs of the restored flow's sampler in
    `flow.coupling_dir` (`diffusion_jax.reflow`), resuming a killed pass shard by shard."""
    from diffusion_jax import reflow
    from diffusion_jax.progress import Progress

    r, s = config.reflow, config.sampling
    progress = Progress(r.num_pairs, "reflow pairs", "pair", jax.process_index() == 0)
    try:
        reflow.write_pairs(config.flow.coupling_dir, method,
                           state.ema_params if s.use_ema else state.params, state.aux, mesh,
                           sampler, num_pairs=r.num_pairs, seed=r.seed,
                           batch_size=_fit_batch(s.batch_size, mesh), shard_size=r.shard_size,
                           progress=lambda n: progress.update(n, line=True))
    finally:
        progress.close()
    print(f"reflow pairs in {config.flow.coupling_dir}: {r.num_pairs}", flush=True)
    return 0


def caption_conditions(config, method, num: int, prompt: str = ""):
    """The caption tokens (num, L) to sample a text-conditional model with (`method.tokenize`):
    `prompt` for every image, or else the captions of the test split in order (None without
    text conditioning, or for no image)."""
    if not method.caption_length or num < 1:
        return None
    if prompt:
        return np.repeat(method.tokenize([prompt]), num, axis=0)
    texts = captions(config.data.dataset, "test", data_dir=config.data.data_dir or None)
    return method.tokenize([texts[i % len(texts)] for i in range(num)])


def _edit(config, workdir, mesh, method, sampler, state, prompt: str = "") -> int:
    """Edit the images of `edit.input` (inpaint with `edit.mask`, colorize, or SDEdit at
    `edit.strength`); a caption-conditional model edits towards `prompt` (default the empty
    caption)."""
    e, s = config.edit, config.sampling
    if not 0.0 <= e.strength <= 1.0:
        raise ConfigError(f"edit.strength must be in [0, 1], got {e.strength}")
    x = edit_inputs.load_images(e.input, method.image_shape)
    masks = (edit_inputs.load_masks(e.mask, method.image_shape, len(x)) if e.task == "inpaint"
             else np.zeros(x.shape, bool))
    results = sampling.edit(method, state.ema_params if s.use_ema else state.params,
                            jax.random.PRNGKey(s.seed), x, masks, _fit_batch(s.batch_size, mesh),
                            mesh, sampler, task=e.task, strength=e.strength, aux=state.aux,
                            conditions=(np.repeat(method.tokenize([prompt]), len(x), axis=0)
                                        if method.caption_length else None))
    if jax.process_index() == 0:
        png = edit_inputs.save_edits(os.path.join(workdir, "samples"),
                                     f"edit_{e.task}_step_{int(state.step)}", x, results,
                                     masks if e.task == "inpaint" else None)
        print(f"wrote {len(results)} edited images to {png}", flush=True)
    return 0


def _fit_batch(batch_size: int, mesh) -> int:
    """The smallest multiple of the device count that is at least `batch_size`."""
    n = mesh.devices.size
    return -(-batch_size // n) * n


def info(config) -> int:
    """Print `params: N` and `flops: N` (forward FLOPs of one example) of the model."""
    method = builders.build_method(config)
    params = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
    print(f"params: {count_params(params)}")
    print(f"flops: {forward_flops(method, params)}")
    return 0


def forward_flops(method, params) -> int:
    """FLOPs of one network evaluation on one example (matrix products and convolutions,
    multiply-add = 2; `diffusion_jax.model_size`)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(method.network_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    cond = jax.eval_shape(method.example_condition)
    return count_flops(lambda p, x, t, c: method.apply(p, x, t, c), params, x, t, cond)
