"""``gpuq sim``: replay a trace through the very plan() the daemon runs, on a SIMULATED cluster.

A virtual clock jumps from event to event (arrivals, completions, and with preemption on,
a periodic scheduling tick).  At each event time the simulator calls plan() and applies its
starts and preemptions.  A preempted job loses nothing but ``preempt_cost_s`` (checkpoint and
restart), added to its next run.  There is no randomness beyond the trace loader's synthetic
users, so a seed gives the same result every time.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gpuq import accounting
from gpuq.errors import InvalidInput
from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Resources
from gpuq.scheduler.config import POLICIES, PolicyConfig
from gpuq.scheduler.fairshare import add_run_usage
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.policy import plan
from gpuq.scheduler.traces import TraceJob

DEFAULT_GPU_MEM_MIB = 32768
_FINISH, _ARRIVE, _TICK = 0, 1, 2


@dataclass(frozen=True)
class SimConfig:
    policy: str = "default"
    #: node groups: (node count, GPUs per node, MiB per GPU)
    layout: tuple[tuple[int, int, int], ...] = ((8, 8, DEFAULT_GPU_MEM_MIB),)
    preempt_cost_s: float = 30.0
    #: exact: every job's time limit is its true duration; none: no time limits;
    #: auto: exact for the oracles sjf and srtf, none for the others; "2x": twice the duration
    time_limits: str = "auto"
    tick_s: float = 300.0
    sample_s: float = 3600.0
    #: place jobs wider than a node across several nodes (else they are dropped and counted)
    gang: bool = True
    #: give shared (fractional) jobs whole GPUs, as a queue without memory sharing would
    exclusive: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_gpus(self) -> int:
        return sum(n * g for n, g, _ in self.layout)


def policy_config_for(name: str, **overrides: Any) -> PolicyConfig:
    """The policy settings each simulated policy runs with."""
    if name not in POLICIES:
        raise InvalidInput(f"policy {name!r} is unknown: use one of {', '.join(POLICIES)}.")
    base: dict[str, Any] = {"policy": name}
    if name in ("sjf", "srtf"):
        base["starve_after_s"] = 0.0  # the oracles stay pure
    if name == "srtf":
        base.update(preemption="checkpointable", min_run_s=0.0, max_preempts_per_cycle=64)
    base.update(overrides)
    return PolicyConfig(**base)


def parse_layout(text: str, default_mem_mib: int = DEFAULT_GPU_MEM_MIB) -> tuple[tuple[int, int, int], ...]:
    """``8x8`` or ``4x8,2x4:16384`` (nodes x GPUs per node [: MiB per GPU])."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            shape, _, mem = part.partition(":")
            n, g = shape.lower().split("x")
            item = (int(n), int(g), int(mem) if mem else default_mem_mib)
        except ValueError:
            raise InvalidInput(f"node layout {part!r} is not NODESxGPUS[:MIB], like 8x8 or 4x8:16384.") from None
        if min(item) <= 0:
            raise InvalidInput(f"node layout {part!r} needs positive numbers.")
        out.append(item)
    return tuple(out)


def layout_for_gpus(gpus: int, gpus_per_node: int = 8, mem_mib: int = DEFAULT_GPU_MEM_MIB):
    if gpus <= 0 or gpus_per_node <= 0:
        raise InvalidInput("--gpus and --gpus-per-node must be positive.")
    full, rest = divmod(gpus, gpus_per_node)
    layout = [(full, gpus_per_node, mem_mib)] if full else []
    if rest:
        layout.append((1, rest, mem_mib))
    return tuple(layout)


def build_nodes(layout: Sequence[tuple[int, int, int]]) -> list[NodeSnapshot]:
    nodes = []
    k = 0
    for count, gpus, mem in layout:
        for _ in range(count):
            name = f"sim-n{k:03d}"
            nodes.append(NodeSnapshot(name, tuple(
                GpuInfo(i, f"{name}-g{i}", "SIMULATED GPU", mem, 0, simulated=True) for i in range(gpus)),
                0.0, simulated=True))
            k += 1
    return nodes


