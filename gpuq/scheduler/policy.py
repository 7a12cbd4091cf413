"""The scheduling policy: a pure function from a snapshot of the world to decisions.

``plan(pending, running, nodes, usage, config, now)`` touches no Redis, no NVML and
no clock.  The daemon, the tests and the trace simulator (``gpuq sim``) all call it.

One cycle (:class:`_Cycle`, one method per step): order the pending jobs (:mod:`ordering`, with
:mod:`fairshare`); for each, in order, say why it may not start yet (held, dependencies, could
never fit, user limit), else start it where it fits (:mod:`placement`, best fit), else block it:
the first blocked job (the *head*) gets GPUs held for it and later jobs backfill around them
(:mod:`backfill`).  Then propose preemptions (:mod:`preemption`).  Every pending or held job
that does not start gets a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from gpuq import accounting
from gpuq.gpus import NodeSnapshot
from gpuq.jobs.model import Job, JobState, Placement
from gpuq.scheduler.backfill import HeadHold, hold_for_head
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.dependencies import ArrayThrottle, dependency_reason
from gpuq.scheduler.fairshare import ShareState, ongoing_usage, share_states, usage_values
from gpuq.scheduler.limits import UsageLimits
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.placement import Cluster, Shape, make_gang_placement, make_placement, never_fits
from gpuq.scheduler.preemption import plan_preemptions
from gpuq.units import format_duration

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


def fairshare_states(pending: Iterable[Job] | PendingIndex, running: Sequence[Job],
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
    cycle = _Cycle(pending, running, nodes, usage, config, now, finished or {}, explain)
    cycle.place_in_order()
    return cycle.result()


class _Cycle:
    """The state of one plan() call; each method is one step."""

    def __init__(self, pending, running: Sequence[Job], nodes: Sequence[NodeSnapshot], usage: Mapping[str, Any],
                 config: PolicyConfig, now: float, finished: Mapping[int, JobState], explain: bool) -> None:
        self.config = config
        self.now = now
        self.explain = explain
        self.nodes = nodes
        self.running = running
        self.finished = finished
        self.usage = usage
        self.index = pending if isinstance(pending, PendingIndex) and pending.matches(config) \
            else PendingIndex(config, pending)
        self.cluster = Cluster(nodes, running, config.idle_mem_mib, now,
                               end_of=lambda j: accounting.expected_end(j, now))
        self.states: dict[str, ShareState] = \
            fairshare_states(self.index, running, usage, config, now) if config.uses_fairshare else {}
        self.limits = UsageLimits(config, running)
        self.throttle = ArrayThrottle(running)
        self.starts: list[Start] = []
        self.reasons: dict[int, str] = {}
        self.blocked: list[Job] = []  # the first PREEMPT_CANDIDATES that could not start
        self.head: Job | None = None
        self.head_hold: HeadHold | None = None
        self.failed = _Failures(self.cluster.max_node_gpus)
        self.never: dict[Shape, str | None] = {}
        #: request shape -> how to explain the wait of a job that [cannot, can] use held GPUs,
        #: once such a request failed this cycle
        self.known: dict[Shape, list[_Known | None]] = {}
        self.waiting_ahead = 0
        self.phrase = _AHEAD[config.policy]
        self._saturation_mark: tuple[int, int] = (-1, -1)
        self._saturation = False

    # ---- the steps ----
    def place_in_order(self) -> None:
        """Each job in order: one that may not start gets its reason; one whose kind of request
        already failed this cycle waits (the fast path: most of a long queue); any other is tried.
        The simulator (no reasons) stops as soon as nothing more could start."""
        reasons, shapes, known = self.reasons, self.index.shapes, self.known
        conditional, time_left = self.index.conditional, self.index.time_left
        present = {s for s, n in self.index.shape_counts.items() if n > 0}
        start_at = None  # the head's expected start, once known
        behind_head = False  # fifo: everyone waits behind the head
        never, checks, now, wait = self.never, self.limits.on, self.now, self._wait
        #: (simulator, preemption on) stop once the preemption candidates are found, if nothing
        #: more could start; without preemption, or before then, each failed try checks that
        stop_early = not self.explain and self.config.preemption_on
        for job in self._in_order():
            jid = job.id
            shape = shapes[jid]
            if checks or jid in conditional or never.get(shape, "") is not None:
                why = self._not_eligible(job, shape)
                if why is not None:
                    reasons[jid] = why
                    continue
            if behind_head:
                self._wait_behind_head(job)
                continue
            # may it use the GPUs held for the head job (it surely ends before the head starts)?
            may = start_at is not None and jid in time_left and now + max(time_left[jid], 0.0) <= start_at
            kinds = known.get(shape)
            got = kinds[may] if kinds is not None else None
            if got is not None:  # the same request already failed this cycle
                wait(job, got)
                if stop_early and len(self.blocked) == PREEMPT_CANDIDATES:
                    stop_early = False  # (enough preemption candidates now: check once)
                    if self._saturated(present):
                        break
                continue
            self._try_start(job, shape, may)
            if self.head is not None:
                behind_head = not self.config.backfill_on
                start_at = self.head_hold.start_at if self.head_hold is not None else None
            if not self.explain and self._saturated(present):
                break
        if self.explain:
            self._explain_the_rest()

    def _wait(self, job: Job, known: "_Known") -> None:
        """The job waits: its kind of request already failed this cycle."""
        n = self.waiting_ahead
        if self.explain:
            self.reasons[job.id] = known.before + str(n) + known.after if n > 1 else known.one if n else known.alone
        self.waiting_ahead = n + 1
        if len(self.blocked) < PREEMPT_CANDIDATES:
            self.blocked.append(job)

    def _saturated(self, present: set[Shape]) -> bool:
        """(simulator) Nothing more can start this cycle: every kind of request still waiting
        already failed, and (with preemption) enough candidates were found.  Re-checked only when
        a start or a new failure may have changed the answer."""
        if self.config.preemption_on and len(self.blocked) < PREEMPT_CANDIDATES:
            return False
        mark = (len(self.starts), len(self.failed.exact))
        if mark == self._saturation_mark:
            return self._saturation
        self._saturation_mark = mark
        if self.head is not None and not self.config.backfill_on:
            self._saturation = True
        elif not self.cluster.could_fit_anything() and self.head is not None:
            self._saturation = True
        else:
            self._saturation = self.failed.covers_all(present, self.never, self._held_usable())
        return self._saturation

    def _in_order(self) -> Iterator[Job]:
        cfg = self.config
        scores = {u: cfg.weight_fairshare * s.factor for u, s in self.states.items()} if cfg.uses_fairshare else None
        return self.index.ordered(scores, cfg, self.now, complete=self.explain)

    def _not_eligible(self, job: Job, shape: Shape) -> str | None:
        """Why the job may not start whatever the GPUs: held, dependencies, never fits, limit."""
        if job.state is JobState.HELD:
            return "held"
        wait = waits_for_other_jobs(job, self.finished, self.throttle)
        if wait is not None:
            return wait
        never = self.never.get(shape, "")
        if never == "":
            never = self.never[shape] = never_fits(job.spec.resources, self.nodes, self.config.gang)
        if never is not None:
            return f"cannot run here: {never}"
        return self.limits.reason(job)

    def _wait_behind_head(self, job: Job) -> None:
        """fifo without backfill: everyone after the head waits for it."""
        if len(self.blocked) < PREEMPT_CANDIDATES:
            self.blocked.append(job)
        if self.explain:
            assert self.head is not None
            self.reasons[job.id] = f"priority: {_n_ahead(self.waiting_ahead, self.phrase)}; job {self.head.id} goes first"
        self.waiting_ahead += 1

    def _try_start(self, job: Job, shape: Shape, may_use_held: bool) -> None:
        """Start the job if it fits; else block it (the first one blocked becomes the head)."""
        res = job.spec.resources
        if res.gpus == 0:
            self._start_cpu_only(job)
            return
        why = self.failed.get(shape, may_use_held)
        if why is None:
            cluster = self.cluster
            end_at = accounting.expected_end(job, self.now)
            placement = None
            if res.nodes > 1:  # a job across nodes: the same GPU count on each of its nodes
                parts = cluster.fit_nodes(res, end_at)
                placement = None if parts is None else make_gang_placement(cluster, res, parts)
            else:
                if res.gpus > cluster.max_node_gpus:
                    choice = cluster.fit_gang(res, end_at)  # (simulator traces, config.gang)
                else:
                    choice = cluster.fit(res, end_at, self.config.packing)
                if choice is not None:
                    placement = make_placement(cluster, res, choice[0], choice[1])
            if placement is not None:
                cluster.reserve(placement, end_at)
                self.starts.append(Start(job.id, placement))
                self.limits.started(job)
                self.throttle.started(job)
                return
            why = cluster.why_not(res) if self.explain else "-"
            self.failed.add(shape, may_use_held, why)
        if self.head is None:
            self._make_head(job, why)
            self.waiting_ahead += 1
            if len(self.blocked) < PREEMPT_CANDIDATES:
                self.blocked.append(job)
            return
        kinds = self.known.setdefault(shape, [None, None])
        got = kinds[may_use_held] = self._known(job, shape, may_use_held, why)
        self._wait(job, got)

    def _known(self, job: Job, shape: Shape, may_use_held: bool, why: str) -> "_Known":
        """How to explain the wait of any job of this kind of request, from now on this cycle."""
        if not self.explain:
            return _Known("", "", "", "")
        assert self.head is not None
        res = job.spec.resources
        with self.cluster.holds_lifted():
            fit = self.cluster.fit_nodes(res) if res.nodes > 1 else self.cluster.fit(res)
            held_only = fit is not None
        one, many = self.phrase
        if held_only:  # "priority: N jobs ... are ahead; the free GPUs are held for job H"
            tail = f"; the free GPUs are held for job {self.head.id}" + self._expected()
            return _Known(f"priority: 0 {many} are ahead{tail}", f"priority: 1 {one} is ahead{tail}",
                          "priority: ", f" {many} are ahead{tail}")
        return _Known(why, f"{why}; 1 {one} is ahead", f"{why}; ", f" {many} are ahead")

    def _start_cpu_only(self, job: Job) -> bool:
        """Start a CPU-only job in a free CPU slot (a node resource, like a GPU); or say why it
        waits.  Without a per-user limit a user may hold half of the cluster's slots (at least one)."""
        why = self.limits.cpu_reason(job, self.cluster)
        node = self.cluster.fit_cpu() if why is None else None
        if node is None:
            self.reasons[job.id] = why or self.cluster.why_not_cpu()
            return False
        self.cluster.take_cpu(node)
        self.limits.started(job)
        self.throttle.started(job)
        self.starts.append(Start(job.id, Placement(node=node)))
        return True

    def _make_head(self, job: Job, why: str) -> None:
        """The first job that does not fit: hold GPUs for it (backfill)."""
        self.head = job
        if self.config.backfill_on:
            self.head_hold = hold_for_head(self.cluster, job.id, job.spec.resources, self.now, self.config.gang)
        if self.explain:
            self.reasons[job.id] = why + self._expected()

    def _explain_the_rest(self) -> None:
        if len(self.reasons) + len(self.starts) == len(self.index):
            return  # every job has its reason (the usual case)
        started = {s.job_id for s in self.starts}
        for job in self.index:
            if job.id not in self.reasons and job.id not in started:
                self.reasons[job.id] = "waiting for the next scheduling cycle"

    def result(self) -> Plan:
        preempts: list[tuple[int, str]] = []
        if self.config.preemption_on and self.blocked:
            states = self.states
            if not states and self.config.policy not in ("las", "srtf"):
                states = fairshare_states(self.index, self.running, self.usage, self.config, self.now)
            preempts = plan_preemptions(self.blocked, self.running, self.cluster, states, self.config, self.now)
        return Plan(starts=tuple(self.starts), preempts=tuple(Preempt(i, r) for i, r in preempts),
                    reasons=self.reasons)

    # ---- helpers ----
    def _held_usable(self) -> bool:
        """Is there a hold with a known shadow time (so short jobs may use its GPUs)?"""
        return self.head_hold is not None and self.head_hold.start_at is not None

    def _expected(self) -> str:
        if self.head_hold is None or self.head_hold.start_at is None:
            return ""
        return f" (expected to start in {format_duration(self.head_hold.start_at - self.now)})"


