"""The RQ task: launch one job's supervisor and return (milliseconds, not the job's lifetime).

The RQ payload is only the job id.  :func:`run_job`

1. claims the placement: sets ``started_at``, which is the run's token (only one worker can
   claim a placement; every later record change of this run is fenced by it),
2. hands the job to the worker's spare supervisor (:mod:`gpuq.workers.spare`: forked ahead of
   time, detached, connected), or, if the spare is gone, forks a detached supervisor
   (:mod:`gpuq.workers.supervisor`): its own session, re-parented away from the worker,
   stdin/stdout/stderr on /dev/null, named ``gpuq-sup-<id>``,
3. waits until the supervisor has written its local record, forks the next spare, and returns.

So RQ workers are busy for milliseconds per job: a few of them serve any number of running
jobs, and a placed GPU job finds a free worker at once however many CPU jobs run.

The supervisor is forked from the worker rather than exec'd as a new interpreter: it
inherits the imported modules, which saves ~100 ms of start-up per job on a loaded machine.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from pathlib import Path

from gpuq.jobs.model import Job, JobState, StopKind
from gpuq.paths import Paths
from gpuq.store import Store
from gpuq.workers import cgroup
from gpuq.workers.cgroup import Containment
from gpuq.workers.spare import Spare, SpareGone, fork_detached, fork_spare

SUPERVISOR_READY_S = 10.0
DEFAULT_LOG_CAP_BYTES = 1 << 30


@dataclass(frozen=True)
class WorkerContext:
    node: str
    paths: Paths
    grace_s: float
    simulated: bool
    redis_url: str
    containment: Containment
    log_cap_bytes: int = DEFAULT_LOG_CAP_BYTES
    gpu_minors: tuple[tuple[str, int], ...] = ()  # every GPU of this node: (uuid, /dev/nvidiaN minor)
    heartbeat_s: float = 5.0

    @classmethod
    def from_env(cls) -> "WorkerContext":
        """The daemon starts each worker with these variables set (see NodeAgent.worker_env)."""
        e = os.environ
        kind, where, ctrls = (e.get("GPUQ_CONTAINMENT", "none::") + "::").split(":")[:3]
        minors = tuple((u, int(m)) for u, _, m in (x.partition("=") for x in e.get("GPUQ_GPU_MINORS", "").split(",") if x))
        return cls(
            node=e["GPUQ_NODE"],
            paths=Paths(Path(e["GPUQ_HOME"])),
            grace_s=float(e.get("GPUQ_GRACE_S", "30")),
            simulated=e.get("GPUQ_SIMULATED", "0") == "1",
            redis_url=e["GPUQ_WORKER_REDIS_URL"],
            containment=cgroup.from_description(kind, where, tuple(c for c in ctrls.split(",") if c), e["GPUQ_CGROUP_SCOPE"]),
            log_cap_bytes=int(e.get("GPUQ_LOG_CAP_BYTES", str(DEFAULT_LOG_CAP_BYTES))),
            gpu_minors=minors,
            heartbeat_s=float(e.get("GPUQ_HEARTBEAT_S", "5")),
        )


def worker_env(ctx: WorkerContext) -> dict[str, str]:
    """The variables :meth:`WorkerContext.from_env` reads."""
    kind, where, ctrls = cgroup.describe(ctx.containment)
    return {
        "GPUQ_NODE": ctx.node, "GPUQ_HOME": str(ctx.paths.home), "GPUQ_GRACE_S": str(ctx.grace_s),
        "GPUQ_SIMULATED": "1" if ctx.simulated else "0", "GPUQ_WORKER_REDIS_URL": ctx.redis_url,
        "GPUQ_CONTAINMENT": f"{kind}:{where}:{','.join(ctrls)}",
        "GPUQ_CGROUP_SCOPE": cgroup.scope_of(ctx.containment), "GPUQ_LOG_CAP_BYTES": str(ctx.log_cap_bytes),
        "GPUQ_GPU_MINORS": ",".join(f"{u}={m}" for u, m in ctx.gpu_minors), "GPUQ_HEARTBEAT_S": str(ctx.heartbeat_s),
    }


def same_run(j: Job, run: Job) -> bool:
    """Is stored job ``j`` still the run this supervisor claimed?  (``started_at`` is set once per
    run, at the claim; a requeued and re-placed job has a new one.)"""
    return j.state is JobState.RUNNING and j.started_at is not None and j.started_at == run.started_at


def same_placement(j: Job, placed: Job) -> bool:
    """Is stored job ``j`` still the placement ``placed`` (a part of a job across nodes waiting at
    the start barrier has no run token yet: the placement time stands for it)?"""
    return j.state is JobState.RUNNING and j.placed_at == placed.placed_at


def claim(store: Store, node: str, job_id: int, now: float) -> Job | None:
    """Claim the placement (or, for a job across nodes, this node's part of it) for this node.
    A one-node job gets its run token ``started_at`` at once; a job across nodes gets it with the
    claim of its last part (the start barrier: until then no part's process starts)."""

    def change(j: Job) -> Job | None:
        if j.state is not JobState.RUNNING or j.placement is None or node not in j.placement.nodes:
            return None
        if j.started_at is not None or node in j.gang_ready:
            return None  # another worker already claimed this placement (or this part)
        if j.stop_request is not None:  # cancelled, requeued or drained before it started: no run
            sr = j.stop_request
            if sr.kind is StopKind.CANCEL:
                return j.transition(JobState.CANCELLED, ended_at=now, end_reason=f"cancelled by {sr.by} before it started")
            return j.transition(JobState.PENDING, end_reason=f"{sr.kind.value} before it started")
        if not j.placement.is_gang:
            return j.with_changes(started_at=now)
        ready = j.gang_ready + (node,)
        if len(ready) < len(j.placement.parts):
            return j.with_changes(gang_ready=ready)
        return j.with_changes(gang_ready=ready, started_at=now)

    def event(j: Job) -> str:
        if j.state is not JobState.RUNNING:
            return f"{j.state.value}: {j.end_reason}"
        if j.placement is not None and j.placement.is_gang:
            rank = j.placement.rank_of(node)
            done = "; every part claimed: all start now" if j.started_at is not None else ""
            return f"worker on {node} claimed part {rank} ({len(j.gang_ready)} of {len(j.placement.parts)}){done}"
        return f"worker on {node} claimed it"

    got = store.update(job_id, change, now, event=event)
    return got if got is not None and got.state is JobState.RUNNING else None


def run_job(job_id: int) -> str:
    """The RQ task: claim job ``job_id``'s placement on this node and launch its supervisor."""
    from rq import get_current_job

    current = get_current_job()
    if current is None:  # pragma: no cover - only ever called by an RQ worker
        raise RuntimeError("run_job must run inside an RQ worker")
    ctx = WorkerContext.from_env()
    store = Store(current.connection)
    job = claim(store, ctx.node, int(job_id), time.time())
    if job is None:
        return f"job {job_id}: nothing to do (not placed here, or already claimed)"
    pid = start_supervisor(ctx, job)
    if pid is None:
        from gpuq.workers.supervisor import fail_run

        fail_run(store, job, "could not start its supervisor (see the daemon log)")
        return f"job {job_id}: the supervisor did not start"
    return f"job {job_id}: supervisor pid {pid}"


_spare: Spare | None = None  # this worker's spare supervisor (gpuq.workers.spare)


def keep_spare(ctx: WorkerContext) -> None:
    """Make sure this worker has a spare supervisor waiting (called at start and after each handover)."""
    global _spare
    if _spare is None:
        try:
            _spare = fork_spare(ctx)
        except OSError:
            _spare = None  # out of processes: the next start forks its supervisor the old way


def start_supervisor(ctx: WorkerContext, job: Job) -> int | None:
    """Hand the claimed ``job`` to this worker's spare supervisor, or fork one the old way if the
    spare is gone; then fork the next spare while the job starts.  The supervisor's pid, or None."""
    global _spare
    spare, _spare = _spare, None
    pid: int | None = None
    handed = False
    if spare is not None:
        try:
            pid = spare.hand(job, SUPERVISOR_READY_S)
            handed = True
        except SpareGone:
            pass
    if not handed:
        pid = spawn_supervisor(ctx, job)
    keep_spare(ctx)
    return pid


def spawn_supervisor(ctx: WorkerContext, job: Job) -> int | None:
    """Double-fork a supervisor for ``job`` in its own session; its pid once it is ready, or None."""
    r, w = os.pipe()

    def run_supervisor() -> int:
        from gpuq.workers.supervisor import supervisor_main

        return supervisor_main(ctx, job, w)
    try:
        fork_detached(run_supervisor, (r,))
    except OSError:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], SUPERVISOR_READY_S)
        data = os.read(r, 64) if ready else b""
    finally:
        os.close(r)
    try:
        return int(data.decode().strip())
    except ValueError:
        return None
