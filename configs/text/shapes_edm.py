"""Text-to-image EDM on the generated captioned shapes (16x16 RGB).

EDM (Karras et al. 2022: preconditioning, loss, Heun with 18 steps) on a small DDPM U-Net
whose attention blocks are cross-attention transformer blocks (Rombach et al. 2022) over the
caption, encoded by a 2-layer byte-token transformer trained with it. Captions are dropped
(replaced by the empty caption) with probability 0.1, so samples can be guided
(`sampling.guidance_scale`, `sampling.negative_prompt`, `launch.py --prompt=...`). The U-Net
has 1.06M parameters; a step of batch 64 took about 0.9 s on a shared 2-core CPU (3000 steps:
about 45 minutes); `shapes_dit.py` is the quick one. Not a paper setting.
"""
import ml_collections

from configs.edm import cifar10_uncond


def get_config(arg=None):
    config = cifar10_uncond.get_config(arg)
    config.data.update(dataset="shapes", random_flip=False)  # a flip would swap left and right
    config.model = ml_collections.ConfigDict(dict(
        name="unet", dtype="float32", class_conditional=False, remat=False, ch=32,
        ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
        resamp_with_conv=True, num_heads=4, transformer_depth=1))
    config.text.update(encoder="bytes", width=64, num_layers=2, num_heads=4)
    config.edm.label_dropout = 0.1
    config.training.update(num_steps=3000, batch_size=64, checkpoint_every=1000, log_every=100,
                           ema_decay=0.999)
    config.optim.update(lr=1e-3, warmup_steps=200)
    config.sampling.update(num_samples=64, batch_size=64, guidance_scale=3.0, negative_prompt="")
    config.eval.update(num_samples=512, batch_size=256)
    return config
