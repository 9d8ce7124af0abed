"""Trains the digits feature network (`diffusion_jax/evaluation/digits_features.py`) on the
`train` split of the embedded digits and writes its weights to
`diffusion_jax/evaluation/assets/digits_classifier.npz`; prints the `test` split accuracy.

    python tools/train_digits_classifier.py [--out PATH] [--epochs 60] [--seed 0]

Fixed seed, AdamW, random one-pixel shifts as the only augmentation. The test split is used
only for the final report, never for model selection.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffusion_jax.data.digits import load_digits_arrays  # noqa: E402
from diffusion_jax.evaluation.digits_features import (  # noqa: E402
    WEIGHTS_PATH, DigitsClassifier, digits_feature_fn, save_classifier_params)


def random_shift(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Shifts each image by up to one pixel in each direction, filling with background (-1)."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    dy, dx = rng.integers(0, 3, size=(2, len(images)))
    return np.stack([p[y:y + 8, x:x + 8] for p, y, x in zip(padded, dy, dx)])


def train(epochs: int, seed: int, batch_size: int = 64):
    images, labels = load_digits_arrays("train")
    model = DigitsClassifier()
    key = jax.random.PRNGKey(seed)
    params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    steps = epochs * (len(images) // batch_size)
    optimizer = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            _, logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, random_shift(rng, images[idx]),
                                           labels[idx], sub)
            losses.append(float(loss))
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: train loss {np.mean(losses):.4f}")
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=WEIGHTS_PATH)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = train(args.epochs, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_classifier_params(args.out, params)
    test_images, test_labels = load_digits_arrays("test")
    _, logits = digits_feature_fn(path=args.out)(test_images)
    accuracy = float(np.mean(logits.argmax(-1) == test_labels))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
