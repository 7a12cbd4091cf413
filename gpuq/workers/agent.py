"""The node agent: probe the GPUs, publish the snapshot, keep RQ workers ready, and
reconcile what the store says with what is really running on this node."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable

from rq import Queue
from rq.serializers import JSONSerializer

from gpuq import keys
from gpuq.config import DaemonConfig
from gpuq.jobs.model import Job, JobState, StopKind, StopRequest
from gpuq.store import Store
from gpuq.workers.launcher import group_alive, kill_group
from gpuq.workers.probe import Probe, session_of

log = logging.getLogger("gpuq.agent")


def _process_start_epoch(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds), from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def is_job_process(job: Job, tolerance_s: float = 30.0) -> bool:
    """Is ``job.pid`` still this job's process-group leader?  After a reboot or a pid wrap the
    number may belong to someone else's session: check session, owner and start time."""
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


class NodeAgent:
    def __init__(self, store: Store, cfg: DaemonConfig, probe: Probe, redis_url: str,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.cfg = cfg
        self.probe = probe
        self.redis_url = redis_url
        self.clock = clock
        self.workers: list[subprocess.Popen] = []
        self._last_used: tuple[int, ...] | None = None
        self.stopping = False

    # ---- what runs here -----------------------------------------------------------------------

    def my_running(self) -> list[Job]:
        return [j for j in self.store.running_on(self.cfg.node) if j.state is JobState.RUNNING]

    # ---- each tick ----------------------------------------------------------------------------

    def tick(self) -> None:
        if self.stopping:
            return
        now = self.clock()
        mine = self.my_running()
        sessions = {j.pid: (j.id, j.owner.user) for j in mine if j.pid}
        snap = self.probe.snapshot(self.cfg.node, now, sessions)
        self.store.put_node(snap, ttl_s=self.cfg.node_ttl_s)
        used = tuple(g.mem_used_mib for g in snap.gpus)
        if self._last_used is not None and used != self._last_used:
            self.store.wake("gpu memory changed")  # memory was freed or taken: plan again now
        self._last_used = used
        self.ensure_workers(len(mine))

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(GPUQ_NODE=self.cfg.node, GPUQ_HOME=str(self.cfg.home), GPUQ_GRACE_S=str(self.cfg.grace_s),
                   GPUQ_SIMULATED="1" if self.probe.simulated else "0", GPUQ_WORKER_REDIS_URL=self.redis_url)
        return env

    def ensure_workers(self, running_here: int) -> None:
        """One worker per job running here, plus spares so the next placement starts at once."""
        self.workers = [w for w in self.workers if w.poll() is None]
        want = min(self.cfg.max_workers, running_here + self.cfg.spare_workers)
        while len(self.workers) < want:
            w = subprocess.Popen(
                [sys.executable, "-m", "gpuq.workers.rqworker", keys.rq_queue_name(self.cfg.node)],
                env=self._worker_env(), stdin=subprocess.DEVNULL,
            )
            self.workers.append(w)

    # ---- recovery -----------------------------------------------------------------------------

    def reconcile_on_start(self) -> None:
        """Jobs the store says run here, from a daemon that is gone: put them back in the queue
        first (so a supervisor that outlived the daemon cannot record over it), then stop what is
        left of them, keeping the evidence in their events."""
        now = self.clock()
        Queue(keys.rq_queue_name(self.cfg.node), connection=self.store.r, serializer=JSONSerializer).empty()
        # a full scan once at start (not the per-node index), so nothing placed here is missed
        mine = [j for j in self.store.active_jobs()
                if j.state is JobState.RUNNING and j.placement is not None and j.placement.node == self.cfg.node]
        for job in mine:
            reason = ("interrupted: the daemon restarted while it ran; requeued" if job.started_at
                      else "placed but not started before the daemon restarted; requeued")
            self.store.update(
                job.id,
                lambda j, job=job, reason=reason: j.transition(
                    JobState.PENDING, requeues=j.requeues + (1 if j.started_at else 0), end_reason=reason)
                if j.state is JobState.RUNNING and j.started_at == job.started_at else None,
                now, event=reason,
            )
            if job.pid and is_job_process(job):
                kill_group(job.pid, signal.SIGTERM)
                deadline = time.monotonic() + self.cfg.grace_s
                while group_alive(job.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                kill_group(job.pid, signal.SIGKILL)
            log.warning("job %s: %s", job.id, reason)

    # ---- shutdown -----------------------------------------------------------------------------

    def shutdown(self, grace_s: float) -> None:
        """Stop this node's jobs (they go back to pending), then the workers."""
        now = self.clock()
        self.store.drop_node(self.cfg.node)  # nothing new is placed here from now on
        self.stopping = True

        def stop(j: Job) -> Job | None:
            if j.state is not JobState.RUNNING:
                return None
            if j.started_at is None:  # decided inside the transaction: a claim cannot slip between
                return j.transition(JobState.PENDING, end_reason="daemon stopped before it started")
            if j.stop_request is not None:
                return None
            return j.with_changes(stop_request=StopRequest(StopKind.SHUTDOWN, now, "daemon"))

        for job in self.my_running():
            self.store.update(job.id, stop, now, event="daemon stopping: SIGTERM, then back to pending")
        deadline = time.monotonic() + grace_s + 10
        while self.my_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for job in self.my_running():  # a supervisor that did not manage: kill the job ourselves
            if job.pid and is_job_process(job):
                log.warning("job %s: still running after the grace period: SIGKILL", job.id)
                kill_group(job.pid, signal.SIGKILL)
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        self.workers = []
        self.probe.close()
