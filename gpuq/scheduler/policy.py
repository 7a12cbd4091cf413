"""The scheduling policy: a pure function from a snapshot of the world to decisions.

``plan(pending, running, nodes, usage, config, now)`` touches no Redis, no NVML and
no clock.  The daemon, the tests and the trace simulator (``gpuq sim``) all call it.

One cycle: order the pending jobs (:mod:`ordering`, with :mod:`fairshare`), start each that
is eligible and fits (:mod:`placement`, best fit), hold GPUs for the first one that does not
fit and let later jobs backfill around it (:mod:`backfill`), then propose preemptions
(:mod:`preemption`).  Every pending or held job that does not start gets a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gpuq.gpus import NodeSnapshot
from gpuq.jobs.model import Job, JobState, Placement
from gpuq.scheduler.backfill import hold_for_head
from gpuq.scheduler.dependencies import ArrayThrottle, dependency_reason
from gpuq.scheduler.config import PolicyConfig, UserLimits, check_submit_limits
from gpuq.scheduler.fairshare import ShareState, ongoing_usage, share_states, usage_values
from gpuq.scheduler.ordering import PendingIndex, remaining_s
from gpuq.scheduler.placement import Cluster, make_placement, never_fits, shape_of
from gpuq.scheduler.preemption import plan_preemptions
from gpuq.units import format_duration

__all__ = ["PolicyConfig", "UserLimits", "Start", "Preempt", "Plan", "plan", "PendingIndex",
           "check_submit_limits", "fairshare_states"]

INF = math.inf
#: with preemption on, the first this many waiting jobs are considered for preemption
PREEMPT_CANDIDATES = 8


@dataclass(frozen=True)
class Start:
    job_id: int
    placement: Placement


@dataclass(frozen=True)
class Preempt:
    job_id: int
    reason: str


@dataclass(frozen=True)
class Plan:
    starts: tuple[Start, ...] = ()
    preempts: tuple[Preempt, ...] = ()
    reasons: Mapping[int, str] = field(default_factory=dict)


def waits_for_other_jobs(job: Job, finished: Mapping[int, JobState], throttle: ArrayThrottle) -> str | None:
    """Dependencies (--after, --after-any, --after-notok) and array throttles (--array ...%N)."""
    if job.spec.after or job.spec.after_any or job.spec.after_notok:
        dep = dependency_reason(job, finished)
        if dep is not None:
            return dep
    return throttle.reason(job)


def fairshare_states(pending: Sequence[Job] | PendingIndex, running: Sequence[Job],
                     usage: Mapping[str, Any], config: PolicyConfig, now: float) -> dict[str, ShareState]:
    """Each active user's share, decayed usage (runs in progress included) and factor."""
    values = usage_values(usage, now, config.half_life_s)
    for user, gpu_s in ongoing_usage(running, now, config.half_life_s).items():
        values[user] = values.get(user, 0.0) + gpu_s
    if isinstance(pending, PendingIndex):
        active = dict(pending.groups)
    else:
        active = {}
        for j in pending:
            active.setdefault(j.owner.user, j.owner.groups)
    for j in running:
        active.setdefault(j.owner.user, j.owner.groups)
    return share_states(active, values, config.share_for)


_AHEAD = {
    "fifo": ("earlier job", "earlier jobs"),
    "sjf": ("shorter job", "shorter jobs"),
    "srtf": ("job with less time left", "jobs with less time left"),
    "las": ("job that has had less GPU time", "jobs that have had less GPU time"),
    "default": ("job of a user with less usage (or an older job)", "jobs of users with less usage (or older jobs)"),
    "fairshare": ("job of a user with less usage (or an older job)", "jobs of users with less usage (or older jobs)"),
}


