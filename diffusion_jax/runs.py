"""Work directories of training runs, and what a method requires from outside itself.

The launcher layer restores here what methods declare in `requirements()` (another run's EMA
weights, a weights file, calibration images) and builds the training data a method reads
(`latent_cache()`), so that methods stay pure functions of arrays.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Callable, Optional

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import builders, parallel
from diffusion_jax import workdir as workdir_io
from diffusion_jax.data import cache as data_cache
from diffusion_jax.data.datasets import first_images, open_dataset
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods import autoguided
from diffusion_jax.methods.base import PretrainedWeights, RunWeights, TrainingImages, WeightsFile
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.models import lora
from diffusion_jax.progress import Progress
from diffusion_jax.training import loop
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.state import TrainState


def _read_lpips(path: str):
    from diffusion_jax.losses import lpips

    return lpips.load_lpips_params(path)


def _read_digits_classifier(path: str):
    from diffusion_jax.evaluation import digits_features

    return digits_features.load_classifier_params(path or digits_features.WEIGHTS_PATH)


WEIGHTS_READERS = {"lpips": _read_lpips, "digits_classifier": _read_digits_classifier}


def read_pretrained(need: PretrainedWeights) -> dict:
    """The parameters of one network of a released checkpoint (Stable Diffusion's importer)."""
    from diffusion_jax.importers import stable_diffusion

    return stable_diffusion.load_component(need.source, need.component, need.base, need.variant)


def restore(config, workdir: str, mesh, step: Optional[int] = None):
    """(method, state) of `config` from checkpoint `step` (default: newest) of `workdir`."""
    method = builders.build_method(config)
    state = loop.restore_state(method, builders.build_optimizer(config), workdir, mesh, step)
    return method, state


def restore_run(workdir: str, mesh=None, step: Optional[int] = None):
    """(config, method, state) of another training run: its `config.json` and newest (or `step`)
    checkpoint, restored onto `mesh` (default: every device, data parallel); ConfigError when it
    is not there."""
    config = workdir_io.read_config(workdir)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    method, state = restore(config, workdir, mesh, step)
    return config, method, state


def init_from_source(value: str) -> tuple[str, Optional[int]]:
    """(work directory, step or None = the newest) of `training.init_from` 'WORKDIR[:step]'."""
    match = re.fullmatch(r"(.+):(\d+)", value)
    return (match[1], int(match[2])) if match else (value, None)


def _flat_shapes(params) -> dict:
    return {"/".join(map(str, k)): tuple(v.shape)
            for k, v in flax.traverse_util.flatten_dict(params).items()}


def init_from_mismatches(config, source_params, params) -> list[str]:
    """The parameter paths where the run of `training.init_from`, whose parameter tree is
    `source_params`, differs from this config's `params` (shapes suffice: a path only one has,
    or another shape), all admitted by `training.init_allow_missing` (`re.search`; with LoRA the
    new adapters are admitted too); a ConfigError naming (the first 20 of) those it does not
    admit, and why, in one line."""
    source, expected = _flat_shapes(source_params), _flat_shapes(params)
    allowed = [a for a in (config.training.get("init_allow_missing", ""),
                           lora.LORA_PARAMS if builders.lora_rank(config) else "") if a]
    admitted = lambda path: any(re.search(a, path) for a in allowed)  # noqa: E731
    found = []
    for path in sorted(set(source) | set(expected)):
        if path not in source:
            found.append((path, "not in the source"))
        elif path not in expected:
            found.append((path, "not in this network"))
        elif source[path] != expected[path]:
            found.append((path, f"{source[path]} in the source, {expected[path]} here"))
    refused = [f"{path} ({why})" for path, why in found if not admitted(path)]
    if refused:
        raise ConfigError(f"training.init_from {config.training.init_from!r}: {len(refused)} "
                          f"parameters differ from this network: {'; '.join(refused[:20])}"
                          f"{f'; and {len(refused) - 20} more' if len(refused) > 20 else ''}; "
                          f"training.init_allow_missing (a regular expression over these paths) "
                          f"admits them: this network's keep their fresh initialisation, the "
                          f"source's others are dropped")
    return [path for path, _ in found]


def check_init_from(config) -> None:
    """ConfigError (one line) unless `training.init_from` names a run or imported checkpoint
    with a checkpoint (the given step) whose parameters fit this config's network, computing
    nothing but shapes."""
    workdir, step = init_from_source(config.training.init_from)
    source_config = workdir_io.read_config(workdir)
    steps = (Checkpointer(workdir, read_only=True).manager.all_steps()
             if loop.latest_checkpoint(workdir) is not None else [])
    if not steps or (step is not None and step not in steps):
        raise ConfigError(f"training.init_from {config.training.init_from!r}: no checkpoint "
                          f"{'' if step is None else step} in {workdir!r} (steps: "
                          f"{', '.join(map(str, sorted(steps))) or 'none'})")
    rng = jax.random.PRNGKey(0)
    source = jax.eval_shape(builders.build_method(source_config).init_params, rng)
    init_from_mismatches(config, jax.eval_shape(lambda p: _merged_source(source_config, config, p),
                                                source),
                         jax.eval_shape(builders.build_method(config).init_params, rng))


def _merged_source(source_config, config, params):
    """A LoRA source's parameters with its adapters merged when this config has no LoRA."""
    if builders.lora_rank(source_config) and not builders.lora_rank(config):
        return lora.merge_lora(params, source_config.model.lora_alpha
                               / builders.lora_rank(source_config))
    return params


def init_from(config, mesh) -> Callable:
    """`initial(params) -> (params, ema_params)` for `training.loop.train`: the parameters and
    EMA parameters of the checkpoint `training.init_from` names (another run, or an imported
    checkpoint, `importers.run`; a LoRA run's adapters merged into its weights unless this
    config has LoRA too), restored onto `mesh`; the paths `init_from_mismatches` admits
    keep the fresh initialisation `params` has."""
    def initial(params):
        workdir, step = init_from_source(config.training.init_from)
        source_config, _, state = restore_run(workdir, mesh, step)
        state = state.replace(params=_merged_source(source_config, config, state.params),
                              ema_params=_merged_source(source_config, config, state.ema_params))
        fresh = set(init_from_mismatches(config, state.params, params))
        flat = flax.traverse_util.flatten_dict(params)
        pick = lambda source: flax.traverse_util.unflatten_dict({  # noqa: E731
            key: value if "/".join(map(str, key)) in fresh else source[key]
            for key, value in flat.items()})
        return (pick(flax.traverse_util.flatten_dict(state.params)),
                pick(flax.traverse_util.flatten_dict(state.ema_params)))
    return initial


def sampling_state(config, state: TrainState) -> TrainState:
    """`state` with LoRA adapters merged into its parameters and EMA (`model.lora_merge`, the
    default), which sample and evaluate as the adapted network does, without the adapters'
    extra work per evaluation."""
    rank = builders.lora_rank(config)
    if not rank or not config.model.get("lora_merge", True):
        return state
    scale = config.model.lora_alpha / rank
    return state.replace(params=lora.merge_lora(state.params, scale),
                         ema_params=lora.merge_lora(state.ema_params, scale))


def _guide_step(config) -> Optional[int]:
    return config.guidance.get("guide_step", 0) or None


def check_guide(config, method, sampler) -> None:
    """One-line ConfigErrors, reading nothing but the guide run's config.json and checkpoint
    list, for `guidance.guide_workdir` (autoguidance, `methods.autoguided`): the directory or its
    checkpoint (`guidance.guide_step`, 0 = the newest) missing, a main or guide model without a
    denoiser, another image or noise shape, classes or captions the guide cannot take (a
    conditional guide needs the main model's conditions; an unconditional one fits any), latent
    runs on different autoencoders, and a sampler that is not a shared solver."""
    workdir = builders.guide_workdir(config)
    if not workdir:
        return
    what = f"guidance.guide_workdir {workdir!r}"
    if not os.path.isdir(workdir):
        raise ConfigError(f"{what} does not exist: train the guide there first")
    guide_config = workdir_io.read_config(workdir)
    guide = builders.build_method(guide_config)
    if not (method.has_denoiser and guide.has_denoiser):
        raise ConfigError(f"autoguidance needs a denoiser in the main and the guide model "
                          f"({config.method!r} guided by {guide_config.method!r} in {what})")
    for name in ("image_shape", "noise_shape"):
        if tuple(getattr(guide, name)) != tuple(getattr(method, name)):
            raise ConfigError(f"{what} has {name} {tuple(getattr(guide, name))}, the main model "
                              f"{tuple(getattr(method, name))}")
    if (guide.num_classes not in (0, method.num_classes)
            or guide.caption_length not in (0, method.caption_length)):
        raise ConfigError(f"{what} is conditioned on {guide.num_classes} classes / captions of "
                          f"{guide.caption_length} tokens, the main model on "
                          f"{method.num_classes} / {method.caption_length}: a guide takes the "
                          f"main model's conditions, or none")
    if isinstance(method, LatentDiffusion) or isinstance(guide, LatentDiffusion):
        same = all(guide_config.get("latent", {}).get(key) == config.latent.get(key)
                   for key in ("autoencoder_workdir", "scale_examples"))
        if not (isinstance(method, LatentDiffusion) and isinstance(guide, LatentDiffusion)
                and same):
            raise ConfigError(f"{what}: a latent diffusion model and its guide must both be "
                              f"latent runs on the same autoencoder (latent.autoencoder_workdir "
                              f"and latent.scale_examples)")
    autoguided.check_solver(method, sampler)
    step = _guide_step(config)
    steps = (Checkpointer(workdir, read_only=True).manager.all_steps()
             if loop.latest_checkpoint(workdir) is not None else [])
    if not steps or (step is not None and step not in steps):
        raise ConfigError(f"{what}: no checkpoint {'' if step is None else step} there (steps: "
                          f"{', '.join(map(str, sorted(steps))) or 'none'}; guidance.guide_step "
                          f"0 = the newest)")


def with_guide(config, method, state: TrainState, mesh) -> tuple:
    """(method, state) that sample `method` autoguided by the run of `guidance.guide_workdir`
    (`methods.autoguided.autoguided`; checked first by `check_guide`): the guide's config.json
    builds its own method, its checkpoint (`guidance.guide_step`) is restored onto `mesh` with
    LoRA merged, and its EMA parameters (or its raw ones, as `sampling.use_ema` says) and aux go
    into the state's aux. Without a guide, (method, state) unchanged."""
    workdir = builders.guide_workdir(config)
    if not workdir:
        return method, state
    guide_config, guide, guide_state = restore_run(workdir, mesh, _guide_step(config))
    guide_state = sampling_state(guide_config, guide_state)
    params = guide_state.ema_params if config.sampling.use_ema else guide_state.params
    method, aux = autoguided.autoguided(method, state.aux, guide, params, guide_state.aux)
    return method, state.replace(aux=aux)


def training_images(config, count: int) -> np.ndarray:
    """The first `count` training images of the configured data set, in [-1, 1]."""
    return first_images(config.data.dataset, "train", count,
                        data_dir=config.data.data_dir or None, download=config.data.download)


def resolve(requirements: dict, config, placeholders: dict) -> dict:
    """The resources of `requirements` (nested as the method's aux): RunWeights -> that run's EMA
    parameters, checked against the aux placeholder of the same key; WeightsFile -> its reader
    (`WEIGHTS_READERS`); TrainingImages -> `training_images`; PretrainedWeights -> that network's
    parameters (`read_pretrained`), checked like RunWeights."""
    resources = {}
    for key, need in requirements.items():
        if isinstance(need, dict):
            resources[key] = resolve(need, config, placeholders.get(key, {}))
        elif isinstance(need, RunWeights):
            _, _, state = restore_run(need.workdir, step=need.step)
            _check_same_tree(f"the run in {need.workdir!r} ({key})", state.ema_params,
                             placeholders.get(key))
            resources[key] = state.ema_params
        elif isinstance(need, WeightsFile):
            resources[key] = WEIGHTS_READERS[need.kind](need.path)
        elif isinstance(need, TrainingImages):
            resources[key] = training_images(config, need.count)
        elif isinstance(need, PretrainedWeights):
            resources[key] = read_pretrained(need)
            _check_same_tree(f"the {need.component} of {need.source!r}", resources[key],
                             placeholders.get(key))
        else:
            raise TypeError(f"unknown requirement {need!r}")
    return resources


def pretrained_state(method, config, mesh) -> TrainState:
    """The state of a `pretrained` method without a training checkpoint: step 0, parameters (and
    EMA) and aux from its restored requirements (`method.start`), laid out over the mesh as a
    train state is; no optimizer state (sampling and evaluation read none)."""
    rng, init_rng, aux_rng = jax.random.split(jax.random.PRNGKey(config.training.seed), 3)
    params = jax.eval_shape(method.init_params, init_rng)
    aux = jax.eval_shape(method.init_aux, params, aux_rng)
    params, aux = method.start(params, aux, resolve(method.requirements(), config, aux))
    place = lambda tree: jax.device_put(tree, parallel.state_shardings(  # noqa: E731
        mesh, jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.float32), tree)))
    params = place(jax.tree.map(lambda a: np.asarray(a, np.float32), params))
    aux = place(jax.tree.map(lambda a: np.asarray(a, np.float32), aux))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=(), rng=rng, aux=aux)


