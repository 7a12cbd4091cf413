"""What the worker tells a training script through its environment (pure: no TensorFlow).

The worker (``gpuq.workers.env``) writes the contract; this module reads it back into plain
values.  It never imports TensorFlow, so the daemon, the CLI and the fast unit tests can use it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

from gpuq.errors import ConfigError
from gpuq.jobs.model import REQUEUE_EXIT_CODE

#: Where checkpoints go when the script runs by hand and names no directory.
DEFAULT_CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class MemoryPlan:
    """How a job may use each visible GPU.

    ``limit_mib`` is None for "the whole GPU, but allocate as needed" (memory growth, TF1's
    ``allow_growth``).  Otherwise it is a hard cap per GPU, and ``fraction`` is the same cap as
    a share of the GPU (for TF1's ``per_process_gpu_memory_fraction``).
    """

    limit_mib: int | None = None
    fraction: float | None = None

    @property
    def growth(self) -> bool:
        return self.limit_mib is None

    def describe(self) -> str:
        if self.limit_mib is None:
            return "memory growth on each visible GPU (no hard limit)"
        share = f" ({self.fraction:.4f} of the GPU)" if self.fraction is not None else ""
        return f"hard limit {self.limit_mib} MiB{share} on each visible GPU"


def memory_plan_from_env(environ: Mapping[str, str] | None = None) -> MemoryPlan:
    """Read ``GPUQ_GPU_MEM_MIB`` / ``GPUQ_GPU_MEM_FRACTION``; absent means the whole GPU.

    A job with only a fraction (a hand-made environment) gets no MiB limit from it: TensorFlow 2
    needs MiB, and the GPU's size is unknown without touching CUDA.  ``session_config`` still
    uses the fraction.
    """
    env = os.environ if environ is None else environ
    mib_text = env.get("GPUQ_GPU_MEM_MIB", "").strip()
    fraction_text = env.get("GPUQ_GPU_MEM_FRACTION", "").strip()
    limit_mib: int | None = None
    fraction: float | None = None
    if mib_text:
        try:
            limit_mib = int(mib_text)
        except ValueError as e:
            raise ConfigError(
                f"GPUQ_GPU_MEM_MIB={mib_text!r} is not a whole number of MiB: "
                "unset it or give a positive integer like 10240."
            ) from e
        if limit_mib <= 0:
            raise ConfigError(f"GPUQ_GPU_MEM_MIB={mib_text!r} must be positive, like 10240.")
    if fraction_text:
        try:
            fraction = float(fraction_text)
        except ValueError as e:
            raise ConfigError(
                f"GPUQ_GPU_MEM_FRACTION={fraction_text!r} is not a number: "
                "unset it or give a share above 0 and at most 1, like 0.25."
            ) from e
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ConfigError(
                f"GPUQ_GPU_MEM_FRACTION={fraction_text!r} must be above 0 and at most 1, like 0.25."
            )
    if limit_mib is None:
        return MemoryPlan(limit_mib=None, fraction=fraction)
    return MemoryPlan(limit_mib=limit_mib, fraction=fraction)


def checkpoint_dir_from_env(explicit: str | os.PathLike[str] | None = None,
                            environ: Mapping[str, str] | None = None) -> str:
    """The checkpoint directory: ``explicit`` if given, else ``GPUQ_CHECKPOINT_DIR``, else
    ``./checkpoints``."""
    env = os.environ if environ is None else environ
    if explicit is not None and str(explicit) != "":
        return os.fspath(explicit)
    return env.get("GPUQ_CHECKPOINT_DIR", "").strip() or DEFAULT_CHECKPOINT_DIR


def requeue_exit_code_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The exit status that means "checkpointed, requeue me" (75 unless the worker says otherwise)."""
    env = os.environ if environ is None else environ
    text = env.get("GPUQ_REQUEUE_EXIT_CODE", "").strip()
    if not text:
        return REQUEUE_EXIT_CODE
    try:
        code = int(text)
    except ValueError as e:
        raise ConfigError(f"GPUQ_REQUEUE_EXIT_CODE={text!r} is not an exit status (0-255).") from e
    if not 1 <= code <= 255:
        raise ConfigError(f"GPUQ_REQUEUE_EXIT_CODE={text!r} must be between 1 and 255.")
    return code


def progress_file_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """Where to write progress for ``gpuq status``; None when not running under gpuq."""
    env = os.environ if environ is None else environ
    return env.get("GPUQ_PROGRESS_FILE", "").strip() or None


def restart_count_from_env(environ: Mapping[str, str] | None = None) -> int:
    """How many times gpuq requeued this job before this run (0 when run by hand)."""
    env = os.environ if environ is None else environ
    text = env.get("GPUQ_RESTART_COUNT", "").strip()
    try:
        return int(text) if text else 0
    except ValueError:
        return 0
