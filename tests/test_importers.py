"""Released-checkpoint importers on files written by the real libraries (`tests/data/`, made by
`tools/make_reference_outputs.py`): the torch-free reader, diffusers UNet2DModel in and out,
EDM's pickled snapshots, and the work directory an import writes."""
import json
import os
import pickle
import shlex
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from helpers import DATA, ROOT
from diffusion_jax import builders
from diffusion_jax.config_files import load_config
from diffusion_jax.errors import ConfigError
from diffusion_jax.importers import diffusers_unet, edm, torch_files
from diffusion_jax.importers.run import write_imported_run

TINY_UNET = os.path.join(DATA, "diffusers_unet_tiny")


@pytest.mark.parametrize("name", ["torch_zip.pt", "torch_legacy.pt"])
def test_torch_save_files_read_without_torch(name):
    """torch.save's zip and legacy formats: float32/16, bfloat16, int64, a strided view with a
    storage offset and a 0-d tensor come back as numpy arrays of the same dtype and values;
    the non-tensor entries of the saved dict too."""
    saved = torch_files.load_torch_file(os.path.join(DATA, name))
    assert saved["global_step"] == 7
    expected = np.load(os.path.join(DATA, "torch_files_expected.npz"))
    tensors = saved["state_dict"]
    assert sorted(tensors) == sorted(expected.files)
    dtypes = dict(float32=np.float32, float16=np.float16, bfloat16=ml_dtypes.bfloat16,
                  int64=np.int64, strided=np.float32, scalar=np.float32)
    for key, value in tensors.items():
        assert value.dtype == np.dtype(dtypes[key]), key
        np.testing.assert_array_equal(value.astype(expected[key].dtype), expected[key])
    assert torch_files.load_state_dict(os.path.join(DATA, name)).keys() == tensors.keys()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_unpickler_refuses_globals_a_state_dict_does_not_need(tmp_path):
    """A pickle that would call os.system is refused before anything runs."""
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"weight": _Exploit()}))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|not allowed"):
        torch_files.load_pickle(path)


def test_safetensors_with_bfloat16_is_read_from_its_layout(tmp_path):
    """The safetensors numpy API has no bfloat16; such files are read from the format itself:
    an 8-byte little-endian header length, the JSON header, the data."""
    values = np.array([[1.5, -2.0], [0.25, 3.0]], ml_dtypes.bfloat16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                         "__metadata__": {"format": "pt"}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(np.uint64(len(header)).tobytes() + header + values.tobytes())
    loaded = torch_files.load_state_dict(str(path))
    assert loaded["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded["w"], values)


def test_bin_and_safetensors_of_one_model_import_to_the_same_params():
    bin_dir = os.path.join(DATA, "diffusers_unet_tiny_bin")
    config, from_safetensors = diffusers_unet.import_unet(TINY_UNET, load_config("configs/ddpm/cifar10.py"))
    _, from_bin = diffusers_unet.import_unet(bin_dir, load_config("configs/ddpm/cifar10.py"))
    jax.tree.map(np.testing.assert_array_equal, from_safetensors, from_bin)
    assert (config.model.ch, tuple(config.model.ch_mult), config.model.num_groups) == (8, (1, 2), 2)
    model = builders.build_model(config)  # the config builds the network the params are for
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                            np.zeros((1,)))["params"]
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, from_bin)


def test_pre_0_14_attention_names_are_read():
    """diffusers' old attention tensor names (query, key, value, proj_attn) map as the new ones."""
    with open(os.path.join(TINY_UNET, "config.json")) as f:
        kwargs = diffusers_unet.model_kwargs(json.load(f))
    state = torch_files.load_state_dict(diffusers_unet.weight_file(TINY_UNET))
    old = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value")
           .replace("to_out.0", "proj_attn"): v for k, v in state.items()}
    assert old.keys() != state.keys()
    jax.tree.map(np.testing.assert_array_equal,
                 diffusers_unet.params_from_state_dict(state, kwargs, 32),
                 diffusers_unet.params_from_state_dict(old, kwargs, 32))


