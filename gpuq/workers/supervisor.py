"""A job's supervisor: one detached process per running job, like Slurm's slurmstepd.

Forked by :mod:`gpuq.workers.launcher` in its own session, it outlives the RQ worker, the
daemon and Redis outages.  It

1. prepares the log and checkpoint directory (owned by the job's user) and the job's cgroup,
2. starts the job (:mod:`gpuq.workers.jobexec`): forks it first; the child joins the cgroup,
   drops to the user's groups, gid and uid, and only then enters the working directory (so a
   directory the user may not enter fails the job with a clear message instead of being entered
   as root) while the supervisor prepares the files and checks for a stop; then it execs,
3. copies the job's output into its capped log, watches stop requests (cancel, requeue,
   preemption, drain), the time limit and progress, and writes a heartbeat,
4. kills everything left in the job's cgroup, and records the end.

Every record change is fenced by the run token (``started_at``).  When Redis is away the job
keeps running: stop requests wait, the time limit and the exit are enforced locally, and the
pid and the end are recorded when Redis returns.  Any failure of the supervisor itself ends
the job ``failed`` with the reason; it never leaves a job "running" with no process.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import time
import traceback
from pathlib import Path
from typing import Callable

from gpuq import accounting, keys
from gpuq.errors import GpuqError, JobNotFound, RecordSetAside, StoreUnavailable
from gpuq.jobs.model import REQUEUE_EXIT_CODE, Job, JobState, PartEnd, Placement, Progress, StopKind, StopRequest
from gpuq.safefile import read_small
from gpuq.scheduler import fairshare, usage  # imported here, not at a job's end: the worker's spare inherits them
from gpuq.store import Store, UsageCharge
from gpuq.workers import jobexec, runrecord, spare
from gpuq.workers.cgroup import JobLimits
from gpuq.workers.jobexec import Credentials, Launch, PreparedJob, StartFailed
from gpuq.workers.env import build_job_env
from gpuq.workers.joblog import CappedLog
from gpuq.workers.launcher import WorkerContext, same_placement, same_run
from gpuq.workers.notify import notify_job_end

STOP_POLL_S = 0.25
PROGRESS_POLL_S = 2.0
STORE_RETRY_MAX_S = 5.0
#: a part of a job across nodes waits at most this long for the others (the leader gives the
#: placement up after ``gang_start_timeout`` anyway; this bounds a supervisor cut off from Redis)
GANG_WAIT_MAX_S = 3600.0
_PROGRESS_FIELDS = (("step", int), ("total", int), ("epoch", int), ("loss", float), ("eta_s", float),
                    ("updated_at", float))
_INT_MAX = 2**53


_GONE = object()  # the job's record no longer exists (or could not be read and was set aside)


class _Superseded:
    """What the last check before exec found when this run is no longer the job's current one."""


SUPERSEDED = _Superseded()


