"""Start and supervise one job's process (runs inside an RQ work horse).

The RQ payload is only the job id.  Everything else comes from the store: the
placement, the owner, the command.  The supervisor

1. claims the placement (only one worker can start a given placement),
2. prepares the log file and the per-job checkpoint directory, owned by the job's user,
3. starts the process in its own session (its own process group), as the owner,
4. watches it: stop requests (cancel, requeue, preemption, shutdown), the time limit,
   progress reports,
5. kills whatever is left of the process group, and records the end.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gpuq import accounting
from gpuq.errors import GpuqError, StoreUnavailable
from gpuq.jobs.model import REQUEUE_EXIT_CODE, Job, JobState, Progress, StopKind
from gpuq.paths import Paths
from gpuq.safefile import read_small
from gpuq.store import Store
from gpuq.workers.env import build_job_env
from gpuq.workers.notify import notify_job_end

POLL_S = 0.02
STOP_POLL_S = 0.25
PROGRESS_POLL_S = 2.0
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class WorkerContext:
    node: str
    paths: Paths
    grace_s: float
    simulated: bool

    @classmethod
    def from_env(cls) -> "WorkerContext":
        """The daemon starts each worker with these variables set."""
        return cls(
            node=os.environ["GPUQ_NODE"],
            paths=Paths(Path(os.environ["GPUQ_HOME"])),
            grace_s=float(os.environ.get("GPUQ_GRACE_S", "30")),
            simulated=os.environ.get("GPUQ_SIMULATED", "0") == "1",
        )


def run_job(job_id: int) -> str:
    """The RQ task: supervise job ``job_id`` on this node until it ends."""
    from rq import get_current_job

    current = get_current_job()
    if current is None:  # pragma: no cover - only ever called by an RQ worker
        raise RuntimeError("run_job must run inside an RQ worker")
    store = Store(current.connection)
    return Supervisor(store, WorkerContext.from_env()).run(int(job_id))


def _become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us, so we can reap them after a kill."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _chown(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _move_aside_if_foreign(path: Path, uid: int) -> None:
    """A log or checkpoint directory left by another user's job with the same id (job ids restart
    with a new store) is renamed, never handed over; a symlink is never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid != uid or os.path.islink(path):
        os.rename(path, path.with_name(f"{path.name}.stale-{int(time.time())}-{st.st_uid}"))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def same_run(j: Job, run: Job) -> bool:
    """Is stored job ``j`` still the run this supervisor claimed?  (``started_at`` is set once per
    run, at the claim; a requeued and re-placed job has a new one.)"""
    return j.state is JobState.RUNNING and j.started_at is not None and j.started_at == run.started_at


