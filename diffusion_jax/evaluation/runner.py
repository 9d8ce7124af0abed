"""`--mode=eval`: sample `eval.num_samples` images in resumable batches, then compute metrics.

Batches are written to `workdir/eval/step_<N>/batch_<b>.npz` as they finish; a rerun (after a
kill) keeps the finished batches and generates only the missing ones (batch b always uses
fold_in(seed, b), so the images are the same). Metrics go to `workdir/eval/step_<N>/metrics.json`
and one line of `metrics.jsonl` (`eval/` keys), and are printed as one table, with the mean
sampler statistics the method reports (`nfe`) and, for methods with a likelihood, test-set
bits/dim (`eval.bpd_num_examples` > 0, `test_bits_per_dim`).

Feature networks: the embedded digits use a small classifier trained on digits
(`digits_features`): its Frechet distance is *not* FID, and its keys say `digits_`. Every other
data set uses the FID Inception-v3 (2015-12-05 graph) whose weights `eval.inception_weights`
names: FID against `eval.reference_stats` (an `.npz` with `mu`, `sigma`, e.g. the published
CIFAR-10 training-set statistics) or, when that is empty, against `eval.num_reference` images of
the `eval.reference_split` split; KID and precision/recall always use those real images.
Protocol (`eval.inception_protocol`, recorded as `inception_protocol` in the metrics): samples
are quantised to uint8 as they would be saved, then resized to 299x299 bilinearly and scaled to
the network's range, either as the TensorFlow graph of 2015-12-05 does it (`tensorflow`, the
default: `ResizeBilinear` without half-pixel centres, (v - 128) / 128; the protocol of TTUR's
and EDM's FID code and of the published statistics files) or as pytorch-fid does
(`pytorch_fid`: half-pixel bilinear resize, 2 v / 255 - 1). FIDs under the two differ
slightly; compare numbers of one protocol only (see `inception.preprocess`). Reference
statistics are computed with the same protocol as the samples.
"""
from __future__ import annotations

import inspect
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


def _load_batches(directory: str, count: int) -> tuple[np.ndarray, dict]:
    """The images of batches 0..count-1 and the mean over batches of each sampler statistic
    (`stat_<name>` arrays, e.g. the number of network evaluations `nfe`)."""
    files = [np.load(os.path.join(directory, f"batch_{b:05d}.npz")) for b in range(count)]
    names = [k[len("stat_"):] for k in files[0].files if k.startswith("stat_")]
    stats = {n: float(np.mean([f[f"stat_{n}"] for f in files])) for n in names}
    return np.concatenate([f["images"] for f in files]), stats


def feature_metrics(features, samples, reference, prefix: str = "",
                    reference_stats: tuple | None = None, stats_path: str = "") -> dict:
    """Frechet distance, KID, precision/recall and the classifier (Inception) score of
    `samples` against `reference` images in the space of `features(images) -> (feats, logits)`.
    Reference statistics computed here (no `reference_stats`) are written to `stats_path`
    (an `.npz` with `mu`, `sigma`, reusable as `eval.reference_stats`) when it is given."""
    from diffusion_jax.evaluation.frechet import (feature_statistics, frechet_distance,
                                                  save_statistics)
    from diffusion_jax.evaluation.inception_score import inception_score
    from diffusion_jax.evaluation.kid import kernel_inception_distance
    from diffusion_jax.evaluation.precision_recall import precision_recall

    fake, fake_logits = features(samples)
    real, _ = features(reference)
    stats = reference_stats
    if stats is None:
        stats = feature_statistics(real)
        if stats_path and jax.process_index() == 0:
            save_statistics(stats_path, *stats)
    kid, _ = kernel_inception_distance(fake, real, subset_size=min(1000, len(fake), len(real)))
    score, _ = inception_score(fake_logits, splits=min(10, len(fake)))
    precision, recall = precision_recall(real, fake, k=3)
    name = "frechet_distance" if prefix else "fid"
    return {f"{prefix}{name}": frechet_distance(*feature_statistics(fake), *stats),
            f"{prefix}kid": kid, f"{prefix}{'classifier' if prefix else 'inception'}_score": score,
            "precision": precision, "recall": recall}