def _diag(ctx: WorkerContext, text: str) -> None:
    """Supervisor diagnostics for the administrator (root only)."""
    try:
        d = runrecord.records_dir(ctx.paths.home)
        with open(d / "supervisor.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
    except OSError:
        pass


def _detach(name: str, keep: tuple[int, ...]) -> None:
    """In a freshly forked supervisor (or spare): default signals, /dev/null for stdio, every other
    inherited descriptor but ``keep`` closed, the process name, and the subreaper flag."""
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.alarm(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    jobexec.prctl(jobexec.PR_SET_NAME, name.encode()[:15])
    jobexec.prctl(jobexec.PR_SET_CHILD_SUBREAPER, 1)  # orphans of the job come to us, to be reaped


def supervisor_main(ctx: WorkerContext, job: Job, ready_fd: int) -> int:
    """Entry point in the forked supervisor: detach from everything the worker had, say "ready"."""
    _detach(f"gpuq-sup-{job.id}", (ready_fd,))
    return _supervise(ctx, job, ready_fd, None)


def spare_main(ctx: WorkerContext, job_fd: int, ready_fd: int) -> int:
    """Entry point in a spare supervisor (see :mod:`gpuq.workers.spare`): detach and connect now,
    say "idle" (its pid) on ``ready_fd``, then wait for one job on ``job_fd``.  End of file there
    without a whole job (the worker died, or died while handing one over) ends the spare: nothing
    is started.  A whole job makes it that job's supervisor, exactly as :func:`supervisor_main`."""
    _detach(spare.SPARE_NAME, (job_fd, ready_fd))
    os.write(ready_fd, f"{os.getpid()}\n".encode())  # idle
    store = Store.from_url(ctx.redis_url)
    try:
        store.ping()  # the connection is made now, off the start's critical path
    except StoreUnavailable:
        pass  # made (and retried) when the job needs it
    job = spare.read_job(job_fd)
    os.close(job_fd)
    if job is None:
        return 0
    jobexec.prctl(jobexec.PR_SET_NAME, f"gpuq-sup-{job.id}".encode()[:15])
    return _supervise(ctx, job, ready_fd, store)


def _supervise(ctx: WorkerContext, job: Job, ready_fd: int, store: Store | None) -> int:
    """Write the local run record, say "ready" (our pid) on ``ready_fd``, supervise ``job``."""
    me = os.getpid()
    if job.started_at is None:  # a part of a job across nodes: ready now, then wait for every part
        assert job.placed_at is not None  # the record's token until the run has one: the placement time
        runrecord.write(ctx.paths.home, runrecord.RunRecord(job.id, job.placed_at, me,
                                                            runrecord.proc_start_ticks(me) or 0))
        os.write(ready_fd, f"{me}\n".encode())
        os.close(ready_fd)
        store = store or Store.from_url(ctx.redis_url)
        started = wait_for_every_part(store, ctx, job)
        if started is None:
            runrecord.remove(ctx.paths.home, job.id, job.placed_at)
            return 0  # the placement was given up (timeout, cancel, node lost): nothing was started
        job = started
        assert job.started_at is not None
        runrecord.write(ctx.paths.home, runrecord.RunRecord(job.id, job.started_at, me,
                                                            runrecord.proc_start_ticks(me) or 0))
    else:
        runrecord.write(ctx.paths.home, runrecord.RunRecord(job.id, job.started_at, me,
                                                            runrecord.proc_start_ticks(me) or 0))
        os.write(ready_fd, f"{me}\n".encode())
        os.close(ready_fd)
        store = store or Store.from_url(ctx.redis_url)
    try:
        Supervisor(store, ctx).run(job)
    except BaseException as e:  # the supervisor failed: its job must not be left running
        _diag(ctx, f"job {job.id}: supervisor failed: {traceback.format_exc()}")
        ctx.containment.kill_all(job.id)
        try:
            fail_run(store, job, f"its supervisor failed ({type(e).__name__}: {e})", forever=True, home=ctx.paths.home)
        except StoreUnavailable:
            _diag(ctx, f"job {job.id}: its state directory is gone and so is its store: the supervisor leaves")
    finally:
        ctx.containment.remove(job.id)
        runrecord.remove(ctx.paths.home, job.id, job.started_at)
    return 0


def wait_for_every_part(store: Store, ctx: WorkerContext, placed: Job,
                        clock: Callable[[], float] = time.monotonic) -> Job | None:
    """The start barrier of a job across nodes, seen from one part: the job once the last part
    was claimed (its run token set), or None when the placement was given up meanwhile (the
    leader's ``gang_start_timeout``, a cancel, a lost node) or never resolves within
    ``GANG_WAIT_MAX_S``.  No process of the job starts before this returns a job."""
    deadline = clock() + GANG_WAIT_MAX_S
    while clock() < deadline:
        try:
            j = store.get(placed.id)
        except StoreUnavailable:
            j = None
        except (JobNotFound, RecordSetAside):
            return None
        if j is not None:
            if not same_placement(j, placed):
                return None
            if j.started_at is not None:
                return j
        time.sleep(STOP_POLL_S)
    _diag(ctx, f"job {placed.id}: gave up waiting for the other parts after {GANG_WAIT_MAX_S:g} s")
    return None


def retry_store(what: Callable[[], object], forever: bool = True, attempts_s: float = 60.0,
                home: Path | None = None) -> object:
    """Call ``what`` until Redis answers: a supervisor never gives up on recording its job, unless
    its daemon's state directory ``home`` is gone (the install or the test that made it was
    removed: nothing will ever read the record, and waiting for ever would leak the supervisor)."""
    deadline = time.monotonic() + attempts_s
    delay = 0.2
    while True:
        try:
            return what()
        except StoreUnavailable:
            if not forever and time.monotonic() > deadline:
                raise
            if home is not None and not home.is_dir():
                raise
            time.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)


def fail_run(store: Store, job: Job, reason: str, forever: bool = False, home: Path | None = None) -> None:
    """End run ``job`` as failed with ``reason`` (only while it is still that run)."""
    now = time.time()
    retry_store(lambda: store.update(
        job.id, lambda j: j.transition(JobState.FAILED, ended_at=now, exit_code=127, end_reason=reason)
        if same_run(j, job) else None, now, event=f"failed: {reason}"), forever=forever, home=home)


def parse_progress(raw: bytes) -> Progress | None:
    """A progress report from a user-written file; None for anything not a finite, sane report."""
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    fields = {}
    for k, typ in _PROGRESS_FIELDS:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v) or abs(v) > _INT_MAX:
            continue  # NaN, Infinity, 1e400: ignored, never a crash
        fields[k] = typ(v)
    return Progress(**fields) if fields else None


