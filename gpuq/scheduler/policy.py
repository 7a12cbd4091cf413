"""The scheduling policy: a pure function from a snapshot of the world to decisions.

``plan(pending, running, nodes, usage, config, now)`` touches no Redis, no NVML and
no clock.  The daemon, the tests and the trace simulator all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobState, Placement, Resources
from gpuq.units import format_mib


@dataclass(frozen=True)
class PolicyConfig:
    policy: str = "default"
    #: A GPU counts as idle (free for a whole-GPU job) while NVML sees at most this much in use:
    #: NVML's "used" includes memory the driver reserves on an idle GPU.
    idle_mem_mib: int = 1024


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


# ---- the free-memory model -------------------------------------------------------------------


@dataclass
class GpuSlot:
    """Mutable per-cycle view of one GPU: what is reserved, what NVML sees, who holds it."""

    node: str
    gpu: GpuInfo
    reserved_mib: int = 0
    holders: int = 0  # gpuq jobs placed on it

    @property
    def free_mib(self) -> int:
        """Free = total - max(memory reserved by gpuq's jobs, memory NVML sees in use)."""
        return self.gpu.mem_total_mib - max(self.reserved_mib, self.gpu.mem_used_mib)

    def fits(self, res: Resources, idle_mem_mib: int) -> bool:
        if res.whole_gpus:
            return self.holders == 0 and self.reserved_mib == 0 and self.gpu.mem_used_mib <= idle_mem_mib
        return self.free_mib >= res.request_mib(self.gpu.mem_total_mib)


def build_slots(nodes: Sequence[NodeSnapshot], running: Sequence[Job]) -> dict[str, list[GpuSlot]]:
    """Per node, the GPU slots with the reservations of running jobs applied."""
    slots: dict[str, list[GpuSlot]] = {n.node: [GpuSlot(n.node, g) for g in n.gpus] for n in nodes}
    by_uuid = {s.gpu.uuid: s for node_slots in slots.values() for s in node_slots}
    for job in running:
        p = job.placement
        if p is None:
            continue
        for uuid, mib in zip(p.gpu_uuids, p.reserved_mib):
            slot = by_uuid.get(uuid)
            if slot is not None:
                slot.reserved_mib += mib
                slot.holders += 1
    return slots


def best_fit(res: Resources, slots: Mapping[str, list[GpuSlot]], idle_mem_mib: int) -> tuple[str, list[GpuSlot]] | None:
    """Choose N GPUs on one node that fit ``res``, leaving the least memory over (best fit)."""
    best: tuple[int, str, list[GpuSlot]] | None = None
    for node, node_slots in slots.items():
        fitting = [s for s in node_slots if s.fits(res, idle_mem_mib)]
        if len(fitting) < res.gpus:
            continue
        fitting.sort(key=lambda s: (s.free_mib - res.request_mib(s.gpu.mem_total_mib), s.gpu.index))
        chosen = fitting[: res.gpus]
        leftover = sum(s.free_mib - res.request_mib(s.gpu.mem_total_mib) for s in chosen)
        if best is None or leftover < best[0]:
            best = (leftover, node, chosen)
    return None if best is None else (best[1], best[2])


def make_placement(res: Resources, node: str, chosen: Sequence[GpuSlot]) -> Placement:
    return Placement(
        node=node,
        gpu_uuids=tuple(s.gpu.uuid for s in chosen),
        gpu_indices=tuple(s.gpu.index for s in chosen),
        reserved_mib=tuple(res.request_mib(s.gpu.mem_total_mib) for s in chosen),
        limit_mib=tuple(res.limit_mib(s.gpu.mem_total_mib) for s in chosen),
        gpu_total_mib=tuple(s.gpu.mem_total_mib for s in chosen),
    )


def reserve(chosen: Sequence[GpuSlot], placement: Placement) -> None:
    for s, mib in zip(chosen, placement.reserved_mib):
        s.reserved_mib += mib
        s.holders += 1


def never_fits(res: Resources, nodes: Sequence[NodeSnapshot]) -> str | None:
    """Why ``res`` could never run on any node even when all is idle, or None if it could."""
    if res.gpus == 0:
        return None
    if not nodes:
        return "no node has reported its GPUs yet"
    best_count = 0
    for n in nodes:
        ok = [g for g in n.gpus if res.whole_gpus or res.request_mib(g.mem_total_mib) <= g.mem_total_mib]
        if len(ok) >= res.gpus:
            return None
        best_count = max(best_count, len(ok))
    biggest = max((g.mem_total_mib for n in nodes for g in n.gpus), default=0)
    most = max(len(n.gpus) for n in nodes)
    if res.gpus > most:
        return f"it asks for {res.gpus} GPUs on one node, but the largest node has {most}"
    return (f"it asks for {format_mib(res.mem_mib)} per GPU on {res.gpus} GPU(s), "
            f"but the largest GPU has {format_mib(biggest)}")


def why_not_fit(res: Resources, slots: Mapping[str, list[GpuSlot]], idle_mem_mib: int) -> str:
    """A person-readable reason why ``res`` does not fit right now."""
    all_slots = [s for node_slots in slots.values() for s in node_slots]
    if not all_slots:
        return "no node with GPUs is up"
    if res.whole_gpus:
        per_node = {node: sum(1 for s in ss if s.fits(res, idle_mem_mib)) for node, ss in slots.items()}
        most = max(per_node.values())
        what = f"{res.gpus} whole GPU" + ("s" if res.gpus != 1 else "")
        return f"needs {what} on one node; at most {most} free"
    top = max(all_slots, key=lambda s: s.free_mib)
    need = res.mem_mib if res.mem_mib is not None else res.request_mib(top.gpu.mem_total_mib)
    if res.gpus == 1:
        return (f"needs {format_mib(need)} on one GPU; most free is {format_mib(max(top.free_mib, 0))} "
                f"(GPU {top.gpu.index}{'' if len(slots) == 1 else ' on ' + top.node})")
    per_node = {node: sum(1 for s in ss if s.fits(res, idle_mem_mib)) for node, ss in slots.items()}
    return (f"needs {format_mib(need)} on each of {res.gpus} GPUs on one node; "
            f"at most {max(per_node.values())} have that free")


# ---- ordering and the plan -------------------------------------------------------------------


def order_key(job: Job) -> tuple:
    return (-job.spec.priority, job.submitted_at, job.id)


def dependency_reason(job: Job, finished: Mapping[int, JobState]) -> str | None:
    """None when every ``--after`` job completed; else why the job waits."""
    for dep in job.spec.after:
        state = finished.get(dep)
        if state is JobState.COMPLETED:
            continue
        if state is not None and state.terminal:
            return f"after job {dep}, which ended {state.value}: it will never start; cancel it"
        return f"after job {dep}"
    return None


def plan(
    pending: Sequence[Job],
    running: Sequence[Job],
    nodes: Sequence[NodeSnapshot],
    usage: Mapping[str, float],
    config: PolicyConfig,
    now: float,
    finished: Mapping[int, JobState] | None = None,
) -> Plan:
    """Decide which pending jobs start where, and why the others wait.

    ``finished`` maps job ids to their terminal states (for ``--after``); ``usage`` is each
    user's decayed GPU-seconds as of ``now``.
    """
    finished = finished or {}
    slots = build_slots(nodes, running)
    starts: list[Start] = []
    reasons: dict[int, str] = {}
    for job in sorted(pending, key=order_key):
        if job.state is JobState.HELD:
            reasons[job.id] = "held"
            continue
        dep = dependency_reason(job, finished)
        if dep is not None:
            reasons[job.id] = dep
            continue
        res = job.spec.resources
        if res.gpus == 0:
            node = min(slots) if slots else (nodes[0].node if nodes else None)
            if node is None:
                reasons[job.id] = "no node is up"
                continue
            starts.append(Start(job.id, Placement(node=node)))
            continue
        choice = best_fit(res, slots, config.idle_mem_mib)
        if choice is None:
            reasons[job.id] = why_not_fit(res, slots, config.idle_mem_mib)
            continue
        node, chosen = choice
        placement = make_placement(res, node, chosen)
        reserve(chosen, placement)
        starts.append(Start(job.id, placement))
    return Plan(starts=tuple(starts), reasons=reasons)
