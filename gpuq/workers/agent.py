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
from gpuq.workers.probe import Probe

log = logging.getLogger("gpuq.agent")


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
        """Jobs the store says run here, from a daemon that is gone: stop what is left of them and
        put them back in the queue, keeping the evidence in their events."""
        now = self.clock()
        Queue(keys.rq_queue_name(self.cfg.node), connection=self.store.r, serializer=JSONSerializer).empty()
        # a full scan once at start (not the per-node index), so nothing placed here is missed
        mine = [j for j in self.store.active_jobs()
                if j.state is JobState.RUNNING and j.placement is not None and j.placement.node == self.cfg.node]
        for job in mine:
            if job.pid and group_alive(job.pid):
                kill_group(job.pid, signal.SIGTERM)
                deadline = time.monotonic() + self.cfg.grace_s
                while group_alive(job.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                kill_group(job.pid, signal.SIGKILL)
            reason = ("interrupted: the daemon restarted while it ran; requeued" if job.started_at
                      else "placed but not started before the daemon restarted; requeued")
            self.store.update(
                job.id,
                lambda j: j.transition(JobState.PENDING, requeues=j.requeues + (1 if j.started_at else 0),
                                       end_reason=reason) if j.state is JobState.RUNNING else None,
                now, event=reason,
            )
            log.warning("job %s: %s", job.id, reason)

    # ---- shutdown -----------------------------------------------------------------------------

    def shutdown(self, grace_s: float) -> None:
        """Stop this node's jobs (they go back to pending), then the workers."""
        now = self.clock()
        self.store.drop_node(self.cfg.node)  # nothing new is placed here from now on
        self.stopping = True
        for job in self.my_running():
            if job.started_at is None:
                self.store.update(job.id, lambda j: j.transition(JobState.PENDING, end_reason="daemon stopped before it started")
                                  if j.state is JobState.RUNNING and j.started_at is None else None, now,
                                  event="daemon stopping: back to pending")
            else:
                self.store.update(job.id, lambda j: j.with_changes(
                    stop_request=StopRequest(StopKind.SHUTDOWN, now, "daemon"))
                    if j.state is JobState.RUNNING and j.stop_request is None else None, now,
                    event="daemon stopping: SIGTERM, then requeue")
        deadline = time.monotonic() + grace_s + 10
        while self.my_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        self.workers = []
        self.probe.close()
