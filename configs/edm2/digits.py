"""EDM2 on the embedded 8x8 scikit-learn digits: trains on a 2-core CPU in a few minutes.

The recipe of `recipe.py` (EDM2 preconditioning, uncertainty-weighted loss, forced weight
normalisation, Adam (0.9, 0.99) without clipping, inverse-square-root learning rate) on a
small MP U-Net (16 channels, (1, 2), 1 block per level, attention at 4x4 with 16 channels per
head, no dropout; unconditional), at the noise levels, steps, batch, EMA and sampler of
`configs/edm/digits.py` (ln sigma ~ N(-1.2, 1.2^2), 2000 steps of batch 128, EMA 0.999 with
EDM's ramp-up, Heun with 18 steps) so the two compare: ref lr 0.01, decay after 1000 steps,
warm-up over 200 steps (25,600 images). Measured (2026-12-07 on main, 2 CPU cores, 4:23 of
training): digits Frechet distance 3.98 (1000 samples, 35 NFE; 180,795 parameters) against EDM
digits' 3.07 of the README at the same budget: no gain at this size and these untuned settings.
Not a paper setting; `img512_*.py` and `img64_s.py` are.

    python3 launch.py --config=configs/edm2/digits.py --workdir=runs/edm2_digits
    python3 launch.py --mode=eval --config=configs/edm2/digits.py --workdir=runs/edm2_digits
"""
from configs.edm2 import recipe

BATCH = 128


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm2/digits.py")
    config = recipe.get_config("img64", "s")
    config.data.update(dataset="digits", random_flip=False)
    config.model.update(dtype="float32", class_conditional=False, model_channels=16,
                        channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                        channels_per_head=16, dropout=0.0)
    config.edm2.update(P_mean=-1.2, P_std=1.2)
    config.ema.update(sigma_rels=(), snapshot_every=0, sigma_rel=0.0)  # EDM's EMA, as EDM digits
    config.training.update(num_steps=2000, batch_size=BATCH, checkpoint_every=1000,
                           log_every=100, ema_decay=0.999, ema_warmup="edm",
                           ema_rampup_ratio=0.05)
    config.optim.update(lr=1e-2, ref_batches=1000.0, rampup_images=200.0 * BATCH)
    config.sampling.update(num_samples=100, batch_size=100, num_steps=18)
    config.eval.update(num_samples=1000, batch_size=500)
    return config
