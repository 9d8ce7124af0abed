"""FIR resampling (StyleGAN2 upfirdn2d) and the fused resampling convolutions of NCSN++."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models.up_down import (Conv2d, Downsample, Upsample, conv_downsample_2d, downsample_2d,
                                          upsample_2d, upsample_conv_2d)

X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
W = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))


def conv_same(x):
    return jax.lax.conv_general_dilated(x, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_box_filter_is_nearest_upsampling_and_average_pooling():
    np.testing.assert_array_equal(upsample_2d(X, (1, 1)), jnp.repeat(jnp.repeat(X, 2, 1), 2, 2))
    np.testing.assert_allclose(downsample_2d(X, (1, 1)), X.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)), atol=1e-6)


def test_fir_upsampling_interpolates_with_weights_three_quarters_and_one_quarter():
    x = np.arange(1.0, 7.0)
    up = upsample_2d(jnp.asarray(x)[None, :, None, None] * jnp.ones((1, 1, 4, 1)))[0, :, 3, 0]
    i = np.arange(1, 5)
    np.testing.assert_allclose(up[2 * i], 0.75 * x[i] + 0.25 * x[i - 1], atol=1e-6)
    np.testing.assert_allclose(up[2 * i + 1], 0.75 * x[i] + 0.25 * x[i + 1], atol=1e-6)


def test_fir_keeps_a_constant_image_constant_away_from_the_border():
    ones = jnp.ones((1, 8, 8, 1))
    assert upsample_2d(ones).shape == (1, 16, 16, 1)
    np.testing.assert_allclose(upsample_2d(ones)[:, 1:-1, 1:-1], 1.0)
    np.testing.assert_allclose(downsample_2d(ones)[:, 1:-1, 1:-1], 1.0)


@pytest.mark.parametrize("k", [(1, 1), (1, 3, 3, 1)])
def test_fused_up_conv_equals_upsample_then_conv_inside(k):
    fused, plain = upsample_conv_2d(X, W, k), conv_same(upsample_2d(X, k))
    assert fused.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(fused[:, 3:-3, 3:-3], plain[:, 3:-3, 3:-3], atol=1e-5)


@pytest.mark.parametrize("k", [(1, 1), (1, 3, 3, 1)])
def test_fused_conv_down_equals_conv_then_downsample_inside(k):
    fused, plain = conv_downsample_2d(X, W, k), downsample_2d(conv_same(X), k)
    assert fused.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(fused[:, 1:-1, 1:-1], plain[:, 1:-1, 1:-1], atol=1e-5)


def test_layers_give_the_right_shapes_and_parameter_counts():
    cases = [(Conv2d(5, up=True), (2, 16, 16, 5), 3 * 3 * 3 * 5 + 5),
             (Conv2d(5, down=True), (2, 4, 4, 5), 3 * 3 * 3 * 5 + 5),
             (Upsample(5, with_conv=True, fir=True), (2, 16, 16, 5), 140),
             (Upsample(5, with_conv=True), (2, 16, 16, 5), 140),
             (Upsample(fir=True), (2, 16, 16, 3), 0),
             (Downsample(5, with_conv=True, fir=True), (2, 4, 4, 5), 140),
             (Downsample(5, with_conv=True), (2, 4, 4, 5), 140),
             (Downsample(fir=True), (2, 4, 4, 3), 0)]
    for layer, shape, n_params in cases:
        out, variables = layer.init_with_output(jax.random.key(0), X)
        assert out.shape == shape
        assert sum(p.size for p in jax.tree.leaves(variables)) == n_params


def test_bfloat16_compute():
    out, variables = Conv2d(5, down=True, dtype=jnp.bfloat16).init_with_output(jax.random.key(0), X)
    assert out.dtype == jnp.bfloat16
    assert variables["params"]["kernel"].dtype == jnp.float32
