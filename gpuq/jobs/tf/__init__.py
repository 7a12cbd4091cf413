"""gpuq's runtime for TensorFlow training scripts (TensorFlow 2.21, Keras 3).

Only training scripts import this; the daemon and the CLI never do.  Importing the package is
cheap: TensorFlow is loaded when a name that needs it is first used.  Usage::

    import gpuq.jobs.tf as gq
    gq.configure_gpu_memory()                 # first, before TensorFlow builds anything
    import keras
    ...build model and optimizer (decay, L2 and EMA are plain Keras 3, see docs/runtime.md)...
    run = gq.TrainingRun(total_steps=3000, model=model, optimizer=optimizer, seed=0)
    batches = gq.ShuffledBatches((x, y), batch_size=100, seed=0)
    for step in run.steps():
        run.report_loss(train_step(*batches.batch(step)))
    run.finish()

TF1-style code: ``tf.compat.v1.Session(config=gq.session_config())``.
See docs/runtime.md for the decisions behind this design.
"""

from __future__ import annotations

import importlib
from typing import Any

from gpuq.jobs.tf.env import (MemoryPlan, checkpoint_dir_from_env, memory_plan_from_env,
                              progress_file_from_env, requeue_exit_code_from_env)
from gpuq.jobs.tf.progress import ProgressReporter, write_progress_file

#: Names whose modules import TensorFlow (or numpy); loaded on first use, so that importing this
#: package needs only the standard library.
_LAZY = {
    "ShuffledBatches": "gpuq.jobs.tf.data",
    "configure_gpu_memory": "gpuq.jobs.tf.memory",
    "session_config": "gpuq.jobs.tf.memory",
    "applied_plan": "gpuq.jobs.tf.memory",
    "apply_plan": "gpuq.jobs.tf.memory",
    "TrainingRun": "gpuq.jobs.tf.run",
}

__all__ = [
    "MemoryPlan", "ProgressReporter", "ShuffledBatches", "TrainingRun", "applied_plan", "apply_plan",
    "checkpoint_dir_from_env", "configure_gpu_memory", "memory_plan_from_env", "progress_file_from_env",
    "requeue_exit_code_from_env", "session_config", "write_progress_file",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuq.jobs.tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
