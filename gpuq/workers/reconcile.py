"""Reconcile what the store says runs with what really runs (every node-agent tick, and at start).

* A running job on this node whose supervisor is alive (its local record names a live process
  with the same start time, for the same run token) is left alone: a new daemon *adopts* it.
* One whose supervisor is dead (killed, crashed, never started) has everything in its cgroup
  killed (and its session, if that pid is still the job's), then ends: an acknowledged stop
  request is honoured (cancel -> cancelled, requeue/preempt/drain -> pending), a checkpointable
  job is requeued, anything else fails - always with an event saying why.
* Leftovers of runs that are no longer current (a cgroup or record whose job moved on, e.g. on
  a node that comes back after its jobs were requeued elsewhere) are killed and removed.
* The scheduler leader ends the started jobs of a node that stopped reporting for longer than
  ``node_lost_s`` (checkpointable ones back to pending, others failed).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Iterable

from gpuq.errors import JobNotFound
from gpuq.jobs.model import Job, JobState, StopKind
from gpuq.store import Store
from gpuq.workers import runrecord
from gpuq.workers.cgroup import Containment
from gpuq.workers.probe import session_of

log = logging.getLogger("gpuq.reconcile")

#: a claimed job gets this long to have a live supervisor record before it counts as lost
LAUNCH_GRACE_S = 15.0


def _process_start_epoch(pid: int) -> float | None:
    ticks = runrecord.proc_start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def is_job_process(job: Job, tolerance_s: float = 30.0) -> bool:
    """Is ``job.pid`` still this job's session leader (owner and start time checked: after a
    reboot or a pid wrap the number may belong to someone else)?"""
    pid = job.pid
    if not pid or job.started_at is None or session_of(pid) != pid:
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != job.owner.uid:
            return False
    except OSError:
        return False
    started = _process_start_epoch(pid)
    return started is not None and abs(started - job.started_at) <= tolerance_s


def supervisor_alive(home: Path, job: Job) -> bool:
    rec = runrecord.read(home, job.id)
    return rec is not None and rec.token == job.started_at and runrecord.is_alive(rec)


def kill_run(containment: Containment, job: Job, node: str = "") -> None:
    """Kill everything of ``job``'s run on this node: its cgroup, and its session if the pid is
    still the job's (a job across nodes records rank 0's pid: only rank 0's node kills it)."""
    p = job.placement
    rank0_here = p is None or not p.is_gang or p.rank_of(node) == 0
    if job.pid and rank0_here and is_job_process(job):
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    containment.kill_all(job.id)


def end_run(store: Store, job: Job, why: str, now: float) -> Job | None:
    """End run ``job`` whose supervisor is gone: honour an acknowledged stop, else requeue a
    checkpointable job, else fail it.  Fenced by the run token."""

    def change(j: Job) -> Job | None:
        if j.state is not JobState.RUNNING or j.started_at != job.started_at:
            return None
        sr = j.stop_request
        if j.gang_end is not None:  # a job across nodes whose first part already said how it ends
            e = j.gang_end
            if e.state is JobState.PENDING:
                return j.transition(JobState.PENDING, requeues=j.requeues + 1, end_reason=f"{e.reason}; {why}")
            return j.transition(e.state, ended_at=now, exit_code=e.exit_code, end_reason=f"{e.reason}; {why}")
        if sr is not None and sr.kind is StopKind.CANCEL:
            return j.transition(JobState.CANCELLED, ended_at=now, end_reason=f"cancelled by {sr.by}; {why}")
        if sr is not None:
            return j.transition(JobState.PENDING, requeues=j.requeues + 1, end_reason=f"requeued ({sr.kind.value}); {why}")
        if j.pid is None:  # no process was ever started (e.g. a worker killed mid-launch): nothing ran
            return j.transition(JobState.PENDING, end_reason=f"{why}; requeued (it had not started)")
        if j.spec.checkpointable:
            return j.transition(JobState.PENDING, requeues=j.requeues + 1, end_reason=f"{why}; requeued (checkpointable)")
        return j.transition(JobState.FAILED, ended_at=now, end_reason=why)

    try:
        return store.update(job.id, change, now, event=lambda j: f"{j.state.value}: {j.end_reason}")
    except JobNotFound:
        return None


