"""Our networks against the original implementations, on the outputs they computed.

`tools/make_reference_outputs.py` ran diffusers' `UNet2DModel`, EDM's `EDMPrecond(SongUNet)`,
pytorch-fid's `InceptionV3` and the `lpips` package on random weights with non-trivial
statistics and saved inputs and outputs under `tests/data/`; here the same weights are ported
onto our modules (through the importers where there is one) and must give the same outputs to
float32 rounding. Each comparison has a negative control: one tensor mapped the wrong way
(q and k swapped, EDM's interleaved q/k/v read as contiguous thirds) or the other protocol,
which the same check rejects.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import DATA, load_tool, max_relative_error, reference_state_dict
from diffusion_jax import builders, preconditioning
from diffusion_jax.config_files import load_config
from diffusion_jax.importers import diffusers_unet, edm, torch_files
from diffusion_jax.models.layers import Downsample
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.model_size import count_params
from diffusion_jax.models.unet import UNet

TOLERANCE = 2e-5  # relative to the output's largest entry; measured 1e-6 to 5e-6


def _unet_output(kwargs, params, fixture):
    return jax.jit(UNet(**kwargs).apply)({"params": params}, fixture["x"], fixture["t"])


@pytest.mark.parametrize("directory", ["diffusers_unet_tiny", "diffusers_unet_tiny_bin"])
def test_ddpm_unet_equals_diffusers_unet2dmodel(directory):
    """A tiny UNet2DModel in google/ddpm-cifar10-32's layout, saved by `save_pretrained` as
    .safetensors and as .bin, imported: epsilon(x, t) equal to float32 rounding."""
    path = os.path.join(DATA, directory)
    with open(os.path.join(path, "config.json")) as f:
        kwargs = diffusers_unet.model_kwargs(json.load(f))
    params = diffusers_unet.params_from_state_dict(
        torch_files.load_state_dict(diffusers_unet.weight_file(path)), kwargs, 32)
    fixture = np.load(os.path.join(DATA, "ddpm_unet_tiny.npz"))
    assert max_relative_error(_unet_output(kwargs, params, fixture), fixture["eps"]) < TOLERANCE
    # negative control: q and k of one attention block swapped; the same check rejects it
    qkv = params["AttnBlock_0"]["qkv"]
    q, k, v = np.split(qkv["kernel"], 3, axis=1)
    qkv["kernel"] = np.concatenate([k, q, v], axis=1)
    assert max_relative_error(_unet_output(kwargs, params, fixture), fixture["eps"]) > 100 * TOLERANCE


def test_stride_two_downsampling_pads_bottom_and_right_only():
    """TensorFlow 'SAME' for an even size (Ho et al.; diffusers downsample_padding=0): output
    (i, j) sees inputs 2i..2i+2, so a kernel that keeps only its top-left tap returns
    x[::2, ::2]; symmetric padding would return x[2i - 1, 2j - 1]."""
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
    kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0].set(1.0)
    params = {"Conv_0": {"kernel": kernel, "bias": jnp.zeros((1,))}}
    out = Downsample().apply({"params": params}, x)
    np.testing.assert_array_equal(out, x[:, ::2, ::2])


@pytest.mark.slow
def test_paper_size_ddpm_unet_equals_diffusers():
    """google/ddpm-cifar10-32's configuration (35,746,307 parameters) with seeded weights."""
    fixture = np.load(os.path.join(DATA, "ddpm_unet_cifar10.npz"))
    kwargs = diffusers_unet.model_kwargs(json.loads(str(fixture["config"])))
    # configs/ddpm/cifar10.py's network; no num_groups: the default rule gives 32 everywhere
    assert kwargs == dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                          dropout=0.0, resamp_with_conv=True)
    params = diffusers_unet.params_from_state_dict(reference_state_dict(fixture), kwargs, 32)
    assert count_params(params) == 35_746_307
    assert max_relative_error(_unet_output(kwargs, params, fixture), fixture["eps"]) < TOLERANCE


