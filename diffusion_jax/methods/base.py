"""The method protocol: what the generic training loop, the sampling and evaluation code and the
launcher ask of a family (DDPM, EDM, score SDE, consistency, latent diffusion, autoencoder).

A method is a frozen dataclass that owns one family's loss and samplers; it is pure (no file or
data-set I/O). The runs and files it depends on (a teacher, an autoencoder, LPIPS weights,
calibration images) it declares in `requirements()`; the launcher layer (`diffusion_jax.runs`)
restores them and passes them to `start` once, at the start of a fresh run. Concrete methods
subclass `Method` explicitly and so inherit the no-op defaults below.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Protocol, Sequence

import jax
import numpy as np

from diffusion_jax import guidance, text

from diffusion_jax.errors import ConfigError
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler

Params = Any
Aux = Any  # what a method keeps besides its trained parameters: {} for most (TrainState.aux)
Chain = Callable[..., tuple]  # (params, rng, x_init, cond, aux, sampler) -> (images, stats)
ChainEdit = Callable[..., jax.Array]  # (params, rng, x, mask, cond, aux, sampler, task, strength)


@dataclasses.dataclass(frozen=True)
class RunWeights:
    """Another training run's EMA parameters: the newest checkpoint of `workdir` (or `step`)."""

    workdir: str
    step: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """Frozen weights read from a file: `kind` names the reader ('lpips', 'digits_classifier')."""

    kind: str
    path: str = ""


@dataclasses.dataclass(frozen=True)
class TrainingImages:
    """The first `count` training images of the run's data set, as a host array in [-1, 1]."""

    count: int


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One network of a released checkpoint, converted by an importer (`runs.resolve`): `source`
    a diffusers model directory, or a single-file checkpoint (.safetensors / .ckpt) read with the
    released configs of `base`; `component` 'unet', 'text_encoder' or 'vae'; `variant` the
    directory's weight-file variant ('fp16': `<name>.fp16.safetensors`)."""

    source: str
    component: str
    base: str = ""
    variant: str = ""


@dataclasses.dataclass(frozen=True)
class LatentCache:
    """The training set passed through `encode(aux, images) -> examples` once and kept in the
    directory `path` (`data.cache`; e.g. the posterior moments of latent diffusion); the loop
    then reads it. `views` 2: each image also mirrored (the training flips); `encoder` names
    what encoded it (a different one is an error, not a silent reuse)."""

    path: str
    encode: Callable
    example_shape: tuple
    views: int = 1
    encoder: str = ""


