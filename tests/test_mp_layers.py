"""EDM2's magnitude-preserving layers (Karras et al. 2024, App. B): for unit-magnitude inputs
the outputs have unit expected magnitude E[y^2] = 1 (the paper preserves the root mean square,
not the variance), checked against the closed forms with tolerances from the standard error,
each with a negative control that the same check rejects; forced weight normalisation."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from diffusion_jax.models import mp_layers
from diffusion_jax.models.mp_layers import (MPConv, MPFourier, cosine_attention,
                                            force_weight_norm, mp_cat, mp_silu, mp_sum, pixel_norm)

N = 200_000


def within(samples, expected, slack=0.0, z=4.0):
    """Whether the mean of i.i.d. `samples` is within z standard errors (plus `slack`, a known
    bias of the closed form) of `expected`."""
    samples = np.asarray(samples, np.float64)
    se = samples.std() / math.sqrt(samples.size)
    return abs(samples.mean() - expected) <= z * se + slack


def normal(key, shape):
    return np.asarray(jax.random.normal(jax.random.key(key), shape), np.float64)


def test_mp_silu_constant_is_the_root_mean_square_of_silu():
    # E[silu(z)^2] for z ~ N(0, 1) by quadrature: 0.35578, sqrt 0.59647 (Eq. 81 rounds to 0.596)
    second_moment = integrate.quad(
        lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * (z / (1 + math.exp(-z))) ** 2,
        -40, 40)[0]
    assert abs(math.sqrt(second_moment) - mp_layers.SILU_MAGNITUDE) < 5e-4
    assert abs(second_moment / mp_layers.SILU_MAGNITUDE**2 - 1) < 2e-3  # 1.0016


def test_mp_silu_has_unit_magnitude():
    z = normal(0, (N,))
    bias = 2e-3  # the closed form is 1.0016 (previous test)
    assert within(np.asarray(mp_silu(jnp.asarray(z))) ** 2, 1.0, slack=bias)
    # negative control: silu without the 1 / 0.596 has magnitude 0.356
    assert not within(np.asarray(nn.silu(jnp.asarray(z))) ** 2, 1.0, slack=bias)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_mp_sum_has_unit_magnitude(t):
    a, b = normal(1, (N,)), normal(2, (N,))
    assert within(np.asarray(mp_sum(jnp.asarray(a), jnp.asarray(b), t)) ** 2, 1.0)
    # negative control: the plain lerp has magnitude (1 - t)^2 + t^2 (0.58, 0.5, 0.68)
    assert not within(((1 - t) * a + t * b) ** 2, 1.0)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_mp_cat_has_unit_magnitude_and_balances_by_t_whatever_the_widths(t):
    na, nb, rows = 3, 13, N // 16
    a, b = normal(3, (rows, na)), normal(4, (rows, nb))
    y = np.asarray(mp_cat(jnp.asarray(a), jnp.asarray(b), t))
    assert y.shape == (rows, na + nb)
    assert within(np.mean(y**2, axis=1), 1.0)
    # negative control: the weighted concatenation [(1 - t) a, t b] without C and 1 / sqrt(N)
    assert not within(np.mean(np.concatenate([(1 - t) * a, t * b], 1) ** 2, axis=1), 1.0)
    # b's share of the energy is t^2 / ((1 - t)^2 + t^2), independent of na and nb
    share = t**2 / ((1 - t) ** 2 + t**2)
    assert within(np.sum(y[:, na:] ** 2, axis=1) / (na + nb), share)
    # negative control: C [(1 - t) a, t b] without the 1 / sqrt(N) weights gives b the share
    # t^2 nb / ((1 - t)^2 na + t^2 nb)
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    unbalanced = np.concatenate([c * (1 - t) * a, c * t * b], 1)
    assert not within(np.sum(unbalanced[:, na:] ** 2, axis=1) / (na + nb), share)


@pytest.mark.parametrize("kernel,gain", [((), 1.0), ((1, 1), 1.0), ((3, 3), 1.0), ((3, 3), 0.5)])
def test_mp_conv_output_magnitude_is_gain_squared(kernel, gain):
    images, cin, cout = 256, 8, 4
    layer = MPConv(cout, kernel)
    x = jnp.asarray(normal(5, (images, 10, 10, cin)))
    # stored weights far from unit norm, as after training without forced normalisation
    w = 3.0 * np.asarray(jax.random.normal(jax.random.key(6), kernel + (cin, cout))) + 0.5
    y = np.asarray(layer.apply({"params": {"weight": jnp.asarray(w)}}, x, gain=gain))
    # interior pixels only: at the zero-padded border fewer taps see the input
    crop = slice(1, -1) if kernel == (3, 3) else slice(None)
    per_image = lambda out: np.mean(out[:, crop, crop] ** 2, axis=(1, 2, 3))  # noqa: E731
    assert within(per_image(y), gain**2)
    # negative control: the same convolution with the stored weight gain / sqrt(fan_in), not
    # normalised, has magnitude gain^2 ||w_out||^2 / fan_in (about 9.25 gain^2)
    fan_in = math.prod(kernel) * cin
    if kernel:
        raw = jax.lax.conv_general_dilated(x, jnp.asarray(w * gain / math.sqrt(fan_in)), (1, 1),
                                           "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
        raw = x @ jnp.asarray(w * gain / math.sqrt(fan_in))
    assert not within(per_image(np.asarray(raw)), gain**2)


def test_mp_fourier_features_have_unit_magnitude():
    channels = 4096
    c_noise = jnp.linspace(-2.0, 2.0, 9)
    y = np.asarray(MPFourier(channels, seed=3).apply({}, c_noise))
    assert y.shape == (9, channels)
    for row in y:  # over the random frequencies and phases, for each input
        assert within(row**2, 1.0)
        # negative control: cos without the sqrt(2) has magnitude 1/2
        assert not within((row / math.sqrt(2)) ** 2, 1.0)


def test_fourier_constants_follow_the_seed():
    freqs, phases = mp_layers.fourier_constants(8, seed=0)
    again, _ = mp_layers.fourier_constants(8, seed=0)
    other, _ = mp_layers.fourier_constants(8, seed=1)
    np.testing.assert_array_equal(freqs, again)
    assert not np.allclose(freqs, other)
    assert np.all((phases >= 0) & (phases < 2 * np.pi))


def test_pixel_norm_gives_every_pixel_unit_root_mean_square():
    x = 7.0 * jax.random.normal(jax.random.key(7), (2, 4, 4, 16)) + 3.0
    rms = jnp.sqrt(jnp.mean(pixel_norm(x) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-4)


def test_cosine_attention_ignores_the_input_magnitude_and_outputs_at_most_unit_rms():
    heads, c = 2, 8
    qkv = jax.random.normal(jax.random.key(8), (2, 4, 4, 3 * c))
    y = cosine_attention(qkv, heads)
    # the same up to normalize's eps (1e-4 against an RMS of 10 or 1000)
    np.testing.assert_allclose(cosine_attention(1000.0 * qkv, heads),
                               cosine_attention(10.0 * qkv, heads), atol=1e-4)
    # a convex combination of unit-RMS value vectors, per head
    rms = jnp.sqrt(jnp.mean(y.reshape(2, 16, heads, c // heads) ** 2, axis=-1))
    assert float(rms.max()) <= 1.0 + 1e-5
    # negative control: attention on the raw q, k, v depends on their magnitude
    raw = lambda t: jax.nn.dot_product_attention(  # noqa: E731
        *jnp.moveaxis(t.reshape(2, 16, heads, c // heads, 3), -1, 0))
    assert not np.allclose(raw(1000.0 * qkv), 100.0 * raw(10.0 * qkv), atol=1e-3)


def weight_rms(params):
    """Root mean square of each output channel of every MP weight, concatenated."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return np.concatenate([np.sqrt(np.mean(np.asarray(w) ** 2, axis=tuple(range(w.ndim - 1))))
                           for path, w in leaves if path[-1].key == "weight"])


