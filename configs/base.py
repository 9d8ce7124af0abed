"""Shared config skeletons. Each named config starts from one of these and states its paper."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Keys every method shares; the launcher and the generic loop read these."""
    c = ml_collections.ConfigDict()
    c.method = "ddpm"
    c.compilation_cache_dir = "~/.cache/diffusion_jax/xla"  # persistent XLA cache; "" = off
    # LoRA (models/lora.py; unet, ncsnpp, dit): lora_rank r > 0 adds adapters of scale
    # lora_alpha / r to the dense and 1x1 projections whose module path lora_targets matches
    # ("" = all), trains only them (and training.trainable), and with lora_merge samples and
    # evaluates with the adapters merged into the weights
    c.model = ml_collections.ConfigDict(dict(name="unet", dtype="float32",
                                             class_conditional=False, remat=False, lora_rank=0,
                                             lora_alpha=8.0, lora_targets="", lora_merge=True))
    c.data = ml_collections.ConfigDict(dict(dataset="digits", data_dir="", download=False,
                                            random_flip=False))
    c.training = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=128, checkpoint_every=1000, log_every=100, seed=0,
        ema_decay=0.9999, max_checkpoints=3, sample_at_end=True, grad_accum_steps=1,
        steps_per_call=1,
        # EMA warm-up (training.step.ema_schedule): none (the papers' DDPM / score-SDE EMA),
        # power (min(decay, (1 + k) / (10 + k))) or edm (half-life capped at
        # ema_rampup_ratio x images seen, Karras et al. 2022)
        ema_warmup="none", ema_rampup_ratio=0.05,
        preview_samples=16,  # a sample grid at every checkpoint (samples/step_N.png); 0 = off
        # fine-tuning: init_from = WORKDIR[:step], a run (or an imported checkpoint) whose
        # parameters and EMA a new run starts from (fresh optimizer, step 0), ignored on resume;
        # init_allow_missing: a regular expression over the '/'-joined parameter paths whose
        # shape or presence may differ (they keep their fresh initialisation); trainable: a
        # regular expression over the paths of the parameters trained ("" = all; the rest frozen)
        init_from="", init_allow_missing="", trainable=""))
    # schedule (training/optim.py): constant (after warmup_steps of linear warm-up) |
    # inverse_sqrt (EDM2: lr / sqrt(max(t / (ref_batches batch), 1)), linear warm-up over
    # rampup_images, t the images seen; warmup_steps unused)
    c.optim = ml_collections.ConfigDict(dict(name="adam", lr=2e-4, warmup_steps=5000,
                                             grad_clip=1.0, beta1=0.9, beta2=0.999, eps=1e-8,
                                             weight_decay=0.0, schedule="constant",
                                             ref_batches=0.0, rampup_images=0.0))
    # save_pngs: a directory for one PNG per sample (external FID tools); "" = none
    c.sampling = ml_collections.ConfigDict(dict(num_samples=64, batch_size=64, use_ema=True,
                                                seed=1, save_pngs=""))
    # TensorBoard event files in WORKDIR/tensorboard (tensorboardX, no TensorFlow); a Weights &
    # Biases run when wandb_project is set (never contacted otherwise)
    c.logging = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project="",
                                               wandb_run_id=""))
    # Editing in --mode=sample (diffusion_jax/edit_inputs.py): task none | inpaint | sdedit;
    # input: a PNG or a directory of PNGs; mask: PNG(s), white = known pixel; strength in [0, 1].
    # Text conditioning on a captioned data set (shapes): encoder none | bytes (a small
    # transformer trained with the model) | precomputed (embeddings: an .npz of 'captions' and
    # 'embeddings'); the model's attention blocks attend to the encoded caption.
    c.text = ml_collections.ConfigDict(dict(encoder="none", width=64, num_layers=2, num_heads=4,
                                            embeddings=""))
    # Latent diffusion: with autoencoder_workdir (a run of configs/autoencoder/), or vae (a
    # released VAE: sd-vae-ft-ema | sd-vae-ft-mse, its weights in vae_dir, a diffusers
    # AutoencoderKL directory), the method trains and samples on that frozen autoencoder's
    # latents; scale > 0 fixes the latent scale (default for a vae: its scaling_factor,
    # 0.18215), else scale_examples training images set it; cache_dir: encode the training set
    # once there (resumable, sharded over processes; --mode=encode_latents writes it ahead);
    # scaling: std (that fixed or calibrated scale) | edm2 (EDM2's fixed per-channel
    # statistics of sd-vae-ft-mse latents, 4 channels).
    c.latent = ml_collections.ConfigDict(dict(autoencoder_workdir="", cache_dir="",
                                              scale_examples=512, vae="", vae_dir="",
                                              scale=0.0, scaling="std"))
    c.edit = ml_collections.ConfigDict(dict(task="none", input="", mask="", strength=0.5))
    # Autoguidance (Karras et al. 2024; methods/autoguided.py) in --mode=sample / eval: with
    # guide_workdir (another run with a denoiser: a smaller and/or shorter-trained model, its own
    # config.json and EMA), D = D_guide + w (D_main - D_guide) with w = sampling.guidance_scale
    # inside [guidance_sigma_lo, guidance_sigma_hi]; guide_step: its checkpoint (0 = newest)
    c.guidance = ml_collections.ConfigDict(dict(guide_workdir="", guide_step=0))
    c.eval = ml_collections.ConfigDict(dict(
        num_samples=50000, batch_size=500, reference_split="train", num_reference=50000,
        inception_weights="", reference_stats="",
        # FID/IS input protocol (evaluation/inception.py `preprocess`): tensorflow = the 2015
        # graph's own resize and scaling (TTUR, EDM, the published statistics); pytorch_fid =
        # pytorch-fid's half-pixel resize and 2 v / 255 - 1
        inception_protocol="tensorflow",
        # test-set bits/dim of methods with a likelihood (score_sde, ddpm); 0 examples = off;
        # divergence / rtol / atol: the score SDEs' ODE; timesteps: the DDPM variational bound,
        # 0 = exact over all T terms (T network evaluations per image), K > 0 = an unbiased
        # estimate from K uniformly drawn timesteps (K + 1 evaluations)
        bpd_num_examples=0, bpd_batch_size=500, bpd_divergence="rademacher", bpd_rtol=1e-5,
        bpd_atol=1e-5, bpd_timesteps=0))
    # post-hoc EMA (Karras et al. 2024, EDM2 Sec. 3; training/ema_snapshots.py): sigma_rels, the
    # power-function EMA profiles tracked in training (() = off); snapshot_every, the interval in
    # optimiser steps of their snapshots in WORKDIR/ema_snapshots/<step>/ (0 = off; NVlabs counts
    # images: 8Mi images at batch 2048 = 4096 steps); --mode=posthoc_ema reconstructs the EMA of
    # width sigma_rel as of snapshot_step (0 = the last snapshot)
    c.ema = ml_collections.ConfigDict(dict(sigma_rels=(), snapshot_every=0, sigma_rel=0.0,
                                           snapshot_step=0))
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0,
                                                   process_id=-1))
    # device mesh: data x fsdp devices (-1 = the rest); fsdp > 1 shards parameters, EMA and
    # optimizer state over that axis (parallel.py)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return c