class _Known(NamedTuple):
    """How to explain the wait of a kind of request that failed this cycle, by the number n of
    jobs ahead: ``alone`` (n = 0), ``one`` (n = 1), else ``before`` + n + ``after``."""

    alone: str
    one: str
    before: str
    after: str


_AHEAD = {
    "fifo": ("earlier job", "earlier jobs"),
    "sjf": ("shorter job", "shorter jobs"),
    "srtf": ("job with less time left", "jobs with less time left"),
    "las": ("job that has had less GPU time", "jobs that have had less GPU time"),
    "default": ("job of a user with less usage (or an older job)", "jobs of users with less usage (or older jobs)"),
    "fairshare": ("job of a user with less usage (or an older job)", "jobs of users with less usage (or older jobs)"),
}


def _n_ahead(n: int, phrase: tuple[str, str]) -> str:
    if n == 1:
        return f"1 {phrase[0]} is ahead"
    return f"{n} {phrase[1]} are ahead"


class _Failures:
    """Request shapes that failed to fit this cycle.  Free GPUs only shrink during a cycle, so a
    failure stays true; and a whole-GPU request of g GPUs that failed means every whole-GPU
    request of at least g GPUs fails too (on one node, or across nodes for gang jobs).
    ``held``: whether the request could use GPUs held for the head job."""

    def __init__(self, max_node_gpus: int) -> None:
        self.max_node = max_node_gpus
        self.exact: dict[tuple[Shape, bool], str] = {}  # (shape, may use held GPUs) -> why
        self.whole: dict[tuple[bool, bool], tuple[int, str]] = {}  # (gang?, may use held) -> (least g, why)

    def add(self, shape: Shape, held: bool, why: str) -> None:
        self.exact[(shape, held)] = why
        if shape.whole and shape.nodes == 1:  # (a job across nodes fails or fits by its own rule)
            k = (shape.gpus > self.max_node, held)
            if k not in self.whole or shape.gpus < self.whole[k][0]:
                self.whole[k] = (shape.gpus, why)

    def get(self, shape: Shape, held: bool) -> str | None:
        """Why a request of this shape cannot fit (None: try it).  A failure of a request that
        could use held GPUs also holds for one that cannot, not the other way round."""
        exact = self.exact
        why = exact.get((shape, True))
        if why is None and not held:
            why = exact.get((shape, False))
        if why is not None or not shape.whole or shape.nodes > 1:
            return why
        gang = shape.gpus > self.max_node
        for h in ((True,) if held else (True, False)):
            got = self.whole.get((gang, h))
            if got is not None and shape.gpus >= got[0]:
                return got[1] if got[0] == shape.gpus else _wider(got[1], shape.gpus)
        return None

    def covers_all(self, shapes: set[Shape], never: Mapping[Shape, str | None], held_usable: bool,
                   cpu_later: bool = False) -> bool:
        """True when every kind of request still waiting has already failed to fit this cycle
        (``cpu_later``: CPU-only requests are placed later anyway)."""
        if not shapes or not self.exact:
            return False
        for s in shapes:
            if (cpu_later and s.gpus == 0) or never.get(s) or self.get(s, True) is not None:
                continue
            if not held_usable and self.get(s, False) is not None:
                continue
            return False
        return True


_NEEDS_GPUS = re.compile(r"^needs \d+ GPUs?")


def _wider(why: str, gpus: int) -> str:
    """Reuse the reason of a narrower whole-GPU request for a wider one."""
    return _NEEDS_GPUS.sub(f"needs {gpus} GPUs", why)