class Supervisor:
    def __init__(self, store: Store, ctx: WorkerContext, clock: Callable[[], float] = time.time):
        self.store = store
        self.ctx = ctx
        self.clock = clock
        self.c = ctx.containment

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

    def _limits(self, job: Job) -> JobLimits:
        mine = set(self._mine(job).gpu_uuids) if job.placement else set()
        deny = tuple(sorted(m for u, m in self.ctx.gpu_minors if u not in mine))
        own = tuple(sorted(m for u, m in self.ctx.gpu_minors if u in mine))
        r = job.spec.resources
        return JobLimits(mem_mib=r.host_mem_mib, cpus=r.cpus, deny_gpu_minors=deny, own_gpu_minors=own)

    def _mine(self, job: Job) -> Placement:
        """This node's part of the placement (the whole placement for a one-node job)."""
        p = job.placement
        assert p is not None
        rank = p.rank_of(self.ctx.node) if p.is_gang else None
        return p if rank is None else p.part(rank)

    def _part_label(self, job: Job) -> str:
        """``part 1 on node-b `` for a part of a job across nodes, else empty."""
        p = job.placement
        if p is None or not p.is_gang:
            return ""
        return f"part {p.rank_of(self.ctx.node)} on {self.ctx.node} "

    def _fork_job(self, job: Job) -> tuple[PreparedJob, int, list[str]]:
        """Create the job's cgroup and fork its process, which joins the cgroup, drops to the user
        and enters the cwd while we go on (see :mod:`gpuq.workers.jobexec`); it waits for ``go``."""
        paths = self.ctx.paths
        sim_dir = str(paths.simulated_gpu_usage) if self.ctx.simulated else None
        env = build_job_env(job, str(paths.job_checkpoint_dir(job.id)), str(paths.job_progress_file(job.id)),
                            sim_dir, node=self.ctx.node)
        drop: Credentials | None = None
        if os.geteuid() == 0 and job.owner.uid != 0:
            drop = Credentials(job.owner.uid, job.owner.gid, tuple(job.owner.groups))
        elif job.owner.uid != os.geteuid():
            raise StartFailed(f"this daemon runs as uid {os.geteuid()} and cannot run a job as uid {job.owner.uid}")
        jobexec.check(tuple(job.spec.argv), env)
        notes = self.c.create(job.id, self._limits(job))
        out_r, out_w = os.pipe()
        try:
            child = jobexec.prepare(Launch(
                argv=tuple(job.spec.argv), env=env, cwd=job.spec.cwd, user=job.owner.user,
                name=f"gpuq-start-{job.id}", drop_to=drop, join_files=tuple(self.c.join_files(job.id)),
                stdout_fd=out_w))
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        os.set_blocking(out_r, False)
        self._visible = env["CUDA_VISIBLE_DEVICES"]
        return child, out_r, notes

    def _gpus_text(self, job: Job) -> str:
        return ",".join(str(i) for i in self._mine(job).gpu_indices) or "none (CPU only)"

    def _last_check(self, job: Job, pid: int | None) -> StopRequest | _Superseded | None:
        """Just before the job's process may exec: one transaction that re-reads the record and,
        unless a stop was acknowledged since the claim (that stop is returned) or this run is no
        longer the job's current one (a late start: ``SUPERSEDED``), records ``pid`` (the prepared
        child, which execs next).  Redis away: None, and the pid stays buffered for the polls."""
        seen: list[StopRequest | _Superseded] = []
        assert job.placement is not None
        rank0 = not job.placement.is_gang or job.placement.rank_of(self.ctx.node) == 0

        def change(j: Job) -> Job | None:
            seen.clear()
            if not same_run(j, job):
                seen.append(SUPERSEDED)
                return None
            if j.stop_request is not None:
                seen.append(j.stop_request)
                return None
            if pid is None:
                return None  # the process could not be prepared: the start fails below
            # a job across nodes records rank 0's pid (the others' pids are in their events and heartbeats)
            return j.with_changes(pid=pid) if rank0 else j

        if pid is not None:
            self._buffered = (pid, self._gpus_text(job))
        try:
            done = self.store.update(job.id, change, self.clock(),
                                     event=f"{self._part_label(job)}started pid {pid} on {self.ctx.node} GPUs "
                                           f"{self._gpus_text(job)}")
        except (StoreUnavailable, JobNotFound, RecordSetAside):
            return None  # unknown: start, and record the pid (or stop) at the first poll that reaches it
        if done is not None:
            self._buffered = None
        return seen[0] if seen else None

    def _go(self, job: Job, child: PreparedJob, log: CappedLog, notes: list[str]) -> None:
        """Log the start and let the prepared child exec (its pid is recorded already, or buffered)."""
        p = self._mine(job)
        gpus = self._gpus_text(job)
        for note in notes:
            log.note(note)
        r = job.spec.resources
        limits = (f", --mem {r.host_mem_mib} MiB" if r.host_mem_mib else "") + (f", --cpus {r.cpus:g}" if r.cpus else "")
        log.note(f"job {job.id} run {job.requeues + 1} {self._part_label(job)}starting on {p.node}, GPUs {gpus}, "
                 f"CUDA_VISIBLE_DEVICES={self._visible}, contained by {self.c.name}{limits}")
        child.go()

    def _record_pid(self, job: Job) -> None:
        """Record the job's pid (when Redis is away, retried at each poll until it is recorded)."""
        if self._buffered is None:
            return
        pid, gpus = self._buffered
        assert job.placement is not None
        # a job across nodes records rank 0's pid (the others' pids are in their events and heartbeats)
        rank0 = not job.placement.is_gang or job.placement.rank_of(self.ctx.node) == 0
        self.store.update(job.id, lambda j: (j.with_changes(pid=pid) if rank0 else j) if same_run(j, job) else None,
                          self.clock(), event=f"{self._part_label(job)}started pid {pid} on {self.ctx.node} GPUs {gpus}")
        self._buffered = None

    # ---- the run ------------------------------------------------------------------------------

    def run(self, job: Job) -> str:
        self._buffered: tuple[int, str] | None = None
        self._visible = ""
        if job.stop_request is not None:
            return self._finish(job, None, job.stop_request.kind, False, 0.0, job.stop_request.by)
        child: PreparedJob | None = None
        out_r = -1
        notes: list[str] = []
        failure: BaseException | None = None
        try:
            child, out_r, notes = self._fork_job(job)
        except (OSError, ValueError, TypeError, GpuqError) as e:
            failure = e
        try:
            log_path, _, _ = self._prepare_files(job)
            # a stop acknowledged while we were being forked: do not start the process at all
            seen = self._last_check(job, child.pid if child is not None else None)
        except BaseException:
            if child is not None:
                child.abort()
                os.close(out_r)
            raise
        stop = seen if isinstance(seen, StopRequest) else None
        if seen is SUPERSEDED:  # the run failed or was reconciled meanwhile (a late start)
            if child is not None:
                child.abort()
                os.close(out_r)
            return "not started: this run is no longer the job's current run"
        if stop is not None:
            if child is not None:
                child.abort()
                os.close(out_r)
            return self._finish(job, None, stop.kind, False, 0.0, stop.by)
        log = CappedLog(log_path, self.ctx.log_cap_bytes)
        try:
            try:
                if failure is not None:
                    raise failure
                assert child is not None
                self._go(job, child, log, notes)
            except (OSError, ValueError, TypeError, GpuqError) as e:
                # a bad env key, NUL bytes, a cwd the user may not enter, no such program ...
                reason = f"could not start: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
                if isinstance(e, OSError) and e.filename:
                    reason += f": {e.filename}"
                log.note(reason)
                if out_r >= 0:
                    os.close(out_r)
                self.c.kill_all(job.id)
                fail_run(self.store, job, reason, forever=True, home=self.ctx.paths.home)
                return reason
            try:
                return self._watch(job, child, out_r, log, self.ctx.paths.job_progress_file(job.id))
            except BaseException:
                _killpg(child.pid, signal.SIGKILL)
                self.c.kill_all(job.id)
                raise
        finally:
            log.close()

    def _watch(self, job: Job, proc: PreparedJob, out_r: int, log: CappedLog, progress_path: Path) -> str:
        started = self.clock()
        pgid = proc.pid
        stop_kind: StopKind | None = None
        stop_by = ""
        timed_out = False
        kill_at: float | None = None
        next_poll = 0.0
        next_beat = 0.0
        next_progress = started + PROGRESS_POLL_S
        sel = selectors.DefaultSelector()
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(out_r, selectors.EVENT_READ, "out")
        out_open = True
        rc: int | None = None
        try:
            while rc is None:
                now = self.clock()
                timeout = max(0.0, min(next_poll, next_progress, kill_at or math.inf) - now)
                for key, _ in sel.select(timeout):
                    if key.data == "out":
                        out_open = self._pump(out_r, log)
                        if not out_open:
                            sel.unregister(out_r)
                    else:
                        rc = proc.wait()
                if rc is not None:
                    break
                now = self.clock()
                if now >= next_poll:
                    next_poll = now + STOP_POLL_S
                    current = self._poll(job, now >= next_beat, pgid)
                    if now >= next_beat:
                        next_beat = now + self.ctx.heartbeat_s
                    if stop_kind is None and not timed_out:
                        if current is _GONE:
                            stop_kind, stop_by = StopKind.CANCEL, "gpuq (its record is gone or was set aside)"
                            log.note("the job's record is gone or unreadable: stopping it")
                        elif current is not None and not same_run(current, job):
                            stop_kind, stop_by = StopKind.CANCEL, "gpuq (a newer run)"
                            if job.placement is not None and job.placement.is_gang and not current.state.active:
                                log.note(f"the job ended ({current.state.value}: {current.end_reason}): "
                                         "stopping this part")
                            else:
                                log.note("this run is no longer the job's current run")
                        elif current is not None and current.gang_end is not None:
                            stop_kind, stop_by = StopKind.CANCEL, "gpuq (another part ended the job)"
                            log.note(f"{current.gang_end.reason}: the job ends; stopping this part")
                        elif current is not None and current.stop_request is not None:
                            stop_kind, stop_by = current.stop_request.kind, current.stop_request.by
                        elif accounting.out_of_time(job, now):  # the limit counts every run of the job
                            timed_out = True
                        if stop_kind is not None or timed_out:
                            why = "time limit reached" if timed_out else f"{stop_kind.value} requested"
                            log.note(f"{why}: SIGTERM to the job's processes, SIGKILL after {self.ctx.grace_s:g} s")
                            _killpg(pgid, signal.SIGTERM)
                            self.c.signal_all(job.id, signal.SIGTERM)
                            kill_at = now + self.ctx.grace_s
                if kill_at is not None and now >= kill_at:
                    log.note("grace period over: SIGKILL")
                    _killpg(pgid, signal.SIGKILL)
                    self.c.kill_all(job.id, timeout_s=1.0)
                    kill_at = None
                if now >= next_progress:
                    next_progress = now + PROGRESS_POLL_S
                    self._record_progress(job, progress_path, log)
        finally:
            sel.close()
            os.close(pidfd)
        # Leave nothing of the job behind: its processes may hold GPU memory.
        _killpg(pgid, signal.SIGKILL)
        if not self.c.kill_all(job.id):
            log.note("some of the job's processes could not be killed")
        _reap_orphans()
        if out_open:
            self._pump(out_r, log)
        os.close(out_r)
        run_s = self.clock() - started
        oom = self.c.oom_kills(job.id)  # read before the cgroup is removed
        if oom:
            log.note(f"the kernel's OOM killer killed {oom} process(es) of the job: it used more than its "
                     f"--mem of {job.spec.resources.host_mem_mib} MiB")
        return retry_store(lambda: self._finish(job, rc, stop_kind, timed_out, run_s, stop_by, oom),  # type: ignore[return-value]
                           home=self.ctx.paths.home)

    def _pump(self, fd: int, log: CappedLog) -> bool:
        """Copy what the job wrote to its log; False at end of output."""
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            log.write(data)

    def _poll(self, job: Job, beat: bool, pid: int) -> Job | object | None:
        """The job's record (None while Redis is away); records a buffered pid; the heartbeat."""
        try:
            self._record_pid(job)
            if beat:
                self.store.r.set(keys.job_heartbeat(job.id), json.dumps(
                    {"pid": os.getpid(), "job_pid": pid, "node": self.ctx.node, "token": job.started_at,
                     "at": self.clock()}), px=int(self.ctx.heartbeat_s * 6000))
            return self.store.get(job.id)
        except StoreUnavailable:
            return None
        except (JobNotFound, RecordSetAside):
            return _GONE
        except Exception as e:  # redis errors outside the store's wrapping: same as away
            if type(e).__module__.startswith("redis"):
                return None
            raise

    def _record_progress(self, run: Job, path: Path, log: CappedLog) -> None:
        raw = read_small(path)  # the job's user owns this file: no FIFO, symlink or huge file
        if raw is None:
            return
        progress = parse_progress(raw)
        if progress is None:
            return
        try:
            self.store.update(
                run.id,
                lambda j: j.with_changes(progress=progress) if same_run(j, run) and j.progress != progress else None,
                self.clock(),
            )
        except StoreUnavailable:
            pass  # progress is best effort

    # ---- the end ------------------------------------------------------------------------------

    def _finish(self, job: Job, rc: int | None, stop_kind: StopKind | None, timed_out: bool, run_s: float,
                stop_by: str = "", oom_kills: int = 0) -> str:
        now = self.clock()
        gpu_share = accounting.gpu_share(job)  # one accounting: gpuq/accounting.py
        signal_note = f" (killed by signal {-rc})" if rc is not None and rc < 0 else ""

        if rc == 0:
            to, reason = JobState.COMPLETED, "exited 0"
        elif stop_kind is StopKind.CANCEL:
            to, reason = JobState.CANCELLED, f"cancelled by {stop_by}" if stop_by else "cancelled"
        elif stop_kind is not None:
            to, reason = JobState.PENDING, f"requeued ({stop_kind.value})"
        elif timed_out:
            to, reason = JobState.TIMEOUT, f"time limit of {job.spec.time_limit_s:g} s reached"
        elif oom_kills:  # the cgroup's own count: a job over its --mem, whatever exit status followed
            to, reason = JobState.FAILED, (f"out of memory: the kernel killed {oom_kills} of its processes for "
                                           f"going over --mem {job.spec.resources.host_mem_mib} MiB "
                                           f"(exited {rc}{signal_note}); ask for more --mem")
        elif rc == REQUEUE_EXIT_CODE:
            to, reason = JobState.PENDING, f"requeued (exited {REQUEUE_EXIT_CODE}: checkpointed)"
        else:
            to, reason = JobState.FAILED, f"exited {rc}{signal_note}"
        gang = job.placement is not None and job.placement.is_gang
        if gang and stop_kind is None:  # a part's own end (not a stop of the whole job) names the part
            reason = self._part_label(job) + reason

        mine = PartEnd(to, rc, reason)

        def change(j: Job) -> Job | None:
            if not same_run(j, job):
                return None  # reconciled, re-placed or ended meanwhile: never overwrite a newer run
            end = mine
            if gang:  # the job ends with its last part, as its first part that did not exit 0 said
                assert j.placement is not None
                done = tuple(dict.fromkeys(j.gang_done + (self.ctx.node,)))
                first = j.gang_end or (None if mine.state is JobState.COMPLETED else mine)
                if len(done) < len(j.placement.parts):
                    return j.with_changes(gang_done=done, gang_end=first)
                end = first or PartEnd(JobState.COMPLETED, 0, "every part exited 0")
            common = dict(accounting.end_of_run(j, run_s), end_reason=end.reason)
            if end.state is JobState.PENDING:
                return j.transition(end.state, requeues=j.requeues + 1, **common)
            return j.transition(end.state, ended_at=now, exit_code=end.exit_code, **common)

        def event(j: Job) -> str:
            if j.state is JobState.RUNNING:
                return f"{self._part_label(j)}ended ({reason}); waiting for the other parts to end"
            return f"{j.state.value}: {j.end_reason}"

        def charge(j: Job, record: dict | None, config: dict) -> dict | None:
            """Fair-share usage of this run, counted exactly as plan() counted it while it ran."""
            if j.state is JobState.RUNNING or gpu_share <= 0 or run_s <= 0:
                return None  # another part of the job still runs (its last part charges), or nothing to charge
            return fairshare.add_run_usage(record, gpu_share, now - run_s, now, usage.half_life_from_config(config))

        # one transaction: the end, the user's usage and the scheduler's wake-up
        done = self.store.update(job.id, change, now, event=event, usage=UsageCharge(job.owner.user, charge),
                                 also=lambda pipe, j: pipe.delete(keys.job_heartbeat(job.id))
                                 if j.state is not JobState.RUNNING else None)
        if done is not None and done.state is JobState.RUNNING:
            return f"{reason}; the other parts still run"
        notify_job_end(done)
        return f"{to.value}: {reason}" if done is None else f"{done.state.value}: {done.end_reason}"


# ---- small helpers ------------------------------------------------------------------------------


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


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