def guidance_defaults() -> dict:
    """Classifier-free guidance off (Ho & Salimans 2022; `diffusion_jax.guidance.guide`): scale
    1, interval of every sigma, no negative label or prompt."""
    return dict(guidance_scale=1.0, guidance_sigma_lo=0.0, guidance_sigma_hi=1e9,
                negative_label=-1, negative_prompt="")


def solver_defaults() -> dict:
    """The options of the shared solvers beside grid and churn (`samplers.sampler.Sampler`):
    each solver's own order (0), model output and UniPC variant, diffusers' lower orders on the
    last steps, DPM-Solver++(3M)'s second step, and the explicit grids (empty: none), 'leading'
    spacing's steps_offset."""
    return dict(order=0, solver_prediction="", unipc_variant="bh2", disable_corrector=(),
                lower_order_final=True, second_order="heun", taylor_d2=False, steps_offset=0,
                sigmas=(), timesteps=())


def weighting_defaults(name: str = "uniform") -> dict:
    """A method's loss weighting (`losses.weighting`): min-SNR-gamma's gamma (Hang et al. 2023)
    and P2's k and gamma (Choi et al. 2022)."""
    return dict(loss_weighting=name, min_snr_gamma=5.0, p2_k=1.0, p2_gamma=1.0)


def ddpm_config() -> ml_collections.ConfigDict:
    """DDPM (Ho et al. 2020) defaults: the CIFAR-10 network, schedule, optimiser and sampler."""
    c = base_config()
    c.method = "ddpm"
    c.model.update(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                   dropout=0.1, resamp_with_conv=True)
    # schedule: linear | scaled_linear (beta_start..beta_end) | cosine | shifted_cosine (images
    # of `resolution`, 0 = the network input's, against `base_resolution`); zero_terminal_snr:
    # Lin et al. 2024's rescaling (needs prediction v, sampling.spacing trailing, a shared solver)
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=1000,
                                                 beta_start=1e-4, beta_end=0.02,
                                                 resolution=0, base_resolution=64,
                                                 zero_terminal_snr=False,
                                                 prediction="epsilon", label_dropout=0.0,
                                                 **weighting_defaults()))
    c.sampling.update(method="ancestral", num_steps=1000, eta=0.0, variance="beta",
                      clip_x0=False, spacing="uniform", sigma_min=0.0, sigma_max=0.0, rho=7.0,
                      S_churn=0.0, S_min=0.0, S_max=1e9, S_noise=1.0, **solver_defaults(),
                      **guidance_defaults())
    return c


