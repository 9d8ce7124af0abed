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

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _variable_shapes(size=inception.INPUT_SIZE):
    return jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))


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

    return jax.tree_util.tree_map_with_path(draw, _variable_shapes())


def test_network_maps_299_images_to_pool3_and_1008_logits():
    variables = _variable_shapes()
    pool3, logits = jax.eval_shape(inception.FIDInceptionV3().apply, variables,
                                   jnp.zeros((2, 299, 299, 3)))
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    flat = {"/".join(str(k.key) for k in p): leaf.shape
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
    # torchvision names and shapes of the 2015-12-05 graph, spot-checked block by block
    assert flat["params/Conv2d_1a_3x3/conv/kernel"] == (3, 3, 3, 32)
    assert flat["params/Mixed_5b/branch_pool/conv/kernel"] == (1, 1, 192, 32)
    assert flat["params/Mixed_6e/branch7x7dbl_5/conv/kernel"] == (1, 7, 192, 192)
    assert flat["params/Mixed_7a/branch3x3_2/conv/kernel"] == (3, 3, 192, 320)
    assert flat["params/Mixed_7c/branch3x3dbl_1/conv/kernel"] == (1, 1, 2048, 448)
    assert flat["batch_stats/Mixed_7c/branch_pool/bn/var"] == (192,)
    assert flat["params/fc/kernel"] == (2048, 1008)
    assert sum(int(np.prod(s)) for s in flat.values()) == 23_885_392


def test_random_weights_survive_a_save_load_round_trip(tmp_path):
    variables = _random_variables()
    path = tmp_path / "inception.npz"
    inception.save_inception_params(path, variables)
    loaded = inception.load_inception_params(path)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_weights_raise_naming_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.inception_weights"):
        inception.load_inception_params(str(tmp_path / "absent.npz"))


def test_forward_pass_is_finite_on_a_small_input():
    pool3, logits = jax.jit(inception.FIDInceptionV3().apply)(
        _random_variables(), jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 75, 75, 3)),
                                         jnp.float32))
    assert pool3.shape == (1, 2048) and logits.shape == (1, 1008)
    assert np.all(np.isfinite(pool3)) and np.all(np.asarray(pool3) >= 0)  # mean of ReLUs


def test_preprocess_quantises_resizes_and_scales():
    images = jnp.concatenate([-jnp.ones((1, 8, 8, 1)), jnp.ones((1, 8, 8, 1)),
                              jnp.full((1, 8, 8, 1), 0.001)])
    out = inception.preprocess(images)
    assert out.shape == (3, 299, 299, 3)
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[2], 128 / 255 * 2 - 1, atol=1e-6)  # round(127.6) = 128


def test_preprocess_resize_is_bilinear_with_half_pixel_centres():
    ramp = jnp.linspace(-1, 1, 4)[None, None, :, None] * jnp.ones((1, 4, 1, 3))
    out = np.asarray(inception.preprocess(ramp, size=8))[0, 0, :, 0]
    quantised = np.round(127.5 * (np.linspace(-1, 1, 4) + 1))  # 0, 85, 170, 255
    # align_corners=False: output pixel j samples input position (j + 0.5) / 2 - 0.5, clamped
    positions = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    expected = np.interp(positions, np.arange(4), quantised) / 255 * 2 - 1
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_converter_maps_a_torch_state_dict_onto_the_flax_tree():
    spec = importlib.util.spec_from_file_location(
        "convert_inception_weights", os.path.join(_ROOT, "tools", "convert_inception_weights.py"))
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    flat = inception.flatten_variables(_random_variables())
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
