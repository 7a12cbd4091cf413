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
from collections import Counter
import math
from typing import Callable, Iterable, Iterator, Mapping

from gpuq import accounting
from gpuq.jobs.model import Job, JobState
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.placement import Shape, shape_of

INF = math.inf


def las_level(attained_gpu_s: float, thresholds: tuple[float, ...]) -> int:
    return bisect.bisect_right(thresholds, attained_gpu_s)


def _time_left_waiting(job: Job) -> float:
    """A waiting job's time left (its runs are over, so the clock does not matter)."""
    return accounting.time_left_s(job, job.submitted_at)


def static_key_fn(config: PolicyConfig) -> Callable[[Job], tuple]:
    """The per-user sort key of a pending job (ends with the job id, so keys are unique)."""
    p = config.policy
    if p == "sjf":
        return lambda j: (-j.spec.priority, j.spec.time_limit_s if j.spec.time_limit_s is not None else INF,
                          j.submitted_at, j.id)
    if p == "srtf":
        return lambda j: (-j.spec.priority, _time_left_waiting(j), j.submitted_at, j.id)
    if config.orders_by_service:  # las, default
        th = config.las_thresholds_gpu_s
        level = bisect.bisect_right  # las_level, inlined: called once per waiting job
        return lambda j: (-j.spec.priority, level(th, j.attained_gpu_s), j.submitted_at, j.id)
    return lambda j: (-j.spec.priority, j.submitted_at, j.id)


#: PendingIndex.sync: more changes than this (plus an eighth of the jobs) reload the index in bulk
_BULK_AFTER = 256

#: the second element of a starving job's key: before every other job of its tier
STARVING = -INF


def waited_s(job: Job, now: float) -> float:
    """How long a waiting job has waited in all: since it was submitted, less the time it ran."""
    return now - job.submitted_at - job.total_run_s


def las_promoted(job: Job, factor: float, now: float) -> bool:
    """Tiresias-style starvation guard: waited at least ``factor`` times as long as it ran."""
    ran_s = job.total_run_s
    if factor <= 0 or ran_s <= 0:
        return False
    return (now - job.submitted_at) - ran_s >= factor * ran_s


def effective_key(job: Job, config: PolicyConfig, now: float) -> tuple:
    """A pending job's key as plan() orders it now (las: a starving job is back in queue 0)."""
    key = static_key_fn(config)(job)
    if config.orders_by_service and key[1] > 0 and las_promoted(job, config.las_starve_factor, now):
        return (key[0], 0) + key[2:]
    return key


def running_key(job: Job, config: PolicyConfig, now: float) -> tuple:
    """Where a running job would sort among pending ones (for preemption by las/srtf)."""
    if config.orders_by_service:
        attained = accounting.attained_gpu_s(job, now)
        return (-job.spec.priority, bisect.bisect_right(config.las_thresholds_gpu_s, attained))
    if config.policy == "srtf":
        return (-job.spec.priority, accounting.time_left_s(job, now))
    return (-job.spec.priority,)


def _first_of_each(jobs: Mapping[int, Job], keys: Iterable[tuple]) -> Iterator[Job]:
    """Jobs in key order, each once (a promoted las job comes first from the promoted queue)."""
    seen: set[int] = set()
    for key in keys:
        jid = key[-1]
        if jid not in seen:
            seen.add(jid)
            yield jobs[jid]


