"""Stable Diffusion (Rombach et al. 2022, Sec. 3.3 and 4.3): a text-to-image DDPM on the latents
of a frozen KL autoencoder, conditioned on a frozen CLIP text encoder through the U-Net's
cross-attention; the released networks and schedules come from `importers.stable_diffusion`.

Latents z = s E(x) with the VAE's `scaling_factor` s (0.18215 for SD 1.x / 2.x). The chain is
the released one, q(z_t | z) = N(sqrt(ab_t) z, (1 - ab_t) I) over t = 0..999 (scaled_linear
betas 0.00085..0.012), and the U-Net predicts epsilon (SD 1.x, 2.x-base) or v (SD 2.x at 768)
at the integer timestep t. Training (fine-tuning, from the released U-Net) is the DDPM simple
loss on z ~ q(z | x) under stop-gradient, captions dropped to the empty prompt with probability
`label_dropout` (so that guidance stays possible).

Conditions are caption tokens (B, 77) of the checkpoint's CLIP tokenizer (`tokenize`), or
(B, 2, 77): each prompt with its own negative prompt. The text encoder runs once per batch,
before the sampler's loop, and the U-Net attends to its output (the last hidden state after
the final LayerNorm; `clip_skip` layers earlier when > 0): the encoding is loop-invariant, and
a text encoder inside the denoiser would run for both guidance branches at every step (for
SD 1.5 about 2.5 % of the U-Net's FLOPs each time). The tokens stay the conditions the launcher
layer, the data and the samplers pass around (`caption_length` 77), like every caption model's.

Sampling: the shared solvers on D(x, sigma) of the U-Net's prediction (`denoisers.from_discrete`),
guided on the prediction as diffusers' pipelines guide it, F_u + w (F_c - F_u), with F_u the
U-Net on the negative prompt (the sampler's `negative_prompt`, the empty prompt by default),
started from the VP prior z_T ~ N(0, I), i.e. x = sqrt(1 + sigma_max^2) n in the EDM convention
(where diffusers' DDIM, DPM-Solver and UniPC schedulers start, init_noise_sigma 1); images are
D_vae(z / s) clipped to [-1, 1].

Editing: 'sdedit' is diffusers' img2img: z = s times a posterior sample of the image, noised to
the first of the last int(strength N) of N steps and denoised over those. 'inpaint' on the base
U-Net replaces the latents of every latent cell whose pixels are all known (the replacement
method, `samplers.editing`), from the posterior means; the inpainting U-Net (9 input channels,
`sd-*-inpainting`) is instead conditioned on [m, s E(x_masked)]: m = 1 on the latent cells to
generate (the mask downsampled by taking each cell's first pixel, as diffusers' and LDM's
nearest interpolation do) and x_masked = x with the pixels to generate set to 0, encoded by a
posterior sample as diffusers does. Both paste the known pixels into the decoded images.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import denoisers, guidance
from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.methods.base import Method, PretrainedWeights
from diffusion_jax.models.autoencoder import DiagonalGaussian
from diffusion_jax.models.clip_text import CLIPTextEncoder
from diffusion_jax.models.sd_unet import SDUNet
from diffusion_jax.models.vae import AutoencoderKL
from diffusion_jax.processes import parameterization
from diffusion_jax.processes.schedules import DiscreteSchedule, marginal_coefficients, q_sample
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler
from diffusion_jax.tokenizer import CLIPTokenizer

EDIT_TASKS = ("sdedit", "inpaint")
INPAINTING_CHANNELS = 9  # latents, mask, masked-image latents


def img2img_strength(num_steps: int, strength: float) -> float:
    """The strength for `samplers.editing` (which runs round(strength N) of N steps) that runs
    the steps of diffusers' img2img, min(int(N strength), N) (its `init_timestep`)."""
    return min(int(num_steps * strength), num_steps) / num_steps


