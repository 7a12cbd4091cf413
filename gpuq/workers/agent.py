"""The node agent: probe the GPUs, publish the snapshot, keep a few RQ workers ready, watch the
supervisors of this node's jobs, police GPU memory over-use, and reconcile at start."""

from __future__ import annotations

import dataclasses
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
from gpuq.workers import reconcile
from gpuq.workers.cgroup import Containment
from gpuq.workers.launcher import WorkerContext, worker_env
from gpuq.workers.overuse import OveruseWatch, find_overuse, with_overuse
from gpuq.workers.probe import Probe

log = logging.getLogger("gpuq.agent")


class NodeAgent:
    def __init__(self, store: Store, cfg: DaemonConfig, probe: Probe, redis_url: str, containment: Containment,
                 containment_note: str = "", clock: Callable[[], float] = time.time):
        self.store = store
        self.cfg = cfg
        self.probe = probe
        self.redis_url = redis_url
        self.containment = containment
        self.containment_note = containment_note
        self.clock = clock
        self.workers: list[subprocess.Popen] = []
        self._last_used: tuple[int, ...] | None = None
        self.stopping = False
        self.overuse = OveruseWatch(store, cfg.overuse, cfg.overuse_grace_s)
        self.ctx = WorkerContext(
            node=cfg.node, paths=cfg.paths, grace_s=cfg.grace_s, simulated=probe.simulated, redis_url=redis_url,
            containment=containment, log_cap_bytes=cfg.log_cap_mib * 2**20, gpu_minors=tuple(probe.gpu_minors()),
        )

    # ---- what runs here -----------------------------------------------------------------------

    def my_running(self) -> list[Job]:
        return [j for j in self.store.running_on(self.cfg.node) if j.state is JobState.RUNNING]

    # ---- each tick ----------------------------------------------------------------------------

    def tick(self) -> None:
        if self.stopping:
            return
        now = self.clock()
        home = self.cfg.paths.home
        reconcile.reap_supervisors(home)
        mine = self.my_running()
        ended = set(reconcile.check_supervisors(self.store, home, self.containment, mine, now, node=self.cfg.node))
        if ended:
            mine = [j for j in mine if j.id not in ended]
        reconcile.sweep_leftovers(home, self.containment, {j.id: j for j in mine})
        sessions = {j.pid: (j.id, j.owner.user) for j in mine if j.pid}
        snap = self.probe.snapshot(self.cfg.node, now, sessions)
        over = find_overuse(snap, mine)
        self.overuse.police(over, {j.id for j in mine}, now)
        snap = dataclasses.replace(with_overuse(snap, over), cpu_slots=self.cfg.cpu_slots,
                                   containment=self.containment_note, warnings=tuple(o.sentence() for o in over),
                                   address=self.cfg.address)
        self.store.put_node(snap, ttl_s=self.cfg.node_ttl_s)
        used = tuple(g.mem_used_mib for g in snap.gpus)
        if self._last_used is not None and used != self._last_used:
            self.store.wake("gpu memory changed")  # memory was freed or taken: plan again now
        self._last_used = used
        self.ensure_workers()

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(worker_env(self.ctx))
        return env

    def ensure_workers(self) -> None:
        """A few workers: each launch takes milliseconds, so they serve any number of jobs."""
        self.workers = [w for w in self.workers if w.poll() is None]
        want = min(self.cfg.max_workers, self.cfg.spare_workers)
        while len(self.workers) < want:
            w = subprocess.Popen(
                [sys.executable, "-m", "gpuq.workers.rqworker", keys.rq_queue_name(self.cfg.node)],
                env=self._worker_env(), stdin=subprocess.DEVNULL,
            )
            self.workers.append(w)

    # ---- recovery -----------------------------------------------------------------------------

    def reconcile_on_start(self) -> None:
        """After a restart (clean, crash or upgrade): adopt every job whose supervisor lives, end
        those whose supervisor is gone, and send unclaimed placements back to pending (the RQ
        queue is emptied; the scheduler places them again)."""
        now = self.clock()
        Queue(keys.rq_queue_name(self.cfg.node), connection=self.store.r, serializer=JSONSerializer).empty()
        # a full scan once at start (not the per-node index), so nothing placed here is missed
        mine = [j for j in self.store.active_jobs()
                if j.state is JobState.RUNNING and j.placement is not None and self.cfg.node in j.placement.nodes]
        for job in mine:
            if job.started_at is None:
                reason = "placed but not claimed before the daemon restarted; back to pending"
                self.store.update(
                    job.id, lambda j: j.transition(JobState.PENDING, end_reason=reason)
                    if j.state is JobState.RUNNING and j.started_at is None else None, now, event=reason)
        started = [j for j in mine if j.started_at is not None]
        # a supervisor being forked right now has no record yet: the tick's grace covers it
        reconcile.check_supervisors(self.store, self.cfg.paths.home, self.containment, started, now, adopting=True,
                                    node=self.cfg.node)
        alive = {j.id: j for j in self.my_running()}
        swept = reconcile.sweep_leftovers(self.cfg.paths.home, self.containment, alive)
        for job_id in swept:
            log.warning("job %s: killed processes left in its cgroup by a run that is no longer current", job_id)

    # ---- shutdown -----------------------------------------------------------------------------

    def drain(self, grace_s: float) -> None:
        """Stop this node's jobs: each goes back to pending (checkpointable ones resume)."""
        now = self.clock()

        def stop(j: Job) -> Job | None:
            if j.state is not JobState.RUNNING:
                return None
            if j.started_at is None:  # decided inside the transaction: a claim cannot slip between
                return j.transition(JobState.PENDING, end_reason="the daemon drained before it started")
            if j.stop_request is not None:
                return None
            return j.with_changes(stop_request=StopRequest(StopKind.SHUTDOWN, now, "gpuq daemon --drain"))

        for job in self.my_running():
            self.store.update(job.id, stop, now, event="daemon draining: SIGTERM, then back to pending")
        deadline = time.monotonic() + grace_s + 10
        while self.my_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        # a supervisor that did not manage: the daemon ends the run itself
        reconcile.check_supervisors(self.store, self.cfg.paths.home, self.containment,
                                    [j for j in self.my_running() if j.started_at is not None], self.clock(),
                                    node=self.cfg.node)
        for job in self.my_running():
            log.warning("job %s: still running after the drain's grace period: killing it", job.id)
            reconcile.kill_run(self.containment, job, self.cfg.node)

    def shutdown(self, grace_s: float, drain: bool) -> None:
        """Stop the workers.  Running jobs keep running under their supervisors (a new daemon
        adopts them), unless ``drain``."""
        self.store.drop_node(self.cfg.node)  # nothing new is placed here from now on
        self.stopping = True
        if drain:
            self.drain(grace_s)
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
