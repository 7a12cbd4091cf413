"""SIGTERM in a training script ends in one of two ways: exit 75 with a consistent checkpoint, or a
normal completion.  Never the default death by the signal (status 143). Pure Python: no TensorFlow.

gpuq's worker sends SIGTERM on cancel, ``gpuq requeue``, preemption, time limit and shutdown.  What
the right reaction is depends on where the script is, so the one handler follows a phase:

``Phase.BEFORE_TRAINING``  importing, loading data, building the model: nothing new exists to save,
                           the last checkpoint (if any) stands.  Exit 75 at once.
``Phase.TRAINING``         restoring, training, writing the final checkpoint: only remember the
                           signal.  The runtime reacts at its next safe point (after the restore,
                           after the step in progress, after the save in progress), so a checkpoint
                           is never cut in half by the handler.
``Phase.FINISHED``         after ``finish()``: the final checkpoint is on disk, and what follows is
                           the script's epilogue (evaluation, export).  Exit 75 at once: the requeued
                           run restores the final checkpoint, trains zero steps and reruns the
                           epilogue only.

The handler raises :class:`SystemExit` (so ``finally`` blocks and ``with`` statements still run)
and also keeps the signal, so code that swallowed the exception (a bare ``except``) still stops at
the runtime's next check.  The phase is process state, because a signal handler is.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
from typing import Any, Callable, TextIO

from gpuq.jobs.tf.env import requeue_exit_code_from_env


class Phase(str, enum.Enum):
    BEFORE_TRAINING = "before-training"
    TRAINING = "training"
    FINISHED = "finished"


_EXIT_AT_ONCE = {
    Phase.BEFORE_TRAINING: "SIGTERM before training started: nothing new to save, the last checkpoint "
                           "stands; exiting with {code} so gpuq requeues the job",
    Phase.FINISHED: "SIGTERM after training finished: the final checkpoint is saved; exiting with {code} "
                    "so gpuq requeues the job, and the next run only repeats what follows training",
}


class StopGuard:
    """The process's SIGTERM handler, driven by :class:`Phase`."""

    def __init__(self, log: Callable[[], TextIO] = lambda: sys.stdout) -> None:
        self.phase = Phase.BEFORE_TRAINING
        self.signum: int | None = None
        self.installed = False
        self._log = log

    @property
    def stop_requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return requeue_exit_code_from_env()

    def install(self) -> None:
        """Take over SIGTERM (idempotent; only the main thread can set a handler)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.installed = True

    def enter(self, phase: Phase) -> None:
        """Move to ``phase``; a signal that is pending from an exit-at-once phase exits now."""
        self.install()
        self.phase = phase
        if phase is not Phase.TRAINING and self.stop_requested:
            self.exit_now(_EXIT_AT_ONCE[phase].format(code=self.exit_code))

    def exit_now(self, message: str) -> None:
        self.say(message)
        raise SystemExit(self.exit_code)

    def say(self, text: str) -> None:
        print(f"gpuq: {text}", file=self._log(), flush=True)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        if self.phase is Phase.TRAINING:
            return
        if first:  # a second SIGTERM while unwinding must not print or raise again
            self.exit_now(_EXIT_AT_ONCE[self.phase].format(code=self.exit_code))


#: The one guard of this process (a signal handler is process state).
GUARD = StopGuard()


def running_under_gpuq(environ: dict[str, str] | None = None) -> bool:
    """True when gpuq's worker started this process (it sets ``GPUQ_JOB_ID``)."""
    env = os.environ if environ is None else environ
    return bool(env.get("GPUQ_JOB_ID", "").strip())
