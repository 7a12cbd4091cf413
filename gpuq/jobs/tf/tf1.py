"""gpuq's requeue contract for TF1-style scripts: graph, ``Session``, ``Saver``, ``MonitoredTrainingSession``.

The contract is the TF2 runtime's: restore the latest checkpoint on start, save on SIGTERM after
the step in progress and exit 75, save the final state, and exit 75 at once on a SIGTERM after it.
The data position is the global step (feed the batch of step k; ``ShuffledBatches`` does that).

Plain ``Session`` + ``Saver``::

    with graph.as_default():
        ...model, loss; global_step = tf.compat.v1.train.get_or_create_global_step()
        train_op = optimizer.minimize(loss, global_step=global_step)
        run = gq.GraphRun(total_steps=3000, global_step=global_step)   # adds a Saver and the init op
    with run.session(config=gq.session_config()) as sess:              # restores, or initialises
        for step in run.steps(sess):
            sess.run(train_op, feed_dict=feed(step))
        run.finish(sess)

``MonitoredTrainingSession`` restores and saves by itself; add ``gq.RequeueHook`` for SIGTERM::

    hook = gq.RequeueHook(total_steps=3000)
    with tf.compat.v1.train.MonitoredTrainingSession(checkpoint_dir=hook.directory, hooks=[hook, ...]) as sess:
        while not sess.should_stop():
            sess.run(train_op, feed_dict=feed(hook.step))

Exactness: the graph's stateful random ops (``tf.compat.v1.random_*`` with an op seed) keep their
state in the kernel, outside the checkpoint; use ``tf.random.stateless_*`` seeded by the step.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterator, TextIO

import tensorflow as tf
from google.protobuf import text_format

from gpuq.errors import CheckpointError
from gpuq.jobs.tf.env import checkpoint_dir_from_env, progress_file_from_env, restart_count_from_env
from gpuq.jobs.tf.progress import ProgressReporter
from gpuq.jobs.tf.run import unreadable_state
from gpuq.jobs.tf.stop import GUARD, Phase

v1 = tf.compat.v1

#: The file prefix, as MonitoredTrainingSession's CheckpointSaverHook names its checkpoints.
CHECKPOINT_BASENAME = "model.ckpt"


class _Contract:
    """What the Session helper and the hook share: directory, progress, SIGTERM, messages."""

    def __init__(self, total_steps: int, checkpoint_dir: str | None, steps_per_epoch: int | None,
                 log: TextIO | None) -> None:
        self.total_steps = total_steps
        self.directory = checkpoint_dir_from_env(checkpoint_dir)
        self.prefix = os.path.join(self.directory, CHECKPOINT_BASENAME)
        self.steps_per_epoch = steps_per_epoch
        self._log = log if log is not None else sys.stdout
        self.step = 0
        self.start_step = 0
        self.progress: ProgressReporter | None = None

    def say(self, text: str) -> None:
        print(f"gpuq: {text}", file=self._log, flush=True)

    def started(self, step: int, restored_from: str | None) -> None:
        self.step = self.start_step = step
        if restored_from:
            self.say(f"resumed at step {step} of {self.total_steps} from {restored_from} "
                     f"(restart {restart_count_from_env()})")
        else:
            self.say(f"no checkpoint in {self.directory}: starting at step 0")
        self.progress = ProgressReporter(progress_file_from_env(), self.total_steps, start_step=step)

    def report(self, step: int, force: bool = False) -> None:
        self.step = step
        if self.progress is not None:
            epoch = step // self.steps_per_epoch if self.steps_per_epoch else None
            self.progress.report(step, epoch=epoch, force=force)

    def save(self, saver: Any, sess: Any, step: int) -> str:
        try:
            os.makedirs(self.directory, exist_ok=True)
            return saver.save(sess, self.prefix, global_step=step)
        except (OSError, tf.errors.OpError) as e:
            raise CheckpointError(f"could not write a checkpoint into {self.directory}: {e}; "
                                  "check that the directory is writable and the disk is not full.") from e

    def latest(self) -> str | None:
        try:
            return tf.train.latest_checkpoint(self.directory)
        except (ValueError, text_format.ParseError, tf.errors.OpError) as e:
            raise unreadable_state(self.directory, e) from e

    def exit_requeue(self, step: int, path: str) -> None:
        self.report(step, force=True)
        GUARD.exit_now(f"SIGTERM: checkpoint at step {step} saved to {path}; exiting with {GUARD.exit_code} "
                       "so gpuq requeues the job")


class GraphRun(_Contract):
    """A TF1 graph trained with ``Session.run`` in the script's own loop; see the module docstring."""

    def __init__(self, *, total_steps: int, global_step: Any, checkpoint_dir: str | None = None,
                 save_every_steps: int | None = 500, save_every_s: float | None = 300.0,
                 max_to_keep: int = 2, steps_per_epoch: int | None = None, log: TextIO | None = None) -> None:
        super().__init__(total_steps, checkpoint_dir, steps_per_epoch, log)
        self.global_step = global_step
        self.save_every_steps = save_every_steps
        self.save_every_s = save_every_s
        self.saver = v1.train.Saver(max_to_keep=max_to_keep)
        self.init_op = v1.global_variables_initializer()
        self._last_saved = -1
        self._last_save_s = time.monotonic()

    def session(self, config: Any = None, **kwargs: Any) -> Any:
        """A ``tf.compat.v1.Session`` on the global step's graph, restored from the latest checkpoint."""
        GUARD.enter(Phase.TRAINING)
        sess = v1.Session(graph=self.global_step.graph, config=config, **kwargs)
        try:
            latest = self.latest()
            if latest:
                try:
                    self.saver.restore(sess, latest)
                except (ValueError, tf.errors.OpError) as e:
                    raise CheckpointError(f"checkpoint {latest} does not match this graph or is damaged ({e}); "
                                          "use another --checkpoint-dir or delete the old checkpoints.") from e
                self._last_saved = int(sess.run(self.global_step))
            else:
                sess.run(self.init_op)
            self.started(int(sess.run(self.global_step)), latest)
        except BaseException:
            sess.close()
            GUARD.enter(Phase.BEFORE_TRAINING)
            raise
        return sess

    def steps(self, sess: Any) -> Iterator[int]:
        """Yield the steps still to train; after each, read the global step, save if due, obey SIGTERM."""
        k = int(sess.run(self.global_step))
        while k < self.total_steps:
            if GUARD.stop_requested:
                self.exit_requeue(k, self.save(sess))
            yield k
            k = int(sess.run(self.global_step))
            self.report(k)
            if GUARD.stop_requested:
                self.exit_requeue(k, self.save(sess))
            if self._save_due(k):
                self.save(sess)

    def save(self, sess: Any) -> str:
        k = int(sess.run(self.global_step))
        if k == self._last_saved:
            return self.latest() or self.prefix
        path = super().save(self.saver, sess, k)
        self._last_saved, self._last_save_s = k, time.monotonic()
        return path

    def finish(self, sess: Any) -> None:
        """Save the final state and report 100 %; a SIGTERM from here on exits 75 at once."""
        self.save(sess)
        self.report(int(sess.run(self.global_step)), force=True)
        GUARD.enter(Phase.FINISHED)

    def _save_due(self, k: int) -> bool:
        if self.save_every_steps and k % self.save_every_steps == 0:
            return True
        return bool(self.save_every_s) and time.monotonic() - self._last_save_s >= self.save_every_s


