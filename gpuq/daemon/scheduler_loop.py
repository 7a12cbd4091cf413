"""The scheduler loop run by the leader daemon: load -> plan -> apply -> publish -> wait."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from rq import Queue
from rq.serializers import JSONSerializer

from gpuq import keys
from gpuq.config import DaemonConfig
from gpuq.errors import GpuqError, StoreUnavailable
from gpuq.gpus import NodeSnapshot
from gpuq.jobs.model import Job, JobState, Placement, StopKind, StopRequest
from gpuq.scheduler.dependencies import dependency_ids, dependency_never
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.policy import Plan, plan
from gpuq.store import Store
from gpuq.workers.notify import notify_job_end

log = logging.getLogger("gpuq.scheduler")

RQ_RESULT_TTL_S = 3600


@dataclass(frozen=True)
class World:
    pending: list[Job]
    running: list[Job]
    nodes: list[NodeSnapshot]
    usage: dict[str, dict]  # per user: the stored {"gpu_s", "at"} record; plan() decays it
    finished: dict[int, JobState]


#: Ports a job across nodes may be given (MASTER_PORT, then one per TensorFlow worker): above the
#: registered services most labs run, below Linux's ephemeral range (32768-60999).
GANG_PORTS = range(20000, 32000)


def choose_gang_port(nodes: int, rng: random.Random) -> int:
    """A port for one run of a job across nodes: it uses this one and the next ``nodes``."""
    return rng.randrange(GANG_PORTS.start, GANG_PORTS.stop - nodes - 1)


def enqueue_placement(store: Store, job: Job, pipe) -> None:
    """Put the placement on its node's RQ queue (each part of a job across nodes on its own node's
    queue), inside the caller's transaction.  The payload is only the job id; no timeout (gpuq
    enforces --time-limit itself)."""
    assert job.placement is not None
    nodes = job.placement.nodes
    for rank, node in enumerate(nodes):
        part = "" if len(nodes) == 1 else f"-part-{rank}"
        queue = Queue(keys.rq_queue_name(node), connection=store.r, serializer=JSONSerializer)
        queue.enqueue_call(
            "gpuq.workers.launcher.run_job", args=(job.id,), timeout=-1, result_ttl=RQ_RESULT_TTL_S,
            failure_ttl=7 * 86400, job_id=f"gpuq-job-{job.id}-run-{job.requeues + 1}{part}",
            description=f"gpuq job {job.id}", pipeline=pipe,
        )


def placed_event(p: Placement) -> str:
    if not p.is_gang:
        return f"placed on {p.node} GPUs {','.join(str(i) for i in p.gpu_indices) or 'none'}"
    parts = [f"{p.part(r).node} (rank {r}) GPUs {','.join(str(i) for i in p.part(r).gpu_indices)}"
             for r in range(len(p.parts))]
    return f"placed across {len(parts)} nodes, port {p.port}: " + "; ".join(parts)


class SchedulerLoop:
    def __init__(self, store: Store, cfg: DaemonConfig, clock: Callable[[], float] = time.time,
                 on_wake: Callable[[], None] | None = None):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.on_wake = on_wake  # told after the cycle that a wake-up started (a job ended: the local agent re-probes at once)
        self.half_life_s = float(cfg.policy.half_life_s)
        self._published_reasons: dict[int, str] | None = None
        self._published_config = False
        self.rng = random.Random()
        self._index: PendingIndex | None = None  # the pending jobs of the last cycle, indexed

    def load(self, now: float) -> World:
        jobs = self.store.active_jobs()
        pending = [j for j in jobs if j.state in (JobState.PENDING, JobState.HELD)]
        running = [j for j in jobs if j.state is JobState.RUNNING]
        deps = {d for j in pending for d in dependency_ids(j)}
        finished = self.store.states_of(sorted(deps)) if deps else {}
        usage = self.store.usage_records()
        live = [n for n in self.store.nodes() if now - n.probed_at <= self.cfg.node_ttl_s]
        return World(pending, running, live, usage, finished)

    def cancel_impossible_dependents(self, world: World, now: float) -> None:
        """A job whose dependency can never be satisfied is cancelled, with the reason (Slurm's
        kill_invalid_depend); ``[daemon] keep_impossible_dependents = true`` leaves it pending."""
        if self.cfg.keep_impossible_dependents:
            return
        for job in world.pending:
            why = dependency_never(job, world.finished)
            if why is None:
                continue
            reason = f"dependency never satisfied: {why}"
            notify_job_end(self.store.update(
                job.id,
                lambda j, reason=reason: j.transition(JobState.CANCELLED, ended_at=now, end_reason=reason)
                if j.state in (JobState.PENDING, JobState.HELD) else None,
                now, event=f"cancelled: {reason}",
            ))

    def decide(self, world: World, now: float) -> Plan:
        """plan() on the pending jobs, through an index kept from cycle to cycle: only the jobs
        that are new or changed since the last cycle are (re)indexed."""
        if self._index is None or not self._index.matches(self.cfg.policy):
            self._index = PendingIndex(self.cfg.policy)
        self._index.sync(world.pending)
        return plan(self._index, world.running, world.nodes, world.usage, self.cfg.policy, now,
                    finished=world.finished)

    def release_unclaimed(self, world: World, now: float) -> None:
        """Placements on a node that went away before a worker claimed them go back to pending, and
        so does a job across nodes whose parts did not all start within ``gang_start_s`` (none of
        its processes started: they wait for the last claim).  (A started job on a vanished node
        is left alone: that node reconciles it when it returns.)"""
        live = {n.node for n in world.nodes}
        for job in world.running:
            p = job.placement
            if job.started_at is not None or p is None:
                continue
            gone = [n for n in p.nodes if n not in live]
            if gone:
                reason = f"its node {', '.join(gone)} went away before it started"
            elif p.is_gang and job.placed_at is not None and now - job.placed_at > self.cfg.gang_start_s:
                waiting = [n for n in p.nodes if n not in job.gang_ready]
                reason = (f"not every part started within {self.cfg.gang_start_s:g} s (no worker claimed the part "
                          f"on {', '.join(waiting)}); none was started")
            else:
                continue
            self.store.update(
                job.id,
                lambda j, placed_at=job.placed_at, reason=reason: j.transition(JobState.PENDING, end_reason=reason)
                if j.state is JobState.RUNNING and j.started_at is None and j.placed_at == placed_at else None,
                now, event=f"{reason}: back to pending",
            )

    def apply(self, decisions: Plan, now: float) -> None:
        for start in decisions.starts:
            p = start.placement
            if p.is_gang:  # a port per run: MASTER_PORT and the TensorFlow workers' ports
                p = dataclasses.replace(p, port=choose_gang_port(len(p.parts), self.rng))

            def change(j: Job, p=p) -> Job | None:
                if j.state is not JobState.PENDING:
                    return None  # held, cancelled or started meanwhile: the next cycle decides again
                return j.transition(JobState.RUNNING, placement=p, placed_at=now)

            self.store.update(start.job_id, change, now, event=placed_event(p),
                              also=lambda pipe, job: enqueue_placement(self.store, job, pipe), wake=False,
                              fence=(keys.LEADER, self.cfg.node))
        for pre in decisions.preempts:
            def stop(j: Job) -> Job | None:
                if j.state is not JobState.RUNNING or j.stop_request is not None or j.started_at is None:
                    return None
                return j.with_changes(stop_request=StopRequest(StopKind.PREEMPT, now, "scheduler"))

            self.store.update(pre.job_id, stop, now, event=f"preempted: {pre.reason}",
                              fence=(keys.LEADER, self.cfg.node))

    def publish(self, decisions: Plan) -> None:
        """Write the pending reasons (and, once, the config workers read) only when they changed:
        every write is an fsync on the embedded store."""
        reasons = dict(decisions.reasons)
        if reasons != self._published_reasons:
            self.store.set_reasons(reasons)
            self._published_reasons = reasons
        if not self._published_config:
            self.store.publish_config({"half_life_s": self.half_life_s, "policy": self.cfg.policy.policy})
            self._published_config = True

    def cycle(self) -> Plan:
        now = self.clock()
        world = self.load(now)
        self.release_unclaimed(world, now)
        self.cancel_impossible_dependents(world, now)
        decisions = self.decide(world, now)
        self.apply(decisions, now)
        self.publish(decisions)
        return decisions

    def run(self, stop: threading.Event) -> None:
        ttl_s = max(5.0, self.cfg.cycle_s * 5)
        woken = False
        while not stop.is_set():
            try:
                if self.store.lead_cycle(self.cfg.node, ttl_s):
                    self.cycle()
                    if woken and self.on_wake is not None:
                        self.on_wake()  # after the cycle, not during it: the two would share the daemon's GIL
                    woken = self.store.wait_wake(self.cfg.cycle_s)
                else:
                    stop.wait(self.cfg.cycle_s)  # leave the wake-ups to the leader
            except StoreUnavailable as e:
                log.error("%s (retrying)", e)
                stop.wait(1.0)
            except GpuqError as e:
                log.error("scheduling cycle failed: %s", e)
                stop.wait(self.cfg.cycle_s)
            except Exception:  # keep scheduling; the log keeps the evidence
                log.exception("scheduling cycle crashed")
                stop.wait(self.cfg.cycle_s)
