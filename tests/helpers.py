"""Small configs shared by the tests: tiny networks so every run takes seconds on a CPU."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.ddpm import digits  # noqa: E402
from diffusion_jax.models.layers import sinusoidal_embedding  # noqa: E402

TINY_MODEL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
TINY_OVERRIDES = ["--config.model.ch=16", "--config.model.ch_mult=(1,2)",
                  "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()",
                  "--config.diffusion.num_timesteps=100", "--config.training.preview_samples=0"]


def tiny_ddpm_config(**training):
    """The digits DDPM config with a tiny U-Net, T = 100 and the given training overrides."""
    config = digits.get_config()
    config.model.update(TINY_MODEL)
    config.diffusion.num_timesteps = 100
    config.training.update(dict(dict(num_steps=20, batch_size=32, checkpoint_every=10,
                                     log_every=5, sample_at_end=False,
                                     preview_samples=0), **training))
    config.optim.update(warmup_steps=0, lr=2e-3)
    config.sampling.update(num_samples=8, batch_size=8, num_steps=100)
    return config


def launch_one_device(*args, timeout=600):
    """launch.py in a subprocess on one CPU device: tiny models train faster unsplit than over
    the suite's eight fake devices."""
    import subprocess

    device_flag = "--xla_force_host_platform_device_count"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(device_flag)]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags + [f"{device_flag}=1"]))  # keeps the rest
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def random_params(shapes, seed=0, scale=0.1):
    """Parameters of the shapes `jax.eval_shape(init)` gives, drawn with numpy: no init is
    compiled, and zero-initialised output layers pass signal."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def write_random_lpips_weights(path, seed=0):
    """LPIPS weights (`losses.lpips`) drawn with numpy, non-negative as LPIPS' linear heads are,
    saved to `path`; returns them."""
    import jax
    import numpy as np

    from diffusion_jax.losses import lpips

    weights = jax.tree.map(np.abs, random_params(lpips.abstract_lpips_params(), seed, 0.05))
    lpips.save_lpips_params(str(path), weights)
    return weights


class ExactTeacher:
    """The exact denoiser of Gaussian-mixture `data` in a distillation teacher's role (what
    consistency distillation asks of a teacher method: `init_params`, `conditional_denoiser`,
    `has_denoiser`, `image_shape`, `num_classes`), with no parameters; images of shape
    `image_shape` hold d values each."""

    has_denoiser = True

    def __init__(self, data, image_shape, num_classes=0):
        self.data, self.image_shape, self.num_classes = data, tuple(image_shape), num_classes

    def init_params(self, rng):
        return {}

    def conditional_denoiser(self, params, aux=None):
        def denoiser(x, sigma, cond=None):
            import jax.numpy as jnp

            flat = x.reshape(x.shape[0], -1)
            sigma = jnp.broadcast_to(jnp.asarray(sigma, flat.dtype), flat.shape[:1])
            return self.data.denoiser(flat, sigma, cond).reshape(x.shape)
        return denoiser


def sample(family, params, rng, x_init, cond=None, /, *, aux=None, **options):
    """The images of `family.sample` (a method) with the sampler `family.sampler(**options)`."""
    return family.sample(params, rng, x_init, cond, aux=aux, sampler=family.sampler(**options))[0]


def edit(family, params, rng, x, mask, cond=None, /, *, aux=None, task, strength=1.0, **options):
    """`family.edit` (a method) with the sampler `family.sampler(**options)`."""
    return family.edit(params, rng, x, mask, cond, aux=aux, sampler=family.sampler(**options),
                       task=task, strength=strength)


DATA = os.path.join(ROOT, "tests", "data")


def load_tool(name):
    """The module `tools/<name>.py` (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_state_dict(fixture):
    """The seeded state dict (`tools/reference_weights.py`) of a reference-output fixture that
    stores its tensors as `names`, `shapes` (JSON) and `seed`."""
    import json

    weights = load_tool("reference_weights")
    return weights.state_dict(int(fixture["seed"]), [str(n) for n in fixture["names"]],
                              json.loads(str(fixture["shapes"])))


def max_relative_error(actual, expected):
    """max |actual - expected| / max |expected|: float32 rounding through a deep network is
    about 1e-6; a mis-mapped tensor is of order 1."""
    import numpy as np

    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected)))


class MLP(nn.Module):
    """A small backbone for 2-D data: F(x, c_noise) with a sinusoidal embedding of c_noise
    (the consistency tests' network)."""

    width: int = 128

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        h = jnp.concatenate([x, sinusoidal_embedding(t * 250.0, 32)], axis=-1)
        for _ in range(3):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)
