"""GPU memory over-use: a job using more GPU memory than it reserved (NVML, or SIMULATED claims).

Each node-agent tick compares, per running job and GPU, the memory its processes use (NVML's
per-process figure; processes are attributed by session and by cgroup) with its reservation:

* the first time a job is over, an event and an entry in ``gpuq:overuse`` (shown by ``gpuq
  status`` as a warning on the job) - at once;
* with ``overuse = "kill"`` in the config, a job still over after ``overuse_grace`` is
  cancelled (SIGTERM, then SIGKILL after the usual grace), with the reason;
* the memory taken beyond the share is published per GPU (``overuse_mib``) so that placement
  never packs another job onto it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable

from gpuq import keys
from gpuq.gpus import NodeSnapshot
from gpuq.jobs.model import Job, JobState, StopKind, StopRequest
from gpuq.store import Store
from gpuq.units import format_mib

POLICIES = ("warn", "kill")


@dataclass(frozen=True)
class Overuse:
    job_id: int
    gpu_index: int
    used_mib: int
    reserved_mib: int

    def sentence(self) -> str:
        return (f"job {self.job_id} uses {format_mib(self.used_mib)} of GPU memory on GPU {self.gpu_index} "
                f"but reserved {format_mib(self.reserved_mib)}")


def find_overuse(snap: NodeSnapshot, jobs: Iterable[Job]) -> list[Overuse]:
    """Per job and GPU, memory used beyond the reservation (pure)."""
    by_uuid = {g.uuid: g for g in snap.gpus}
    out = []
    for job in jobs:
        p = job.placement
        if job.state is not JobState.RUNNING or p is None or job.spec.resources.whole_gpus:
            continue
        for uuid, reserved in zip(p.gpu_uuids, p.reserved_mib):
            g = by_uuid.get(uuid)
            if g is None:
                continue
            used = sum(pr.used_mib or 0 for pr in g.processes if pr.job_id == job.id)
            if used > reserved:
                out.append(Overuse(job.id, g.index, used, reserved))
    return out


def with_overuse(snap: NodeSnapshot, over: list[Overuse]) -> NodeSnapshot:
    """The snapshot with each GPU's memory taken beyond shares (placement counts it as taken)."""
    extra: dict[int, int] = {}
    for o in over:
        extra[o.gpu_index] = extra.get(o.gpu_index, 0) + o.used_mib - o.reserved_mib
    if not extra:
        return snap
    gpus = tuple(dataclasses.replace(g, overuse_mib=extra.get(g.index, 0)) for g in snap.gpus)
    return dataclasses.replace(snap, gpus=gpus)


class OveruseWatch:
    def __init__(self, store: Store, policy: str, grace_s: float):
        self.store = store
        self.policy = policy
        self.grace_s = grace_s
        self.since: dict[int, float] = {}  # job id -> first seen over (this daemon's view)

    def police(self, over: list[Overuse], running_ids: set[int], now: float) -> None:
        worst: dict[int, Overuse] = {}
        for o in over:
            if o.job_id not in worst or o.used_mib - o.reserved_mib > worst[o.job_id].used_mib - worst[o.job_id].reserved_mib:
                worst[o.job_id] = o
        for job_id, o in worst.items():
            if job_id not in self.since:
                self.since[job_id] = now
                self.store.r.hset(keys.OVERUSE, str(job_id), json.dumps(
                    {"since": now, "gpu": o.gpu_index, "used_mib": o.used_mib, "reserved_mib": o.reserved_mib,
                     "warning": o.sentence()}))
                then = (f"; it is stopped if it stays over for {self.grace_s:g} s" if self.policy == "kill" else "")
                self.store.update(job_id, lambda j: j if j.state is JobState.RUNNING else None, now,
                                  event=f"GPU memory over-use: {o.sentence()}{then}", wake=False)
            elif self.policy == "kill" and now - self.since[job_id] >= self.grace_s:
                self._stop(job_id, o, now)
        for job_id in list(self.since):
            if job_id not in worst:
                del self.since[job_id]
                if job_id not in running_ids:
                    self.store.r.hdel(keys.OVERUSE, str(job_id))
        gone = [k for k in self.store.r.hkeys(keys.OVERUSE) if int(k) not in running_ids]
        if gone:
            self.store.r.hdel(keys.OVERUSE, *gone)

    def _stop(self, job_id: int, o: Overuse, now: float) -> None:
        by = f"gpuq: over-use of GPU memory ({o.sentence()} for {self.grace_s:g} s)"

        def stop(j: Job) -> Job | None:
            if j.state is not JobState.RUNNING or j.stop_request is not None:
                return None
            return j.with_changes(stop_request=StopRequest(StopKind.CANCEL, now, by))

        self.store.update(job_id, stop, now, event=f"stopping: {by}")