def score_sde_config(sde: str = "vpsde") -> ml_collections.ConfigDict:
    """Score SDE (Song et al. 2021) shared CIFAR-10 defaults (their `default_cifar10_configs.py`
    and the per-SDE configs): batch 128, Adam 2e-4 (eps 1e-8) with 5000 warmup steps, clip 1,
    dropout 0.1, random flips, 1.3M iterations, DSM with t ~ U(1e-5, 1), N = 1000; VP / sub-VP:
    reduce mean, EMA 0.9999, Euler-Maruyama without corrector ending at 1e-3; VE: reduce sum,
    EMA 0.999, reverse diffusion + Langevin (snr 0.16) ending at 1e-5.

    The PC settings are `samplers.pc.paper_defaults`. Data here are always in [-1, 1]; the paper's VE runs use [0, 1] data with sigma 0.01..50, and
    the same process on [-1, 1] data is sigma 0.02..100 (x' = 2x - 1 doubles every distance), so
    the VE defaults are those. Network keys come from the named config.
    """
    from diffusion_jax.processes import sde as sde_lib
    from diffusion_jax.samplers import pc

    c = base_config()
    c.method = "score_sde"
    c.model.update(name="ncsnpp")
    ve = sde == "vesde"
    c.sde = ml_collections.ConfigDict(dict(
        name=sde, beta_min=0.1, beta_max=20.0, sigma_min=0.02, sigma_max=100.0, N=1000,
        train_eps=1e-5, likelihood_weighting=False, importance_weighting=False,
        reduce="sum" if ve else "mean", label_dropout=0.0, **weighting_defaults()))
    c.data.update(dataset="cifar10", random_flip=True)
    c.training.update(num_steps=1_300_000, batch_size=128, checkpoint_every=50_000,
                      log_every=100, ema_decay=0.999 if ve else 0.9999)
    c.optim.update(name="adam", lr=2e-4, warmup_steps=5000, grad_clip=1.0, beta1=0.9,
                   beta2=0.999, eps=1e-8)
    c.sampling.update(
        method="pc", num_steps=1000, **pc.paper_defaults(sde_lib.SDES[sde]()), denoise=True,
        ode_solver="tsit5", rtol=1e-5, atol=1e-5, sigma_min=0.0, sigma_max=0.0, rho=7.0,
        S_churn=0.0, S_min=0.0, S_max=1e9, S_noise=1.0, eta=1.0, spacing="logsnr",
        **solver_defaults(), **guidance_defaults())
    c.eval.update(num_samples=50_000, batch_size=1000, bpd_num_examples=10_000,
                  bpd_batch_size=500)
    return c


