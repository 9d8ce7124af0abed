"""The DDPM U-Net's conditioning reaches its output at every width."""
import jax
import jax.numpy as jnp
import pytest

from helpers import random_params

from diffusion_jax.models.layers import group_count
from diffusion_jax.models.unet import UNet


def test_group_count_keeps_four_channels_per_group_and_the_papers_32():
    assert [group_count(c) for c in (4, 8, 16, 32, 48, 64, 128, 256, 512)] == \
        [1, 2, 4, 8, 12, 16, 32, 32, 32]


@pytest.mark.parametrize("ch", [16, 32])
def test_time_and_label_change_the_output_of_a_narrow_unet(ch):
    """With one channel per GroupNorm group the per-channel embedding that each residual block
    adds is subtracted again by the next GroupNorm, and the net ignores t and the label."""
    model = UNet(ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_classes=10)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    shapes = jax.eval_shape(model.init, jax.random.key(1), x, jnp.zeros((2,)),
                            jnp.zeros((2,), jnp.int32))
    params = random_params(shapes)  # non-zero output layers
    apply = jax.jit(lambda t, y: model.apply(params, x, t, y))  # one program for the three calls
    out = lambda t, y: apply(jnp.full((2,), t), jnp.full((2,), y, jnp.int32))  # noqa: E731
    base = out(10.0, 3)
    scale = float(jnp.std(base))
    assert float(jnp.std(out(500.0, 3) - base)) > 1e-2 * scale
    assert float(jnp.std(out(10.0, 7) - base)) > 1e-2 * scale
