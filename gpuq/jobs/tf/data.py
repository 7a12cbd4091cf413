"""A data position that is just the step number (pure numpy: no TensorFlow).

For exact resume the batch a step trains on must not depend on how many times the job was
interrupted.  :class:`ShuffledBatches` makes batch ``k`` a pure function of ``(seed, k)``: epoch
``e = k // steps_per_epoch`` uses its own permutation, seeded from ``(seed, e)``.  So the position
in the data *is* the step counter that the checkpoint already holds; there is no iterator to save.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gpuq.errors import InvalidInput


class ShuffledBatches:
    """Reshuffled-every-epoch mini-batches over arrays that fit in memory.

    The last incomplete batch of each epoch is dropped, so every step has the same batch shape
    (one traced ``tf.function``) and ``steps_per_epoch = n // batch_size``.
    """

    def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, seed: int) -> None:
        if not arrays:
            raise InvalidInput("ShuffledBatches needs at least one array.")
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise InvalidInput("ShuffledBatches: all arrays need the same number of rows.")
        if batch_size <= 0 or batch_size > n:
            raise InvalidInput(f"batch size {batch_size} must be between 1 and the {n} examples.")
        self.arrays = tuple(arrays)
        self.batch_size = batch_size
        self.seed = seed
        self.n = n
        self.steps_per_epoch = n // batch_size
        self._cached_epoch = -1
        self._cached_order: np.ndarray | None = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of rows used in ``epoch``."""
        if epoch != self._cached_epoch or self._cached_order is None:
            rng = np.random.default_rng([self.seed, epoch])
            self._cached_order = rng.permutation(self.n)
            self._cached_epoch = epoch
        return self._cached_order

    def indices(self, step: int) -> np.ndarray:
        if step < 0:
            raise InvalidInput(f"step {step} is negative.")
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.batch_size
        return self.order(epoch)[start:start + self.batch_size]

    def batch(self, step: int) -> tuple[np.ndarray, ...]:
        """The arrays' rows for ``step``."""
        idx = self.indices(step)
        return tuple(a[idx] for a in self.arrays)