def consistency_config(training_mode: str = "cd") -> ml_collections.ConfigDict:
    """Consistency models (Song et al. 2023) shared CIFAR-10 defaults, from Table 3 and the
    released CIFAR-10 configs (openai/consistency_models_cifar10, `cifar10_ve_cd.py`): EDM's
    NCSN++ backbone (`ncsnpp.edm_ncsnpp_cifar10_kwargs`, 56,395,651 parameters) with dropout 0,
    sigma in [0.002, 80], rho 7, sigma_data 0.5; batch 512, RAdam lr 4e-4 (beta1 0.9, eps 1e-8),
    linear warmup over 10M images (19,531 steps), no gradient clipping, EMA 0.9999 for the
    evaluated weights, 800k iterations, random flips; one-step sampling. CD: N = 18, Heun
    teacher step, target = online weights under stop-gradient (mu = 0). CT: mu0 0.9, s0 2,
    s1 150. LPIPS on images resized bilinearly to 224 x 224, as the reference code does.
    `consistency.teacher_workdir` is the teacher's work directory (CD only; no default).
    """
    from diffusion_jax.models import ncsnpp

    c = base_config()
    c.method = "consistency"
    c.model.update(name="ncsnpp", **ncsnpp.edm_ncsnpp_cifar10_kwargs())
    c.model.dropout = 0.0
    c.consistency = ml_collections.ConfigDict(dict(
        training_mode=training_mode, sigma_min=0.002, sigma_max=80.0, rho=7.0, sigma_data=0.5,
        distance="lpips", lpips_weights="", lpips_resize=224, huber_c=0.0, weighting="uniform",
        num_scales=18, teacher_workdir="", teacher_solver="heun", target_ema=0.0,
        init_from_teacher=training_mode == "cd",
        s0=2, s1=150, mu0=0.9, P_mean=-1.1, P_std=2.0))
    c.data.update(dataset="cifar10", random_flip=True)
    c.training.update(num_steps=800_000, batch_size=512, checkpoint_every=10_000, log_every=100,
                      ema_decay=0.9999)
    c.optim.update(name="radam", lr=4e-4, warmup_steps=10_000_000 // 512, grad_clip=0.0,
                   beta1=0.9, beta2=0.999, eps=1e-8)
    c.sampling.update(num_samples=64, batch_size=64, method="onestep", num_steps=1, sigmas=())
    c.eval.update(num_samples=50_000, batch_size=1000)
    return c


def scm_config(training_mode: str = "sct") -> ml_collections.ConfigDict:
    """sCM (Lu & Song 2024) defaults: TrigFlow with sigma_d 0.5, t_max = arctan(80 / 0.5),
    tangent warm-up over 10k steps and normalisation c = 0.1 (the paper's values as
    xandergos/sCM-mnist's comments quote them), adaptive weighting on, c_noise = t, one-step
    sampling (`methods.scm`). P_mean / P_std are (-1.0, 1.4): the paper's values are unverified
    (FRONTIER.md Sec. 5: not found); each named config sets its own. `scm.teacher_workdir` is
    the teacher's work directory (sCD only; no default). Network, data and optimiser keys come
    from the named config."""
    c = base_config()
    c.method = "scm"
    c.model.update(name="ncsnpp")
    c.scm = ml_collections.ConfigDict(dict(
        training_mode=training_mode, sigma_d=0.5, sigma_max=80.0, c_noise="t", P_mean=-1.0,
        P_std=1.4, tangent_warmup_steps=10_000, tangent_c=0.1, adaptive_weighting=True,
        label_dropout=0.0, teacher_workdir="", init_from_teacher=training_mode == "scd"))
    c.sampling.update(num_samples=64, batch_size=64, method="onestep", num_steps=1, sigmas=())
    return c