class Method(Protocol):
    """The interface of a family. `image_shape`, `num_classes` (0 = unconditional; label
    `num_classes` is the null label) and `caption_length` (> 0: conditioned on caption tokens)
    are fields of every method."""

    image_shape: tuple
    num_classes: int
    caption_length: int
    default_sampler: ClassVar[Sampler]
    has_denoiser: ClassVar[bool] = False  # denoiser_model gives a model: every solver runs on it
    has_likelihood: ClassVar[bool] = False  # bits_per_dim(params, rng, x, cond, **options)
    reconstructs: ClassVar[bool] = False  # reconstruct(params, x): an autoencoder

    # --- network -------------------------------------------------------------------------
    def init_params(self, rng: jax.Array) -> Params:
        """The parameters of the method's network(s), from `rng`."""

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None) -> jax.Array:
        """The raw network on (x, noise conditioning t, cond)."""

    @property
    def noise_shape(self) -> tuple:
        """The shape of one example of `sample`'s standard-normal input (latents for latent
        diffusion and the autoencoder prior)."""
        return tuple(self.image_shape)

    @property
    def network_shape(self) -> tuple:
        """The input shape of `apply` (latents for latent diffusion)."""
        return tuple(self.image_shape)

    def example_condition(self, batch: int = 1):
        """A condition of the form `apply` takes, for `batch` examples (initialisation, FLOP
        counts): labels, caption tokens or None (`guidance.example_condition`)."""
        return guidance.example_condition(self.num_classes, self.caption_length, batch)

    # --- captions --------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> np.ndarray:
        """(N, caption_length) int32 tokens of `captions`, the conditions of a caption-conditional
        method: UTF-8 byte tokens (`diffusion_jax.text`) unless the method has its own tokenizer."""
        return text.tokenize_all(list(captions), self.caption_length)

    def detokenize(self, tokens) -> str:
        """The caption of one row of `tokenize`'s tokens."""
        return text.detokenize(tokens)

    # --- training ------------------------------------------------------------------------
    def loss(self, params, batch: dict, rng: jax.Array, aux: Aux, step) -> tuple:
        """(scalar loss, dict of scalar metrics) of `batch = {"image", "label"}`."""

    def requirements(self) -> dict:
        """What the launcher layer must restore before a fresh run, by aux key: `RunWeights`,
        `WeightsFile`, `TrainingImages`, `PretrainedWeights` (nested dicts for an inner
        method)."""
        return {}

    @property
    def pretrained(self) -> bool:
        """True when `start` takes every parameter and aux array from the restored requirements
        (a released model): sample and eval modes then run without a training checkpoint, on
        the state those give (`runs.restore_or_pretrained`)."""
        return False

    def init_aux(self, params, rng: jax.Array) -> Aux:
        """The aux state with the shapes it will have (pure; frozen weights as placeholders)."""
        return {}

    def start(self, params, aux: Aux, resources: dict) -> tuple:
        """(params, aux) at the start of a fresh run, given the restored `requirements()`:
        by default the resources take their aux keys."""
        return params, {**aux, **resources}

    def update_aux(self, aux: Aux, params, step) -> Aux:
        """The aux state after an optimiser step (e.g. a target network's EMA)."""
        return aux

    def constrain_params(self, params) -> Params:
        """The parameters as the method stores them, applied to fresh ones and after each
        optimiser step, once the EMA has seen the step's output (EDM2's forced weight
        normalisation); by default unchanged."""
        return params

    def latent_cache(self) -> Optional[LatentCache]:
        """A transformed training set the loop reads instead of the data set's, or None."""
        return None

    # --- sampling and editing -------------------------------------------------------------
    def chains(self) -> dict:
        """The family's own samplers by name: {name: (Chain, ChainEdit or None)}."""
        return {}

    def denoiser_model(self, params, cond, aux: Aux,
                       sampler: Sampler) -> Optional[solvers.DenoiserModel]:
        """The model as a (guided) denoiser for the shared solvers, or None when the family has
        none."""
        return None

    def conditional_denoiser(self, params, aux: Aux = None) -> Callable:
        """The unguided D(x, sigma[, cond]) of the model (what a distillation teacher needs)."""
        return self._denoiser_model(params, None, aux, Sampler()).denoiser

    @property
    def sampler_names(self) -> tuple:
        """Every `Sampler.method` this method runs: its chains, then the shared solvers when it
        has a denoiser."""
        shared = solvers.SOLVERS if self.has_denoiser else ()
        return tuple(self.chains()) + tuple(m for m in shared if m not in self.chains())

    def sample(self, params, rng: jax.Array, x_init: jax.Array, cond=None, *, aux: Aux = None,
               sampler: Optional[Sampler] = None) -> tuple:
        """(images, {"nfe": network evaluations}) from standard-normal `x_init` of `noise_shape`:
        the chain `sampler.method` of the family, or that shared solver on `denoiser_model`."""
        sampler = self.default_sampler if sampler is None else sampler
        chain = self.chains().get(sampler.method)
        if chain is not None:
            return chain[0](params, rng, x_init, cond, aux, sampler)
        return solvers.solve(sampler, self._denoiser_model(params, cond, aux, sampler), rng,
                             x_init, cond)

    def edit(self, params, rng: jax.Array, x: jax.Array, mask, cond=None, *, aux: Aux = None,
             sampler: Optional[Sampler] = None, task: str, strength: float) -> jax.Array:
        """Images edited with `sampler`: 'inpaint' (mask True = known pixel), 'colorize' (RGB
        whose channel mean is x's grey level) or 'sdedit' (noise to `strength` in [0, 1], then
        denoise); the chain's own editing, or `solvers.edit` on `denoiser_model`."""
        sampler = self.default_sampler if sampler is None else sampler
        chain = self.chains().get(sampler.method)
        if chain is not None:
            if chain[1] is None:
                raise ConfigError(f"sampler {sampler.method!r} of {type(self).__name__} cannot "
                                  f"edit images")
            return chain[1](params, rng, x, mask, cond, aux, sampler, task, strength)
        return solvers.edit(sampler, self._denoiser_model(params, cond, aux, sampler), rng, x,
                            mask, cond, task=task, strength=strength)

    def check_sampler(self, sampler: Sampler) -> None:
        """ConfigError now, before anything runs, for options the method's sampler `sampler`
        cannot follow: for a shared solver, its grid on `denoiser_model` (`solvers.check`)."""
        if sampler.method in self.chains() or not self.has_denoiser:
            return
        solvers.check(sampler, self._denoiser_model(None, None, None,
                                                    sampler.replace(guidance_scale=1.0)))

    def sampler(self, **changes) -> Sampler:
        """`default_sampler` with `changes` (a convenience for Python use)."""
        return self.default_sampler.replace(**changes)

    def _denoiser_model(self, params, cond, aux, sampler) -> solvers.DenoiserModel:
        model = self.denoiser_model(params, cond, aux, sampler)
        if model is None or sampler.method not in solvers.SOLVERS:
            raise ConfigError(f"unknown sampler {sampler.method!r} for {type(self).__name__}; "
                              f"valid: {', '.join(self.sampler_names)}")
        return model