@pytest.mark.parametrize("key, value", [("downsample_padding", 1), ("flip_sin_to_cos", True),
                                        ("num_class_embeds", 10),
                                        ("resnet_time_scale_shift", "scale_shift")])
def test_diffusers_settings_of_another_network_raise_config_error(key, value):
    with open(os.path.join(TINY_UNET, "config.json")) as f:
        config = dict(json.load(f), **{key: value})
    with pytest.raises(ConfigError, match=key):
        diffusers_unet.model_kwargs(config)


def test_the_data_set_must_have_the_networks_image_shape():
    with pytest.raises(ConfigError, match="32x32x3"):
        diffusers_unet.import_unet(TINY_UNET, load_config("configs/ddpm/digits.py"))


def test_a_scheduler_config_beside_the_unet_sets_the_forward_process_only(tmp_path):
    """T and the linear betas come from scheduler_config.json; the sampler stays the base
    config's (diffusers' variance_type / clip_sample are its pipeline's, not the paper's)."""
    import shutil

    directory = tmp_path / "ddpm"
    shutil.copytree(TINY_UNET, directory)
    scheduler = dict(_class_name="DDPMScheduler", beta_start=2e-4, beta_end=0.03,
                     beta_schedule="linear", num_train_timesteps=500, variance_type="fixed_small",
                     clip_sample=True)
    (directory / "scheduler_config.json").write_text(json.dumps(scheduler))
    base = load_config("configs/ddpm/cifar10.py")
    config, _ = diffusers_unet.import_unet(str(directory), base)
    assert (config.diffusion.num_timesteps, config.diffusion.beta_start,
            config.diffusion.beta_end) == (500, 2e-4, 0.03)
    assert config.sampling == base.sampling
    scheduler["beta_schedule"] = "squaredcos_cap_v2"
    (directory / "scheduler_config.json").write_text(json.dumps(scheduler))
    with pytest.raises(ConfigError, match="squaredcos_cap_v2"):
        diffusers_unet.import_unet(str(directory), base)


def test_export_writes_the_original_diffusers_files_back(tmp_path):
    """Import then export: every tensor of the exported safetensors equals the original bit for
    bit and the exported config.json has the original's network settings. (That diffusers
    loads the export and gives the original's output exactly is checked by the `export`
    section of tools/make_reference_outputs.py, which needs torch.)"""
    config, params = diffusers_unet.import_unet(TINY_UNET, load_config("configs/ddpm/cifar10.py"))
    diffusers_unet.export_unet(str(tmp_path), config, params)
    original = torch_files.load_state_dict(diffusers_unet.weight_file(TINY_UNET))
    exported = torch_files.load_state_dict(str(tmp_path / diffusers_unet.EXPORT_WEIGHTS))
    assert exported.keys() == original.keys()
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key])
    with open(os.path.join(TINY_UNET, "config.json")) as f:
        want = json.load(f)
    with open(tmp_path / "config.json") as f:
        got = json.load(f)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                "norm_num_groups", "sample_size", "downsample_padding", "attention_head_dim",
                "freq_shift", "flip_sin_to_cos", "norm_eps"):
        assert got[key] == want[key], key


def test_a_unet_whose_group_counts_differ_by_layer_is_not_exported():
    kwargs = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=0)
    with pytest.raises(ConfigError, match="num_groups"):
        diffusers_unet.diffusers_config(kwargs, (32, 32, 3))


