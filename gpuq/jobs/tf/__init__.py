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

``model.fit``: ``gq.fit(model, dataset, epochs=...)``.  TF1-style code: ``gq.GraphRun`` (Session and
Saver) or ``gq.RequeueHook`` (MonitoredTrainingSession), with ``config=gq.session_config()``.
See docs/runtime.md for the decisions behind this design.
"""

from __future__ import annotations

import importlib
from typing import Any

from gpuq.jobs.tf.env import (MemoryPlan, checkpoint_dir_from_env, memory_plan_from_env,
                              progress_file_from_env, requeue_exit_code_from_env)
from gpuq.jobs.tf.progress import ProgressReporter, write_progress_file
from gpuq.jobs.tf.stop import GUARD, Phase, running_under_gpuq

#: Names whose modules import TensorFlow (or numpy); loaded on first use, so that importing this
#: package needs only the standard library.
_LAZY = {
    "ShuffledBatches": "gpuq.jobs.tf.data",
    "configure_gpu_memory": "gpuq.jobs.tf.memory",
    "session_config": "gpuq.jobs.tf.memory",
    "applied_plan": "gpuq.jobs.tf.memory",
    "apply_plan": "gpuq.jobs.tf.memory",
    "TrainingRun": "gpuq.jobs.tf.run",
    "fit": "gpuq.jobs.tf.fit",
    "exactness_problems": "gpuq.jobs.tf.pipeline",
    "GraphRun": "gpuq.jobs.tf.tf1",
    "RequeueHook": "gpuq.jobs.tf.tf1",
}

__all__ = [
    "GUARD", "GraphRun", "MemoryPlan", "Phase", "ProgressReporter", "RequeueHook", "ShuffledBatches", "TrainingRun",
    "applied_plan", "apply_plan", "exactness_problems", "fit",
    "checkpoint_dir_from_env", "configure_gpu_memory", "memory_plan_from_env", "progress_file_from_env",
    "requeue_exit_code_from_env", "session_config", "write_progress_file",
]


if running_under_gpuq():
    # The one side effect of this import, and only in a job gpuq started: from here on a SIGTERM
    # (while TensorFlow imports, say) exits 75 instead of killing the script (docs/runtime.md).
    GUARD.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuq.jobs.tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