def restore_or_pretrained(config, workdir: str, mesh):
    """(method, state) for sample and eval modes: the newest checkpoint of `workdir`, or for a
    `pretrained` method (a released model) whose `workdir` has none, `pretrained_state`."""
    method = builders.build_method(config)
    if method.pretrained and Checkpointer(workdir, read_only=True).latest_step() is None:
        return method, pretrained_state(method, config, mesh)
    return restore(config, workdir, mesh)


def training_data(method, config):
    """`training_data(aux) -> (source, decode)` for `training.loop.train`: the training split of
    the data set, opened now (a missing data set fails before anything is built), or the method's
    latent cache over it (`data.cache.cached_source`), built from the state's aux when first
    needed."""
    _, source, decode = open_dataset(config.data.dataset, "train",
                                     data_dir=config.data.data_dir or None,
                                     download=config.data.download,
                                     image_shape=method.image_shape,
                                     tokenize=method.tokenize if method.caption_length else None)
    coupling = config.flow.get("coupling_dir", "") if config.method == "flow" else ""
    if coupling:
        return lambda aux: _coupling(coupling, method)
    spec = method.latent_cache()
    if spec is None:
        return lambda aux: (source, decode)

    def cached(aux):
        progress = Progress(len(source), f"encode {os.path.basename(spec.path)}", unit="image",
                            enabled=jax.process_index() == 0)
        try:
            return data_cache.cached_source(
                spec.path, lambda x: spec.encode(aux, x), spec.example_shape, source, decode,
                views=spec.views, encoder=spec.encoder, process_index=jax.process_index(),
                process_count=jax.process_count(),
                barrier=functools.partial(parallel.wait_for_all_processes, "latent cache"),
                progress=lambda n: progress.update(n, line=True))
        finally:
            progress.close()

    return cached


def _coupling(path: str, method) -> tuple:
    """(source, decode) of the reflow pairs in `path` (`diffusion_jax.reflow`), checked against
    the flow's images: [x, eps] on 2 C channels."""
    pairs = data_cache.CachedSource(path)
    h, w, c = method.image_shape
    if tuple(pairs.manifest["example_shape"]) != (h, w, 2 * c):
        raise ConfigError(f"the reflow pairs in {path} are {pairs.manifest['example_shape']}, "
                          f"not the [x, eps] pairs {[h, w, 2 * c]} of this model's images")
    return pairs, lambda ex: (np.asarray(ex["image"]), ex["label"])


def _check_same_tree(what: str, source, expected) -> None:
    """ConfigError unless `source` has the structure and shapes of `expected` (when given)."""
    if expected is None:
        return
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)  # noqa: E731
    if jax.tree.structure(source) != jax.tree.structure(expected) or \
            shapes(source) != shapes(expected):
        raise ConfigError(f"{what} does not match the network this config expects (different "
                          f"architecture); check its model.* keys")
