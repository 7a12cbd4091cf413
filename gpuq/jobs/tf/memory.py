"""Apply the job's GPU memory share to TensorFlow (TF2 ``tf.config`` and TF1 ``ConfigProto``).

Explicit, not automatic: a script calls :func:`configure_gpu_memory` once, first thing, before it
builds a model or a tensor.  TensorFlow fixes its GPU allocators when it first initialises its
devices; after that nothing can change them, so a late call raises :class:`MemoryConfigTooLate`
naming the line to move (docs/runtime.md explains why this is not done on import).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from gpuq.errors import MemoryConfigTooLate
from gpuq.jobs.tf.env import MemoryPlan, memory_plan_from_env
from gpuq.jobs.tf.stop import GUARD

_MOVE_IT = (
    "move `gpuq.jobs.tf.configure_gpu_memory()` to the top of the script, right after the imports "
    "and before anything builds a model, a tensor or a dataset."
)

_applied: MemoryPlan | None = None


def applied_plan() -> MemoryPlan | None:
    """The plan :func:`configure_gpu_memory` applied in this process, or None."""
    return _applied


def tensorflow_devices_initialised() -> bool:
    """True once TensorFlow has created its eager context (and with it, its GPU allocators)."""
    from tensorflow.python.eager import context  # TensorFlow's own module; no public equivalent

    ctx = context.context()
    return getattr(ctx, "_context_handle", None) is not None


def apply_plan(config_api: Any, gpus: Sequence[Any], plan: MemoryPlan) -> list[str]:
    """Apply ``plan`` to each of ``gpus`` through ``config_api`` (``tf.config``).

    Returns one line per action, for the job's log.  A limit uses
    ``set_logical_device_configuration(gpu, [LogicalDeviceConfiguration(memory_limit=MiB)])``, the
    TF2 form of ``per_process_gpu_memory_fraction``; no limit means memory growth.
    """
    actions: list[str] = []
    for gpu in gpus:
        try:
            if plan.limit_mib is not None:
                config_api.set_logical_device_configuration(
                    gpu, [config_api.LogicalDeviceConfiguration(memory_limit=plan.limit_mib)])
                actions.append(f"{gpu.name}: memory_limit={plan.limit_mib} MiB")
            else:
                config_api.experimental.set_memory_growth(gpu, True)
                actions.append(f"{gpu.name}: memory growth")
        except RuntimeError as e:  # "Physical devices cannot be modified after being initialized"
            raise MemoryConfigTooLate(f"TensorFlow already initialised the GPUs, so the memory share "
                                      f"could not be applied: {_MOVE_IT}") from e
    return actions


def configure_gpu_memory(plan: MemoryPlan | None = None, quiet: bool = False) -> MemoryPlan:
    """Apply the memory share gpuq gave this job (from the environment unless ``plan`` is given).

    Call it once, before TensorFlow builds anything.  Calling it again with the same plan is a
    no-op.  Without GPUs (CPU runs) there is nothing to configure, but a late call still raises,
    so the mistake shows up on a laptop rather than on the shared server.
    """
    global _applied
    GUARD.install()  # a SIGTERM while TensorFlow imports exits 75 (docs/runtime.md)
    plan = memory_plan_from_env() if plan is None else plan
    if _applied is not None:
        if plan == _applied:
            return _applied
        raise MemoryConfigTooLate(f"configure_gpu_memory() already applied {_applied.describe()}; "
                                  "TensorFlow cannot change it in the same process.")
    import tensorflow as tf

    if tensorflow_devices_initialised():
        raise MemoryConfigTooLate(f"configure_gpu_memory() was called after TensorFlow started: {_MOVE_IT}")
    gpus = tf.config.list_physical_devices("GPU")
    actions = apply_plan(tf.config, gpus, plan)
    _applied = plan
    if not quiet:
        where = "; ".join(actions) if actions else "no GPU visible, nothing to limit"
        print(f"gpuq: GPU memory: {plan.describe()} ({where})", file=sys.stderr, flush=True)
    return plan


def session_config(plan: MemoryPlan | None = None, base: Any = None) -> Any:
    """A ``tf.compat.v1.ConfigProto`` carrying the same share, for ``tf.compat.v1.Session``.

    ``allow_growth`` is always on (gpuq's worker also sets ``TF_FORCE_GPU_ALLOW_GROWTH``, which
    TensorFlow prefers over the proto); with a share, ``per_process_gpu_memory_fraction`` caps it.
    ``base`` is an existing ConfigProto to copy and extend.
    """
    import tensorflow as tf

    plan = memory_plan_from_env() if plan is None else plan
    config = tf.compat.v1.ConfigProto()
    if base is not None:
        config.CopyFrom(base)
    config.gpu_options.allow_growth = True
    if plan.fraction is not None:
        config.gpu_options.per_process_gpu_memory_fraction = plan.fraction
    return config