@dataclass
class JobRecord:
    id: int
    user: str
    tenant: str
    gpus: int
    submit_s: float
    duration_s: float
    first_start_s: float | None = None
    end_s: float | None = None
    preemptions: int = 0
    #: the job's accounting when it ended (gpuq.accounting, as the daemon records it)
    total_run_s: float = 0.0
    attained_gpu_s: float = 0.0


@dataclass
class SimResult:
    policy: str
    total_gpus: int
    records: list[JobRecord]
    dropped: list[tuple[int, int, str]]  # (job id, gpus, why)
    preemptions: int
    plan_calls: int
    wall_s: float
    series_t: list[float]  # event times
    series_queue: list[int]  # pending jobs after each event time
    series_busy: list[float]  # GPUs in use after each event time
    samples: list[tuple[float, dict[str, float], dict[str, float]]]  # (t, alloc per user, demand per user)
    busy_gpu_s: float
    shares: Mapping[str, float]
    #: each user's fair-share usage record at the end, as the daemon keeps it
    usage: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def time_limit_factor(mode: str, policy: str) -> float | None:
    """The multiple of each job's duration it gets as its time limit (None: no limit)."""
    if mode == "auto":
        return 1.0 if policy in ("sjf", "srtf") else None
    if mode == "none":
        return None
    if mode == "exact":
        return 1.0
    try:
        k = float(mode[:-1]) if mode.endswith("x") else float("nan")
    except ValueError:
        k = float("nan")
    if not k >= 1.0:
        raise InvalidInput(f"--time-limits {mode!r} is unknown: use auto, exact, none or a factor like 2x.")
    return k


def _job_for(tj: TraceJob, time_limits: float | None, checkpointable: bool, exclusive: bool = False) -> Job:
    if exclusive:
        res = Resources(gpus=tj.gpus)
    elif tj.fraction is not None:
        res = Resources(gpus=tj.gpus, fraction=tj.fraction)
    elif tj.mem_mib is not None:
        res = Resources(gpus=tj.gpus, mem_mib=tj.mem_mib)
    else:
        res = Resources(gpus=tj.gpus)
    tl = tj.time_limit_s if tj.time_limit_s is not None else (
        tj.duration_s * time_limits if time_limits is not None else None)
    ck = tj.checkpointable if tj.checkpointable is not None else checkpointable
    spec = JobSpec(argv=("simulated",), cwd="/", priority=tj.priority, time_limit_s=tl, checkpointable=ck,
                   resources=res)
    return Job(tj.id, spec, Owner(uid=-1, gid=-1, user=tj.user), JobState.PENDING, tj.submit_s)


def simulate(trace: Sequence[TraceJob], sim: SimConfig) -> SimResult:
    """Replay ``trace`` on the simulated cluster under ``sim.policy``."""
    return _Replay(trace, sim).run()


