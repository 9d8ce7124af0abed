"""`--mode=eval`: sample `eval.num_samples` images in resumable batches, then compute metrics.

Batches are written to `workdir/eval/step_<N>/batch_<b>.npz` as they finish; a rerun (after a
kill) keeps the finished batches and generates only the missing ones (batch b always uses
fold_in(seed, b), so the images are the same). Metrics (`evaluation.metrics`) go to
`workdir/eval/step_<N>/metrics.json` and one line of `metrics.jsonl` (`eval/` keys), and are
printed as one table, with the mean sampler statistics the method reports (`nfe`), an
autoencoder's test reconstruction error and, for methods with a likelihood, test-set bits/dim
(`eval.bpd_num_examples` > 0; `evaluation.test_split`). A caption-conditioned model (Stable
Diffusion) samples the test split's captions in order, and with `eval.clip_model_dir` gets
the CLIP score of each sample against its caption (`metrics.caption_metrics`). Every file the
metrics need is checked before sampling.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from diffusion_jax import sampling
from diffusion_jax.data.datasets import captions as dataset_captions
from diffusion_jax.evaluation import metrics as sample_metrics, test_split
from diffusion_jax.workdir import MetricsLog


def _finished_batches(directory: str) -> int:
    """Number of consecutive finished batch files 0, 1, ... in `directory`."""
    b = 0
    while os.path.exists(os.path.join(directory, f"batch_{b:05d}.npz")):
        b += 1
    return b


def _load_batches(directory: str, count: int) -> tuple[np.ndarray, dict]:
    """The images of batches 0..count-1 and the mean over batches of each sampler statistic
    (`stat_<name>` arrays, e.g. the number of network evaluations `nfe`)."""
    files = [np.load(os.path.join(directory, f"batch_{b:05d}.npz")) for b in range(count)]
    names = [k[len("stat_"):] for k in files[0].files if k.startswith("stat_")]
    stats = {n: float(np.mean([f[f"stat_{n}"] for f in files])) for n in names}
    return np.concatenate([f["images"] for f in files]), stats


def evaluate(config, workdir: str, mesh, method, state, sampler, conditions=None) -> int:
    """Run the evaluation of `state` with `sampler`; `conditions` are the captions (tokens) to
    sample a text-conditional model with, in order (None: class labels or unconditional)."""
    e, s = config.eval, config.sampling
    sample_metrics.check_files(config, captioned=conditions is not None)
    step = int(state.step)
    directory = os.path.join(workdir, "eval", f"step_{step}")
    os.makedirs(directory, exist_ok=True)
    batch = -(-e.batch_size // mesh.devices.size) * mesh.devices.size
    num_batches = -(-e.num_samples // batch)
    done = _finished_batches(directory)
    params = state.ema_params if s.use_ema else state.params
    if done < num_batches:
        def save(b, images, labels, stats):
            if jax.process_index() == 0:
                arrays = {"images": images, **{f"stat_{k}": v for k, v in stats.items()}}
                if labels is not None:
                    arrays["labels"] = labels
                np.savez(os.path.join(directory, f"batch_{b:05d}.npz"), **arrays)

        sampling.generate(method, params, jax.random.PRNGKey(s.seed + 1000), e.num_samples,
                          batch, mesh, sampler, start_batch=done, on_batch=save, aux=state.aux,
                          conditions=conditions)
    samples, sampler_stats = _load_batches(directory, num_batches)
    samples = samples[:e.num_samples]
    metrics = sample_metrics.dataset_metrics(config, samples, directory, mesh)
    if conditions is not None:
        texts = dataset_captions(config.data.dataset, "test",
                                 data_dir=config.data.data_dir or None)
        metrics.update(sample_metrics.caption_metrics(
            config, samples, [texts[i % len(texts)] for i in range(len(samples))], mesh))
    metrics.update(sampler_stats, num_samples=len(samples))
    if method.reconstructs:
        metrics.update(test_split.reconstruction_error(config, mesh, method, params))
    if e.bpd_num_examples and method.has_likelihood:
        metrics.update(test_split.bits_per_dim(config, mesh, method, params))
    if jax.process_index() == 0:
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        MetricsLog(workdir, resume_step=step).write(
            step, {f"eval/{k}": v for k, v in metrics.items() if not isinstance(v, str)})
        print(f"| metric (step {step}, {len(samples)} samples, {sampler.method}) | value |")
        print("|---|---|")
        for k, v in metrics.items():
            print(f"| {k} | {v if isinstance(v, str) else f'{v:.4f}'} |")
    return 0
