"""Checkpoints with orbax: the train state (params, EMA, optimizer, step, RNG) and the data
iterator's position, saved asynchronously by every process together."""
from __future__ import annotations

import os
from typing import Optional

import orbax.checkpoint as ocp

from diffusion_jax.errors import CheckpointError


class Checkpointer:
    """`workdir/checkpoints/<step>/{state, loader}`; keeps the newest `max_to_keep`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save,
                                               read_only=read_only, create=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "loader"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, loader_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            loader=ocp.args.JsonSave({k: int(v) for k, v in loader_state.items()})))

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, loader_state dict) of `step` (default: newest).

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: the layout to restore
        into, which may differ from the layout the checkpoint was saved with.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}: train first")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore()))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {step} in {self.directory} is unreadable or does "
                                  f"not match the config: {reason[:300]}") from None
        return restored["state"], dict(restored["loader"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