class _Replay:
    """One replay: the virtual clock, the queue, the running jobs and what is measured.
    Each method is one step of the event loop."""

    def __init__(self, trace: Sequence[TraceJob], sim: SimConfig) -> None:
        self.wall0 = time.perf_counter()
        self.sim = sim
        self.config = policy_config_for(sim.policy, **{"gang": sim.gang, **dict(sim.overrides)})
        self.nodes = build_nodes(sim.layout)
        self.total_gpus = sum(len(n.gpus) for n in self.nodes)
        self.time_limits = time_limit_factor(sim.time_limits, sim.policy)
        self.shared_jobs = any(tj.fraction is not None or tj.mem_mib is not None for tj in trace)
        self.index = PendingIndex(self.config)
        self.running: dict[int, Job] = {}
        self.run_no: dict[int, int] = {}  # id -> the number of its current run (stale finish events)
        self.overhead: dict[int, float] = {}  # id -> restart cost paid by its current run
        self.work_left: dict[int, float] = {}
        self.usage: dict[str, dict[str, float]] = {}
        self.records: dict[int, JobRecord] = {}
        self.trace_by_id: dict[int, TraceJob] = {}
        self.events: list[tuple[float, int, int, int]] = []
        self.user_alloc: dict[str, float] = {}
        self.user_demand: dict[str, float] = {}
        self.demand_of: dict[int, float] = {}
        self.busy = 0.0
        self.busy_gpu_s = 0.0
        self.last_t = trace[0].submit_s if trace else 0.0
        self.next_sample = self.last_t
        self.preemptions = self.plan_calls = self.runs = 0
        self.tick_pending = False
        self.series_t: list[float] = []
        self.series_q: list[int] = []
        self.series_b: list[float] = []
        self.samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
        self.dropped = self._admit(trace)

    def _admit(self, trace: Sequence[TraceJob]) -> list[tuple[int, int, str]]:
        """Queue every job's arrival; drop (and count) those wider than the cluster can take."""
        max_node = max(len(n.gpus) for n in self.nodes)
        widest = self.total_gpus if self.sim.gang else max_node
        dropped = []
        for tj in trace:
            if tj.gpus > widest:
                why = (f"wider than the cluster ({self.total_gpus} GPUs)" if self.sim.gang
                       else f"wider than the largest node ({max_node} GPUs)")
                dropped.append((tj.id, tj.gpus, why))
                continue
            self.trace_by_id[tj.id] = tj
            heapq.heappush(self.events, (tj.submit_s, _ARRIVE, tj.id, 0))
        return dropped

    def run(self) -> SimResult:
        while self.events:
            t = self.events[0][0]
            self._advance_clock(t)
            changed, arrived, tick = self._take_events(t)
            room = self.shared_jobs or self.busy < self.total_gpus - 1e-9
            if (changed and len(self.index)) or (arrived and (room or self.config.preemption_on)) or tick:
                self._schedule(t)
            if self.config.preemption_on and len(self.index) and not self.tick_pending and self.sim.tick_s > 0:
                heapq.heappush(self.events, (t + self.sim.tick_s, _TICK, 0, 0))
                self.tick_pending = True
            self.series_t.append(t)
            self.series_q.append(len(self.index))
            self.series_b.append(self.busy)
            if not self.running and not self.index and all(e[1] == _TICK for e in self.events):
                break
        return self._result()

    def _advance_clock(self, t: float) -> None:
        self.busy_gpu_s += self.busy * (t - self.last_t)
        while self.next_sample <= t and self.sim.sample_s > 0:
            self.samples.append((self.next_sample, {u: v for u, v in self.user_alloc.items() if v > 0},
                                 {u: v for u, v in self.user_demand.items() if v > 0}))
            self.next_sample += self.sim.sample_s
        self.last_t = t

    def _take_events(self, t: float) -> tuple[bool, bool, bool]:
        """Apply every event at time ``t``: (a job ended, a job arrived, a tick)."""
        changed = arrived = tick = False
        events = self.events
        while events and events[0][0] == t:
            _, kind, jid, run_no = heapq.heappop(events)
            if kind == _FINISH:
                if self.run_no.get(jid) == run_no:  # else: a run that was preempted
                    self._finish(jid, t)
                    changed = True
            elif kind == _ARRIVE:
                self._arrive(self.trace_by_id[jid])
                arrived = True
            else:
                self.tick_pending = False
                tick = True
        return changed, arrived, tick

    def _arrive(self, tj: TraceJob) -> None:
        job = _job_for(tj, self.time_limits, self.config.preemption_on, self.sim.exclusive)
        self.index.add(job)
        self.records[tj.id] = JobRecord(tj.id, tj.user, tj.tenant or tj.user, tj.gpus, tj.submit_s, tj.duration_s)
        self.work_left[tj.id] = tj.duration_s
        res = job.spec.resources
        mem = self.sim.layout[0][2]
        # GPUs this job wants, counted as its usage will be (a shared GPU by its share)
        dem = self.demand_of[tj.id] = float(res.gpus) if res.whole_gpus else res.gpus * min(
            1.0, res.request_mib(mem) / mem)
        self.user_demand[tj.user] = self.user_demand.get(tj.user, 0.0) + dem
        self.user_alloc.setdefault(tj.user, 0.0)

    def _finish(self, jid: int, t: float) -> None:
        job = self._stop_run(self.running[jid], t)
        rec = self.records[jid]
        rec.end_s = t
        rec.total_run_s, rec.attained_gpu_s = job.total_run_s, job.attained_gpu_s
        self.user_demand[job.owner.user] -= self.demand_of.pop(jid)

    def _stop_run(self, job: Job, t: float) -> Job:
        """End the job's run at ``t``: free its GPUs, record its usage and accounting."""
        assert job.started_at is not None
        del self.running[job.id]
        del self.run_no[job.id]
        g = accounting.gpu_share(job)
        self.busy -= g
        u = job.owner.user
        self.user_alloc[u] -= g
        self.usage[u] = add_run_usage(self.usage.get(u), g, job.started_at, t, self.config.half_life_s)
        return job.with_changes(**accounting.end_of_run(job, t - job.started_at))

    def _schedule(self, t: float) -> None:
        """Call plan() and apply it; again while it preempts (freed GPUs may start jobs at once)."""
        for _round in range(4):
            p = plan(self.index, list(self.running.values()), self.nodes, self.usage, self.config, t, explain=False)
            self.plan_calls += 1
            for s in p.starts:
                self._start(s.job_id, s.placement, t)
            for pr in p.preempts:
                self._preempt(pr.job_id, t)
            if not p.preempts:
                break

    def _start(self, job_id: int, placement, t: float) -> None:
        job = self.index.remove(job_id)
        if job is None:
            return
        job = job.transition(JobState.RUNNING, placement=placement, placed_at=t, started_at=t)
        self.running[job.id] = job
        overhead = self.overhead[job.id] = self.sim.preempt_cost_s if job.requeues else 0.0
        self.runs += 1
        self.run_no[job.id] = self.runs
        heapq.heappush(self.events, (t + overhead + self.work_left[job.id], _FINISH, job.id, self.runs))
        g = accounting.gpu_share(job)
        self.busy += g
        self.user_alloc[job.owner.user] = self.user_alloc.get(job.owner.user, 0.0) + g
        rec = self.records[job.id]
        if rec.first_start_s is None:
            rec.first_start_s = t

    def _preempt(self, job_id: int, t: float) -> None:
        job = self.running.get(job_id)
        if job is None:
            return
        assert job.started_at is not None
        ran = t - job.started_at
        self.work_left[job.id] -= max(0.0, ran - self.overhead.pop(job.id))
        stopped = self._stop_run(job, t)
        self.index.add(stopped.transition(JobState.PENDING, requeues=job.requeues + 1, end_reason="preempted"))
        self.records[job.id].preemptions += 1
        self.preemptions += 1

    def _result(self) -> SimResult:
        records = self.records
        shares = {u: self.config.share_for(u) for u in {r.user for r in records.values()}}
        return SimResult(
            policy=self.sim.policy, total_gpus=self.total_gpus, records=list(records.values()),
            dropped=self.dropped, preemptions=self.preemptions, plan_calls=self.plan_calls,
            wall_s=time.perf_counter() - self.wall0, series_t=self.series_t, series_queue=self.series_q,
            series_busy=self.series_b, samples=self.samples, busy_gpu_s=self.busy_gpu_s, shares=shares,
            usage=self.usage,
        )