def test_an_edm_snapshot_unpickles_without_nvlabs_code():
    """EDM's pickle (persistent classes with their module source) comes back as class names and
    states; no module named torch_utils or training is imported and the source is not kept."""
    before = set(sys.modules)
    snapshot = edm.load_snapshot(os.path.join(DATA, "edm_ncsnpp_cond_tiny.pkl"))
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch_utils", "training", "dnnlib", "torch")}
    net = snapshot["ema"]
    assert (net.class_name, snapshot["loss_fn"].class_name) == ("EDMPrecond", "EDMLoss")
    assert "module_src" not in net.state
    assert snapshot["dataset_kwargs"]["resolution"] == 32
    state = edm.module_state_dict(net)
    assert state["model.map_label.weight"].shape == (16, 10)
    assert "model.map_augment.weight" in state  # augment_dim 9, dropped by the import
    arch = edm.architecture(state)
    assert arch == dict(img_resolution=32, in_channels=3, model_channels=8, channel_mult=(1, 2),
                        num_blocks=1, attn_resolutions=(16,), embedding_type="fourier",
                        encoder_type="residual", fir=True, label_dim=10)


def test_an_edm_state_dict_file_imports_as_its_snapshot(tmp_path):
    """`torch.save(net.state_dict())` is the other way EDM networks circulate: written here as
    safetensors with the snapshot's tensors, it imports to the same params."""
    path = os.path.join(DATA, "edm_ddpmpp_tiny.pkl")
    base = load_config("configs/edm/cifar10_uncond.py")
    config, params = edm.import_network(path, base)
    state = edm.module_state_dict(edm.load_snapshot(path)["ema"])
    torch_files.save_safetensors(str(tmp_path / "net.safetensors"), state)
    config2, params2 = edm.import_network(str(tmp_path / "net.safetensors"), base)
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    assert config2.model == config.model and config.edm.precond == "edm"


@pytest.mark.slow
def test_write_imported_run_is_restored_as_a_training_run(tmp_path):
    """The work directory of an import restores through the launcher's path
    (`runs.restore`): params and EMA params are the imported weights."""
    from diffusion_jax import parallel, runs
    from diffusion_jax.workdir import read_config

    config, params = edm.import_network(os.path.join(DATA, "edm_ddpmpp_tiny.pkl"),
                                        load_config("configs/edm/cifar10_uncond.py"))
    write_imported_run(str(tmp_path), config, params)
    _, state = runs.restore(read_config(str(tmp_path)), str(tmp_path), parallel.make_mesh())
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.params, params)
    jax.tree.map(np.testing.assert_array_equal, state.ema_params, params)


def test_params_that_are_not_the_configs_network_are_refused(tmp_path):
    config, params = edm.import_network(os.path.join(DATA, "edm_ddpmpp_tiny.pkl"),
                                        load_config("configs/edm/cifar10_uncond.py"))
    config.model.nf = 16
    with pytest.raises(ConfigError, match="do not match"):
        write_imported_run(str(tmp_path), config, params)


@pytest.mark.slow
def test_launcher_samples_from_an_imported_edm_snapshot(tmp_path):
    """tools/import_checkpoint.py edm prints the launch command; launch.py --mode=sample with it
    restores the imported work directory and samples."""
    run = str(tmp_path / "run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    tool = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_checkpoint.py"),
                           "edm", os.path.join(DATA, "edm_ncsnpp_cond_tiny.pkl"),
                           "--workdir", run], capture_output=True, text=True, env=env, cwd=ROOT)
    assert tool.returncode == 0, tool.stderr
    command = next(shlex.split(line) for line in tool.stdout.splitlines() if "launch.py" in line)
    assert command[:3] == ["python3", "launch.py", "--mode=eval"]
    sample = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), "--mode=sample", *command[3:],
         "--config.sampling.num_samples=2", "--config.sampling.batch_size=2",
         "--config.sampling.num_steps=2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert np.load(os.path.join(run, "samples", "sample_0_1.npz"))["images"].shape == (2, 32, 32, 3)


def test_cli_reports_a_missing_directory_as_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_checkpoint.py"),
                             "diffusers", str(tmp_path / "nothing"), "--workdir", str(tmp_path / "w")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
