"""Where a job fits: a per-cycle, mutable view of every GPU (pure, no I/O).

Free memory on a GPU is ``total - max(reserved by gpuq jobs, NVML used)``.  A whole-GPU job
needs idle GPUs (no gpuq job and NVML sees at most ``idle_mem_mib``); a shared job needs its
memory free.  Shared jobs are packed best fit (least memory left over) and prefer GPUs that
already hold shared jobs, so idle GPUs stay whole and little memory is stranded.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, Placement, Resources
from gpuq.units import format_mib

INF = math.inf


class Slot:
    """One GPU during one planning cycle."""

    __slots__ = ("node", "gpu", "total_mib", "used_mib", "reserved_mib", "holders", "busy_until",
                 "shadow_until", "idle_mem_mib")

    def __init__(self, node: str, gpu: GpuInfo, idle_mem_mib: int) -> None:
        self.node = node
        self.gpu = gpu
        self.total_mib = gpu.mem_total_mib
        self.used_mib = gpu.mem_used_mib
        self.reserved_mib = 0
        self.holders = 0
        self.busy_until = 0.0  # when the last gpuq job on it is expected to end (inf: unknown)
        self.shadow_until: float | None = None  # held for the head job until then (backfill)
        self.idle_mem_mib = idle_mem_mib

    @property
    def free_mib(self) -> int:
        return self.total_mib - max(self.reserved_mib, self.used_mib)

    @property
    def idle(self) -> bool:
        return self.holders == 0 and self.reserved_mib == 0 and self.used_mib <= self.idle_mem_mib

    def usable(self, end_at: float) -> bool:
        """A GPU held for the head job may take a job that surely ends before the head starts."""
        sh = self.shadow_until
        return sh is None or (end_at <= sh < INF)

    def fits(self, res: Resources, end_at: float = INF) -> bool:
        if not self.usable(end_at):
            return False
        if res.whole_gpus:
            return self.idle
        return self.free_mib >= res.request_mib(self.total_mib)


class Cluster:
    """All GPU slots, with the reservations of running jobs applied."""

    def __init__(self, nodes: Sequence[NodeSnapshot], running: Iterable[Job], idle_mem_mib: int,
                 now: float = 0.0, end_of=None) -> None:
        self.nodes: dict[str, list[Slot]] = {}
        by_uuid: dict[str, Slot] = {}
        for n in nodes:
            slots = [Slot(n.node, g, idle_mem_mib) for g in n.gpus]
            self.nodes[n.node] = slots
            for s in slots:
                by_uuid[s.gpu.uuid] = s
        self.by_uuid = by_uuid
        for job in running:
            p = job.placement
            if p is None:
                continue
            end = end_of(job) if end_of is not None else INF
            for uuid, mib in zip(p.gpu_uuids, p.reserved_mib):
                s = by_uuid.get(uuid)
                if s is not None:
                    s.reserved_mib += mib
                    s.holders += 1
                    if end > s.busy_until:
                        s.busy_until = end
        self.partial = {s.gpu.uuid for s in by_uuid.values() if s.holders and s.free_mib > 0}
        self.idle_count = {name: sum(1 for s in slots if s.idle) for name, slots in self.nodes.items()}
        self.total_idle = sum(self.idle_count.values())
        self.node_size = {name: len(slots) for name, slots in self.nodes.items()}
        self.max_node_gpus = max(self.node_size.values(), default=0)

    # ---- changes ----
    def reserve(self, placement: Placement, end_at: float | None = None) -> None:
        for uuid, mib in zip(placement.gpu_uuids, placement.reserved_mib):
            s = self.by_uuid[uuid]
            was_idle = s.idle
            s.reserved_mib += mib
            s.holders += 1
            if end_at is not None and end_at > s.busy_until:
                s.busy_until = end_at
            if was_idle:
                self.idle_count[s.node] -= 1
                self.total_idle -= 1
            self._track(s)

    def release(self, placement: Placement) -> None:
        for uuid, mib in zip(placement.gpu_uuids, placement.reserved_mib):
            s = self.by_uuid.get(uuid)
            if s is None:
                continue
            s.reserved_mib -= mib
            s.holders -= 1
            if s.idle:
                self.idle_count[s.node] += 1
                self.total_idle += 1
            self._track(s)

    def _track(self, s: Slot) -> None:
        if s.holders and s.free_mib > 0:
            self.partial.add(s.gpu.uuid)
        else:
            self.partial.discard(s.gpu.uuid)

    # ---- queries ----
    def could_fit_anything(self) -> bool:
        """False when no GPU has any room at all (nothing can start this cycle)."""
        return bool(self.total_idle or self.partial)

    def fit(self, res: Resources, end_at: float = INF, packing: str = "best",
            only_node: str | None = None) -> tuple[str, list[Slot]] | None:
        """Choose ``res.gpus`` GPUs on one node for ``res``, or None."""
        g = res.gpus
        if res.whole_gpus:
            best: tuple | None = None
            for node, slots in self.nodes.items():
                if only_node is not None and node != only_node:
                    continue
                if self.idle_count[node] < g:
                    continue
                ok = [s for s in slots if s.idle and s.usable(end_at)]
                if len(ok) < g:
                    continue
                if packing == "first":
                    return node, sorted(ok, key=lambda s: s.gpu.index)[:g]
                rank = (len(ok), node)
                if best is None or rank < best[0]:
                    best = (rank, node, ok)
                    if len(ok) == g:
                        break
            if best is None:
                return None
            return best[1], sorted(best[2], key=lambda s: s.gpu.index)[:g]
        best2: tuple | None = None
        for node, slots in self.nodes.items():
            if only_node is not None and node != only_node:
                continue
            ok = [s for s in slots if s.fits(res, end_at)]
            if len(ok) < g:
                continue
            if packing == "first":
                return node, sorted(ok, key=lambda s: s.gpu.index)[:g]
            # best fit: least memory left over; shared GPUs before idle ones
            ok.sort(key=lambda s: (s.idle, s.free_mib - res.request_mib(s.total_mib), s.gpu.index))
            chosen = ok[:g]
            rank = (sum(s.idle for s in chosen), sum(s.free_mib - res.request_mib(s.total_mib) for s in chosen))
            if best2 is None or rank < best2[0]:
                best2 = (rank, node, chosen)
        return None if best2 is None else (best2[1], best2[2])

    def why_not(self, res: Resources) -> str:
        """A person-readable reason why ``res`` does not fit right now."""
        if not self.nodes:
            return "no node with GPUs is up"
        if res.whole_gpus:
            most = max(sum(1 for s in ss if s.idle and s.shadow_until is None) for ss in self.nodes.values())
            what = f"{res.gpus} GPU" + ("s" if res.gpus != 1 else "")
            return f"needs {what} on one node; at most {most} free"
        all_slots = [s for ss in self.nodes.values() for s in ss]
        top = max(all_slots, key=lambda s: s.free_mib)
        need = res.mem_mib if res.mem_mib is not None else res.request_mib(top.total_mib)
        if res.gpus == 1:
            where = f"GPU {top.gpu.index}" + ("" if len(self.nodes) == 1 else f" on {top.node}")
            return f"needs {format_mib(need)} on one GPU; most free is {format_mib(max(top.free_mib, 0))} ({where})"
        most = max(sum(1 for s in ss if s.fits(res)) for ss in self.nodes.values())
        return f"needs {format_mib(need)} on each of {res.gpus} GPUs on one node; at most {most} have that free"


def make_placement(res: Resources, node: str, chosen: Sequence[Slot]) -> Placement:
    return Placement(
        node=node,
        gpu_uuids=tuple(s.gpu.uuid for s in chosen),
        gpu_indices=tuple(s.gpu.index for s in chosen),
        reserved_mib=tuple(res.request_mib(s.total_mib) for s in chosen),
        limit_mib=tuple(res.limit_mib(s.total_mib) for s in chosen),
        gpu_total_mib=tuple(s.total_mib for s in chosen),
    )


def never_fits(res: Resources, nodes: Sequence[NodeSnapshot]) -> str | None:
    """Why ``res`` could never run on any node even when all is idle, or None if it could."""
    if res.gpus == 0:
        return None
    if not nodes:
        return "no node has reported its GPUs yet"
    for n in nodes:
        ok = [g for g in n.gpus if res.whole_gpus or res.request_mib(g.mem_total_mib) <= g.mem_total_mib]
        if len(ok) >= res.gpus:
            return None
    most = max(len(n.gpus) for n in nodes)
    if res.gpus > most:
        return f"it asks for {res.gpus} GPUs on one node, but the largest node has {most}"
    biggest = max((g.mem_total_mib for n in nodes for g in n.gpus), default=0)
    return (f"it asks for {format_mib(res.mem_mib)} per GPU on {res.gpus} GPU(s), "
            f"but the largest GPU has {format_mib(biggest)}")


def gpu_memory_stranded(cluster: Cluster, smallest_request_mib: int) -> int:
    """Free MiB on GPUs that hold shared jobs but have less free than the smallest request."""
    return sum(s.free_mib for ss in cluster.nodes.values() for s in ss
               if s.holders and 0 < s.free_mib < smallest_request_mib)


def shape_of(res: Resources) -> tuple:
    return (res.gpus, res.whole_gpus, res.mem_mib, res.fraction)


def node_free_mib(cluster: Cluster) -> Mapping[str, int]:
    return {n: sum(max(s.free_mib, 0) for s in ss) for n, ss in cluster.nodes.items()}
