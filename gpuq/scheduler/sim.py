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

from gpuq.errors import InvalidInput
from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Resources
from gpuq.scheduler.config import POLICIES, PolicyConfig
from gpuq.scheduler.fairshare import add_run_usage, job_gpu_equiv
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
    if name in ("fairshare", "las"):
        base["preemption"] = "checkpointable"
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
    wall0 = time.perf_counter()
    config = policy_config_for(sim.policy, **{"gang": sim.gang, **dict(sim.overrides)})
    nodes = build_nodes(sim.layout)
    total_gpus = sum(len(n.gpus) for n in nodes)
    max_node = max(len(n.gpus) for n in nodes)
    exact = time_limit_factor(sim.time_limits, sim.policy)
    ckpt = config.preemption_on
    shared_jobs = any(tj.fraction is not None or tj.mem_mib is not None for tj in trace)

    index = PendingIndex(config)
    running: dict[int, Job] = {}
    run_info: dict[int, tuple[float, float, int]] = {}  # id -> (started, overhead, run number)
    work_left: dict[int, float] = {}
    usage: dict[str, dict[str, float]] = {}
    records: dict[int, JobRecord] = {}
    dropped: list[tuple[int, int, str]] = []
    trace_by_id: dict[int, TraceJob] = {}
    events: list[tuple[float, int, int, int]] = []
    for tj in trace:
        if tj.gpus > (total_gpus if sim.gang else max_node):
            why = (f"wider than the cluster ({total_gpus} GPUs)" if sim.gang
                   else f"wider than the largest node ({max_node} GPUs)")
            dropped.append((tj.id, tj.gpus, why))
            continue
        trace_by_id[tj.id] = tj
        heapq.heappush(events, (tj.submit_s, _ARRIVE, tj.id, 0))
    user_alloc: dict[str, float] = {}
    user_demand: dict[str, float] = {}
    demand_of: dict[int, float] = {}
    busy = 0.0
    busy_gpu_s = 0.0
    last_t = trace[0].submit_s if trace else 0.0
    preemptions = plan_calls = 0
    tick_pending = False
    series_t: list[float] = []
    series_q: list[int] = []
    series_b: list[float] = []
    samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
    next_sample = last_t
    runs = 0

    def stop_run(job: Job, t: float) -> float:
        nonlocal busy
        started, _, _ = run_info.pop(job.id)
        del running[job.id]
        g = job_gpu_equiv(job)
        busy -= g
        u = job.owner.user
        user_alloc[u] -= g
        usage[u] = add_run_usage(usage.get(u), g, started, t, config.half_life_s)
        return started

    while events:
        t = events[0][0]
        busy_gpu_s += busy * (t - last_t)
        while next_sample <= t and sim.sample_s > 0:
            samples.append((next_sample, {u: v for u, v in user_alloc.items() if v > 0},
                            {u: v for u, v in user_demand.items() if v > 0}))
            next_sample += sim.sample_s
        last_t = t
        changed = False
        arrived = False
        tick = False
        while events and events[0][0] == t:
            _, kind, jid, run_no = heapq.heappop(events)
            if kind == _FINISH:
                info = run_info.get(jid)
                if info is None or info[2] != run_no:
                    continue  # a run that was preempted
                job = running[jid]
                stop_run(job, t)
                records[jid].end_s = t
                user_demand[job.owner.user] -= demand_of.pop(jid)
                changed = True
            elif kind == _ARRIVE:
                tj = trace_by_id[jid]
                job = _job_for(tj, exact, ckpt, sim.exclusive)
                index.add(job)
                records[jid] = JobRecord(jid, tj.user, tj.tenant or tj.user, tj.gpus, tj.submit_s, tj.duration_s)
                work_left[jid] = tj.duration_s
                res = job.spec.resources
                # GPUs this job wants, counted as its usage will be (a shared GPU by its share)
                dem = demand_of[jid] = float(res.gpus) if res.whole_gpus else res.gpus * min(
                    1.0, res.request_mib(sim.layout[0][2]) / sim.layout[0][2])
                user_demand[tj.user] = user_demand.get(tj.user, 0.0) + dem
                user_alloc.setdefault(tj.user, 0.0)
                arrived = True
            else:
                tick_pending = False
                tick = True
        room = shared_jobs or busy < total_gpus - 1e-9
        if (changed and len(index)) or (arrived and (room or config.preemption_on)) or tick:
            for _round in range(4):
                p = plan(index, list(running.values()), nodes, usage, config, t, explain=False)
                plan_calls += 1
                for s in p.starts:
                    job = index.remove(s.job_id)
                    if job is None:
                        continue
                    job = job.transition(JobState.RUNNING, placement=s.placement, placed_at=t, started_at=t)
                    running[job.id] = job
                    overhead = sim.preempt_cost_s if job.requeues else 0.0
                    runs += 1
                    run_info[job.id] = (t, overhead, runs)
                    heapq.heappush(events, (t + overhead + work_left[job.id], _FINISH, job.id, runs))
                    g = job_gpu_equiv(job)
                    busy += g
                    user_alloc[job.owner.user] = user_alloc.get(job.owner.user, 0.0) + g
                    rec = records[job.id]
                    if rec.first_start_s is None:
                        rec.first_start_s = t
                for pr in p.preempts:
                    job = running.get(pr.job_id)
                    if job is None:
                        continue
                    _, overhead, _ = run_info[job.id]
                    started = stop_run(job, t)
                    ran = t - started
                    work_left[job.id] -= max(0.0, ran - overhead)
                    requeued = job.transition(JobState.PENDING, requeues=job.requeues + 1,
                                              attained_gpu_s=job.attained_gpu_s + job.spec.resources.gpus * ran,
                                              last_run_s=ran, end_reason="preempted")
                    index.add(requeued)
                    records[job.id].preemptions += 1
                    preemptions += 1
                if not p.preempts:
                    break
        if config.preemption_on and len(index) and not tick_pending and sim.tick_s > 0:
            heapq.heappush(events, (t + sim.tick_s, _TICK, 0, 0))
            tick_pending = True
        series_t.append(t)
        series_q.append(len(index))
        series_b.append(busy)
        if not running and not index and all(e[1] == _TICK for e in events):
            break
    shares = {u: config.share_for(u) for u in {r.user for r in records.values()}}
    return SimResult(
        policy=sim.policy, total_gpus=total_gpus, records=list(records.values()), dropped=dropped,
        preemptions=preemptions, plan_calls=plan_calls, wall_s=time.perf_counter() - wall0,
        series_t=series_t, series_queue=series_q, series_busy=series_b, samples=samples,
        busy_gpu_s=busy_gpu_s, shares=shares,
    )
