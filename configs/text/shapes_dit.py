"""Text-to-image EDM on the captioned shapes with a DiT backbone (Peebles & Xie 2023):
patch 2 (64 tokens of 16x16 images), hidden 128, depth 4, 4 heads, adaLN-Zero conditioning on
the noise level and the pooled caption, cross-attention to the byte-token caption encoder in
every block. Otherwise `configs/text/shapes_edm.py`. Not a paper setting.
"""
import ml_collections

from configs.text import shapes_edm


def get_config(arg=None):
    config = shapes_edm.get_config(arg)
    config.model = ml_collections.ConfigDict(dict(
        name="dit", dtype="float32", class_conditional=False, patch_size=2, hidden_size=128,
        depth=4, num_heads=4, mlp_ratio=4))
    config.optim.update(lr=5e-4, warmup_steps=500)
    return config
