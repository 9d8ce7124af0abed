"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
a model sampled with D_w = D_guide + w (D_main - D_guide), the guide a smaller and/or
shorter-trained run of the same task (`guidance.autoguidance`), optionally only inside a
guidance interval of noise levels (Kynkaenniemi et al. 2024).

`Autoguided(main, guide)` is a sampling-only method: it trains nothing and has no network of its
own. Its parameters are the main model's; its aux state holds the main model's aux and the
guide's restored parameters and aux, `{"main": ..., "guide": ..., "guide_aux": ...}`, so the
guide's weights enter the jitted sampler as arguments, as every aux array does, and the method
stays a pure function of arrays (the launcher layer restores the guide run: `runs.with_guide`).
It runs every shared solver of `samplers.solvers` on the guided denoiser, for every family whose
method has a denoiser (EDM, DDPM, score SDE, flow; latent diffusion through `autoguided`, which
guides its inner method on the latents and keeps its decoder). `sampling.guidance_scale` is w
(EDM2's one `guidance` argument, which is classifier-free guidance when the guide is the
unconditional model); the guide replaces CFG's unconditional branch, so CFG's own options
(negative label or prompt, guided channels) do not apply. A conditional guide is given the
main model's conditions, an unconditional one none. The reported NFE counts the main model's
evaluations; inside the interval the guide adds as many of its own.

Differences from EDM2's `generate_images.py`: the guide may come from another family (any
denoiser in the EDM convention), and the guidance interval is applied here too (EDM2 guides at
every noise level).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from diffusion_jax import guidance
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.base import Method
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class Autoguided(Method):
    """`main` guided by `guide` (two methods with denoisers on the same noise shape)."""

    main: Any
    guide: Any

    has_denoiser: ClassVar[bool] = True

    @property
    def image_shape(self) -> tuple:
        return tuple(self.main.image_shape)

    @property
    def noise_shape(self) -> tuple:
        return tuple(self.main.noise_shape)

    @property
    def network_shape(self) -> tuple:
        return tuple(self.main.network_shape)

    @property
    def num_classes(self) -> int:
        return self.main.num_classes

    @property
    def caption_length(self) -> int:
        return self.main.caption_length

    @property
    def default_sampler(self) -> Sampler:
        return self.main.default_sampler

    def tokenize(self, captions):
        return self.main.tokenize(captions)

    def detokenize(self, tokens) -> str:
        return self.main.detokenize(tokens)

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """The main model's unguided `DenoiserModel` (its range and schedule) with D_w as its
        denoiser: w = `sampler.guidance_scale` within [guidance_sigma_lo, guidance_sigma_hi]."""
        unguided = sampler.replace(guidance_scale=1.0)
        main = self.main.denoiser_model(params, cond, aux["main"], unguided)
        if sampler.guidance_scale == 1.0:
            return main
        conditional = self.guide.num_classes or self.guide.caption_length
        guide = self.guide.denoiser_model(aux["guide"], cond if conditional else None,
                                          aux["guide_aux"], unguided).denoiser
        guide_fn = guide if conditional else lambda x, sigma, cond=None: guide(x, sigma)
        D = guidance.autoguidance(main.denoiser, guide_fn, sampler.guidance_scale,
                                  sigma_lo=sampler.guidance_sigma_lo,
                                  sigma_hi=sampler.guidance_sigma_hi)
        return dataclasses.replace(main, denoiser=D)

    def check_sampler(self, sampler: Sampler) -> None:
        """ConfigError for a sampler other than a shared solver (a chain of the main method's
        own, e.g. DDPM's ancestral or score SDEs' pc, does not run on a denoiser), then the main
        method's check."""
        check_solver(self.main, sampler)
        self.main.check_sampler(sampler.replace(guidance_scale=1.0))


def check_solver(main, sampler: Sampler) -> None:
    """ConfigError unless `sampler.method` is a shared solver that `main` runs on its denoiser
    (not one of its own chains): what autoguidance samples with."""
    inner = main.inner if isinstance(main, LatentDiffusion) else main
    if sampler.method not in solvers.SOLVERS or sampler.method in inner.chains():
        raise ConfigError(f"autoguidance (guidance.guide_workdir) runs on the shared solvers, not "
                          f"sampler {sampler.method!r} of {type(inner).__name__}; valid: "
                          f"{', '.join(m for m in solvers.SOLVERS if m not in inner.chains())}")


def autoguided(main, main_aux, guide, guide_params, guide_aux) -> tuple:
    """(method, aux) sampling `main` autoguided by `guide` with `guide_params`: `Autoguided` and
    its aux; for latent diffusion (main and guide on the same autoencoder's latents) the latent
    method with its inner method autoguided by the guide's inner one, and the main run's aux
    with the inner aux replaced (the decoder and latent scale stay the main run's)."""
    if isinstance(main, LatentDiffusion):
        if not isinstance(guide, LatentDiffusion):
            raise ConfigError("a latent diffusion model is guided by a latent diffusion run on "
                              "the same autoencoder")
        inner, inner_aux = autoguided(main.inner, main_aux.get("inner", {}), guide.inner,
                                      guide_params, guide_aux.get("inner", {}))
        return dataclasses.replace(main, inner=inner), dict(main_aux, inner=inner_aux)
    return Autoguided(main, guide), {"main": main_aux, "guide": guide_params,
                                     "guide_aux": guide_aux}
