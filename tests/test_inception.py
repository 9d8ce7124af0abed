"""The Inception-v3 FID network: architecture, preprocessing, weight files and conversion.
No pretrained weights are needed: the tests use random weights of the right shapes."""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.evaluation import inception
from diffusion_jax.weight_files import flatten_variables

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _variable_shapes():
    return jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3)))


def _random_variables(seed=0):
    """Random weights with the network's shapes, drawn in numpy (no traced init)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree.map_with_path(draw, _variable_shapes())


def test_network_maps_299_images_to_pool3_and_1008_logits():
    variables = _variable_shapes()
    pool3, logits = jax.eval_shape(inception.FIDInceptionV3().apply, variables,
                                   jnp.zeros((2, 299, 299, 3)))
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    flat = {"/".join(str(k.key) for k in p): leaf.shape
            for p, leaf in jax.tree.flatten_with_path(variables)[0]}
    # torchvision names and shapes of the 2015-12-05 graph, spot-checked block by block
    assert flat["params/Conv2d_1a_3x3/conv/kernel"] == (3, 3, 3, 32)
    assert flat["params/Mixed_5b/branch_pool/conv/kernel"] == (1, 1, 192, 32)
    assert flat["params/Mixed_6e/branch7x7dbl_5/conv/kernel"] == (1, 7, 192, 192)
    assert flat["params/Mixed_7a/branch3x3_2/conv/kernel"] == (3, 3, 192, 320)
    assert flat["params/Mixed_7c/branch3x3dbl_1/conv/kernel"] == (1, 1, 2048, 448)
    assert flat["batch_stats/Mixed_7c/branch_pool/bn/var"] == (192,)
    assert flat["params/fc/kernel"] == (2048, 1008) and flat["params/fc/bias"] == (1008,)
    assert sum(int(np.prod(s)) for s in flat.values()) == 23_885_392


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = inception.FIDInceptionV3(dtype=jnp.bfloat16)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    pool3, logits = jax.eval_shape(model.apply, variables, jnp.zeros((2, 75, 75, 3)))
    assert pool3.dtype == jnp.float32 and logits.dtype == jnp.float32


@pytest.mark.slow
def test_saved_and_loaded_random_weights_give_the_same_features(tmp_path):
    variables = _random_variables()
    path = tmp_path / "inception.npz"
    inception.save_inception_params(path, variables)
    loaded = inception.load_inception_params(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    apply = jax.jit(inception.FIDInceptionV3().apply)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 75, 75, 3)), jnp.float32)
    pool3, logits = apply(variables, x)
    pool3_loaded, logits_loaded = apply(loaded, x)
    assert pool3.shape == (1, 2048) and logits.shape == (1, 1008)
    assert np.all(np.isfinite(pool3)) and np.all(np.asarray(pool3) >= 0)  # mean of ReLUs
    np.testing.assert_array_equal(pool3_loaded, pool3)
    np.testing.assert_array_equal(logits_loaded, logits)


def test_output_bias_is_left_out_of_the_logits_unless_asked_for():
    variables = {"params": {"kernel": jnp.ones((2048, 1008)), "bias": jnp.full((1008,), 5.0)}}
    pool3 = jnp.ones((1, 2048)) / 2048
    np.testing.assert_allclose(inception.Classifier().apply(variables, pool3), 1.0, rtol=1e-6)
    np.testing.assert_allclose(inception.Classifier(output_bias=True).apply(variables, pool3), 6.0,
                               rtol=1e-6)


def test_missing_weights_raise_naming_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.inception_weights"):
        inception.load_inception_params(str(tmp_path / "absent.npz"))


def test_preprocess_quantises_to_uint8_levels_and_scales_as_the_graph_does():
    images = jnp.concatenate([-jnp.ones((1, 8, 8, 1)), jnp.ones((1, 8, 8, 1)),
                              jnp.full((1, 8, 8, 1), 0.001), jnp.full((1, 8, 8, 1), 3.0)])
    tf_input = inception.preprocess(images)
    assert tf_input.shape == (4, 299, 299, 3)
    np.testing.assert_allclose(tf_input[:, 100, 100, 0], np.array([0, 255, 128, 255]) / 128 - 1,
                               atol=1e-6)  # round(127.6) = 128; 3.0 clips to 255
    torch_input = inception.preprocess(images, protocol="pytorch_fid")
    np.testing.assert_allclose(torch_input[:, 100, 100, 0], np.array([0, 255, 128, 255]) / 127.5 - 1,
                               atol=1e-6)
    with pytest.raises(ValueError, match="protocol"):
        inception.preprocess(images, protocol="clean")


def _reference_resize_1d(values, size, half_pixel_centers):
    """Bilinear resampling written from the definitions: TensorFlow 1 `ResizeBilinear`
    (align_corners=False) samples input position j n / size; `F.interpolate(align_corners=False)`
    samples (j + 1/2) n / size - 1/2; both clamp at the borders."""
    n = len(values)
    out = []
    for j in range(size):
        position = (j + 0.5) * n / size - 0.5 if half_pixel_centers else j * n / size
        position = min(max(position, 0.0), n - 1.0)
        low = int(np.floor(position))
        high = min(low + 1, n - 1)
        out.append(values[low] + (values[high] - values[low]) * (position - low))
    return np.array(out)


@pytest.mark.parametrize("protocol, half_pixel_centers, scale",
                         [("tensorflow", False, lambda v: (v - 128) / 128),
                          ("pytorch_fid", True, lambda v: v / 255 * 2 - 1)])
def test_preprocess_resize_follows_the_protocols_sampling_grid(protocol, half_pixel_centers, scale):
    levels = np.array([0.0, 85.0, 170.0, 255.0, 40.0])
    ramp = jnp.asarray(levels / 127.5 - 1)[None, None, :, None] * jnp.ones((1, 3, 1, 3))
    for size in (13, 3):  # up- and downsampling
        out = np.asarray(inception.preprocess(ramp, protocol=protocol, size=size))
        expected = scale(_reference_resize_1d(levels, size, half_pixel_centers))
        np.testing.assert_allclose(out[0, 1, :, 2], expected, atol=1e-6)
        np.testing.assert_allclose(out[0, 0], out[0, -1], atol=1e-6)  # rows were constant


def test_tensorflow_resize_of_a_ramp_is_the_closed_form_of_the_2015_graph():
    """The 2015 graph's `ResizeBilinear` (TensorFlow 1, align_corners=False, no half-pixel
    centres) samples output pixel j at input position j n / size, clamped to n - 1, and is
    exact on a linear ramp v_i = a i + b: out_j = a min(j n / size, n - 1) + b, from 32 to 299
    as FID resizes CIFAR-10. Negative control: the half-pixel grid of `pytorch_fid`,
    a clip((j + 1/2) n / size - 1/2, 0, n - 1) + b, differs from it by up to a / 2 and fails
    the same check."""
    n, a, b = 32, 7.0, 20.0  # levels 20 .. 237, integers, so the uint8 quantisation keeps them
    ramp = jnp.asarray((a * np.arange(n) + b) / 127.5 - 1)[None, :, None, None] * jnp.ones((1, 1, 2, 3))
    j = np.arange(inception.INPUT_SIZE)
    legacy = a * np.minimum(j * n / inception.INPUT_SIZE, n - 1) + b
    out = np.asarray(inception.preprocess(ramp))[0, :, 0, 0]
    np.testing.assert_allclose(out, (legacy - 128) / 128, atol=1e-5)
    half_pixel = np.asarray(inception.preprocess(ramp, protocol="pytorch_fid"))[0, :, 0, 0]
    assert np.max(np.abs((half_pixel + 1) * 127.5 - legacy)) > 3.0


def test_tensorflow_resize_doubling_keeps_even_pixels_and_averages_odd_ones():
    """Upsampling n -> 2n on the legacy grid (input position j / 2): out_{2k} = v_k,
    out_{2k+1} = (v_k + v_{k+1}) / 2, and the last pixel repeats v_{n-1}; the half-pixel grid
    (position j / 2 - 1/4) would mix 1/4 and 3/4 instead."""
    v = np.array([0.0, 200.0, 40.0, 255.0])
    images = jnp.asarray(v / 127.5 - 1)[None, None, :, None] * jnp.ones((1, 1, 1, 3))
    out = np.asarray(inception.preprocess(images, size=8))[0, 0, :, 0] * 128 + 128
    np.testing.assert_allclose(out, [0, 100, 200, 120, 40, 147.5, 255, 255], atol=1e-4)


def test_converter_maps_a_torch_state_dict_onto_the_flax_tree():
    spec = importlib.util.spec_from_file_location(
        "convert_inception_weights", os.path.join(_ROOT, "tools", "convert_inception_weights.py"))
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    flat = flatten_variables(_random_variables())
    state_dict = {"Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(0)}
    for name, value in flat.items():
        collection, *modules, leaf = name.split("/")
        torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias",
                      "mean": "running_mean", "var": "running_var"}[leaf]
        if leaf == "kernel":
            value = value.T if modules == ["fc"] else value.transpose(3, 2, 0, 1)
        state_dict[".".join(modules + [torch_leaf])] = value
    converted = converter.convert_state_dict(state_dict)
    assert converted.keys() == flat.keys()
    for name in flat:
        np.testing.assert_array_equal(converted[name], flat[name])


@pytest.mark.slow
@pytest.mark.devices(8)
def test_feature_fn_preprocesses_and_shards_a_batch_over_the_mesh(tmp_path):
    from diffusion_jax.parallel import make_mesh

    variables = _random_variables()
    path = tmp_path / "inception.npz"
    inception.save_inception_params(path, variables)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    devices = len(jax.devices())
    pool3, logits = inception.inception_feature_fn(path, batch_size=devices, mesh=make_mesh())(images)
    expected = jax.jit(inception.FIDInceptionV3().apply)(variables, inception.preprocess(images))
    assert pool3.shape == (3, 2048) and logits.shape == (3, 1008)
    np.testing.assert_allclose(pool3, expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, expected[1], rtol=1e-4, atol=1e-4)
