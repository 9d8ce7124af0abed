"""Released checkpoints in and out: a work directory that `--mode=sample` / `--mode=eval` restore.

    # diffusers UNet2DModel (the google/ddpm-* family): config.json + diffusion_pytorch_model.*
    python3 tools/import_checkpoint.py diffusers DIR --workdir=runs/ddpm_c10 \\
        [--config=configs/ddpm/cifar10.py]
    # EDM's network snapshots (edm-cifar10-32x32-*.pkl) or a torch.save'd SongUNet state dict
    python3 tools/import_checkpoint.py edm FILE --workdir=runs/edm_c10 \\
        [--config=configs/edm/cifar10_uncond.py]
    # a run of this codebase (DDPM U-Net) out to a diffusers UNet2DModel directory
    python3 tools/import_checkpoint.py export-diffusers --workdir=RUN --out=DIR

An import writes `config.json` (the given config with the network's keys, see
`diffusion_jax.importers.diffusers_unet.import_unet` and `importers.edm.import_network`) and a
checkpoint at step 0 whose params and EMA params are the imported weights
(`importers.run.write_imported_run`), and prints the launcher command that restores it: the
launcher builds its config from a config file and `--config.KEY=VALUE` overrides, so that is
the base config plus the keys in which the imported network differs from it (none for the
released google/ddpm-cifar10-32 and the DDPM++ EDM snapshots on their default configs), e.g.

    python3 launch.py --mode=eval --workdir=runs/ddpm_c10 --config=configs/ddpm/cifar10.py \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

Nothing is downloaded: the files are read from disk, without torch. The export reads the
newest checkpoint's EMA weights and writes `config.json` and
`diffusion_pytorch_model.safetensors` (`UNet2DModel.from_pretrained(DIR)` loads it).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CONFIGS = {"diffusers": "configs/ddpm/cifar10.py", "edm": "configs/edm/cifar10_uncond.py"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("diffusers", "a diffusers UNet2DModel directory"),
                       ("edm", "an EDM snapshot .pkl or a SongUNet state dict")):
        sub = commands.add_parser(name, help=f"import {what}")
        sub.add_argument("source", help=what)
        sub.add_argument("--workdir", required=True, help="the work directory to write")
        sub.add_argument("--config", default=DEFAULT_CONFIGS[name],
                         help=f"base config file[:arg] (default {DEFAULT_CONFIGS[name]})")
    sub = commands.add_parser("export-diffusers", help="export a DDPM U-Net run to diffusers")
    sub.add_argument("--workdir", required=True, help="a work directory of this codebase")
    sub.add_argument("--out", required=True, help="the diffusers directory to write")
    args = parser.parse_args(argv)

    from diffusion_jax.errors import UserError

    try:
        run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> None:
    from diffusion_jax.config_files import load_config
    from diffusion_jax.importers import diffusers_unet, edm
    from diffusion_jax.importers.run import launch_overrides, write_imported_run

    if args.command == "export-diffusers":
        from diffusion_jax.runs import restore_run

        config, _, state = restore_run(args.workdir)
        diffusers_unet.export_unet(args.out, config, state.ema_params)
        print(f"wrote the diffusers UNet2DModel directory {args.out}")
        return
    base = load_config(args.config)
    if args.command == "diffusers":
        config, params = diffusers_unet.import_unet(args.source, base)
    else:
        config, params = edm.import_network(args.source, base)
    write_imported_run(args.workdir, config, params)
    overrides, missing = launch_overrides(base, config)
    command = ["python3", "launch.py", "--mode=eval", f"--workdir={args.workdir}",
               f"--config={args.config}", *overrides]
    print(f"wrote {args.workdir}: config.json and checkpoint 0 with the weights of {args.source}")
    print(f"sample or evaluate it with (add the data and eval keys):\n  {shlex.join(command)}")
    if missing:
        print(f"note: keys not in {args.config}, which the launcher cannot set from the command "
              f"line (add them to a copy of that config file): {', '.join(missing)}")


if __name__ == "__main__":
    sys.exit(main())
