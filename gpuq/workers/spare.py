"""A spare supervisor: forked, detached and connected before the job it will supervise exists.

Each RQ worker keeps one.  A start then costs a write on a pipe instead of two forks, the
supervisor's set-up and its Redis connection; the worker forks the next spare after the handover,
while the job is already starting.

The spare's life, and what ends it:

1. The worker forks it exactly as a supervisor (an intermediate process in a new session forks
   it and exits, so it is re-parented away from the worker).  It closes every descriptor but two
   close-on-exec pipes: ``job`` (the worker holds the write end) and ``ready`` (the worker holds
   the read end), writes its pid on ``ready`` ("idle") and connects to Redis.
2. It blocks reading ``job`` until end of file.  Only the worker holds the write end, so the
   worker's death (any signal, kill -9 included) or exit is end of file: a spare never outlives
   its worker by more than that read.
3. The worker hands it a job only after its claim succeeded: the job's JSON and a newline, then
   closes the pipe.  Anything else at end of file (nothing, or a message cut short because the
   worker died while writing it) ends the spare without starting anything.
4. With a whole job it is that job's supervisor (:func:`gpuq.workers.supervisor.spare_main`):
   run record, "ready" (its pid again) on ``ready``, the run.  It never reads another job.

The worker treats a spare whose pipe is broken, or which closes ``ready`` without saying
"ready", as one that never saw the job (it says "ready" before it starts anything) and starts a
supervisor the old way (:func:`gpuq.workers.launcher.spawn_supervisor`).  A spare that took the
job but neither says "ready" nor dies within ``SUPERVISOR_READY_S`` is treated as a late cold
start: the worker fails the run, and the supervisor, fenced by the run token, does not start a
run that is no longer the job's current one (it checks before the job's exec, and stops it at its
first poll if the record could not be read then).
"""

from __future__ import annotations

import json
import os
import select
import time
from typing import TYPE_CHECKING, Callable, Sequence

from gpuq.jobs.model import Job

if TYPE_CHECKING:
    from gpuq.workers.launcher import WorkerContext

SPARE_NAME = "gpuq-sup-spare"  # shares gpuq-sup-: whatever tells supervisors from workers tells spares too
_END = b"\n"
_MAX_JOB_BYTES = 16 << 20  # far above any stored record; a bound, never reached in practice


class Spare:
    """The worker's end of one spare supervisor."""

    def __init__(self, job_w: int, ready_r: int) -> None:
        self._job_w: int | None = job_w
        self._ready_r: int | None = ready_r
        self._buf = b""
        self._eof = False

    def hand(self, job: Job, timeout_s: float) -> int | None:
        """Hand ``job`` (claimed by this worker) over; the spare's pid once it is ready.
        Raises :class:`SpareGone` when the spare never saw the job (dead, or not idle within
        ``timeout_s``: it is let go and ends at end of file); the caller then starts a supervisor
        the old way.  None when it took the job but did not say "ready" in time."""
        assert self._job_w is not None and self._ready_r is not None
        try:
            deadline = time.monotonic() + timeout_s
            if not self._read_lines(deadline, want=1):
                raise SpareGone("the spare supervisor did not become idle")
            data = json.dumps(job.to_dict(), separators=(",", ":")).encode() + _END
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._job_w, view):]
            except BrokenPipeError:
                raise SpareGone("the spare supervisor is gone") from None
            finally:
                os.close(self._job_w)
                self._job_w = None
            lines = self._read_lines(time.monotonic() + timeout_s, want=2)
            if len(lines) >= 2:
                return int(lines[1])
            if self._eof:
                raise SpareGone("the spare supervisor ended before it took the job")
            return None  # as a cold start that is late: the caller fails the run, which fences it
        finally:
            self.close()

    def close(self) -> None:
        """Let the spare go (end of file on its job pipe ends it)."""
        for fd in (self._job_w, self._ready_r):
            if fd is not None:
                os.close(fd)
        self._job_w = self._ready_r = None

    def _read_lines(self, deadline: float, want: int) -> list[str]:
        """The whole lines the spare wrote on ``ready`` so far, waiting until ``deadline`` for
        ``want`` of them (or end of file)."""
        assert self._ready_r is not None
        while self._buf.count(b"\n") < want and not self._eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self._ready_r], [], [], left)
            if not ready:
                break
            chunk = os.read(self._ready_r, 256)
            if not chunk:
                self._eof = True
            self._buf += chunk
        return [x.decode() for x in self._buf.split(b"\n")[:-1]]


class SpareGone(Exception):
    """The spare died before it saw the job: nothing was started."""


def fork_detached(main: Callable[[], int], close_in_child: Sequence[int]) -> None:
    """Run ``main`` in a process of its own session, re-parented away from the caller: an
    intermediate process closes ``close_in_child``, calls ``setsid``, forks the process that runs
    ``main`` (its return value is the exit status) and exits.  Returns once the intermediate has
    exited; OSError if the first fork fails.  Every supervisor, spare or not, starts this way."""
    first = os.fork()
    if first == 0:  # pragma: no cover - intermediate: new session, fork the detached process, exit
        code = 1
        try:
            for fd in close_in_child:
                os.close(fd)
            os.setsid()
            if os.fork() == 0:
                code = 1
                try:
                    code = main()
                finally:
                    os._exit(code)
            code = 0
        finally:
            os._exit(code)
    os.waitpid(first, 0)


def fork_spare(ctx: "WorkerContext") -> Spare:
    """Fork a spare supervisor for this worker (see the module docstring)."""
    job_r, job_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)

    def run_spare() -> int:
        from gpuq.workers.supervisor import spare_main

        return spare_main(ctx, job_r, ready_w)
    try:
        fork_detached(run_spare, (job_w, ready_r))
    except OSError:
        for fd in (job_r, job_w, ready_r, ready_w):
            os.close(fd)
        raise
    os.close(job_r)
    os.close(ready_w)
    return Spare(job_w, ready_r)


def read_job(fd: int) -> Job | None:
    """In the spare: block until end of file on ``fd``; the job if a whole one came, else None."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if size > _MAX_JOB_BYTES:
            return None
    raw = b"".join(chunks)
    if not raw.endswith(_END):
        return None  # nothing (the worker is gone) or cut short (it died while handing one over)
    try:
        return Job.from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return None
