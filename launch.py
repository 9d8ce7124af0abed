"""diffusion_jax launcher.

    python launch.py                                  # DDPM on the embedded digits, then samples
    python launch.py --config=configs/ddpm/cifar10.py:bf16 --workdir=runs/c10 --mode=train
    python launch.py --config=... --config.training.num_steps=10 --mode=info|sample|eval
    python launch.py --config=configs/text/shapes_edm.py --mode=sample --prompt="a red circle on the left"

Config errors (unknown keys, bad values, unknown names) print one line and exit with status 2.
"""
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "ddpm", "digits.py")

FLAGS = flags.FLAGS


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        fail(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_launch_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # a config file's own error, e.g. an unknown argument
        fail(f"config {spec!r}: {e}")


def _check_override_keys(argv):
    """Every --config.a.b=value must name an existing key: say which and list its siblings."""
    spec = DEFAULT_CONFIG
    for arg in argv[1:]:
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
    config = _load_config_file(spec)
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node, path = config, []
        for part in key.split("."):
            if not isinstance(node, config_dict.ConfigDict) or part not in node:
                where = ".".join(path) or "the config root"
                valid = sorted(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
                fail(f"unknown config key {key!r}: {where} has no {part!r}; valid: "
                     f"{', '.join(valid)}")
            node, path = node[part], path + [part]


def define_flags(argv):
    """Check the overrides, then define the flags (config_flags reads argv when defined)."""
    sys.path.insert(0, ROOT)
    _check_override_keys(argv)
    try:
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config file[:argument]",
                                        lock_config=True)
    except Exception as e:  # a value that does not parse for its key's type
        fail(str(e).strip().splitlines()[-1])
    flags.DEFINE_string("workdir", "workdir", "directory for config, metrics, checkpoints, samples")
    flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "info"], "what to run")
    flags.DEFINE_string("prompt", "", "sample mode, text-conditional model: the caption to draw")
    flags.DEFINE_string("negative_prompt", "", "sample mode: the caption to guide away from")


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)
    from diffusion_jax.errors import UserError
    from diffusion_jax.launcher import run

    try:
        return run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.prompt, FLAGS.negative_prompt)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    define_flags(sys.argv)
    app.run(main, flags_parser=parse_flags)