@dataclasses.dataclass(frozen=True)
class StableDiffusion(Method):
    """The method around the released networks: `unet` (trained), `text_encoder` and `vae`
    (frozen, aux state), `schedule`, `prediction` ('epsilon' | 'v'), and `source` (a diffusers
    model directory or a single-file checkpoint with the configs of `base`) their weights are
    read from."""

    unet: SDUNet
    text_encoder: CLIPTextEncoder
    vae: AutoencoderKL
    schedule: DiscreteSchedule
    image_shape: tuple
    prediction: str = "epsilon"
    scaling_factor: float = 0.18215
    tokenizer: Optional[CLIPTokenizer] = dataclasses.field(default=None, compare=False)
    source: str = ""
    base: str = ""
    variant: str = ""
    clip_skip: int = 0
    label_dropout: float = 0.0
    caption_length: int = 77
    num_classes: int = 0

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="dpm_solver_pp_2m", num_steps=20,
                                                 spacing="time_uniform", guidance_scale=7.5)

    # --- shapes and networks ---------------------------------------------------------------
    @property
    def noise_shape(self) -> tuple:
        return tuple(self.vae.latent_shape(self.image_shape))

    @property
    def network_shape(self) -> tuple:
        """The U-Net's input: latents, and for the inpainting U-Net the mask and masked-image
        latents concatenated to them."""
        return self.noise_shape[:2] + (self.unet.in_channels,)

    @property
    def inpainting(self) -> bool:
        return self.unet.in_channels == INPAINTING_CHANNELS

    @property
    def pretrained(self) -> bool:
        """Always: the weights come from the released files (`requirements` says which), so a
        work directory without a checkpoint samples them, and one without a source is a
        ConfigError."""
        return True

    def example_condition(self, batch: int = 1):
        """The U-Net's condition: a context (B, 77, cross_attention_dim), no attention mask."""
        return {"context": jnp.zeros((batch, self.caption_length, self.unet.cross_attention_dim)),
                "mask": None}

    def init_params(self, rng):
        x = jnp.zeros((1,) + self.network_shape)
        return jax.jit(self.unet.init)(rng, x, jnp.zeros((1,)), self.example_condition())["params"]

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The U-Net F(x_t, t, cond) on (B, h, w, in_channels) inputs with the condition pytree
        {"context", "mask"} (`example_condition`)."""
        rngs = {"dropout": rng} if train else None
        return self.unet.apply({"params": params}, x, t, cond, train=train, rngs=rngs)

    # --- captions --------------------------------------------------------------------------
    def tokenize(self, captions) -> np.ndarray:
        """(N, 77) int32 CLIP tokens of `captions` (the checkpoint's own tokenizer)."""
        if self.tokenizer is None:
            raise ConfigError("Stable Diffusion prompts need the checkpoint's tokenizer: set "
                              "sd.model_dir (a diffusers directory) or sd.tokenizer_dir")
        return self.tokenizer(list(captions))

    def detokenize(self, tokens) -> str:
        """The (normalised) prompt of one row of tokens; of a (2, 77) pair, the prompt's."""
        tokens = np.asarray(tokens)
        return self.tokenizer.decode(tokens[0] if tokens.ndim == 2 else tokens)

    def encode_text(self, aux, tokens) -> jax.Array:
        """(B, 77, D) context of (B, 77) tokens: the frozen text encoder's hidden state."""
        out = self.text_encoder.apply({"params": aux["text_encoder"]}, tokens,
                                      clip_skip=self.clip_skip)
        return jax.lax.stop_gradient(out.context)

    # --- aux state: the frozen text encoder and VAE ------------------------------------------
    def requirements(self) -> dict:
        """The released text encoder and VAE (aux), and the U-Net under 'unet': the parameters
        a run starts from (`start`)."""
        if not self.source:
            raise ConfigError("stable_diffusion needs its released weights: set sd.model_dir "
                              "(a diffusers model directory) or sd.checkpoint (a single file)")
        return {name: PretrainedWeights(self.source, name, self.base, self.variant)
                for name in ("unet", "text_encoder", "vae")}

    def init_aux(self, params, rng):
        text_rng, vae_rng = jax.random.split(rng)
        factor = 2 ** (len(self.vae.block_out_channels) - 1)
        tokens = jnp.zeros((1, self.caption_length), jnp.int32)
        image = jnp.zeros((1, factor, factor, self.vae.in_channels))
        return {"text_encoder": self.text_encoder.init(text_rng, tokens)["params"],
                "vae": self.vae.init(vae_rng, image)["params"]}

    def start(self, params, aux, resources):
        """The released U-Net as the parameters, the text encoder and VAE as aux."""
        unet = resources["unet"]
        shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)  # noqa: E731
        if jax.tree.structure(unet) != jax.tree.structure(params) or \
                shapes(unet) != shapes(params):
            raise ConfigError(f"the U-Net of {self.source!r} does not match the configured one")
        return unet, {"text_encoder": resources["text_encoder"], "vae": resources["vae"]}

    # --- latents -----------------------------------------------------------------------------
    def posterior(self, aux, x) -> DiagonalGaussian:
        """q(z | x) of images x in [-1, 1] (unscaled latents)."""
        return self.vae.apply({"params": aux["vae"]}, x, method="encode")

    def decode(self, aux, z) -> jax.Array:
        """Images in [-1, 1] of scaled latents z."""
        images = self.vae.apply({"params": aux["vae"]}, z / self.scaling_factor, method="decode")
        return jnp.clip(images, -1.0, 1.0)

    # --- training ----------------------------------------------------------------------------
    @property
    def empty_tokens(self) -> np.ndarray:
        """(77,) tokens of the empty prompt: the condition of the unguided branch."""
        return self.tokenize([""])[0]

    def loss(self, params, batch, rng, aux, step):
        """L_simple on z = s z', z' ~ q(z | x): t ~ U{0..T-1}, mean ||target - F(z_t, t, c)||^2
        with c the text encoder's context of the (dropped) caption tokens."""
        if self.inpainting:
            raise ConfigError("fine-tuning the 9-channel inpainting U-Net needs training masks, "
                              "which this method does not draw; fine-tune a base model")
        enc_rng, t_rng, n_rng, d_rng, l_rng = jax.random.split(rng, 5)
        z = jax.lax.stop_gradient(self.scaling_factor
                                  * self.posterior(aux, batch["image"]).sample(enc_rng))
        tokens = batch["label"]
        if self.label_dropout > 0:
            tokens = guidance.drop_labels(l_rng, tokens, self.label_dropout, self.empty_tokens)
        cond = {"context": self.encode_text(aux, tokens), "mask": None}
        t = jax.random.randint(t_rng, (z.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(n_rng, z.shape)
        pred = self.apply(params, q_sample(self.schedule, z, t, noise), t.astype(jnp.float32),
                          cond, train=True, rng=d_rng)
        alpha, sigma = marginal_coefficients(self.schedule, t)
        target = parameterization.target(self.prediction, z, noise, alpha, sigma)
        return jnp.mean((pred - target) ** 2), {}

    # --- the denoiser ------------------------------------------------------------------------
    def _prompt_tokens(self, cond, batch: int, negative_prompt: str):
        """(prompt tokens (B, 77), negative tokens (B or 1, 77)) of the conditions `cond` (the
        empty prompt for None)."""
        if cond is None:
            prompt = jnp.broadcast_to(jnp.asarray(self.empty_tokens), (batch, self.caption_length))
        else:
            prompt = jnp.asarray(cond)
        if prompt.ndim == 3:
            return prompt[:, 0], prompt[:, 1]
        return prompt, jnp.asarray(self.tokenize([negative_prompt]))

    def _network(self, params):
        """F(x_t, t, c) on the U-Net condition c, with c["concat"] (the inpainting U-Net's mask
        and masked-image latents) joined to x_t along the channels."""
        def F(x_t, t, c):
            if "concat" in c:
                x_t = jnp.concatenate([x_t, c["concat"].astype(x_t.dtype)], axis=-1)
            return self.apply(params, x_t, t, {"context": c["context"], "mask": c["mask"]})
        return F

    def denoiser_model(self, params, cond, aux, sampler: Sampler,
                       concat: Optional[jax.Array] = None) -> solvers.DenoiserModel:
        """D(x, sigma) of the U-Net conditioned on the caption tokens `cond` (encoded here, once),
        guided as `sampler` says from the negative prompt, on the schedule's sigma range; the
        inpainting U-Net gets `concat` (B, h, w, 5), by default every cell to generate. The
        denoiser accepts and ignores the condition the solvers pass (the same tokens)."""
        batch = 1 if cond is None else jnp.shape(cond)[0]
        prompt, negative = self._prompt_tokens(cond, batch, sampler.negative_prompt)
        c = {"context": self.encode_text(aux, prompt), "mask": None}
        if self.inpainting:
            c["concat"] = (self.blank_concat(aux, prompt.shape[0]) if concat is None
                           else concat)
        uncond = None
        if sampler.guidance.scale != 1.0:
            uncond = dict(c, context=self.encode_text(aux, negative))
        F = guidance.guide(self._network(params), c, 0, 0, sampler.guidance,
                           sigma_of=denoisers.discrete_sigma_of_t(self.schedule), uncond=uncond)
        D = denoisers.from_discrete(F, self.prediction, self.schedule, mode="interpolate")
        return self._grid_model(lambda x, sigma, _=None: D(x, sigma, c))

    def _grid_model(self, denoiser) -> solvers.DenoiserModel:
        """`denoiser` with the schedule's sigma range, as the shared solvers' grids see it."""
        alpha_bars = np.asarray(self.schedule.alpha_bars, np.float64)[[0, -1]]
        sigma_min, sigma_max = np.sqrt((1.0 - alpha_bars) / alpha_bars)
        return solvers.DenoiserModel(denoiser, float(sigma_min), float(sigma_max), self.schedule)

    def check_sampler(self, sampler: Sampler) -> None:
        """The grid check of `Method.check_sampler` without encoding a prompt (no weights yet)."""
        if sampler.method not in solvers.SOLVERS:
            raise ConfigError(f"unknown sampler {sampler.method!r} for {type(self).__name__}; "
                              f"valid: {', '.join(self.sampler_names)}")
        solvers.check(sampler, self._grid_model(None))

    def conditional_denoiser(self, params, aux=None):
        """The unguided D(x, sigma, tokens) (a distillation teacher)."""
        return lambda x, sigma, tokens: self.denoiser_model(params, tokens, aux,
                                                            Sampler()).denoiser(x, sigma)

    # --- sampling and editing ----------------------------------------------------------------
    def _vp_prior(self, sampler, model, x_init):
        """Standard-normal `x_init` rescaled so that `solvers.solve`'s start sigma_0 x_init is
        the VP prior sqrt(1 + sigma_0^2) n."""
        sigma0 = solvers.sigma_grid(sampler, model)[0]
        return x_init * jnp.sqrt(1.0 + jnp.square(sigma0)) / sigma0

    def sample(self, params, rng, x_init, cond=None, *, aux=None, sampler=None):
        """Images (B, H, W, 3) for the caption tokens `cond` from latent noise x_init."""
        sampler = self.default_sampler if sampler is None else sampler
        model = self._checked(sampler, self.denoiser_model(params, cond, aux, sampler))
        z, stats = solvers.solve(sampler, model, rng, self._vp_prior(sampler, model, x_init), cond)
        return self.decode(aux, z), stats

    def blank_concat(self, aux, batch: int) -> jax.Array:
        """The inpainting U-Net's extra input when every pixel is to be generated: mask 1 and
        the latents of the all-zero (grey) image."""
        h, w, _ = self.noise_shape
        grey = jnp.zeros((1,) + tuple(self.image_shape))
        latents = self.scaling_factor * self.posterior(aux, grey).mode()
        blank = jnp.concatenate([jnp.ones((1, h, w, 1)), latents], axis=-1)
        return jnp.broadcast_to(blank, (batch, h, w, blank.shape[-1]))

    def edit(self, params, rng, x, mask, cond=None, *, aux=None, sampler=None, task: str,
             strength: float):
        """'sdedit' (img2img at diffusers' `strength`) or 'inpaint' (mask True = known pixel) of
        images x in [-1, 1], for the caption tokens `cond` (the empty prompt for None)."""
        choose("Stable Diffusion edit task (edit.task)", task, EDIT_TASKS)
        sampler = self.default_sampler if sampler is None else sampler
        if cond is None:
            cond = jnp.broadcast_to(jnp.asarray(self.empty_tokens),
                                    (x.shape[0], self.caption_length))
        enc_rng, edit_rng = jax.random.split(rng)
        if task == "sdedit":
            z = self.scaling_factor * self.posterior(aux, x).sample(enc_rng)
            model = self._checked(sampler, self.denoiser_model(params, cond, aux, sampler))
            z = solvers.edit(sampler, model, edit_rng, z, jnp.zeros(z.shape, bool), cond,
                             task="sdedit",
                             strength=img2img_strength(sampler.num_steps, strength))
            return self.decode(aux, z)
        known = jnp.all(mask, axis=-1)  # (B, H, W): every channel of the pixel known
        h, w, c = self.noise_shape
        f = self.image_shape[0] // h
        if self.inpainting:
            masked = jnp.where(known[..., None], x, 0.0)
            concat = jnp.concatenate(
                [1.0 - known[:, ::f, ::f, None].astype(jnp.float32),
                 self.scaling_factor * self.posterior(aux, masked).sample(enc_rng)], axis=-1)
            model = self._checked(sampler, self.denoiser_model(params, cond, aux, sampler,
                                                               concat=concat))
            noise_rng, sample_rng = jax.random.split(edit_rng)
            noise = jax.random.normal(noise_rng, (x.shape[0], h, w, c))
            z, _ = solvers.solve(sampler, model, sample_rng,
                                 self._vp_prior(sampler, model, noise), cond)
        else:
            cells = known.reshape(x.shape[0], h, f, w, f).all(axis=(2, 4))
            latent_mask = jnp.broadcast_to(cells[..., None], (x.shape[0], h, w, c))
            z_known = self.scaling_factor * self.posterior(aux, x).mode()
            model = self._checked(sampler, self.denoiser_model(params, cond, aux, sampler))
            z = solvers.edit(sampler, model, edit_rng, z_known, latent_mask, cond,
                             task="inpaint", strength=strength)
        return jnp.where(known[..., None], x, self.decode(aux, z))

    def _checked(self, sampler, model):
        if sampler.method not in solvers.SOLVERS:
            raise ConfigError(f"unknown sampler {sampler.method!r} for {type(self).__name__}; "
                              f"valid: {', '.join(self.sampler_names)}")
        return model