def retry_store(what: Callable[[], object], attempts_s: float = 300.0) -> object:
    """Call ``what`` until Redis answers (a supervisor must not die with its job still running)."""
    deadline = time.monotonic() + attempts_s
    delay = 0.2
    while True:
        try:
            return what()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self, store: Store, ctx: WorkerContext, clock: Callable[[], float] = time.time):
        self.store = store
        self.ctx = ctx
        self.clock = clock

    # ---- claim --------------------------------------------------------------------------------

    def _claim(self, job_id: int) -> Job | None:
        now = self.clock()

        def change(j: Job) -> Job | None:
            if j.state is not JobState.RUNNING or j.placement is None or j.placement.node != self.ctx.node:
                return None
            if j.started_at is not None:
                return None  # another worker already started this placement
            return j.with_changes(started_at=now)

        return self.store.update(job_id, change, now, event=f"worker on {self.ctx.node} claimed it")

    def run(self, job_id: int) -> str:
        job = self._claim(job_id)
        if job is None:
            return f"job {job_id}: nothing to do (not placed here, or already started)"
        if job.stop_request is not None:
            self._finish(job, None, job.stop_request.kind, timed_out=False, run_s=0.0)
            return f"job {job_id}: stopped before it started"
        try:
            proc, log_path = self._start(job)
        except (OSError, subprocess.SubprocessError, GpuqError) as e:
            self._fail_to_start(job, e)
            return f"job {job_id}: could not start ({e})"
        return self._supervise(job, proc, log_path)

    # ---- start --------------------------------------------------------------------------------

    def _prepare_files(self, job: Job) -> tuple[Path, Path, Path]:
        p = self.ctx.paths
        uid, gid = job.owner.uid, job.owner.gid
        for d in (p.logs, p.checkpoints, p.progress):
            d.mkdir(parents=True, exist_ok=True)
        log_path = p.job_log(job.id)
        ckpt = p.job_checkpoint_dir(job.id)
        for path in (log_path, ckpt):
            _move_aside_if_foreign(path, uid)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
        os.close(fd)
        _chown(log_path, uid, gid)
        ckpt.mkdir(mode=0o700, exist_ok=True)
        _chown(ckpt, uid, gid)
        progress = p.job_progress_file(job.id)
        progress.parent.mkdir(mode=0o700, exist_ok=True)
        _chown(progress.parent, uid, gid)
        try:
            progress.unlink()
        except FileNotFoundError:
            pass
        return log_path, ckpt, progress

    def _start(self, job: Job) -> tuple[subprocess.Popen, Path]:
        log_path, ckpt, progress = self._prepare_files(job)
        sim_dir = str(self.ctx.paths.simulated_gpu_usage) if self.ctx.simulated else None
        env = build_job_env(job, str(ckpt), str(progress), sim_dir)
        p = job.placement
        assert p is not None
        gpus = ",".join(str(i) for i in p.gpu_indices) or "none (CPU only)"
        kwargs: dict = {}
        if os.geteuid() == 0 and job.owner.uid != 0:
            kwargs.update(user=job.owner.uid, group=job.owner.gid, extra_groups=list(job.owner.groups))
        elif job.owner.uid != os.geteuid():
            raise GpuqError(f"this daemon runs as uid {os.geteuid()} and cannot run a job as uid {job.owner.uid}.")
        _become_subreaper()
        with open(log_path, "ab", buffering=0) as log:
            log.write((f"gpuq: job {job.id} run {job.requeues + 1} starting on {p.node}, GPUs {gpus}, "
                       f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!s}\n").encode())
            proc = subprocess.Popen(
                list(job.spec.argv), cwd=job.spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, **kwargs,
            )
        now = self.clock()
        retry_store(lambda: self.store.update(
            job.id, lambda j: j.with_changes(pid=proc.pid) if same_run(j, job) else None,
            now, event=f"started pid {proc.pid} on {p.node} GPUs {gpus}"))
        return proc, log_path

    def _fail_to_start(self, job: Job, err: Exception) -> None:
        now = self.clock()
        reason = f"could not start: {err}"
        try:
            with open(self.ctx.paths.job_log(job.id), "ab") as log:
                log.write(f"gpuq: {reason}\n".encode())
        except OSError:
            pass
        self.store.update(
            job.id,
            lambda j: j.transition(JobState.FAILED, ended_at=now, exit_code=127, end_reason=reason)
            if same_run(j, job) else None,
            now, event=reason,
        )

    # ---- supervise ----------------------------------------------------------------------------

    def _supervise(self, job: Job, proc: subprocess.Popen, log_path: Path) -> str:
        try:
            return self._watch(job, proc, log_path)
        except BaseException:
            # the supervisor is failing (or being killed): leave no process of the job behind
            kill_group(proc.pid, signal.SIGKILL)
            raise

    def _watch(self, job: Job, proc: subprocess.Popen, log_path: Path) -> str:
        started = self.clock()
        pgid = proc.pid
        stop_kind: StopKind | None = None
        timed_out = False
        kill_at: float | None = None
        next_stop_poll = 0.0
        next_progress_poll = started + PROGRESS_POLL_S
        progress_path = self.ctx.paths.job_progress_file(job.id)
        while True:
            rc = proc.poll()
            if rc is not None:
                break
            now = self.clock()
            if now >= next_stop_poll:
                next_stop_poll = now + STOP_POLL_S
                if stop_kind is None and not timed_out:
                    try:
                        current: Job | None = self.store.get(job.id)
                    except StoreUnavailable:
                        current = None  # Redis is away: keep supervising (time limit, exit) and retry
                    if current is not None and not same_run(current, job):
                        stop_kind = StopKind.CANCEL  # the record moved on without us: stop this stale run
                        self._log(log_path, "gpuq: this run is no longer the job's current run")
                    elif current is not None and current.stop_request is not None:
                        stop_kind = current.stop_request.kind
                    elif accounting.out_of_time(job, now):  # the limit counts every run of the job
                        timed_out = True
                    if stop_kind is not None or timed_out:
                        why = "time limit reached" if timed_out else f"{stop_kind.value} requested"
                        self._log(log_path, f"gpuq: {why}: SIGTERM to the job's process group, "
                                            f"SIGKILL after {self.ctx.grace_s:g} s")
                        kill_group(pgid, signal.SIGTERM)
                        kill_at = now + self.ctx.grace_s
            if kill_at is not None and now >= kill_at:
                self._log(log_path, "gpuq: grace period over: SIGKILL")
                kill_group(pgid, signal.SIGKILL)
                kill_at = now + 3600  # once
            if now >= next_progress_poll:
                next_progress_poll = now + PROGRESS_POLL_S
                try:
                    self._record_progress(job, progress_path)
                except StoreUnavailable:
                    pass  # progress is best effort
            time.sleep(POLL_S)
        # Leave nothing of the job behind: its group may hold GPU memory.
        kill_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            _reap_orphans()
            time.sleep(0.02)
        _reap_orphans()
        run_s = self.clock() - started
        final = retry_store(lambda: self._finish(job, rc, stop_kind, timed_out, run_s))
        return f"job {job.id}: {final}"

    def _log(self, path: Path, text: str) -> None:
        with open(path, "ab") as log:
            log.write((text + "\n").encode())

    def _record_progress(self, run: Job, path: Path) -> None:
        raw = read_small(path)  # the job's user owns this file: no FIFO, symlink or huge file
        if raw is None:
            return
        try:
            d = json.loads(raw)
        except ValueError:
            return
        if not isinstance(d, dict):
            return
        fields = {}
        for k, typ in (("step", int), ("total", int), ("epoch", int), ("loss", float), ("eta_s", float),
                       ("updated_at", float)):
            v = d.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                fields[k] = typ(v)
        progress = Progress(**fields)
        self.store.update(
            run.id,
            lambda j: j.with_changes(progress=progress) if same_run(j, run) and j.progress != progress else None,
            self.clock(),
        )

    # ---- the end ------------------------------------------------------------------------------

    def _finish(self, job: Job, rc: int | None, stop_kind: StopKind | None, timed_out: bool, run_s: float) -> str:
        now = self.clock()
        gpu_share = accounting.gpu_share(job)  # one accounting: gpuq/accounting.py
        signal_note = f" (killed by signal {-rc})" if rc is not None and rc < 0 else ""

        if rc == 0:
            to, reason = JobState.COMPLETED, "exited 0"
        elif stop_kind is StopKind.CANCEL:
            to, reason = JobState.CANCELLED, "cancelled"
        elif stop_kind is not None:
            to, reason = JobState.PENDING, f"requeued ({stop_kind.value})"
        elif timed_out:
            to, reason = JobState.TIMEOUT, f"time limit of {job.spec.time_limit_s:g} s reached"
        elif rc == REQUEUE_EXIT_CODE:
            to, reason = JobState.PENDING, f"requeued (exited {REQUEUE_EXIT_CODE}: checkpointed)"
        else:
            to, reason = JobState.FAILED, f"exited {rc}{signal_note}"

        def change(j: Job) -> Job | None:
            if not same_run(j, job):
                return None  # reconciled or re-placed meanwhile: never overwrite a newer run
            common = dict(accounting.end_of_run(j, run_s), end_reason=reason)
            if to is JobState.PENDING:
                return j.transition(to, requeues=j.requeues + 1, **common)
            return j.transition(to, ended_at=now, exit_code=rc, **common)

        notify_job_end(self.store.update(job.id, change, now, event=f"{to.value}: {reason}", wake=False))
        if gpu_share > 0 and run_s > 0:
            self._add_usage(job.owner.user, gpu_share, now - run_s, now)
        self.store.wake("job ended")  # one wake, after usage is recorded
        return f"{to.value}: {reason}"

    def _add_usage(self, user: str, gpus: float, started_at: float, ended_at: float) -> None:
        """Fair-share usage of this run, counted exactly as plan() counted it while it ran."""
        from gpuq.scheduler import fairshare, usage

        half_life_s = usage.half_life_from_store(self.store)
        self.store.update_usage(
            user, lambda rec: fairshare.add_run_usage(rec, gpus, started_at, ended_at, half_life_s))
