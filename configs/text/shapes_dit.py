"""Text-to-image EDM on the captioned shapes with a small DiT backbone (Peebles & Xie 2023):
patch 4 (16 tokens of 16x16 images), hidden 64, depth 2, 2 heads, adaLN-Zero conditioning on
the noise level and the pooled caption, cross-attention to a 1-layer byte-token caption encoder
(width 32) in every block; 3000 steps of batch 32, Adam 2e-3, EMA 0.99. The patch embedding
starts at the convolution's fan-in-and-out scale (`patch_init="conv"`): DiT's own init is 3x
larger at this width and drowns the position embedding (position accuracy 0.26). About a
minute of training on a 2-core CPU (2,100 images/s); its `--mode=eval` on 512 test captions
measured colour / position accuracy 1.000 / 1.000 with guidance 3 and 0.992 / 0.959 without
(`--config.sampling.guidance_scale=1`, in a fresh work directory: eval batches are kept per
step). Otherwise `configs/text/shapes_edm.py`. Not a paper setting.
"""
import ml_collections

from configs.text import shapes_edm


def get_config(arg=None):
    config = shapes_edm.get_config(arg)
    config.model = ml_collections.ConfigDict(dict(
        name="dit", dtype="float32", class_conditional=False, patch_size=4, hidden_size=64,
        depth=2, num_heads=2, mlp_ratio=4, patch_init="conv"))
    config.text.update(width=32, num_layers=1, num_heads=2)
    config.training.update(num_steps=3000, batch_size=32, checkpoint_every=1000, log_every=100,
                           ema_decay=0.99)
    config.optim.update(lr=2e-3, warmup_steps=100)
    config.eval.update(num_samples=512, batch_size=256)
    return config
