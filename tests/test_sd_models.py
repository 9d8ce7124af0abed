"""Stable Diffusion's networks (U-Net, CLIP text encoder, VAE) imported from released-format
files equal the original implementations on the same inputs.

The fixtures (tools/make_sd_fixtures.py, run with torch on CPU) are tiny random SD 1.5- and SD
2.1-shaped networks saved by diffusers' / transformers' `save_pretrained` (`tests/data/sd_tiny/
sd15`, `sd21`), single-file checkpoints written from Stability's original LDM modules and
OpenCLIP, and the outputs of those implementations. Float32 outputs agree to at most 6.4e-6
(max abs, on outputs of magnitude ~1-3; measured numbers beside each check); the tolerance
ATOL = 2e-5 is float32 rounding through some 60 layers, while a mis-mapped or mis-transposed
tensor moves outputs by O(1).
"""
import functools
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.importers import stable_diffusion as sdi
from diffusion_jax.importers.stable_diffusion_configs import RELEASED
from diffusion_jax.models.clip_text import CLIPTextEncoder
from diffusion_jax.models.sd_unet import SDUNet
from diffusion_jax.models.vae import AutoencoderKL

DATA = os.path.join(os.path.dirname(__file__), "data", "sd_tiny")
ATOL = 2e-5
VERSIONS = ["sd15", "sd21"]


@functools.lru_cache(maxsize=None)
def weights(name):
    return sdi.load_model_dir(os.path.join(DATA, name))


@functools.lru_cache(maxsize=None)
def reference(name):
    return dict(np.load(os.path.join(DATA, f"{name}_reference.npz")))


def model_configs(name):
    """The diffusers config files of a tiny model directory (what a single file lacks)."""
    read = lambda *p: sdi.read_json(os.path.join(DATA, name, *p))  # noqa: E731
    configs = {part: read(part, "config.json") for part in ("unet", "text_encoder", "vae")}
    return dict(configs, scheduler=read("scheduler", "scheduler_config.json"))


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@functools.lru_cache(maxsize=None)
def unet_fn(config_items):
    return jax.jit(SDUNet(**dict(config_items)).apply)


def run_unet(w, x, t, context, mask=None):
    return unet_fn(tuple(w.unet_config.items()))(
        {"params": w.unet}, x, t, {"context": context, "mask": mask})


@pytest.mark.parametrize("name", VERSIONS)
def test_unet_equals_diffusers(name):
    w, ref = weights(name), reference(name)
    out = run_unet(w, ref["unet_x"], ref["unet_t"], ref["unet_context"])
    assert out.dtype == jnp.float32 and out.shape == ref["unet_out"].shape
    assert max_err(out, ref["unet_out"]) < ATOL  # measured 2.1e-6 (sd15), 1.8e-6 (sd21)


def test_unet_context_mask_is_diffusers_encoder_attention_mask():
    w, ref = weights("sd15"), reference("sd15")
    out = run_unet(w, ref["unet_x"], ref["unet_t"], ref["unet_context"], ref["unet_mask"])
    assert max_err(out, ref["unet_out_masked"]) < ATOL  # measured 2.2e-6
    # Negative control: the mask matters, the unmasked reference is far from the masked output.
    assert max_err(out, ref["unet_out"]) > 0.1


@pytest.mark.parametrize("name", VERSIONS)
def test_text_encoder_equals_transformers(name):
    w, ref = weights(name), reference(name)
    module = CLIPTextEncoder(**w.text_encoder_config)
    apply = jax.jit(module.apply, static_argnames="clip_skip")
    out = apply({"params": w.text_encoder}, ref["text_ids"])
    assert max_err(out.context, ref["text_last"]) < ATOL  # measured 2.6e-6 (sd15), 2.0e-6
    assert max_err(out.pooled, ref["text_pooled"]) < ATOL  # 1.4e-6, 8.2e-7
    assert max_err(np.stack(out.hidden_states), ref["text_hidden"]) < ATOL  # 2.6e-6, 3.0e-6
    skip = apply({"params": w.text_encoder}, ref["text_ids"], clip_skip=1)
    assert max_err(skip.context, ref["text_clip_skip1"]) < ATOL  # 2.2e-6, 1.4e-6
    masked = apply({"params": w.text_encoder}, ref["text_ids"], ref["text_attention_mask"])
    assert max_err(masked.context, ref["text_last_masked"]) < ATOL  # 2.6e-6, 1.7e-6
    # Negative controls: the penultimate layer and the padding mask change the context.
    assert max_err(skip.context, ref["text_last"]) > 0.1
    assert max_err(masked.context, ref["text_last"]) > 0.1