def plan(
    pending: Sequence[Job] | PendingIndex,
    running: Sequence[Job],
    nodes: Sequence[NodeSnapshot],
    usage: Mapping[str, Any],
    config: PolicyConfig,
    now: float,
    finished: Mapping[int, JobState] | None = None,
    *,
    explain: bool = True,
) -> Plan:
    """Decide which pending jobs start where, which running jobs to preempt, and why others wait.

    ``pending`` holds pending and held jobs (a list, or a :class:`PendingIndex` kept by the
    caller); ``usage`` maps each user to a usage record ``{"gpu_s", "at"}`` (or to decayed
    GPU-seconds); runs in progress are added from ``running``.  ``finished`` maps job ids to
    their terminal states (for ``--after``).  With ``explain=False`` (the simulator) no reasons
    are written and the scan stops as soon as nothing more could start.
    """
    finished = finished or {}
    index = pending if isinstance(pending, PendingIndex) and pending.matches(config) else PendingIndex(config, pending)
    cluster = Cluster(nodes, running, config.idle_mem_mib, now,
                      end_of=lambda j: now + max(0.0, remaining_s(j, now)))
    states: dict[str, ShareState] = {}
    score_of_user = None
    if config.uses_fairshare:
        states = fairshare_states(index, running, usage, config, now)
        score_of_user = {u: config.weight_fairshare * s.factor for u, s in states.items()}
    user_gpus: dict[str, int] = {}
    if config.default_limits.max_gpus is not None or config.user_limits:
        for j in running:
            user_gpus[j.owner.user] = user_gpus.get(j.owner.user, 0) + j.spec.resources.gpus
    limits_cache: dict[str, UserLimits] = {}
    throttle = ArrayThrottle(running)
    user_cpu: dict[str, int] = {}  # CPU-only jobs running per user
    for j in running:
        if j.spec.resources.gpus == 0:
            user_cpu[j.owner.user] = user_cpu.get(j.owner.user, 0) + 1

    starts: list[Start] = []
    reasons: dict[int, str] = {}
    blocked: list[Job] = []
    head: Job | None = None
    shadow: float | None = None
    backfill = config.backfill_on
    failed = _Failures(cluster.max_node_gpus)  # request shapes that did not fit this cycle
    never: dict[tuple, str | None] = {}
    held_cache: dict[tuple, bool] = {}  # (shape, may use held GPUs) -> blocked only by the hold
    waiting_ahead = 0
    want_preempt = config.preemption_on
    present_shapes = None if explain else _shapes(index)
    phrase = _AHEAD[config.policy]

    for job, _score in index.ordered(score_of_user, config, now):
        if not explain and not (want_preempt and len(blocked) < PREEMPT_CANDIDATES):
            if (head is not None and not backfill) or not cluster.could_fit_anything() or \
                    failed.covers_all(present_shapes, never, shadow):
                break
        if job.state is JobState.HELD:
            reasons[job.id] = "held"
            continue
        wait = waits_for_other_jobs(job, finished, throttle)
        if wait is not None:
            reasons[job.id] = wait
            continue
        res = job.spec.resources
        shape = shape_of(res)
        if shape not in never:
            never[shape] = never_fits(res, nodes, config.gang)
        if never[shape] is not None:
            reasons[job.id] = f"cannot run here: {never[shape]}"
            continue
        user = job.owner.user
        lim = limits_cache.get(user)
        if lim is None:
            lim = limits_cache[user] = config.limits_for(user)
        used = user_gpus.get(user, 0)
        if lim.max_gpus is not None and used + res.gpus > lim.max_gpus:
            reasons[job.id] = f"user limit: you have {used}/{lim.max_gpus} GPUs in use"
            continue
        if head is not None and not backfill:
            blocked.append(job)
            if explain:
                reasons[job.id] = f"priority: {_n_ahead(waiting_ahead, phrase)}; job {head.id} goes first"
            waiting_ahead += 1
            continue
        if res.gpus == 0:
            why_cpu = _cpu_only_start(job, lim, cluster, user_cpu, starts)
            if why_cpu is not None:
                reasons[job.id] = why_cpu
            else:
                throttle.started(job)
            continue
        tl = job.spec.time_limit_s
        end_at = now + max(remaining_s(job), 0.0) if tl is not None else INF
        may_use_held = shadow is not None and end_at <= shadow < INF
        fkey = (shape, may_use_held)
        why = failed.get(shape, may_use_held)
        if why is None:
            if res.gpus > cluster.max_node_gpus:
                choice = cluster.fit_gang(res, end_at)
            else:
                choice = cluster.fit(res, end_at, config.packing)
            if choice is not None:
                node, chosen = choice
                placement = make_placement(cluster, res, node, chosen)
                cluster.reserve(placement, end_at)
                starts.append(Start(job.id, placement))
                throttle.started(job)
                user_gpus[user] = used + res.gpus
                continue
            why = cluster.why_not(res) if explain else "-"
            failed.add(shape, may_use_held, why)
        blocked.append(job)
        if head is None:
            head = job
            if backfill:
                held = hold_for_head(cluster, res, now, config.gang)
                if held is not None:
                    shadow = held[1]
            if explain:
                reasons[job.id] = why + (_expected(shadow, now) if shadow is not None else "")
        elif explain:
            held_for = held_cache.get(fkey)
            if held_for is None:
                held_for = held_cache[fkey] = _fits_ignoring_hold(cluster, res)
            if held_for:
                reasons[job.id] = (f"priority: {_n_ahead(waiting_ahead, phrase)}; the free GPUs are held "
                                   f"for job {head.id}" + _expected(shadow, now))
            else:
                reasons[job.id] = why + (f"; {_n_ahead(waiting_ahead, phrase)}" if waiting_ahead else "")
        waiting_ahead += 1

    if explain:
        started = {s.job_id for s in starts}
        for job in index:
            if job.id not in reasons and job.id not in started:
                reasons[job.id] = "waiting for the next scheduling cycle"
    preempts = plan_preemptions(blocked, running, cluster, states or _states_for_preempt(
        index, running, usage, config, now), config, now) if want_preempt and blocked else []
    return Plan(starts=tuple(starts), preempts=tuple(Preempt(i, r) for i, r in preempts), reasons=reasons)


