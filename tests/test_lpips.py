"""LPIPS-VGG16 (v0.1): the distance's properties, weight files and conversion, and the formula
checked against numpy on the first tap. No pretrained weights are needed: the tests use random
weights of the right shapes (non-negative lin weights) on 32x32 network inputs."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.weight_files import unflatten_variables
from diffusion_jax.losses import lpips

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, BATCH = 32, 2
# params are a traced argument, so every test at (BATCH, SIZE, SIZE, 3) shares one compilation
_distance = jax.jit(lpips.lpips_distance, static_argnames=("resize_to", "dtype"))


def _random_params(seed=0, zero_lins=()):
    """He-normal convolutions, small biases, lin weights uniform in [0, 2 / C), drawn in numpy."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in lpips.param_shapes().items():
        if "/lin" in name:
            value = rng.uniform(0, 2.0 / shape[2], shape)
            if any(f"/lin{i}/" in name for i in zero_lins):
                value = np.zeros(shape)
        elif name.endswith("kernel"):
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        else:
            value = 0.05 * rng.normal(size=shape)
        flat[name] = value.astype(np.float32)
    return unflatten_variables(flat)["params"]


def _images(seed=0, shape=(BATCH, SIZE, SIZE, 3)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _converter():
    spec = importlib.util.spec_from_file_location(
        "convert_lpips_weights", os.path.join(_ROOT, "tools", "convert_lpips_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_distance_is_zero_on_itself_symmetric_nonnegative_and_grows_with_the_perturbation():
    params = _random_params()
    x = _images(0)
    direction = _images(1)
    d_self = _distance(params, x, x, resize_to=None)
    assert d_self.shape == (BATCH,) and d_self.dtype == jnp.float32
    np.testing.assert_allclose(d_self, 0.0, atol=1e-7)
    distances = []
    for amplitude in (0.05, 0.2, 0.8):
        y = np.clip(x + amplitude * direction, -1, 1)
        d_xy, d_yx = _distance(params, x, y, resize_to=None), _distance(params, y, x, resize_to=None)
        np.testing.assert_allclose(d_xy, d_yx, rtol=1e-5, atol=1e-8)
        assert np.all(np.asarray(d_xy) > 0)
        distances.append(np.asarray(d_xy))
    assert np.all(distances[0] < distances[1]) and np.all(distances[1] < distances[2])


@pytest.mark.slow
def test_output_shape_for_grayscale_8x8_and_rgb_32x32():
    params = _random_params()
    fn = lpips.lpips_distance_fn(params, resize_to=SIZE)  # 8x8 -> bilinear 32x32
    gray_x, gray_y = _images(0, (3, 8, 8, 1)), _images(1, (3, 8, 8, 1))
    d_gray = jax.jit(lambda f, a, b: f(a, b))(fn, gray_x, gray_y)  # fn's weights traced
    assert d_gray.shape == (3,) and d_gray.dtype == jnp.float32 and np.all(np.asarray(d_gray) > 0)
    # grayscale is the same image repeated to three channels
    np.testing.assert_array_equal(lpips.preprocess(gray_x, resize_to=SIZE),
                                  lpips.preprocess(np.repeat(gray_x, 3, -1), resize_to=SIZE))
    d_rgb = _distance(params, _images(0), _images(1), resize_to=None)
    assert d_rgb.shape == (BATCH,) and np.all(np.isfinite(d_rgb))
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips.lpips_distance_fn(params, resize_to=None)(gray_x, gray_y)


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = lpips.LPIPS(dtype=jnp.bfloat16)
    x = jnp.zeros((2, SIZE, SIZE, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, variables, x, x).dtype == jnp.float32
    flat = lpips.param_shapes()
    assert flat["params/features/conv1_1/kernel"] == (3, 3, 3, 64)
    assert flat["params/features/conv5_3/kernel"] == (3, 3, 512, 512)
    assert [flat[f"params/lin{i}/kernel"] for i in range(5)] == [(1, 1, c, 1) for c in
                                                                 (64, 128, 256, 512, 512)]
    assert sum(int(np.prod(s)) for s in flat.values()) == 14_714_688 + 1472  # VGG-16 trunk + lins


def test_saved_and_loaded_random_weights_give_the_same_distances(tmp_path):
    params = _random_params(3)
    path = tmp_path / "lpips.npz"
    lpips.save_lpips_params(path, params)
    loaded = lpips.load_lpips_params(str(path))
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    x, y = _images(0), _images(1)
    np.testing.assert_array_equal(_distance(loaded, x, y, resize_to=None),
                                  _distance(params, x, y, resize_to=None))


def test_converter_maps_torch_state_dicts_onto_the_flax_tree(tmp_path):
    converter = _converter()
    rng = np.random.default_rng(0)
    vgg, lin = {}, {}
    in_channels = 3
    names = iter(lpips.CONV_NAMES)
    for index in converter.VGG16_CONV_INDICES:
        out_channels = int(lpips.param_shapes()[f"params/features/{next(names)}/bias"][0])
        vgg[f"features.{index}.weight"] = rng.normal(size=(out_channels, in_channels, 3, 3)) * 0.05
        vgg[f"features.{index}.bias"] = rng.normal(size=(out_channels,)) * 0.05
        in_channels = out_channels
    vgg["classifier.0.weight"] = np.zeros((4, 5))  # ignored
    for i, c in enumerate(lpips.TAP_CHANNELS):
        lin[f"lin{i}.model.1.weight"] = rng.uniform(0, 0.01, (1, c, 1, 1))
    flat = converter.convert_state_dicts(vgg, lin)
    assert {k: v.shape for k, v in flat.items()} == lpips.param_shapes()
    assert all(v.dtype == np.float32 for v in flat.values())
    # torch weight[o, i, kh, kw] == flax kernel[kh, kw, i, o]
    k11 = flat["params/features/conv1_1/kernel"]
    assert k11[0, 2, 1, 5] == np.float32(vgg["features.0.weight"][5, 1, 0, 2])
    np.testing.assert_array_equal(k11, vgg["features.0.weight"].astype(np.float32).transpose(2, 3, 1, 0))
    k42 = flat["params/features/conv4_2/kernel"]
    assert k42[2, 0, 17, 300] == np.float32(vgg["features.19.weight"][300, 17, 2, 0])
    np.testing.assert_array_equal(flat["params/features/conv5_3/bias"],
                                  vgg["features.28.bias"].astype(np.float32))
    np.testing.assert_array_equal(flat["params/lin3/kernel"][0, 0, :, 0],
                                  lin["lin3.model.1.weight"][0, :, 0, 0].astype(np.float32))
    path = tmp_path / "converted.npz"
    converter.write_npz(path, flat)
    loaded = lpips.load_lpips_params(str(path))
    np.testing.assert_array_equal(loaded["features"]["conv4_2"]["kernel"], k42)
    d = _distance(loaded, _images(0), _images(1), resize_to=None)
    assert np.all(np.isfinite(d)) and np.all(np.asarray(d) > 0)
    with pytest.raises(ValueError, match="lin4.model.1.weight"):
        converter.convert_state_dicts(vgg, {k: v for k, v in lin.items() if "lin4" not in k})


def test_missing_or_mismatched_weights_raise_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="consistency.lpips_weights") as error:
        lpips.load_lpips_params(str(tmp_path / "absent.npz"))
    assert "\n" not in str(error.value) and "convert_lpips_weights.py" in str(error.value)
    with pytest.raises(ConfigError, match="consistency.lpips_weights"):
        lpips.load_lpips_params(None)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{"params/features/conv1_1/kernel": np.zeros((3, 3, 3, 64), np.float32)})
    with pytest.raises(ConfigError, match="consistency.lpips_weights.*missing"):
        lpips.load_lpips_params(str(wrong))
    params = _random_params()
    params["lin2"]["kernel"] = -params["lin2"]["kernel"]
    negative = tmp_path / "negative.npz"
    lpips.save_lpips_params(negative, params)
    with pytest.raises(ConfigError, match="negative"):
        lpips.load_lpips_params(str(negative))


def _numpy_conv3x3_relu(x, kernel, bias):
    """3x3 convolution, zero padding 1, HWIO kernel, then ReLU, in float64."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
    return np.maximum(out + bias, 0.0)


def test_first_tap_matches_a_numpy_reimplementation_of_the_formula():
    """With lin1..lin4 zero the distance is the relu1_2 term alone, written out from the
    definitions: scaling layer, conv1_1 + ReLU, conv1_2 + ReLU, f / (||f|| + 1e-10) over
    channels, squared difference, weighted channel sum (lin0), mean over positions."""
    params = _random_params(5, zero_lins=(1, 2, 3, 4))
    feats = jax.tree.map(lambda a: np.asarray(a, np.float64), params["features"])
    w = np.asarray(params["lin0"]["kernel"], np.float64)[0, 0, :, 0]
    x, y = _images(2), _images(3)

    def relu1_2(images):
        scaled = (images.astype(np.float64) - np.array([-.030, -.088, -.188])) / np.array(
            [.458, .448, .450])
        h = _numpy_conv3x3_relu(scaled, feats["conv1_1"]["kernel"], feats["conv1_1"]["bias"])
        return _numpy_conv3x3_relu(h, feats["conv1_2"]["kernel"], feats["conv1_2"]["bias"])

    def unit(f):
        return f / (np.sqrt(np.sum(f ** 2, axis=-1, keepdims=True)) + 1e-10)

    expected = np.mean(((unit(relu1_2(x)) - unit(relu1_2(y))) ** 2) @ w, axis=(1, 2))
    np.testing.assert_allclose(_distance(params, x, y, resize_to=None), expected, rtol=2e-4)
    # without the normalisation (or with the lin weights ignored) it would be far off
    unnormalised = np.mean(((relu1_2(x) - relu1_2(y)) ** 2) @ w, axis=(1, 2))
    unweighted = np.mean(np.sum((unit(relu1_2(x)) - unit(relu1_2(y))) ** 2, -1), axis=(1, 2))
    assert not np.allclose(unnormalised, expected, rtol=0.1)
    assert not np.allclose(unweighted, expected, rtol=0.1)


def test_channel_normalisation_has_unit_norm_and_finite_gradient_at_zero():
    f = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 8)), jnp.float32)
    np.testing.assert_allclose(jnp.linalg.norm(lpips.normalize_channels(f), axis=-1), 1.0,
                               rtol=1e-6)
    zeros = jnp.zeros((1, 2, 2, 8))
    np.testing.assert_array_equal(lpips.normalize_channels(zeros), 0.0)
    grad = jax.grad(lambda g: jnp.sum(lpips.normalize_channels(g) ** 2))(zeros)
    assert np.all(np.isfinite(grad))


def test_resize_is_half_pixel_bilinear_without_antialiasing():
    """As torch's F.interpolate(mode='bilinear', align_corners=False): output j samples the
    input at (j + 1/2) n / size - 1/2, clamped to the edges, for up- and downsampling."""
    values = np.random.default_rng(0).uniform(-1, 1, 40)
    ramp = jnp.asarray(values)[None, None, :, None] * jnp.ones((1, 20, 1, 1))  # grayscale
    for size in (64, 16):
        out = np.asarray(lpips.preprocess(ramp, resize_to=size))
        assert out.shape == (1, size, size, 3)
        n = len(values)
        position = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n - 1)
        expected = values[low] + (values[high] - values[low]) * (position - low)
        np.testing.assert_allclose(out[0, 0, :, 1], expected, atol=1e-6)
        np.testing.assert_allclose(out[0, 0], out[0, -1], atol=1e-6)  # rows stay constant
