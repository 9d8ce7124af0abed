"""Shared config skeletons. Each named config starts from one of these and states its paper."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Keys every method shares; the launcher and the generic loop read these."""
    c = ml_collections.ConfigDict()
    c.method = "ddpm"
    c.compilation_cache_dir = "~/.cache/diffusion_jax/xla"  # persistent XLA cache; "" = off
    c.model = ml_collections.ConfigDict(dict(name="unet", dtype="float32",
                                             class_conditional=False))
    c.data = ml_collections.ConfigDict(dict(dataset="digits", data_dir="", download=False,
                                            random_flip=False))
    c.training = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=128, checkpoint_every=1000, log_every=100, seed=0,
        ema_decay=0.9999, max_checkpoints=3, sample_at_end=True))
    c.optim = ml_collections.ConfigDict(dict(name="adam", lr=2e-4, warmup_steps=5000,
                                             grad_clip=1.0, beta1=0.9, beta2=0.999, eps=1e-8,
                                             weight_decay=0.0))
    c.sampling = ml_collections.ConfigDict(dict(num_samples=64, batch_size=64, use_ema=True,
                                                seed=1))
    # Editing in --mode=sample (diffusion_jax/edit_inputs.py): task none | inpaint | sdedit;
    # input: a PNG or a directory of PNGs; mask: PNG(s), white = known pixel; strength in [0, 1].
    c.edit = ml_collections.ConfigDict(dict(task="none", input="", mask="", strength=0.5))
    c.eval = ml_collections.ConfigDict(dict(
        num_samples=50000, batch_size=500, reference_split="train", num_reference=50000,
        inception_weights="", reference_stats=""))
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0,
                                                   process_id=-1))
    return c


def ddpm_config() -> ml_collections.ConfigDict:
    """DDPM (Ho et al. 2020) defaults: the CIFAR-10 network, schedule, optimiser and sampler."""
    c = base_config()
    c.method = "ddpm"
    c.model.update(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                   dropout=0.1, resamp_with_conv=True)
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=1000,
                                                 beta_start=1e-4, beta_end=0.02,
                                                 prediction="epsilon", label_dropout=0.0))
    c.sampling.update(method="ancestral", num_steps=1000, eta=0.0, variance="beta",
                      clip_x0=False, spacing="uniform")
    return c