@pytest.mark.parametrize("name", VERSIONS)
def test_vae_equals_diffusers(name):
    w, ref = weights(name), reference(name)
    vae = AutoencoderKL(**w.vae_config)
    posterior = jax.jit(functools.partial(vae.apply, method="encode"))({"params": w.vae},
                                                                       ref["vae_image"])
    decode = jax.jit(functools.partial(vae.apply, method="decode"))
    assert max_err(posterior.mean, ref["vae_mean"]) < ATOL  # measured 1.1e-6 (sd15), 2.6e-6
    assert max_err(posterior.logvar, ref["vae_logvar"]) < ATOL  # 1.8e-6, 2.5e-6
    decoded_mean = decode({"params": w.vae}, posterior.mean)
    assert max_err(decoded_mean, ref["vae_decoded_mean"]) < ATOL  # 3.8e-6, 6.4e-6
    assert max_err(decode({"params": w.vae}, ref["vae_z"]), ref["vae_decoded_z"]) < ATOL  # 3.0e-6
    assert vae.latent_shape((32, 32, 3)) == ref["vae_z"].shape[1:]


@pytest.mark.parametrize("name", VERSIONS)
def test_single_file_equals_original_ldm_modules(name):
    """The CompVis / Stability layout, converted through the same key map, gives the outputs of
    Stability's `openaimodel.UNetModel`, `model.Encoder` / `Decoder` and (SD 2) the OpenCLIP
    text tower's penultimate layer; sd21's U-Net is 9-channel (inpainting)."""
    state = sdi.read_safetensors(os.path.join(DATA, f"{name}_single_file.safetensors"))
    ref = dict(np.load(os.path.join(DATA, f"{name}_single_file_reference.npz")))
    w = sdi.load_single_file(state, model_configs(name))
    assert w.unet_config["in_channels"] == ref["unet_x"].shape[-1] == (4 if name == "sd15" else 9)
    out = run_unet(w, ref["unet_x"], ref["unet_t"], ref["unet_context"])
    assert max_err(out, ref["unet_out"]) < ATOL  # measured 2.0e-6 (sd15), 1.9e-6 (sd21)
    vae = AutoencoderKL(**w.vae_config)
    posterior = jax.jit(functools.partial(vae.apply, method="encode"))({"params": w.vae},
                                                                       ref["vae_image"])
    assert max_err(posterior.mean, ref["vae_mean"]) < ATOL  # 2.1e-6, 3.0e-6
    assert max_err(posterior.logvar, ref["vae_logvar"]) < ATOL  # 1.8e-6, 2.9e-6
    decoded = jax.jit(functools.partial(vae.apply, method="decode"))({"params": w.vae},
                                                                     ref["vae_z"])
    assert max_err(decoded, ref["vae_decoded_z"]) < ATOL  # 2.9e-6, 2.9e-6
    if name == "sd21":  # 4 OpenCLIP resblocks, the last dropped: the penultimate layer
        text = jax.jit(CLIPTextEncoder(**w.text_encoder_config).apply)(
            {"params": w.text_encoder}, ref["text_ids"])
        assert max_err(text.context, ref["text_penultimate"]) < ATOL  # 1.8e-6
    else:  # the same transformers CLIP as the model directory, under cond_stage_model.
        same = jax.tree.map(np.array_equal, w.text_encoder, weights("sd15").text_encoder)
        assert all(jax.tree.leaves(same))