def _edm_denoiser(config):
    """jitted (params, x, sigma, labels) -> D(x, sigma[, labels]) of the config's method."""
    method = builders.build_method(config)
    return jax.jit(lambda p, x, sigma, labels: method.conditional_denoiser(p)(x, sigma, labels))


@pytest.mark.parametrize("arch, snapshot, base", [
    ("ddpmpp", "edm_ddpmpp_tiny.pkl", "configs/edm/cifar10_uncond.py"),
    ("ncsnpp", "edm_ncsnpp_cond_tiny.pkl", "configs/edm/cifar10_cond.py")])
def test_edm_songunet_with_edm_preconditioning_equals_edm(arch, snapshot, base):
    """EDM's tiny DDPM++ (unconditional) and NCSN++ (10 classes) snapshots, pickled as EDM's
    training loop does, imported: D(x, sigma[, label]) equal to float32 rounding, and for the
    conditional net D(x, sigma) without a label equal to EDM's output for the all-zero label."""
    fixture = np.load(os.path.join(DATA, "edm_tiny.npz"))
    config, params = edm.import_network(os.path.join(DATA, snapshot), load_config(base))
    labels = jnp.asarray(fixture["labels"]) if arch == "ncsnpp" else None
    D = _edm_denoiser(config)
    out = D(params, fixture["x"], fixture["sigma"], labels)
    assert max_relative_error(out, fixture[f"{arch}_D"]) < TOLERANCE
    if arch == "ncsnpp":
        null = D(params, fixture["x"], fixture["sigma"], None)
        assert max_relative_error(null, fixture[f"{arch}_D_null"]) < TOLERANCE
    # negative control: EDM's interleaved qkv channels read as contiguous q | k | v thirds
    state = edm.module_state_dict(edm.load_snapshot(os.path.join(DATA, snapshot))["ema"])
    name = next(n for n in state if n.endswith("qkv.weight"))
    c = state[name].shape[1]
    state[name] = state[name].reshape(3, c, c, 1, 1).transpose(1, 0, 2, 3, 4).reshape(3 * c, c, 1, 1)
    wrong = edm.params_from_state_dict(state, edm.architecture(state))
    assert max_relative_error(D(wrong, fixture["x"], fixture["sigma"], labels),
                              fixture[f"{arch}_D"]) > 100 * TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("arch, count", [("ddpmpp", 55_732_739), ("ncsnpp", 56_398_467)])
def test_paper_size_edm_networks_equal_edm(arch, count):
    """EDM's CIFAR-10 DDPM++ and NCSN++ (train.py --arch, augment_dim 9, the NCSN++ with 10
    classes) with seeded weights, from a state dict: D(x, sigma[, label]). Parameters: EDM's
    55.73M DDPM++ and 56.40M NCSN++ without the augmentation-label layer (unused when
    sampling), the NCSN++ with its 11 x 256 label table (10 classes and the null label)."""
    fixture = np.load(os.path.join(DATA, f"edm_{arch}_cifar10.npz"))
    state = reference_state_dict(fixture)
    state.update({n: np.asarray(v, np.float32) for n, v in json.loads(str(fixture["buffers"])).items()})
    arch_settings = edm.architecture(state)
    label_dim = arch_settings["label_dim"]
    kwargs = edm.model_kwargs(arch_settings, dropout=0.13)
    params = edm.params_from_state_dict(state, arch_settings)
    assert count_params(params) == count
    model = NCSNpp(**kwargs, num_classes=label_dim)

    def denoise(p, x, sigma, labels):
        F = lambda x, c_noise, cond=None: model.apply({"params": p}, x, c_noise, cond)  # noqa: E731
        return preconditioning.precondition(F, preconditioning.EDMPrecond(0.5))(x, sigma, labels)

    labels = jnp.asarray(fixture["labels"]) if label_dim else None
    out = jax.jit(denoise)(params, fixture["x"], fixture["sigma"], labels)
    assert max_relative_error(out, fixture["D"]) < TOLERANCE


