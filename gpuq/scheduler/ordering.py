"""The order in which pending jobs are considered, per policy (pure).

Explicit priority is a tier: a job with a higher ``--priority`` always comes first.  Within a
tier the policy decides:

- fifo, default, fairshare: submit order inside each user; across users fifo keeps submit
  order and default/fairshare order by ``weight_fairshare * factor + weight_age * age``.
- sjf: shortest time limit first (an oracle when time limits are exact).
- srtf: shortest remaining time (time limit minus time already run) first.
- las: least attained service first, in discretised queues (Tiresias' 2D-LAS): jobs that
  received fewer GPU-seconds go first, submit order within a queue.

Within one user the order never depends on ``now``, so the global order is a k-way merge of
per-user sorted queues.  :class:`PendingIndex` keeps those queues; the simulator updates one
incrementally, the daemon passes a plain list and plan() builds one per cycle.
"""

from __future__ import annotations

import bisect
import heapq
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

from gpuq.jobs.model import Job
from gpuq.scheduler.config import PolicyConfig

INF = math.inf
_PROMOTED: Any = object()  # the source of starving las jobs in the merge


def las_level(attained_gpu_s: float, thresholds: tuple[float, ...]) -> int:
    return bisect.bisect_right(thresholds, attained_gpu_s)


def remaining_s(job: Job, now: float | None = None) -> float:
    """Time limit minus wall time already run (inf without a time limit)."""
    tl = job.spec.time_limit_s
    if tl is None:
        return INF
    gpus = max(job.spec.resources.gpus, 1)
    ran = job.attained_gpu_s / gpus
    if now is not None and job.started_at is not None:
        ran += max(0.0, now - job.started_at)
    return tl - ran


def _shape(job: Job) -> tuple:
    r = job.spec.resources
    return (r.gpus, r.whole_gpus, r.mem_mib, r.fraction)


def static_key_fn(config: PolicyConfig) -> Callable[[Job], tuple]:
    """The per-user sort key of a pending job (ends with the job id, so keys are unique)."""
    p = config.policy
    if p == "sjf":
        return lambda j: (-j.spec.priority, j.spec.time_limit_s if j.spec.time_limit_s is not None else INF,
                          j.submitted_at, j.id)
    if p == "srtf":
        return lambda j: (-j.spec.priority, remaining_s(j), j.submitted_at, j.id)
    if p == "las":
        th = config.las_thresholds_gpu_s
        return lambda j: (-j.spec.priority, las_level(j.attained_gpu_s, th), j.submitted_at, j.id)
    return lambda j: (-j.spec.priority, j.submitted_at, j.id)


def las_promoted(job: Job, factor: float, now: float) -> bool:
    """Tiresias-style starvation guard: waited at least ``factor`` times as long as it ran."""
    if factor <= 0 or job.attained_gpu_s <= 0:
        return False
    ran_s = job.attained_gpu_s / max(job.spec.resources.gpus, 1)
    return (now - job.submitted_at) - ran_s >= factor * ran_s


def effective_key(job: Job, config: PolicyConfig, now: float) -> tuple:
    """A pending job's key as plan() orders it now (las: a starving job is back in queue 0)."""
    key = static_key_fn(config)(job)
    if config.policy == "las" and key[1] > 0 and las_promoted(job, config.las_starve_factor, now):
        return (key[0], 0) + key[2:]
    return key


def running_key(job: Job, config: PolicyConfig, now: float) -> tuple:
    """Where a running job would sort among pending ones (for preemption by las/srtf)."""
    if config.policy == "las":
        spec = job.spec
        since = job.started_at if job.started_at is not None else job.placed_at
        ran = now - since if since is not None and now > since else 0.0
        attained = job.attained_gpu_s + (spec.resources.gpus or 1) * ran
        return (-spec.priority, bisect.bisect_right(config.las_thresholds_gpu_s, attained))
    if config.policy == "srtf":
        return (-job.spec.priority, remaining_s(job, now))
    return (-job.spec.priority,)


