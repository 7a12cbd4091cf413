"""Progress reports for ``gpuq status`` (pure Python: no TensorFlow).

The runtime writes ``$GPUQ_PROGRESS_FILE`` atomically (a temp file in the same directory, then
``os.replace``) so the worker never reads half a file.  Writes are rate-limited: training loops
call :meth:`ProgressReporter.report` every step, but the file changes at most every
``min_interval_s``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Callable


def write_progress_file(path: str, step: int, total: int | None, epoch: int | None,
                        loss: float | None, eta_s: float | None, updated_at: float) -> None:
    """Write one progress record atomically."""
    record = {
        "step": int(step),
        "total": None if total is None else int(total),
        "epoch": None if epoch is None else int(epoch),
        "loss": None if loss is None or not math.isfinite(loss) else float(loss),
        "eta_s": None if eta_s is None else round(float(eta_s), 1),
        "updated_at": float(updated_at),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".progress-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ProgressReporter:
    """Tracks speed and writes progress; a no-op writer when ``path`` is None (run by hand).

    The ETA uses only the steps done in this run (restored steps took no time here).
    """

    def __init__(self, path: str | None, total: int | None, start_step: int = 0,
                 min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.total = total
        self.start_step = start_step
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_s = clock()
        self._last_write_s: float | None = None
        self.step = start_step
        self.epoch: int | None = None
        self.loss: float | None = None

    def eta_s(self) -> float | None:
        done = self.step - self.start_step
        if self.total is None or done <= 0:
            return None
        rate = done / max(self._clock() - self._started_s, 1e-9)
        return max(self.total - self.step, 0) / rate

    def due(self) -> bool:
        """Whether a non-forced :meth:`report` would write the file now."""
        if self.path is None:
            return False
        return self._last_write_s is None or self._clock() - self._last_write_s >= self.min_interval_s

    def report(self, step: int, loss: float | None = None, epoch: int | None = None,
               force: bool = False) -> None:
        self.step = step
        if loss is not None:
            self.loss = loss
        if epoch is not None:
            self.epoch = epoch
        if self.path is None:
            return
        if not force and not self.due():
            return
        self._last_write_s = self._clock()
        write_progress_file(self.path, self.step, self.total, self.epoch, self.loss, self.eta_s(),
                            self._wall_clock())
