"""Writes the reference outputs of the original PyTorch implementations under `tests/data/`.

The tests compare our networks and importers against these files without torch. Run it with
the reference virtual environment (torch CPU, diffusers, pytorch-fid, lpips) and a checkout of
NVlabs/edm (for `git` mirrors: `git --git-dir=DIR/.git archive HEAD | tar -x -C EDM`):

    /work/refvenv/bin/python tools/make_reference_outputs.py --edm_repo EDM [--only NAME ...]

Sections (`--only`), each with random weights of non-trivial statistics (no zero-initialised
output layer, BatchNorm statistics that differ per channel), batch 2:
  - `ddpm_unet`: diffusers `UNet2DModel` in the layout of `google/ddpm-cifar10-32` (one
    attention head of all channels, `downsample_padding=0`). A tiny one saved by
    `save_pretrained` as `.safetensors` and as `.bin` (`diffusers_unet_tiny/`,
    `diffusers_unet_tiny_bin/`), and the paper-size one (`ddpm_unet_cifar10.npz`: weights from
    `tools/reference_weights.py`, stored as names and shapes only).
  - `edm`: EDM's `EDMPrecond(SongUNet)` end to end, D(x, sigma[, labels]). Tiny DDPM++
    (unconditional) and NCSN++ (10 classes) pickled as EDM's training loop pickles its
    snapshots (`pickle.dump` of `dict(ema=..., loss_fn=..., augment_pipe=...,
    dataset_kwargs=...)`, persistence active, the module source each persistent object
    carries replaced by a one-line placeholder so that no EDM code is committed;
    `edm_*_tiny.pkl`), and both paper-size networks of
    `train.py --arch=ddpmpp|ncsnpp` (`edm_*_cifar10.npz`, seeded weights).
  - `inception`: pytorch-fid's `InceptionV3` (its `FIDInceptionA/C/E` blocks) with seeded
    weights and calibrated-then-perturbed BatchNorm statistics: pool3 and logits of a 299x299
    input, and pool3 of uint8 32x32 images through its own resize and normalisation
    (`resize_input=True`, `normalize_input=True`).
  - `lpips`: the `lpips` package's LPIPS-VGG v0.1 with its shipped lin weights
    (`lpips/weights/v0.1/vgg.pth`) on a seeded VGG-16, at 32x32 and resized to 64x64.
  - `torch_files`: tensors written by `torch.save` in the zip and the legacy format (float16,
    bfloat16, int64, a strided view with a storage offset) for the reader.
  - `export`: imports `diffusers_unet_tiny/` with `tools/import_checkpoint.py` (run by
    `--python`, the project's interpreter), exports it back to a diffusers directory, loads
    that with `UNet2DModel.from_pretrained` and checks its output equals the original's
    (nothing is written under tests/data).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import reference_weights  # noqa: E402

SEED = 17
DIFFUSERS_CIFAR10 = dict(  # google/ddpm-cifar10-32/config.json
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                          "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, norm_num_groups=32, norm_eps=1e-6,
    flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1, act_fn="silu",
    time_embedding_type="positional", center_input_sample=False)
DIFFUSERS_TINY = dict(DIFFUSERS_CIFAR10, block_out_channels=(8, 16), layers_per_block=1,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=2)
TIMESTEPS = (3.0, 917.0)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def randomize(module, seed, skip=("resample_filter", "num_batches_tracked")):
    """Loads seeded weights (`reference_weights`) into every parameter and buffer of `module`
    whose name does not end in one of `skip`; returns the names and shapes set."""
    state = module.state_dict()
    names = [n for n in state if not n.endswith(skip)]
    shapes = [tuple(state[n].shape) for n in names]
    values = reference_weights.state_dict(seed, names, shapes)
    module.load_state_dict({**state, **{n: torch.from_numpy(v) for n, v in values.items()}})
    return names, shapes


def save_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")


def ddpm_unet(out):
    from diffusers import UNet2DModel

    x = reference_weights.images(SEED, "ddpm_unet/x", (2, 32, 32, 3))
    t = np.asarray(TIMESTEPS, np.float32)
    tiny = UNet2DModel(**DIFFUSERS_TINY).eval()
    randomize(tiny, SEED)
    with torch.no_grad():
        eps = nhwc(tiny(nchw(x), torch.from_numpy(t)).sample)
    tiny.save_pretrained(os.path.join(out, "diffusers_unet_tiny"))
    tiny.save_pretrained(os.path.join(out, "diffusers_unet_tiny_bin"), safe_serialization=False)
    save_npz(os.path.join(out, "ddpm_unet_tiny.npz"), x=x, t=t, eps=eps)

    full = UNet2DModel(**DIFFUSERS_CIFAR10).eval()
    names, shapes = randomize(full, SEED)
    assert sum(int(np.prod(s)) for s in shapes) == 35_746_307
    with torch.no_grad():
        eps = nhwc(full(nchw(x), torch.from_numpy(t)).sample)
    save_npz(os.path.join(out, "ddpm_unet_cifar10.npz"), x=x, t=t, eps=eps, seed=SEED,
             names=np.asarray(names), shapes=np.asarray(json.dumps(shapes)),
             config=np.asarray(json.dumps({k: v for k, v in full.config.items()
                                           if not k.startswith("_")}, sort_keys=True)))


def _edm_modules(edm_repo):
    sys.path.insert(0, os.path.abspath(edm_repo))
    from training import augment, loss, networks
    return networks, loss, augment


EDM_TINY = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])
EDM_ARCHS = {  # train.py --arch=ddpmpp | ncsnpp, with CIFAR-10's augment_dim 9
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                   model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                   model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13),
}
EDM_SIGMAS = (0.05, 2.5)
EDM_LABELS = (3, 7)


def _dump_without_sources(snapshot, f):
    """`pickle.dump(snapshot, f)` as EDM's training loop writes it, with the module source that
    every persistent object carries replaced by `SOURCE_PLACEHOLDER` (the layout is EDM's;
    its code is not committed)."""
    from torch_utils import persistence

    sources = {cls: cls._orig_module_src for cls in persistence._decorators}
    try:
        for cls in sources:
            cls._orig_module_src = SOURCE_PLACEHOLDER
        pickle.dump(snapshot, f)
    finally:
        for cls, source in sources.items():
            cls._orig_module_src = source


def _edm_call(net, x, label_dim):
    sigma = torch.tensor(EDM_SIGMAS, dtype=torch.float32)
    outputs = {}
    with torch.no_grad():
        if label_dim:
            labels = torch.nn.functional.one_hot(torch.tensor(EDM_LABELS), label_dim).float()
            outputs["D"] = nhwc(net(nchw(x), sigma, labels))
            outputs["D_null"] = nhwc(net(nchw(x), sigma, None))
        else:
            outputs["D"] = nhwc(net(nchw(x), sigma))
    return outputs


# what the snapshots hold in place of NVlabs' module sources (the importer never reads them)
SOURCE_PLACEHOLDER = "# the source of this NVlabs/edm module is left out of the test fixture\n"


def edm(out, edm_repo):
    networks, loss, augment = _edm_modules(edm_repo)
    x = reference_weights.images(SEED, "edm/x", (2, 32, 32, 3)) * 2.0
    arrays = dict(x=x, sigma=np.asarray(EDM_SIGMAS, np.float32),
                  labels=np.asarray(EDM_LABELS, np.int32))
    for arch, label_dim in (("ddpmpp", 0), ("ncsnpp", 10)):
        kwargs = dict(EDM_ARCHS[arch], **EDM_TINY)
        net = networks.EDMPrecond(img_resolution=32, img_channels=3, label_dim=label_dim,
                                  use_fp16=False, **kwargs).eval()
        randomize(net, SEED)
        for key, value in _edm_call(net, x, label_dim).items():
            arrays[f"{arch}_{key}"] = value
        snapshot = dict(ema=copy.deepcopy(net).eval().requires_grad_(False),
                        loss_fn=loss.EDMLoss(),
                        augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1,
                                                         rotate_frac=1, aniso=1,
                                                         translate_frac=1),
                        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                            path="cifar10-32x32.zip", use_labels=bool(label_dim),
                                            xflip=False, cache=True, resolution=32,
                                            max_size=50000))
        path = os.path.join(out, f"edm_{arch}{'_cond' if label_dim else ''}_tiny.pkl")
        with open(path, "wb") as f:
            _dump_without_sources(snapshot, f)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    save_npz(os.path.join(out, "edm_tiny.npz"), **arrays)

    for arch, label_dim in (("ddpmpp", 0), ("ncsnpp", 10)):
        net = networks.EDMPrecond(img_resolution=32, img_channels=3, label_dim=label_dim,
                                  use_fp16=False, **EDM_ARCHS[arch]).eval()
        names, shapes = randomize(net, SEED)
        buffers = {n: v.numpy() for n, v in net.state_dict().items()
                   if n.endswith("resample_filter")}
        save_npz(os.path.join(out, f"edm_{arch}_cifar10.npz"), x=x, seed=SEED,
                 sigma=np.asarray(EDM_SIGMAS, np.float32), labels=np.asarray(EDM_LABELS, np.int32),
                 names=np.asarray(names), shapes=np.asarray(json.dumps(shapes)),
                 buffers=np.asarray(json.dumps({n: v.tolist() for n, v in buffers.items()})),
                 kwargs=np.asarray(json.dumps(dict(EDM_ARCHS[arch], label_dim=label_dim))),
                 **_edm_call(net, x, label_dim))


def inception(out):
    from unittest import mock

    import pytorch_fid.inception as fid

    # pytorch-fid's own FID network (`fid_inception_v3`), built without its download
    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        template = fid.fid_inception_v3()
    state = template.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    names = [n for n in state if not n.endswith(stats)]
    shapes = [tuple(state[n].shape) for n in names]
    values = reference_weights.state_dict(SEED, names, shapes)
    template.load_state_dict({**state, **{n: torch.from_numpy(v) for n, v in values.items()}})
    bn_names = [n[:-len(".running_mean")] for n in state if n.endswith("running_mean")]
    _calibrate_batch_norm(template, bn_names)
    template.eval()
    weights = template.state_dict()
    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: weights):
        net = fid.InceptionV3([3], resize_input=False, normalize_input=False).eval()
        path_net = fid.InceptionV3([3], resize_input=True, normalize_input=True).eval()

    x = reference_weights.images(SEED, "inception/x", (2, 299, 299, 3))
    images = (256 * reference_weights.uniform(SEED, "inception/uint8", (2, 32, 32, 3))
              ).astype(np.uint8)
    with torch.no_grad():
        pool3 = net(nchw(x))[0][:, :, 0, 0]
        logits = template.fc(pool3).numpy()
        pool3_uint8 = path_net(nchw(images.astype(np.float32) / 255.0))[0][:, :, 0, 0].numpy()
    save_npz(os.path.join(out, "inception_pytorch_fid.npz"), seed=SEED, pool3=pool3.numpy(),
             logits=logits, images_uint8=images, pool3_uint8=pool3_uint8,
             names=np.asarray(names), shapes=np.asarray(json.dumps(shapes)),
             bn_names=np.asarray(bn_names),
             running_mean=np.concatenate([weights[f"{n}.running_mean"].numpy() for n in bn_names]),
             running_var=np.concatenate([weights[f"{n}.running_var"].numpy() for n in bn_names]))


def _calibrate_batch_norm(net, bn_names):
    """Running statistics of every BatchNorm from a forward pass in training mode on seeded
    images (so activations stay of order one through the network), then perturbed per channel
    (mean + 0.3 std u, var (1 + 0.5 u), u ~ U(-1, 1)) so that statistics taken from the wrong
    channel or layer change the output."""
    modules = dict(net.named_modules())
    for n in bn_names:
        modules[n].momentum = None
        modules[n].reset_running_stats()
    net.train()
    with torch.no_grad():
        net(nchw(reference_weights.images(SEED, "inception/calibration", (4, 299, 299, 3))))
    for n in bn_names:
        bn = modules[n]
        u = torch.from_numpy(2 * reference_weights.uniform(SEED, f"{n}/perturb", (2,) + tuple(
            bn.running_mean.shape)).astype(np.float32) - 1)
        bn.running_mean += 0.3 * bn.running_var.sqrt() * u[0]
        bn.running_var *= 1 + 0.5 * u[1]


def lpips(out):
    import lpips as lpips_package

    net = lpips_package.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True,
                              verbose=False).eval()
    vgg_state = {k: v for k, v in net.state_dict().items() if k.startswith("net.slice")}
    torchvision_names = {k: "features." + k.split(".", 2)[2] for k in vgg_state}
    names = list(torchvision_names.values())
    shapes = [tuple(vgg_state[k].shape) for k in torchvision_names]
    values = reference_weights.state_dict(SEED, names, shapes)
    net.load_state_dict({**net.state_dict(), **{k: torch.from_numpy(values[v]) for k, v in
                                                torchvision_names.items()}})
    lin = {f"lin{i}.model.1.weight": net.state_dict()[f"lin{i}.model.1.weight"].numpy()
           for i in range(5)}
    x = reference_weights.images(SEED, "lpips/x", (2, 32, 32, 3))
    y = np.clip(x + 0.4 * reference_weights.images(SEED, "lpips/y", (2, 32, 32, 3)), -1, 1)
    resize = lambda a: torch.nn.functional.interpolate(nchw(a), size=(64, 64), mode="bilinear",
                                                       align_corners=False)
    with torch.no_grad():
        d32 = net(nchw(x), nchw(y)).reshape(-1).numpy()
        d64 = net(resize(x), resize(y)).reshape(-1).numpy()
    save_npz(os.path.join(out, "lpips_vgg.npz"), seed=SEED, x=x, y=y, d32=d32, d64=d64,
             names=np.asarray(names), shapes=np.asarray(json.dumps(shapes)), **lin)


def torch_files(out):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7 - 1
    tensors = {
        "float32": base,
        "float16": base.to(torch.float16),
        "bfloat16": base.to(torch.bfloat16),
        "int64": torch.arange(5, dtype=torch.int64) - 2,
        "strided": base[1:, ::2].t(),  # a view: storage offset, non-unit strides
        "scalar": torch.tensor(3.5),
    }
    expected = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in
                tensors.items()}
    nested = {"state_dict": tensors, "global_step": 7}
    torch.save(nested, os.path.join(out, "torch_zip.pt"))
    torch.save(nested, os.path.join(out, "torch_legacy.pt"), _use_new_zipfile_serialization=False)
    save_npz(os.path.join(out, "torch_files_expected.npz"), **expected)


def export(out, python):
    from diffusers import UNet2DModel

    source = os.path.join(out, "diffusers_unet_tiny")
    with tempfile.TemporaryDirectory() as tmp:
        run, exported = os.path.join(tmp, "run"), os.path.join(tmp, "exported")
        tool = os.path.join(ROOT, "tools", "import_checkpoint.py")
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        for args in (["diffusers", source, "--workdir", run],
                     ["export-diffusers", "--workdir", run, "--out", exported]):
            subprocess.run([python, tool, *args], check=True, env=env, cwd=ROOT)
        original = UNet2DModel.from_pretrained(source).eval()
        roundtrip = UNet2DModel.from_pretrained(exported).eval()
        x = reference_weights.images(SEED, "export/x", (2, 32, 32, 3))
        t = torch.tensor(TIMESTEPS)
        with torch.no_grad():
            a, b = original(nchw(x), t).sample, roundtrip(nchw(x), t).sample
        diff = float((a - b).abs().max())
        print(f"export round trip: diffusers loads the exported directory; max |difference| "
              f"of the outputs {diff}")
        if diff != 0.0:
            raise SystemExit("the exported U-Net differs from the original")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm_repo", help="a checkout of github.com/NVlabs/edm")
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data"))
    parser.add_argument("--python", default="python3",
                        help="the project's interpreter, for the export round trip")
    parser.add_argument("--only", nargs="*", choices=("ddpm_unet", "edm", "inception", "lpips",
                                                      "torch_files", "export"))
    args = parser.parse_args()
    torch.manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    sections = args.only or ("ddpm_unet", "edm", "inception", "lpips", "torch_files", "export")
    for section in sections:
        if section == "edm":
            if not args.edm_repo:
                parser.error("the edm section needs --edm_repo")
            edm(args.out, args.edm_repo)
        elif section == "export":
            export(args.out, args.python)
        else:
            globals()[section](args.out)


if __name__ == "__main__":
    main()
