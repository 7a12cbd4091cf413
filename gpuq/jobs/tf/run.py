"""Checkpoint, resume, preemption and progress for a custom TensorFlow training loop.

    run = TrainingRun(total_steps=3000, model=model, optimizer=optimizer, seed=0)
    for step in run.steps():          # starts at the restored step
        x, y = batches.batch(step)    # the data position is the step number
        run.report_loss(train_step(x, y))
    run.finish()

What one checkpoint (``tf.train.Checkpoint`` under ``tf.train.CheckpointManager``) holds:

* ``step``: the number of finished steps, which is also the position in the data;
* ``model``: its weights, and ``model_state``: its non-trainable variables, which include the
  state of every Keras ``SeedGenerator`` (dropout and other random layers);
* ``optimizer``: its slots, its ``iterations`` counter (so a learning-rate schedule continues
  where it stopped) and, with ``use_ema=True``, the moving averages of the weights;
* ``rng``: a ``tf.random.Generator`` for the script's own randomness (``run.rng``);
* anything passed as ``extra``.

With ``data=`` (a ``tf.data.Dataset`` of one epoch of batches) the run also owns the data: it
repeats the dataset, iterates it, and checkpoints the iterator with tf.data's own iterator
checkpointing (``data`` entry), so a shuffled, mapped, prefetched pipeline resumes exactly
(``for step, batch in run.batches()``).

SIGTERM (gpuq's cancel, requeue, preemption, time limit, shutdown) is handled by
:mod:`gpuq.jobs.tf.stop`: from the restore on it only sets a flag, and the loop finishes the step in
progress, saves, and exits with ``GPUQ_REQUEUE_EXIT_CODE`` (75).  After :meth:`TrainingRun.finish`
a SIGTERM exits 75 at once (the final checkpoint is already saved).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from typing import Any, Iterator, Mapping, TextIO

import tensorflow as tf
from google.protobuf import text_format

from gpuq.errors import CheckpointError, InvalidInput
from gpuq.jobs.tf.env import (checkpoint_dir_from_env, progress_file_from_env, requeue_exit_code_from_env,
                              restart_count_from_env)
from gpuq.jobs.tf.memory import applied_plan
from gpuq.jobs.tf.pipeline import DataPipeline
from gpuq.jobs.tf.progress import ProgressReporter
from gpuq.jobs.tf.stop import GUARD, Phase


class TrainingRun:
    """One training run that survives interruption; see the module docstring."""

    def __init__(self, *, total_steps: int | None = None, epochs: int | None = None, model: Any = None, optimizer: Any = None,
                 checkpoint_dir: str | None = None, seed: int = 0,
                 save_every_steps: int | None = 500, save_every_s: float | None = 300.0,
                 max_to_keep: int = 2, steps_per_epoch: int | None = None,
                 extra: Mapping[str, Any] | None = None, data: Any = None, log: TextIO | None = None,
                 handle_sigterm: bool = True) -> None:
        self.save_every_steps = save_every_steps
        self.save_every_s = save_every_s
        self.directory = checkpoint_dir_from_env(checkpoint_dir)
        self.exit_code = requeue_exit_code_from_env()
        self.restart_count = restart_count_from_env()
        self._log = log if log is not None else sys.stdout
        self._handle_sigterm = handle_sigterm
        self.data = DataPipeline(data, steps_per_epoch=steps_per_epoch, say=self._print) if data is not None else None
        self.steps_per_epoch = steps_per_epoch or (self.data.steps_per_epoch if self.data else None)
        self.total_steps = _total_steps(total_steps, epochs, self.steps_per_epoch)
        self._warn_if_memory_not_configured()
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="gpuq_step")
        self.rng = tf.random.Generator.from_seed(seed)
        self.checkpoint = tf.train.Checkpoint(**self._checkpoint_objects(model, optimizer, extra))
        self.manager = open_manager(self.checkpoint, self.directory, max_to_keep)
        if handle_sigterm:  # from here on a SIGTERM means "save and exit 75", even during the restore
            GUARD.enter(Phase.TRAINING)
        try:
            self.start_step = self._restore()
        except BaseException:
            self.close()
            raise
        self._last_saved_step = self.start_step if self.manager.latest_checkpoint else -1
        self._last_save_s = time.monotonic()
        self._loss: Any = None
        self.progress = ProgressReporter(progress_file_from_env(), self.total_steps, start_step=self.start_step)

    def _checkpoint_objects(self, model: Any, optimizer: Any, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        objects: dict[str, Any] = {"step": self.step, "rng": self.rng}
        if self.data is not None:
            objects["data"] = self.data.iterator
        if model is not None:
            if not model.built:
                raise InvalidInput("build the model before TrainingRun (call it on a batch, or give "
                                   "keras.Input as its first layer) so its weights exist to restore.")
            objects["model"] = model
            objects["model_state"] = list(model.non_trainable_variables)  # includes Keras seed generators
        if optimizer is not None:
            if not optimizer.built:
                if model is None:
                    raise InvalidInput("give the model too, or build the optimizer first, so its "
                                       "slots exist to restore.")
                with _strategy_scope(model):  # slots beside the weights (mirrored under MirroredStrategy)
                    optimizer.build(model.trainable_variables)
            objects["optimizer"] = optimizer
        for name, obj in (extra or {}).items():
            if name in objects:
                raise InvalidInput(f"extra checkpoint entry {name!r} clashes with the runtime's own.")
            objects[name] = obj
        return objects

    # ---- public ------------------------------------------------------------------------------

    @property
    def resumed(self) -> bool:
        return self.start_step > 0

    @property
    def stop_requested(self) -> bool:
        return self._handle_sigterm and GUARD.stop_requested

    @property
    def done(self) -> bool:
        return int(self.step.numpy()) >= self.total_steps

    def steps(self) -> Iterator[int]:
        """Yield the step numbers still to train, checkpointing as it goes."""
        k = int(self.step.numpy())
        while k < self.total_steps:
            self.before_step()
            yield k
            k = self.after_step()

    def batches(self) -> Iterator[tuple[int, Any]]:
        """Like :meth:`steps`, with the next batch of ``data=`` (its iterator is in the checkpoint)."""
        if self.data is None:
            raise InvalidInput("run.batches() needs TrainingRun(data=a tf.data.Dataset); use run.steps() "
                               "with a step-indexed source such as ShuffledBatches.")
        for k in self.steps():
            yield k, self.data.next()

    def before_step(self) -> None:
        """Exit 75 now if a SIGTERM came before this step started (after the restore, say)."""
        if self.stop_requested:
            self._save_and_exit(int(self.step.numpy()))

    def after_step(self) -> int:
        """Count one finished step; report, save if due, and exit 75 if a SIGTERM came during it."""
        k = int(self.step.numpy()) + 1
        self.step.assign(k)
        self._report(k)
        if self.stop_requested:
            self._save_and_exit(k)
        if self._save_due(k):
            self.save()
        return k

    def report_loss(self, loss: Any) -> None:
        """Remember the latest loss (a tensor is fine: it is read only when progress is written)."""
        self._loss = loss

    def save(self) -> str | None:
        """Write a checkpoint for the current step (no-op if this step is already saved)."""
        k = int(self.step.numpy())
        if k == self._last_saved_step:
            return self.manager.latest_checkpoint
        try:
            path = self.manager.save(checkpoint_number=k)
        except (OSError, tf.errors.OpError) as e:
            raise CheckpointError(f"could not write a checkpoint into {self.directory}: {e}; "
                                  "check that the directory is writable and the disk is not full.") from e
        self._last_saved_step = k
        self._last_save_s = time.monotonic()
        return path

    def finish(self) -> None:
        """Save the final state (so a rerun knows it is done) and report 100 %.

        A SIGTERM that came during the final save exits 75 right after it, and one that comes
        later (in the script's epilogue) exits 75 at once: the requeued run restores the final
        checkpoint, trains zero steps and repeats only the epilogue.
        """
        self.save()
        self._report(int(self.step.numpy()), force=True)
        if self._handle_sigterm:
            GUARD.enter(Phase.FINISHED)

    def close(self) -> None:
        """Give up the run without a final save (a failed start); SIGTERM exits 75 at once again."""
        if self._handle_sigterm and GUARD.phase is Phase.TRAINING:
            GUARD.enter(Phase.BEFORE_TRAINING)

    # ---- internals ---------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        print(f"gpuq: {text}", file=self._log, flush=True)

    def _warn_if_memory_not_configured(self) -> None:
        if applied_plan() is None and tf.config.list_physical_devices("GPU"):
            self._print("warning: GPU memory share not applied; call gpuq.jobs.tf.configure_gpu_memory() "
                        "at the top of the script.")

    def _restore(self) -> int:
        latest = self.manager.latest_checkpoint
        if latest is None:
            orphans = sorted(glob.glob(os.path.join(glob.escape(self.directory), "ckpt-*.index")))
            listed = os.path.exists(os.path.join(self.directory, "checkpoint"))
            if orphans and listed:  # a garbled list reads as "none" in TensorFlow: do not start over
                raise CheckpointError(f"{self.directory} holds checkpoints ({os.path.basename(orphans[-1])} ...) but "
                                      "its checkpoint list names none of them: restore the list, or move the "
                                      "ckpt-* files aside to start from step 0.")
            # (ckpt-* files without a list are a first save cut short by SIGKILL: never used, overwritten)
            self._print(f"no checkpoint in {self.directory}: starting at step 0")
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(f"checkpoint {latest} does not match this model or is damaged ({e}); "
                                  "use another --checkpoint-dir or delete the old checkpoints.") from e
        k = int(self.step.numpy())
        self._print(f"resumed at step {k} of {self.total_steps} from {latest} "
                    f"(restart {self.restart_count})")
        return k

    def _save_due(self, k: int) -> bool:
        if self.save_every_steps and k % self.save_every_steps == 0:
            return True
        return bool(self.save_every_s) and time.monotonic() - self._last_save_s >= self.save_every_s

    def _report(self, k: int, force: bool = False) -> None:
        epoch = k // self.steps_per_epoch if self.steps_per_epoch else None
        loss = self._loss
        if loss is not None and (force or self.progress.due()):
            loss = float(loss)
        else:
            loss = None
        self.progress.report(k, loss=loss, epoch=epoch, force=force)

    def _save_and_exit(self, k: int) -> None:
        path = self.save()
        self._report(k, force=True)
        self._print(f"SIGTERM: checkpoint at step {k} saved to {path}; exiting with {self.exit_code} "
                    "so gpuq requeues the job")
        raise SystemExit(self.exit_code)


def unreadable_state(directory: str, e: Exception) -> CheckpointError:
    return CheckpointError(f"the checkpoint list {directory}/checkpoint is unreadable ({type(e).__name__}: {e}); "
                           "move it aside (the ckpt-* files stay usable) or use another --checkpoint-dir.")


def open_manager(checkpoint: Any, directory: str, max_to_keep: int) -> Any:
    """A CheckpointManager over ``directory``; a garbled ``checkpoint`` list is a domain error."""
    try:
        return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
    except (ValueError, text_format.ParseError, tf.errors.OpError) as e:  # UnicodeDecodeError is a ValueError
        raise unreadable_state(directory, e) from e


def _total_steps(total_steps: int | None, epochs: int | None, steps_per_epoch: int | None) -> int:
    if (total_steps is None) == (epochs is None):
        raise InvalidInput("give TrainingRun either total_steps= or epochs=, not both.")
    if epochs is not None:
        if not steps_per_epoch:
            raise InvalidInput("epochs= needs steps_per_epoch= (or data= of known length).")
        total_steps = epochs * steps_per_epoch
    if total_steps < 0:
        raise InvalidInput(f"total_steps {total_steps} is negative.")
    return total_steps


def _strategy_scope(model: Any) -> Any:
    """The model's tf.distribute strategy scope (Keras records it when the model is built in one)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
