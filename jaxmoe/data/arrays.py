"""A resumable in-memory batch pipeline over aligned numpy arrays.

:class:`ArrayPipeline`: ``.iterator()`` yields dict batches from aligned numpy arrays,
reshuffled every epoch by a seeded permutation; the iterator's ``get_state()`` /
``set_state()`` (``{"epoch", "position"}``) resume exactly. The pipelines of the small
in-memory datasets (:mod:`jaxmoe.data.datasets`) use it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxmoe.errors import DataError

__all__ = ["ArrayPipeline", "ArrayIterator"]


class ArrayPipeline:
    """Batches of aligned arrays (all with the same leading length ``N``).

    Args:
      arrays: name -> ``[N, ...]`` array; a batch is ``{name: array[idx]}``.
      batch_size: examples per batch (the last incomplete batch of an epoch is dropped).
      seed: seed of the per-epoch permutations (epoch ``e`` uses ``default_rng([seed, e])``).
      shuffle: False keeps the stored order.
      num_epochs: None repeats forever; otherwise the iterator stops after that many epochs.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {len(v) for v in self.arrays.values()}
        if len(lengths) != 1:
            raise DataError(f"ArrayPipeline arrays must share their first dimension, got lengths {sorted(lengths)}.")
        self.num_examples = lengths.pop()
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}.")
        if self.num_examples < batch_size:
            raise DataError(f"the data has {self.num_examples} examples, fewer than one batch of {batch_size}; "
                            "lower train.batch_size.")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_epochs = num_epochs

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """Example order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def iterator(self) -> "ArrayIterator":
        return ArrayIterator(self)


class ArrayIterator:
    """Iterator of :class:`ArrayPipeline` batches with ``get_state`` / ``set_state``."""

    def __init__(self, pipeline: ArrayPipeline):
        self.pipeline = pipeline
        self.epoch = 0
        self.position = 0  # next batch within the epoch
        self._cached: tuple = (None, None)

    def __iter__(self):
        return self

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            self._cached = (epoch, self.pipeline.order(epoch))
        return self._cached[1]

    def __next__(self) -> dict:
        p = self.pipeline
        if p.num_epochs is not None and self.epoch >= p.num_epochs:
            raise StopIteration
        start = self.position * p.batch_size
        idx = self._order(self.epoch)[start:start + p.batch_size]
        self.position += 1
        if self.position >= p.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return {k: v[idx] for k, v in p.arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def set_state(self, state: Mapping) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.pipeline.batches_per_epoch:
            raise DataError(f"data iterator state {dict(state)} does not fit this pipeline "
                            f"({self.pipeline.batches_per_epoch} batches per epoch).")
        self.epoch, self.position = epoch, position