@pytest.fixture(scope="module")
def fid_inception():
    """pytorch-fid's seeded weights and calibrated BatchNorm statistics as our variables."""
    from diffusion_jax.evaluation import inception

    fixture = np.load(os.path.join(DATA, "inception_pytorch_fid.npz"))
    state = reference_state_dict(fixture)
    offset = 0
    for name in fixture["bn_names"]:
        channels = state[f"{name}.weight"].shape[0]
        state[f"{name}.running_mean"] = fixture["running_mean"][offset:offset + channels]
        state[f"{name}.running_var"] = fixture["running_var"][offset:offset + channels]
        offset += channels
    flat = load_tool("convert_inception_weights").convert_state_dict(state)
    variables = {}
    for key, value in flat.items():
        node = variables
        *path, leaf = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return inception, fixture, variables


@pytest.mark.slow
def test_fid_inception_pool3_and_logits_equal_pytorch_fid(fid_inception):
    """A 299x299 network input: pool3 (2048) and the 1008 logits with the bias."""
    inception, fixture, variables = fid_inception
    x = load_tool("reference_weights").images(int(fixture["seed"]), "inception/x", (2, 299, 299, 3))
    pool3, logits = jax.jit(inception.FIDInceptionV3(output_bias=True).apply)(variables, x)
    assert max_relative_error(pool3, fixture["pool3"]) < TOLERANCE
    assert max_relative_error(logits, fixture["logits"]) < TOLERANCE


@pytest.mark.slow
def test_fid_feature_path_from_uint8_32x32_equals_pytorch_fids_resize(fid_inception):
    """uint8 32x32 images through our whole feature path under `pytorch_fid` (quantise,
    half-pixel bilinear resize to 299, 2 v / 255 - 1) equal pytorch-fid's `resize_input=True,
    normalize_input=True` path on the same images; the `tensorflow` protocol (no half-pixel
    centres, (v - 128) / 128), the negative control, does not."""
    inception, fixture, variables = fid_inception
    images = fixture["images_uint8"].astype(np.float32) / 127.5 - 1.0
    model = inception.FIDInceptionV3()
    features = jax.jit(lambda v, x, protocol: model.apply(v, inception.preprocess(x, protocol))[0],
                       static_argnums=2)
    assert max_relative_error(features(variables, images, "pytorch_fid"),
                              fixture["pool3_uint8"]) < TOLERANCE
    assert max_relative_error(features(variables, images, "tensorflow"),
                              fixture["pool3_uint8"]) > 100 * TOLERANCE


def test_lpips_equals_the_lpips_package():
    """LPIPS-VGG v0.1 with the package's shipped lin weights on a seeded VGG-16, at 32x32 and
    resized bilinearly to 64x64 (ours: `jax.image.resize`; theirs: `F.interpolate`)."""
    from diffusion_jax.losses import lpips

    fixture = np.load(os.path.join(DATA, "lpips_vgg.npz"))
    lin = {f"lin{i}.model.1.weight": fixture[f"lin{i}.model.1.weight"] for i in range(5)}
    flat = load_tool("convert_lpips_weights").convert_state_dicts(reference_state_dict(fixture), lin)
    params = {}
    for key, value in flat.items():
        node = params
        *path, leaf = key.split("/")[1:]
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    distance = jax.jit(lpips.lpips_distance, static_argnums=3)
    x, y = fixture["x"], fixture["y"]
    np.testing.assert_allclose(distance(params, x, y, None), fixture["d32"], rtol=1e-5)
    np.testing.assert_allclose(distance(params, x, y, 64), fixture["d64"], rtol=1e-5)
    # negative control: the channels of one lin layer in reverse order; the same check rejects it
    params["lin1"]["kernel"] = params["lin1"]["kernel"][:, :, ::-1]
    assert not np.allclose(distance(params, x, y, None), fixture["d32"], rtol=1e-3)