def test_fp16_and_fp32_files_load_as_float32():
    """sd15 stores its U-Net in fp16 and its text encoder in fp32; both import as float32."""
    state = sdi.read_safetensors(os.path.join(DATA, "sd15", "unet",
                                              "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    from safetensors.numpy import load_file
    raw = load_file(os.path.join(DATA, "sd15", "unet", "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in raw.values()} == {np.dtype(np.float16)}
    w = weights("sd15")
    for tree in (w.unet, w.text_encoder, w.vae):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {np.dtype(np.float32)}


def test_deprecated_vae_attention_names():
    """Older VAE files (sd-vae-ft-mse) name the mid attention query / key / value / proj_attn."""
    state = sdi.read_safetensors(os.path.join(DATA, "sd15", "vae",
                                              "diffusion_pytorch_model.safetensors"))
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in state.items():
        for current, deprecated in new.items():
            key = key.replace(f"attentions.0.{current}.", f"attentions.0.{deprecated}.")
        old[key] = value
    assert any(".query." in k for k in old)
    same = jax.tree.map(np.array_equal, sdi.vae_params(old, weights("sd15").vae_config),
                        weights("sd15").vae)
    assert all(jax.tree.leaves(same))


def test_mismatched_weights_are_refused_naming_the_tensor():
    w = weights("sd15")
    state = sdi.read_safetensors(os.path.join(DATA, "sd15", "unet",
                                              "diffusion_pytorch_model.safetensors"))
    missing = dict(state)
    del missing["mid_block.attentions.0.proj_in.weight"]
    with pytest.raises(ConfigError, match=r"missing: mid_block\.attentions\.0\.proj_in\.weight"):
        sdi.unet_params(missing, w.unet_config)
    with pytest.raises(ConfigError, match="unexpected: extra.weight"):
        sdi.unet_params(dict(state, **{"extra.weight": np.zeros(3)}), w.unet_config)
    with pytest.raises(ConfigError, match="misshapen"):
        sdi.unet_params(state, dict(w.unet_config, cross_attention_dim=16))
    assert sdi.unet_params(state, w.unet_config)  # control: the file as written loads


def test_unsupported_configs_are_one_line_errors():
    config = model_configs("sd15")["unet"]
    with pytest.raises(ConfigError, match="class_embed_type='timestep'"):
        sdi.unet_config(dict(config, class_embed_type="timestep"))
    with pytest.raises(ConfigError, match="block types"):
        sdi.unet_config(dict(config, up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"]))
    with pytest.raises(ConfigError, match="unknown Stable Diffusion base 'sd3'; valid: sd15"):
        sdi.load_single_file({}, "sd3")


def test_module_configs_from_config_json():
    w15, w21 = weights("sd15"), weights("sd21")
    assert w15.unet_config["num_heads"] == (2, 2) and w21.unet_config["num_heads"] == (2, 4)
    assert w15.unet_config["down_attention"] == (True, False)
    assert w15.text_encoder_config["activation"] == "quick_gelu"
    assert w21.text_encoder_config["activation"] == "gelu"
    assert w15.text_encoder_config["eos_token_id"] == 2  # legacy pooling at the largest id
    assert w15.scaling_factor == w21.scaling_factor == 0.18215
    assert w15.sample_size == 16 and w15.tokenizer.pad_id == w15.tokenizer.eos_id
    assert w21.tokenizer.pad_id == 0  # "!"


def test_scheduler_configs():
    s15, s21 = weights("sd15").scheduler, weights("sd21").scheduler
    assert (s15.class_name, s15.prediction_type) == ("PNDMScheduler", "epsilon")
    assert (s21.class_name, s21.prediction_type) == ("DDIMScheduler", "v_prediction")
    assert (s15.steps_offset, s15.timestep_spacing, s15.set_alpha_to_one) == (1, "leading", False)
    # scaled_linear: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012) over 1000 steps
    assert s15.betas.shape == (1000,)
    np.testing.assert_allclose(s15.betas[[0, -1]], [0.00085, 0.012], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.sqrt(s15.betas)),
                               (0.012 ** 0.5 - 0.00085 ** 0.5) / 999, rtol=1e-9)
    # alpha_bar as the LDM training code registers it (`alphas_cumprod` of the single file)
    state = sdi.read_safetensors(os.path.join(DATA, "sd15_single_file.safetensors"))
    np.testing.assert_allclose(np.cumprod(1 - s15.betas), state["alphas_cumprod"], rtol=1e-6)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params_and_output():
    w, ref = weights("sd15"), reference("sd15")
    config = dict(w.unet_config, dtype=jnp.bfloat16)
    out = unet_fn(tuple(config.items()))({"params": w.unet}, ref["unet_x"], ref["unet_t"],
                                          {"context": ref["unet_context"], "mask": None})
    assert out.dtype == jnp.float32
    rel = np.linalg.norm(out - ref["unet_out"]) / np.linalg.norm(ref["unet_out"])
    assert 1e-4 < rel < 5e-2  # bf16 rounding (measured 1.5e-2), not float32's (1e-6)


@pytest.mark.slow
def test_remat_gives_the_same_outputs_and_gradients():
    w, ref = weights("sd15"), reference("sd15")
    cond = {"context": ref["unet_context"], "mask": None}

    def loss(params, remat):
        module = SDUNet(**dict(w.unet_config, remat=remat))
        return jnp.mean(module.apply({"params": params}, ref["unet_x"], ref["unet_t"], cond) ** 2)

    grads = {r: jax.value_and_grad(functools.partial(loss, remat=r)) for r in (False, True)}
    # Control: only the remat network's program recomputes (has remat regions).
    assert ["remat" in str(jax.make_jaxpr(grads[r])(w.unet)) for r in (False, True)] == [
        False, True]
    plain, remat = (jax.jit(grads[r])(w.unet) for r in (False, True))
    assert abs(float(plain[0] - remat[0])) < 1e-6
    assert max(jax.tree.leaves(jax.tree.map(max_err, plain[1], remat[1]))) < 1e-5


# ---- the released architectures, without weights

def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,part,expected", [
    ("sd15", "unet", 859_520_964), ("sd21", "unet", 865_910_724),
    ("sd15", "text_encoder", 123_060_480), ("sd21", "text_encoder", 340_387_840),
    ("sd15", "vae", 83_653_863)])
def test_released_parameter_counts(name, part, expected):
    """Counts of the diffusers / transformers models built from the released configs (on
    torch's meta device): SD 1.5 U-Net, SD 2.1 U-Net, CLIP ViT-L/14 text, OpenCLIP ViT-H/14
    text with the 23 layers SD 2 uses (352,984,064 with all 24), VAE."""
    config = RELEASED[name][part]
    if part == "unet":
        module = SDUNet(**sdi.unet_config(config))
        shapes = sdi.abstract_params(module, *module.example_inputs())
    elif part == "text_encoder":
        shapes = sdi.abstract_params(CLIPTextEncoder(**sdi.text_encoder_config(config)),
                                     jnp.zeros((1, 77), jnp.int32))
    else:
        shapes = sdi.abstract_params(AutoencoderKL(**sdi.vae_config(config)),
                                     jnp.zeros((1, 8, 8, 3)))
    assert count(shapes) == expected


def zero_state_dict(shapes: dict) -> dict:
    """A state dict of the given shapes that holds no memory (zero-stride views of one 0)."""
    zero = np.zeros((), np.float32)
    return {k: np.broadcast_to(zero, tuple(shape)) for k, shape in shapes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", VERSIONS)
def test_released_layouts_fill_the_real_trees(name):
    """Every key of the full-size released networks, in the diffusers layout and in the single
    file's (as Stability's LDM modules and OpenCLIP write them, 24 OpenCLIP layers for SD 2),
    maps onto our tree with the right shape and nothing is left over."""
    with gzip.open(os.path.join(DATA, "real_shapes.json.gz"), "rt") as f:
        real = json.load(f)
    unet = sdi.unet_params(zero_state_dict(real[f"{name}_unet"]),
                           sdi.unet_config(RELEASED[name]["unet"]))
    text = sdi.text_encoder_params(zero_state_dict(real[f"{name}_text_encoder"]),
                                   sdi.text_encoder_config(RELEASED[name]["text_encoder"]))
    vae = sdi.vae_params(zero_state_dict(real["vae"]), sdi.vae_config(RELEASED[name]["vae"]))
    assert count(vae) == 83_653_863
    single = sdi.load_single_file(zero_state_dict(real[f"{name}_single_file"]), name)
    for ours, theirs in ((unet, single.unet), (text, single.text_encoder), (vae, single.vae)):
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        assert count(ours) == count(theirs)
    assert count(single.unet) == {"sd15": 859_520_964, "sd21": 865_910_724}[name]
    assert count(single.text_encoder) == {"sd15": 123_060_480, "sd21": 340_387_840}[name]