class PendingIndex:
    """Pending and held jobs in per-user sorted queues, ready for a k-way merge.

    Mutable: ``add``/``remove`` keep it sorted, so a caller that sees jobs arrive one by one
    (the simulator) need not re-sort thousands of jobs every cycle.
    """

    def __init__(self, config: PolicyConfig, jobs: Iterable[Job] = ()) -> None:
        self.policy = config.policy
        self.by_service = config.orders_by_service
        self.las_thresholds = config.las_thresholds_gpu_s
        self.starve_run_factor = config.starve_run_factor
        #: for the starvation guard: per size (GPUs, at least 1), (``_starve_clock``, id), sorted
        self.by_size: dict[int, list[tuple[float, int]]] = {}
        self._key = static_key_fn(config)
        self.jobs: dict[int, Job] = {}
        self.queues: dict[str, list[tuple]] = {}
        self.groups: dict[str, tuple[int, ...]] = {}  # each waiting user's groups (for shares)
        self._keys: dict[int, tuple] = {}
        #: how many waiting jobs ask for each request shape (gpus, whole, mem_mib, fraction)
        self.shape_counts: dict[Shape, int] = {}
        self.shapes: dict[int, Shape] = {}  # each waiting job's request shape
        #: las: jobs below the first queue (they may be promoted when they starve)
        self.deep: dict[int, Job] = {}
        #: jobs that may have to wait whatever the GPUs: held, dependencies, array throttle
        self.conditional: set[int] = set()
        #: each waiting job's time left, for those with a time limit (backfill)
        self.time_left: dict[int, float] = {}
        self._unsorted = False  # queues are sorted (bulk loads sort them lazily)
        self._load(jobs)

    def _load(self, jobs: Iterable[Job]) -> None:
        """Bulk load: append to each user's queue, then sort each queue once."""
        key = self._key
        las = self.by_service
        by_size = self.by_size
        all_jobs, keys, queues, groups, shapes = self.jobs, self._keys, self.queues, self.groups, self.shapes
        for j in jobs:
            jid = j.id
            if jid in all_jobs:
                self.remove(jid)
            k = keys[jid] = key(j)
            all_jobs[jid] = j
            owner = j.owner
            q = queues.get(owner.user)
            if q is None:
                q = queues[owner.user] = []
                groups[owner.user] = owner.groups
            q.append(k)
            if las and k[1] > 0:
                self.deep[jid] = j
            self._note_conditions(j)
            shape = shapes[jid] = shape_of(j.spec.resources)
            size = shape.gpus or 1
            lst = by_size.get(size)
            if lst is None:
                lst = by_size[size] = []
            lst.append((self._starve_clock(j), jid))
        self._unsorted = True  # sorted when first needed: a complete ordering sorts all keys anyway
        self.shape_counts = dict(Counter(shapes.values()))

    def sync(self, jobs: Iterable[Job]) -> None:
        """Make the index hold exactly ``jobs`` (the daemon's pending and held jobs of this
        cycle).  A job whose record did not change is the same object (the store decodes an
        unchanged record once), so it costs one lookup; new and changed jobs are added, gone ones
        removed.  When many jobs changed, one bulk load is cheaper than many sorted inserts."""
        current = jobs if isinstance(jobs, list) else list(jobs)
        known = self.jobs
        changed: list[Job] = []
        ids: set[int] = set()
        for j in current:
            ids.add(j.id)
            if known.get(j.id) is not j:
                changed.append(j)
        gone = [jid for jid in known if jid not in ids]
        if len(changed) + len(gone) > _BULK_AFTER + len(known) // 8:
            self._clear()
            self._load(current)
            return
        for jid in gone:
            self.remove(jid)
        for j in changed:
            self.add(j)

    def _clear(self) -> None:
        for d in (self.by_size, self.jobs, self.queues, self.groups, self._keys, self.shape_counts, self.shapes,
                  self.deep, self.conditional, self.time_left):
            d.clear()
        self._unsorted = False

    def _note_conditions(self, job: Job) -> None:
        spec = job.spec
        if job.state is not JobState.PENDING or spec.after or spec.after_any or spec.after_notok or \
                spec.array is not None:
            self.conditional.add(job.id)
        if spec.time_limit_s is not None:
            self.time_left[job.id] = _time_left_waiting(job)

    def matches(self, config: PolicyConfig) -> bool:
        return self.policy == config.policy and self.las_thresholds == config.las_thresholds_gpu_s and \
            self.starve_run_factor == config.starve_run_factor

    def _starve_clock(self, job: Job) -> float:
        """The guard puts the job first at this time plus ``starve_after_s`` x its GPUs: then its
        wait (now - submitted - run) reaches ``config.starve_bound_s`` (which adds
        ``starve_run_factor`` x its run time)."""
        return job.submitted_at + (1.0 + self.starve_run_factor) * job.total_run_s

    def _sort_queues(self) -> None:
        if self._unsorted:
            for q in self.queues.values():
                q.sort()
            for lst in self.by_size.values():
                lst.sort()
            self._unsorted = False

    def add(self, job: Job) -> None:
        self._sort_queues()
        if job.id in self.jobs:
            self.remove(job.id)
        key = self._key(job)
        self.jobs[job.id] = job
        self._keys[job.id] = key
        self._note_conditions(job)
        shape = self.shapes[job.id] = shape_of(job.spec.resources)
        self.shape_counts[shape] = self.shape_counts.get(shape, 0) + 1
        q = self.queues.setdefault(job.owner.user, [])
        self.groups[job.owner.user] = job.owner.groups
        if self.by_service and key[1] > 0:
            self.deep[job.id] = job
        bisect.insort(self.by_size.setdefault(shape.gpus or 1, []), (self._starve_clock(job), job.id))
        if not q or q[-1] < key:
            q.append(key)
        else:
            bisect.insort(q, key)

    def remove(self, job_id: int) -> Job | None:
        self._sort_queues()
        job = self.jobs.pop(job_id, None)
        if job is None:
            return None
        key = self._keys.pop(job_id)
        self.deep.pop(job_id, None)
        self.conditional.discard(job_id)
        self.time_left.pop(job_id, None)
        shape = self.shapes.pop(job_id)
        lst = self.by_size[shape.gpus or 1]
        del lst[bisect.bisect_left(lst, (self._starve_clock(job), job_id))]
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

    def ordered(self, score_of_user: Mapping[str, float] | None, config: PolicyConfig, now: float,
                complete: bool = False) -> Iterable[Job]:
        """Jobs in policy order: in each tier, starving jobs first (the starvation guard), then
        the policy's order.

        ``score_of_user`` is each user's fair-share part (weight * factor) for default and
        fairshare; None for the other policies.  ``complete``: the caller will take every job
        (the daemon explains each), so one sort of all keys beats a lazy k-way merge.
        """
        if not complete:
            self._sort_queues()
        extra = self._starving_keys(config, now) + self._promoted_keys(config, now)
        if score_of_user is None:
            queues: list[Iterable[tuple]] = list(self.queues.values())
        else:
            queues = [self._fair_keys(user, q, score_of_user.get(user, 0.0), config, now, complete)
                      for user, q in self.queues.items()]
        if extra:
            queues.append(sorted(extra))
        if complete:
            keys: Iterable[tuple] = sorted(k for q in queues for k in q)
        else:
            keys = heapq.merge(*queues)
        if extra:
            return _first_of_each(self.jobs, keys)
        jobs = self.jobs
        if complete:
            return [jobs[k[-1]] for k in keys]
        return (jobs[k[-1]] for k in keys)

    def most_starved(self, config: PolicyConfig, now: float) -> int | None:
        """The starvation guard: a job that waited ``starve_bound_s`` (``starve_after_s`` per GPU it
        asks for, plus ``starve_run_factor`` x its run time) has starved; of those, the one whose bound ran out first (None: no job starves).  It goes
        first in its tier, so it is the head job and the GPUs held for it stay its own."""
        if not config.starvation_guard_on:
            return None
        best: tuple[float, int] | None = None
        for size, lst in self.by_size.items():
            if not lst:
                continue
            eff, jid = lst[0] if not self._unsorted else min(lst)
            deadline = eff + config.starve_after_s * size
            if deadline <= now and (best is None or (deadline, jid) < best):
                best = (deadline, jid)
        return None if best is None else best[1]

    def _starving_keys(self, config: PolicyConfig, now: float) -> list[tuple]:
        jid = self.most_starved(config, now)
        if jid is None:
            return []
        return [(self._keys[jid][0], STARVING, self.jobs[jid].submitted_at, jid)]

    def _promoted_keys(self, config: PolicyConfig, now: float) -> list[tuple]:
        """las/default with ``las_starve_factor``: jobs that waited long enough go back to the
        first LAS queue (Tiresias' promotion)."""
        if not (self.by_service and self.deep and config.las_starve_factor > 0):
            return []
        f = config.las_starve_factor
        keys = self._keys
        return [(keys[j.id][0], 0) + keys[j.id][2:] for j in self.deep.values() if las_promoted(j, f, now)]

    @staticmethod
    def _fair_keys(user: str, q: list[tuple], score: float, config: PolicyConfig, now: float,
                   complete: bool) -> Iterable[tuple]:
        """default and fairshare: within a tier (default: within a LAS queue too),
        ``score(user) + weight_age * age`` first, then submit order."""
        w_age = config.weight_age
        max_age = config.max_age_s
        full = now - max_age  # submitted before this: the age part is full
        if len(q) and len(q[0]) == 4:  # default: (tier, LAS queue, submitted, id)
            gen4 = ((tier, level, -(score + w_age * (1.0 if sub <= full else (now - sub) / max_age if sub < now else 0.0)),
                     sub, jid) for tier, level, sub, jid in q)
            return list(gen4) if complete else gen4
        gen3 = ((tier, -(score + w_age * (1.0 if sub <= full else (now - sub) / max_age if sub < now else 0.0)),
                 sub, jid) for tier, sub, jid in q)
        return list(gen3) if complete else gen3