class TwoLayers(nn.Module):
    """A 3x3 MPConv and a gained linear MPConv in nested modules, as in the U-Net's blocks."""

    @nn.compact
    def __call__(self, x):
        h = mp_silu(MPConv(6, (3, 3), name="conv")(x)).mean(axis=(1, 2))
        return Head(name="head")(h)


class Head(nn.Module):
    @nn.compact
    def __call__(self, h):
        return MPConv(2, (), name="linear")(h, gain=self.param("gain", nn.initializers.ones, ()))


def test_forced_weight_norm_restores_unit_norm_after_an_adam_step():
    model = TwoLayers()
    x = jax.random.normal(jax.random.key(9), (4, 6, 6, 3))
    target = jax.random.normal(jax.random.key(10), (4, 2))
    params = jax.jit(model.init)(jax.random.key(11), x)["params"]
    np.testing.assert_allclose(weight_rms(params), 1.0, atol=1e-3)  # initialised normalised

    loss = lambda p: jnp.sum((model.apply({"params": p}, x) - target) ** 2)  # noqa: E731
    optimizer = optax.adam(0.05)

    @jax.jit
    def adam_step(p):
        updates, _ = optimizer.update(jax.grad(loss)(p), optimizer.init(p), p)
        return optax.apply_updates(p, updates)

    stepped = adam_step(params)
    # negative control: Adam alone moves the norms off 1
    assert np.abs(weight_rms(stepped) - 1.0).max() > 1e-2
    normalized = force_weight_norm(stepped)
    # each output channel: stored weight of unit RMS (norm sqrt(fan_in)), so the effective
    # weight normalize(w) gain / sqrt(fan_in) has norm gain (eps 1e-4 aside)
    np.testing.assert_allclose(weight_rms(normalized), 1.0, atol=1e-3)
    # the gain is left as Adam set it, and the forward pass (which normalises) is unchanged
    gain = lambda p: float(p["head"]["gain"])  # noqa: E731
    assert gain(normalized) == gain(stepped) != gain(params)
    np.testing.assert_allclose(model.apply({"params": normalized}, x),
                               model.apply({"params": stepped}, x), rtol=1e-3, atol=1e-5)