class RequeueHook(v1.train.SessionRunHook, _Contract):
    """SIGTERM -> save and exit 75 for ``MonitoredTrainingSession`` (which restores and saves itself).

    Give the session ``checkpoint_dir=hook.directory``.  ``hook.step`` is the next step to train
    (the data position).  On SIGTERM the hook saves after the step in progress, stops the session,
    and exits 75 once the session has closed.
    """

    def __init__(self, *, total_steps: int, checkpoint_dir: str | None = None, steps_per_epoch: int | None = None,
                 log: TextIO | None = None) -> None:
        _Contract.__init__(self, total_steps, checkpoint_dir, steps_per_epoch, log)
        self.requeue_path: str | None = None

    def begin(self) -> None:
        GUARD.enter(Phase.TRAINING)
        self._global_step = v1.train.get_global_step()
        if self._global_step is None:
            raise CheckpointError("RequeueHook needs a global step: create it with "
                                  "tf.compat.v1.train.get_or_create_global_step() before the session.")
        self._saver = v1.train.Saver(max_to_keep=2)

    def after_create_session(self, session: Any, coord: Any) -> None:
        step = int(session.run(self._global_step))
        self.started(step, self.latest() if step else None)
        if GUARD.stop_requested:  # came while restoring: the restored checkpoint is the state
            GUARD.exit_now(f"SIGTERM while restoring: the checkpoint at step {step} stands; exiting with "
                           f"{GUARD.exit_code} so gpuq requeues the job")

    def after_run(self, run_context: Any, run_values: Any) -> None:
        step = int(run_context.session.run(self._global_step))
        self.report(step)
        if GUARD.stop_requested and self.requeue_path is None:
            self.requeue_path = self.save(self._saver, run_context.session, step)
            run_context.request_stop()

    def end(self, session: Any) -> None:
        if self.requeue_path is not None:
            self.exit_requeue(self.step, self.requeue_path)
        self.report(self.step, force=True)
        GUARD.enter(Phase.FINISHED)