def _cpu_only_start(job: Job, lim: UserLimits, cluster: Cluster, user_cpu: dict[str, int],
                    starts: list[Start]) -> str | None:
    """Start a CPU-only job in a free CPU slot (a node resource, like a GPU); or why it waits.
    Without a per-user limit a user may hold half of the cluster's slots (at least one)."""
    user = job.owner.user
    total = cluster.cpu_slots_total()
    limit = lim.max_cpu_jobs if lim.max_cpu_jobs is not None else (
        None if total == INF else max(1, int(total) // 2))
    have = user_cpu.get(user, 0)
    if limit is not None and have >= limit:
        return f"user limit: you have {have}/{limit} CPU-only jobs running"
    node = cluster.fit_cpu()
    if node is None:
        return cluster.why_not_cpu()
    cluster.take_cpu(node)
    user_cpu[user] = have + 1
    starts.append(Start(job.id, Placement(node=node)))
    return None


def _states_for_preempt(index, running, usage, config, now) -> dict[str, ShareState]:
    if config.policy in ("las", "srtf"):
        return {}
    return fairshare_states(index, running, usage, config, now)


def _n_ahead(n: int, phrase: tuple[str, str]) -> str:
    if n == 1:
        return f"1 {phrase[0]} is ahead"
    return f"{n} {phrase[1]} are ahead"


def _expected(shadow: float | None, now: float) -> str:
    if shadow is None or shadow == INF:
        return ""
    return f" (expected to start in {format_duration(shadow - now)})"


def _fits_ignoring_hold(cluster: Cluster, res) -> bool:
    saved = list(cluster.shadow)
    cluster.shadow[:] = [None] * len(saved)
    try:
        return cluster.fit(res) is not None
    finally:
        cluster.shadow[:] = saved


def _shapes(index: PendingIndex) -> set[tuple]:
    counts = getattr(index, "shape_counts", None)
    if counts is not None:
        return {s for s, n in counts.items() if n > 0}
    return {shape_of(j.spec.resources) for j in index}


class _Failures:
    """Request shapes that failed to fit this cycle.  Free GPUs only shrink during a cycle, so a
    failure stays true; and a whole-GPU request of g GPUs that failed means every whole-GPU
    request of at least g GPUs fails too (on one node, or across nodes for gang jobs)."""

    def __init__(self, max_node_gpus: int) -> None:
        self.max_node = max_node_gpus
        self.exact: dict[tuple, str] = {}  # (shape, may use held GPUs) -> why
        self.whole: dict[tuple[bool, bool], tuple[int, str]] = {}  # (gang?, may use held) -> (least g, why)

    def add(self, shape: tuple, held: bool, why: str) -> None:
        self.exact[(shape, held)] = why
        g, whole = shape[0], shape[1]
        if whole:
            k = (g > self.max_node, held)
            if k not in self.whole or g < self.whole[k][0]:
                self.whole[k] = (g, why)

    def get(self, shape: tuple, held: bool) -> str | None:
        """Why a request of this shape cannot fit (None: try it).  A failure of a request that
        could use held GPUs also holds for one that cannot, not the other way round."""
        classes = (True,) if held else (True, False)
        for h in classes:
            why = self.exact.get((shape, h))
            if why is not None:
                return why
        if shape[1]:
            gang = shape[0] > self.max_node
            for h in classes:
                got = self.whole.get((gang, h))
                if got is not None and shape[0] >= got[0]:
                    return got[1] if got[0] == shape[0] else _wider(got[1], shape[0])
        return None

    def covers_all(self, shapes: set[tuple] | None, never: Mapping[tuple, str | None], shadow: float | None) -> bool:
        """True when every kind of request still waiting has already failed to fit this cycle."""
        if not shapes or not self.exact:
            return False
        held_usable = shadow is not None and shadow < INF
        for s in shapes:
            if never.get(s) or self.get(s, True) is not None:
                continue
            if not held_usable and self.get(s, False) is not None:
                continue
            return False
        return True


def _wider(why: str, gpus: int) -> str:
    """Reuse the reason of a narrower whole-GPU request for a wider one."""
    import re

    return re.sub(r"^needs \d+ GPUs?", f"needs {gpus} GPUs", why)