def stable_diffusion_config(base: str = "sd15") -> ml_collections.ConfigDict:
    """Stable Diffusion (Rombach et al. 2022; `methods.stable_diffusion`): the networks, schedule
    and tokenizer come from the released files (`sd.model_dir`, a diffusers model directory, or
    `sd.checkpoint`, a single CompVis / Stability file with the configs of `sd.base` and the
    tokenizer of `sd.tokenizer_dir`); `model.dtype` / `model.remat` are the compute dtype and
    the U-Net's gradient checkpointing. Sampling as diffusers' default recipe: DPM-Solver++(2M),
    20 steps, guidance 7.5. Fine-tuning on a folder of image-caption pairs (`data.dataset`
    folder, `data.data_dir`): diffusers' train_text_to_image example settings, AdamW lr 1e-5
    (weight decay 0.01), clip 1, EMA 0.9999, caption dropout 0.1 (as the released models were
    trained); batch and mesh to the devices (`mesh.fsdp` shards the U-Net and its optimizer
    state). `--mode=eval` samples the test captions of the folder and computes FID (the FID
    Inception of `eval.inception_weights`) against its `eval.reference_split` images at the
    sampling resolution, and, when `eval.clip_model_dir` names a transformers `CLIPModel`
    directory (e.g. openai/clip-vit-large-patch14 with its tokenizer files), the CLIP score.
    """
    c = base_config()
    c.method = "stable_diffusion"
    c.model = ml_collections.ConfigDict(dict(name="sd_unet", dtype="float32", remat=False))
    # base: a released name (sd15, sd21, sd21_base) or a model directory, for a single-file
    # checkpoint; resolution 0 = the U-Net's trained size; variant: weight files
    # <name>.<variant>.safetensors (e.g. fp16); clip_skip: condition on the text encoder's
    # hidden state that many layers before the last; label_dropout: caption dropout in training
    c.sd = ml_collections.ConfigDict(dict(base=base, model_dir="", checkpoint="",
                                          tokenizer_dir="", variant="", resolution=0,
                                          clip_skip=0, label_dropout=0.1))
    c.data.update(dataset="folder", random_flip=False)
    c.training.update(num_steps=15_000, batch_size=8, checkpoint_every=1000, log_every=50,
                      ema_decay=0.9999, sample_at_end=True)
    c.optim.update(name="adamw", lr=1e-5, warmup_steps=500, grad_clip=1.0, beta1=0.9,
                   beta2=0.999, eps=1e-8, weight_decay=1e-2)
    c.sampling.update(num_samples=4, batch_size=4, seed=42, method="dpm_solver_pp_2m",
                      num_steps=20, spacing="time_uniform", sigma_min=0.0, sigma_max=0.0,
                      rho=7.0, eta=1.0, S_noise=1.0, S_churn=0.0, order=3,
                      **dict(guidance_defaults(), guidance_scale=7.5))
    c.edit.strength = 0.75
    # clip_model_dir: a transformers CLIPModel directory (config.json, model.safetensors,
    # vocab.json, merges.txt, preprocessor_config.json) for the CLIP score; "" = none
    c.eval.update(num_samples=1000, batch_size=8, reference_split="test", num_reference=1000,
                  clip_model_dir="")
    return c