class PendingIndex:
    """Pending and held jobs in per-user sorted queues, ready for a k-way merge.

    Mutable: ``add``/``remove`` keep it sorted, so a caller that sees jobs arrive one by one
    (the simulator) need not re-sort thousands of jobs every cycle.
    """

    def __init__(self, config: PolicyConfig, jobs: Iterable[Job] = ()) -> None:
        self.policy = config.policy
        self.las_thresholds = config.las_thresholds_gpu_s
        self._key = static_key_fn(config)
        self.jobs: dict[int, Job] = {}
        self.queues: dict[str, list[tuple]] = {}
        self.groups: dict[str, tuple[int, ...]] = {}  # each waiting user's groups (for shares)
        self._keys: dict[int, tuple] = {}
        #: how many waiting jobs ask for each request shape (gpus, whole, mem_mib, fraction)
        self.shape_counts: dict[tuple, int] = {}
        #: las: jobs below the first queue (they may be promoted when they starve)
        self.deep: dict[int, Job] = {}
        key = self._key
        for j in {j.id: j for j in jobs}.values():  # bulk load: append, then sort each queue once
            k = key(j)
            self.jobs[j.id] = j
            self._keys[j.id] = k
            self.queues.setdefault(j.owner.user, []).append(k)
            self.groups[j.owner.user] = j.owner.groups
            if self.policy == "las" and k[1] > 0:
                self.deep[j.id] = j
            shape = _shape(j)
            self.shape_counts[shape] = self.shape_counts.get(shape, 0) + 1
        for q in self.queues.values():
            q.sort()

    def matches(self, config: PolicyConfig) -> bool:
        return self.policy == config.policy and self.las_thresholds == config.las_thresholds_gpu_s

    def add(self, job: Job) -> None:
        if job.id in self.jobs:
            self.remove(job.id)
        key = self._key(job)
        self.jobs[job.id] = job
        self._keys[job.id] = key
        shape = _shape(job)
        self.shape_counts[shape] = self.shape_counts.get(shape, 0) + 1
        q = self.queues.setdefault(job.owner.user, [])
        self.groups[job.owner.user] = job.owner.groups
        if self.policy == "las" and key[1] > 0:
            self.deep[job.id] = job
        if not q or q[-1] < key:
            q.append(key)
        else:
            bisect.insort(q, key)

    def remove(self, job_id: int) -> Job | None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return None
        key = self._keys.pop(job_id)
        self.deep.pop(job_id, None)
        shape = _shape(job)
        self.shape_counts[shape] -= 1
        if not self.shape_counts[shape]:
            del self.shape_counts[shape]
        q = self.queues[job.owner.user]
        i = bisect.bisect_left(q, key)
        del q[i]
        if not q:
            del self.queues[job.owner.user]
            del self.groups[job.owner.user]
        return job

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs.values())

    def ordered(self, score_of_user: Mapping[str, float] | None, config: PolicyConfig,
                now: float) -> Iterator[tuple[Job, float]]:
        """Jobs in policy order, with each job's priority score (higher first within a tier).

        ``score_of_user`` is each user's fair-share part (weight * factor) for default and
        fairshare; None for the other policies.
        """
        jobs = self.jobs
        if score_of_user is None:
            queues: dict[Any, list[tuple]] = dict(self.queues)
            promoted: set[int] = set()
            if self.policy == "las" and self.deep and config.las_starve_factor > 0:
                f = config.las_starve_factor
                up = sorted((self._keys[j.id][0], 0) + self._keys[j.id][2:]
                            for j in self.deep.values() if las_promoted(j, f, now))
                if up:
                    queues[_PROMOTED] = up
                    promoted = {k[-1] for k in up}
            heap = [(q[0], src, 0) for src, q in queues.items()]
            heapq.heapify(heap)
            while heap:
                key, src, i = heap[0]
                q = queues[src]
                if i + 1 < len(q):
                    heapq.heapreplace(heap, (q[i + 1], src, i + 1))
                else:
                    heapq.heappop(heap)
                if promoted and src is not _PROMOTED and key[-1] in promoted:
                    continue  # it comes (earlier) from the promoted queue
                yield jobs[key[-1]], 0.0
            return
        w_age = config.weight_age
        max_age = config.max_age_s

        def gkey(key: tuple, user: str) -> tuple:
            age = min(max(now - key[1], 0.0) / max_age, 1.0)
            score = score_of_user.get(user, 0.0) + w_age * age
            return (key[0], -score, key[1], key[2])

        heap2 = [(gkey(q[0], user), user, 0) for user, q in self.queues.items()]
        heapq.heapify(heap2)
        while heap2:
            gk, user, i = heap2[0]
            q = self.queues[user]
            if i + 1 < len(q):
                heapq.heapreplace(heap2, (gkey(q[i + 1], user), user, i + 1))
            else:
                heapq.heappop(heap2)
            yield jobs[gk[-1]], -gk[1]