def check_supervisors(store: Store, home: Path, containment: Containment, jobs: Iterable[Job], now: float,
                      adopting: bool = False, node: str = "") -> list[int]:
    """Each started job running here: adopt it if its supervisor lives, else stop and end it (a
    job across nodes entirely: its other parts stop when they see it ended).  Returns the ids of
    jobs that were ended."""
    ended = []
    for job in jobs:
        if job.state is not JobState.RUNNING:
            continue
        if job.started_at is None:
            if waiting_part_died(store, home, job, node, now):
                ended.append(job.id)
            continue
        if node and node in job.gang_done:
            continue  # this node's part of a job across nodes exited 0; the others still run
        if supervisor_alive(home, job):
            if adopting:
                rec = runrecord.read(home, job.id)
                store.update(job.id, lambda j: j if j.started_at == job.started_at else None, now,
                             event=f"adopted by the new daemon: supervisor pid {rec.pid if rec else '?'} is alive")
            continue
        rec = runrecord.read(home, job.id)
        if rec is None and now - job.started_at < LAUNCH_GRACE_S:
            continue  # claimed a moment ago: its supervisor is being forked
        if rec is not None and rec.token == job.placed_at and runrecord.is_alive(rec):
            continue  # a part of a job across nodes just past the start barrier: recording its run
        part = f"part {job.placement.rank_of(node)} on {node}: " if job.placement and job.placement.is_gang else ""
        why = part + (f"its supervisor (pid {rec.pid}) died; the job's processes were stopped" if rec is not None
                      else "its supervisor never started or vanished; the job's processes were stopped")
        kill_run(containment, job, node)
        if end_run(store, job, why, now) is not None:
            log.warning("job %s: %s", job.id, why)
            ended.append(job.id)
        containment.remove(job.id)
        runrecord.remove(home, job.id, job.started_at)
    return ended


def waiting_part_died(store: Store, home: Path, job: Job, node: str, now: float) -> bool:
    """A part of a job across nodes whose supervisor died while it waited at the start barrier (its
    record still carries the placement time): nothing of the job started, so the job goes back to
    pending at once instead of starting its other parts.  True when it did."""
    p = job.placement
    if p is None or not p.is_gang or job.placed_at is None:
        return False
    rec = runrecord.read(home, job.id)
    if rec is None or rec.token != job.placed_at or runrecord.is_alive(rec):
        return False
    why = (f"part {p.rank_of(node)} on {node}: its supervisor (pid {rec.pid}) died before every part started; "
           "none was started")
    back = store.update(job.id, lambda j: j.transition(JobState.PENDING, end_reason=why)
                        if j.state is JobState.RUNNING and j.placed_at == job.placed_at and j.started_at is None
                        else None, now, event=f"{why}: back to pending")
    runrecord.remove(home, job.id, job.placed_at)
    if back is not None:
        log.warning("job %s: %s", job.id, why)
    return back is not None


def sweep_leftovers(home: Path, containment: Containment, current: dict[int, Job]) -> list[int]:
    """Kill and remove cgroups and records of runs that are not current here and whose
    supervisor is dead (a live supervisor of a stale run stops its job by itself)."""
    swept = []
    # The cgroups are listed before the records are read: a supervisor writes its run record
    # before it creates its job's cgroup, so every cgroup listed here already has its record on
    # disk when the records are read.  Read the other way round, a start between the two reads
    # (record written after the first, cgroup created before the second) looked like a leftover,
    # and its just-started job was killed.
    cgroups = containment.jobs()
    live_records = {}
    for rec in runrecord.all_records(home):
        job = current.get(rec.job)
        if runrecord.is_alive(rec):
            live_records[rec.job] = rec
            continue
        if job is None or (job.started_at != rec.token and job.placed_at != rec.token):
            runrecord.remove(home, rec.job, rec.token)  # (a placement-time record is a part at the barrier)
    for job_id in cgroups:
        if job_id in live_records or job_id in current:
            continue
        containment.kill_all(job_id)
        containment.remove(job_id)
        swept.append(job_id)
    return swept


def reap_supervisors(home: Path) -> None:
    """Supervisors re-parented to this daemon (a child subreaper) are reaped when they exit."""
    for rec in runrecord.all_records(home):
        try:
            os.waitpid(rec.pid, os.WNOHANG)
        except ChildProcessError:
            pass


class LostNodes:
    """The leader's view of nodes that stopped reporting: since when each has been silent."""

    def __init__(self, node_lost_s: float):
        self.node_lost_s = node_lost_s
        self.silent_since: dict[str, float] = {}

    def check(self, store: Store, now: float) -> list[int]:
        live = {n.node for n in store.nodes()}
        running = [j for j in store.active_jobs() if j.state is JobState.RUNNING and j.placement is not None]
        nodes = {n for j in running if j.placement is not None for n in j.placement.nodes}
        for n in list(self.silent_since):
            if n in live or n not in nodes:
                del self.silent_since[n]
        ended = []
        for j in running:
            if j.started_at is None or j.placement is None:
                continue  # unclaimed placements on a lost node go back at once (scheduler loop)
            lost = [n for n in j.placement.nodes if n not in live and n not in j.gang_done]
            if not lost:
                continue  # (a job across nodes ends when any of its nodes is lost)
            node = lost[0]
            since = self.silent_since.setdefault(node, now)
            if now - since < self.node_lost_s:
                continue
            why = f"its node {node} stopped reporting for {now - since:.0f} s"
            if end_run(store, j, why, now) is not None:
                log.warning("job %s: %s", j.id, why)
                ended.append(j.id)
        return ended
