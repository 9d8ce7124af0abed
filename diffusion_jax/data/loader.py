"""A deterministic, checkpointable batch iterator over a random-access source.

Epoch e visits the examples in the order of a permutation drawn from (seed, e); global batch b
of the epoch takes the next `global_batch` indices, and process p of P keeps its contiguous
slice of them, so the global batch is the same whatever the number of hosts. Random
horizontal flips are drawn from (seed, epoch, example position), so augmentation is
reproducible too. The whole position is two integers, `LoaderState`, saved in checkpoints:
restoring it resumes at exactly the next batch. A background thread prefetches batches.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator

import numpy as np


@dataclasses.dataclass
class LoaderState:
    epoch: int = 0
    batch_in_epoch: int = 0

    def as_dict(self) -> dict:
        return {"epoch": int(self.epoch), "batch_in_epoch": int(self.batch_in_epoch)}

    @classmethod
    def from_dict(cls, d) -> "LoaderState":
        return cls(int(d["epoch"]), int(d["batch_in_epoch"]))


class BatchLoader:
    """Yields (images, labels) of this process's share of each global batch; drops the remainder."""

    def __init__(self, source, decode: Callable, *, global_batch: int, seed: int,
                 random_flip: bool = False, process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2):
        if global_batch % process_count:
            raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
        if len(source) < global_batch:
            raise ValueError(f"batch size {global_batch} exceeds the data set size {len(source)}")
        self.source, self.decode = source, decode
        self.global_batch, self.seed, self.random_flip = global_batch, seed, random_flip
        self.local_batch = global_batch // process_count
        self.process_index, self.prefetch = process_index, prefetch
        self.batches_per_epoch = len(source) // global_batch
        self.state = LoaderState()

    def _indices(self, state: LoaderState) -> np.ndarray:
        order = np.random.default_rng([self.seed, state.epoch]).permutation(len(self.source))
        start = state.batch_in_epoch * self.global_batch + self.process_index * self.local_batch
        return order[start:start + self.local_batch], start

    def _load(self, state: LoaderState):
        indices, start = self._indices(state)
        pairs = [self.decode(self.source[int(i)]) for i in indices]
        images = np.stack([p[0] for p in pairs]).astype(np.float32)
        labels = np.asarray([p[1] for p in pairs], dtype=np.int32)
        if self.random_flip:
            rng = np.random.default_rng([self.seed, state.epoch, start, 1])
            flip = rng.random(len(images)) < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return images, labels

    def _advance(self, state: LoaderState) -> LoaderState:
        nxt = state.batch_in_epoch + 1
        return LoaderState(state.epoch + 1, 0) if nxt >= self.batches_per_epoch else LoaderState(
            state.epoch, nxt)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate from `self.state`; `self.state` always names the next batch to be consumed."""
        buffer: queue.Queue = queue.Queue(maxsize=max(self.prefetch, 1))
        stop = threading.Event()

        def produce(state):
            while not stop.is_set():
                try:
                    item = (state, self._load(state))
                except Exception as e:  # handed to the consumer, which re-raises it
                    item = (state, e)
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                state = self._advance(state)

        worker = threading.Thread(target=produce, args=(self.state,), daemon=True)
        worker.start()
        try:
            while True:
                state, batch = buffer.get()
                if isinstance(batch, Exception):
                    raise batch
                self.state = self._advance(state)
                yield batch
        finally:
            stop.set()
