"""Writes the DiT reference fixtures of tests/test_dit.py from the official code.

Two fixtures, each a tiny network (8x8x4 inputs, patch 2, width 32, depth 2, 4 heads, 10
classes) with random weights of non-trivial statistics (every tensor redrawn, the zero-initialised
adaLN and output layers included, so a mis-mapped tensor changes the output), a batch of 2
inputs (one of them the null label) and the official network's output:

- `--dit_repo DIR`, run with a Python that has torch and timm (`/work/refvenv/bin/python`):
  DIR is a checkout of github.com/facebookresearch/DiT; its `models.py` DiT with learn_sigma
  runs in float64 on float32 weights and writes `dit_official.npz` (state-dict keys).
- `--meanflow_repo DIR`, run with a Python that has jax and flax (`python3`): DIR is a checkout
  of github.com/Gsunshine/meanflow; its `models/models_dit.py` DiT (with the h embedder) runs
  in float64 on float32 weights and writes `dit_meanflow.npz` (flattened flax keys).

    /work/refvenv/bin/python tools/make_dit_fixtures.py --dit_repo DIR [--out tests/data]
    python3 tools/make_dit_fixtures.py --meanflow_repo DIR [--out tests/data]

DIR holds the repository's files (`git clone`, or `git -C GIT_DIR archive HEAD | tar -x -C DIR`
from a bare copy). The committed fixtures were made from facebookresearch/DiT@ed81ce2 (torch
2.13, timm 1.0.31) and Gsunshine/meanflow@d70cb55 (jax 0.10.2, flax 0.12.8); the seeds are
fixed, so a rerun writes the same arrays.

Each `.npz` holds `param:<key>` (the weights), `x` (B, H, W, C), `t`, `y`, for MeanFlow `h`,
and `out` (B, H, W, C_out), all in NHWC.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
            num_classes=10)


def random_weight(rng: np.random.Generator, name: str, shape, fan_in: int) -> np.ndarray:
    """N(0, 1 / fan_in) for weights, N(0, 1) for the label table, N(0, 0.2^2) for biases."""
    if "embedding" in name:
        std = 1.0
    elif name.endswith("bias"):
        std = 0.2
    else:
        std = fan_in ** -0.5
    return (std * rng.standard_normal(shape)).astype(np.float32)


def inputs(rng: np.random.Generator) -> dict:
    x = rng.standard_normal((2, TINY["input_size"], TINY["input_size"], TINY["in_channels"]))
    return dict(x=x.astype(np.float32), y=np.array([3, TINY["num_classes"]], np.int32))


def official_dit(repo: str) -> dict:
    import torch

    sys.path.insert(0, repo)
    from models import DiT

    rng = np.random.default_rng(0)
    model = DiT(**TINY, learn_sigma=True).eval()
    state = {}
    for name, p in model.state_dict().items():
        if name == "pos_embed":
            state[name] = p.numpy().copy()
            continue
        fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        state[name] = random_weight(rng, name, tuple(p.shape), fan_in)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    data = inputs(rng)
    data["t"] = np.array([3.7, 642.0], np.float32)
    model = model.double()  # its sinusoid stays float32, as in ours; the MLP takes it in float64
    model.t_embedder.mlp.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    with torch.no_grad():
        out = model(torch.from_numpy(data["x"]).permute(0, 3, 1, 2).double(),
                    torch.from_numpy(data["t"]).double(), torch.from_numpy(data["y"]).long())
    data["out"] = out.permute(0, 2, 3, 1).numpy()
    return {**{f"param:{k}": v for k, v in state.items()}, **data}


def official_meanflow(repo: str) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from flax import traverse_util

    sys.path.insert(0, repo)
    from models.models_dit import DiT

    rng = np.random.default_rng(1)
    model = DiT(**TINY, learn_sigma=False)
    data = inputs(rng)
    data["t"] = np.array([0.9, 0.35], np.float32)
    data["h"] = np.array([0.6, 0.0], np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), data["x"], data["t"],
                                               data["h"], data["y"]))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    params = {}
    for name, s in flat.items():
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        params[name] = random_weight(rng, name, s.shape, fan_in)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                             traverse_util.unflatten_dict(params, sep="/"))
    out = model.apply(variables, jnp.asarray(data["x"], jnp.float64),
                      jnp.asarray(data["t"], jnp.float64), jnp.asarray(data["h"], jnp.float64),
                      data["y"])
    data["out"] = np.asarray(out, np.float64)
    return {**{f"param:{k}": v for k, v in params.items()}, **data}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit_repo", help="checkout of facebookresearch/DiT")
    parser.add_argument("--meanflow_repo", help="checkout of Gsunshine/meanflow")
    parser.add_argument("--out", default=os.path.normpath(os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")))
    args = parser.parse_args()
    if bool(args.dit_repo) == bool(args.meanflow_repo):
        parser.error("give one of --dit_repo and --meanflow_repo")
    os.makedirs(args.out, exist_ok=True)
    if args.dit_repo:
        path, arrays = os.path.join(args.out, "dit_official.npz"), official_dit(args.dit_repo)
    else:
        path, arrays = (os.path.join(args.out, "dit_meanflow.npz"),
                        official_meanflow(args.meanflow_repo))
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
