"""`--mode=eval`: sample `eval.num_samples` images in resumable batches, then compute metrics.

Batches are written to `workdir/eval/step_<N>/batch_<b>.npz` as they finish; a rerun (after a
kill) keeps the finished batches and generates only the missing ones (batch b always uses
fold_in(seed, b), so the images are the same). Metrics go to `workdir/eval/step_<N>/metrics.json`
and one line of `metrics.jsonl` (`eval/` keys), and are printed as one table.

Feature networks: the embedded digits use a small classifier trained on digits
(`digits_features`): its Frechet distance is *not* FID. Other data sets need the Inception
network of FID, which is not wired in yet, and are refused with a clear error.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from diffusion_jax import sampling
from diffusion_jax.data.datasets import open_dataset
from diffusion_jax.errors import ConfigError
from diffusion_jax.workdir import MetricsLog


def _finished_batches(directory: str) -> int:
    """Number of consecutive finished batch files 0, 1, ... in `directory`."""
    b = 0
    while os.path.exists(os.path.join(directory, f"batch_{b:05d}.npz")):
        b += 1
    return b


def _load_batches(directory: str, count: int) -> np.ndarray:
    return np.concatenate([np.load(os.path.join(directory, f"batch_{b:05d}.npz"))["images"]
                           for b in range(count)])


def digits_metrics(samples: np.ndarray, reference: np.ndarray) -> dict:
    """Frechet distance, KID, precision/recall and a classifier score in the digits feature
    space (not FID: the features come from a small classifier trained on digits)."""
    from diffusion_jax.evaluation.digits_features import digits_feature_fn
    from diffusion_jax.evaluation.frechet import feature_statistics, frechet_distance
    from diffusion_jax.evaluation.inception_score import inception_score
    from diffusion_jax.evaluation.kid import kernel_inception_distance
    from diffusion_jax.evaluation.precision_recall import precision_recall

    features = digits_feature_fn()
    fake, fake_logits = features(samples)
    real, _ = features(reference)
    fd = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    kid, _ = kernel_inception_distance(fake, real, subset_size=min(1000, len(fake), len(real)))
    score, _ = inception_score(fake_logits, splits=10)
    precision, recall = precision_recall(real, fake, k=3)
    return {"digits_frechet_distance": fd, "digits_kid": kid, "digits_classifier_score": score,
            "precision": precision, "recall": recall}


def evaluate(config, workdir: str, mesh, method, state) -> int:
    e, s = config.eval, config.sampling
    if config.data.dataset != "digits":
        raise ConfigError(f"--mode=eval has a feature network for 'digits' only; the Inception "
                          f"network for FID on {config.data.dataset!r} is not wired in yet")
    step = int(state.step)
    directory = os.path.join(workdir, "eval", f"step_{step}")
    os.makedirs(directory, exist_ok=True)
    batch = -(-e.batch_size // mesh.devices.size) * mesh.devices.size
    num_batches = -(-e.num_samples // batch)
    done = _finished_batches(directory)
    if done < num_batches:
        def save(b, images, labels):
            if jax.process_index() == 0:
                arrays = {"images": images} if labels is None else {"images": images,
                                                                    "labels": labels}
                np.savez(os.path.join(directory, f"batch_{b:05d}.npz"), **arrays)

        params = state.ema_params if s.use_ema else state.params
        sampling.generate(method, params, jax.random.PRNGKey(s.seed + 1000), e.num_samples,
                          batch, mesh, sampling.sampler_options(method, s), start_batch=done,
                          on_batch=save)
    samples = _load_batches(directory, num_batches)[:e.num_samples]
    _, source, _ = open_dataset("digits", e.split)
    metrics = digits_metrics(samples, source.images)
    metrics["num_samples"] = len(samples)
    if jax.process_index() == 0:
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        MetricsLog(workdir, resume_step=step).write(
            step, {f"eval/{k}": v for k, v in metrics.items()})
        print(f"| metric (step {step}, {len(samples)} samples, {s.method}) | value |")
        print("|---|---|")
        for k, v in metrics.items():
            print(f"| {k} | {v:.4f} |")
    return 0