def _reference_images(config, n: int) -> np.ndarray:
    e = config.eval
    _, source, decode = open_dataset(config.data.dataset, e.reference_split,
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download)
    n = min(n, len(source))
    return np.stack([decode(source[i])[0] for i in range(n)])


def dataset_metrics(config, samples: np.ndarray, directory: str = "", mesh=None) -> dict:
    """The metrics of `samples` for the configured data set (see the module docstring); the
    reference statistics it computes go to `directory/reference_stats.npz` when given. With a
    `mesh` the feature network runs on batches split over its devices."""
    ndev = mesh.devices.size if mesh is not None else 1
    batch = lambda size: -(-size // ndev) * ndev  # noqa: E731  (a multiple of the devices)
    from diffusion_jax.evaluation.frechet import load_statistics

    e = config.eval
    stats_path = os.path.join(directory, "reference_stats.npz") if directory else ""
    if e.reference_stats and not os.path.exists(e.reference_stats):
        raise ConfigError(f"eval.reference_stats {e.reference_stats!r} does not exist")
    stats = load_statistics(e.reference_stats) if e.reference_stats else None
    if config.data.dataset == "shapes":
        return shapes_caption_metrics(samples)
    if config.data.dataset == "digits":
        from diffusion_jax.evaluation.digits_features import digits_feature_fn

        return feature_metrics(digits_feature_fn(batch(512), mesh=mesh), samples,
                               _reference_images(config, e.num_reference), prefix="digits_",
                               reference_stats=stats, stats_path=stats_path)
    from diffusion_jax.errors import choose
    from diffusion_jax.evaluation.inception import PROTOCOLS, inception_feature_fn

    protocol = e.get("inception_protocol", "tensorflow")
    choose("eval.inception_protocol", protocol, PROTOCOLS)
    if not e.inception_weights:
        raise ConfigError(f"eval of {config.data.dataset!r} needs the FID Inception weights: "
                          f"set eval.inception_weights (see tools/convert_inception_weights.py)")
    if not os.path.exists(e.inception_weights):
        raise ConfigError(f"eval.inception_weights {e.inception_weights!r} does not exist")
    features = inception_feature_fn(e.inception_weights, batch(200), mesh, protocol=protocol)
    return dict(feature_metrics(features, samples, _reference_images(config, e.num_reference),
                                reference_stats=stats, stats_path=stats_path),
                inception_protocol=protocol)


def test_reconstruction_error(config, mesh, method, params) -> dict:
    """Mean squared error per pixel of an autoencoder's reconstructions of the first
    `eval.num_reference` test images (in [-1, 1]), batches split over the mesh."""
    from diffusion_jax import parallel

    _, source, decode = open_dataset(config.data.dataset, "test",
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download)
    n = min(config.eval.num_reference, len(source))
    ndev, nproc = mesh.devices.size, jax.process_count()
    batch = -(-min(500, n) // ndev) * ndev
    shard = parallel.batch_sharded(mesh)
    fn = jax.jit(lambda p, x: jax.numpy.mean(jax.numpy.square(method.reconstruct(p, x) - x),
                                             axis=(1, 2, 3)), in_shardings=(None, shard),
                 out_shardings=shard)
    errors = []
    for b in range(-(-n // batch)):
        images = np.stack([decode(source[min(b * batch + i, n - 1)])[0] for i in range(batch)])
        per_process = batch // nproc
        local = images[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
        errors.append(parallel.to_host(fn(params, parallel.global_batch(local, mesh)))[
            :n - b * batch])
    return {"reconstruction_mse": float(np.concatenate(errors).mean())}


def shapes_caption_metrics(samples: np.ndarray) -> dict:
    """How often samples drawn for the test captions of `shapes` (in order, as `evaluate` draws
    them) have the caption's colour and place, by the data set's detectors."""
    from diffusion_jax.data import shapes

    captions = shapes.load_shapes("test")[2]
    captions = [captions[i % len(captions)] for i in range(len(samples))]
    colour, position = shapes.attributes(captions)
    return {"shapes_colour_accuracy": float(np.mean(shapes.colour_of(samples) == colour)),
            "shapes_position_accuracy": float(np.mean(shapes.position_of(samples) == position))}


def bits_per_dim_options(method, config) -> dict:
    """The keywords of `method.bits_per_dim` among the likelihood settings: `eval.bpd_divergence`,
    `bpd_rtol`, `bpd_atol` (score SDEs' ODE), `eval.bpd_timesteps` and the model's
    `sampling.variance`, `clip_x0` (the DDPM bound)."""
    e, s = config.eval, config.sampling
    settings = dict(divergence=e.bpd_divergence, rtol=e.bpd_rtol, atol=e.bpd_atol,
                    timesteps=e.bpd_timesteps, variance=s.get("variance"),
                    clip_x0=s.get("clip_x0"))
    accepted = inspect.signature(method.bits_per_dim).parameters
    return {k: v for k, v in settings.items() if k in accepted}


def test_bits_per_dim(config, mesh, method, params) -> dict:
    """Test-set bits/dim of a method with a likelihood (`method.bits_per_dim`): the first
    `eval.bpd_num_examples` test images as they are stored, quantised (score SDEs dequantise
    them themselves, the DDPM bound's decoder is discrete), in batches of `eval.bpd_batch_size`
    sharded over the mesh (each process feeds its slice of a batch), with the options of
    `bits_per_dim_options`."""
    from diffusion_jax import parallel

    e = config.eval
    _, source, decode = open_dataset(config.data.dataset, "test",
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download)
    n = min(e.bpd_num_examples, len(source))
    ndev, nproc = mesh.devices.size, jax.process_count()
    batch = -(-min(e.bpd_batch_size, n) // ndev) * ndev
    options = bits_per_dim_options(method, config)
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(lambda p, rng, x: method.bits_per_dim(p, rng, x, **options),
                 in_shardings=(None, rep, shard), out_shardings=(shard, rep))
    rng = jax.random.PRNGKey(config.sampling.seed + 2000)
    bpd, nfe = [], []
    for b in range(-(-n // batch)):
        index = [min(b * batch + i, n - 1) for i in range(batch)]  # the last batch padded
        images = np.stack([decode(source[i])[0] for i in index])
        per_process = batch // nproc
        local = images[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
        bits, evaluations = fn(params, jax.random.fold_in(rng, b),
                               parallel.global_batch(local, mesh))
        bpd.append(parallel.to_host(bits)[:n - b * batch])
        nfe.append(float(evaluations))
    bpd = np.concatenate(bpd)
    return {"bits_per_dim": float(bpd.mean()),
            "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if n > 1 else 0.0,
            "bits_per_dim_examples": n, "bits_per_dim_nfe": float(np.mean(nfe))}


def evaluate(config, workdir: str, mesh, method, state) -> int:
    e, s = config.eval, config.sampling
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

        from diffusion_jax.launcher import caption_conditions

        sampling.generate(method, params, jax.random.PRNGKey(s.seed + 1000), e.num_samples,
                          batch, mesh, sampling.sampler_options(method, s), start_batch=done,
                          on_batch=save, aux=state.aux,
                          conditions=caption_conditions(config, e.num_samples))
    samples, sampler_stats = _load_batches(directory, num_batches)
    samples = samples[:e.num_samples]
    metrics = dataset_metrics(config, samples, directory, mesh)
    metrics.update(sampler_stats, num_samples=len(samples))
    if hasattr(method, "reconstruct"):
        metrics.update(test_reconstruction_error(config, mesh, method, params))
    if e.bpd_num_examples and hasattr(method, "bits_per_dim"):
        metrics.update(test_bits_per_dim(config, mesh, method, params))
    if jax.process_index() == 0:
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        MetricsLog(workdir, resume_step=step).write(
            step, {f"eval/{k}": v for k, v in metrics.items() if not isinstance(v, str)})
        print(f"| metric (step {step}, {len(samples)} samples, {s.method}) | value |")
        print("|---|---|")
        for k, v in metrics.items():
            print(f"| {k} | {v if isinstance(v, str) else f'{v:.4f}'} |")
    return 0
