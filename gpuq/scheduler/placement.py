"""Where a job fits: a per-cycle, mutable view of every GPU (pure, no I/O).

Free memory on a GPU is ``total - max(reserved by gpuq jobs, NVML used)``.  A whole-GPU job
needs idle GPUs (no gpuq job and NVML sees at most ``idle_mem_mib``); a shared job needs its
memory free.  Shared jobs are packed best fit (least memory left over) and prefer GPUs that
already hold shared jobs, so idle GPUs stay whole and little memory is stranded.

The view keeps one entry per GPU in flat lists (indexed by a global GPU number), built from a
template of the node snapshots that is computed once per set of snapshots: a cycle costs
O(nodes + running jobs), not O(GPUs), which keeps the simulator fast on big clusters.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, Part, Placement, Resources
from gpuq.units import format_mib

INF = math.inf


class Shape(NamedTuple):
    """What a request looks like to placement: two jobs of one shape fit in the same places."""

    gpus: int
    whole: bool
    mem_mib: int | None
    fraction: float | None
    nodes: int  # > 1: a job across nodes, gpus // nodes on each


_new_tuple = tuple.__new__


def shape_of(res: Resources) -> Shape:
    return _new_tuple(Shape, (res.gpus, res.whole_gpus, res.mem_mib, res.fraction, res.nodes))  # Shape(...), faster


class Hold(NamedTuple):
    """A GPU kept free for one waiting job.  ``until`` is when that job is expected to start
    (its shadow time): a job that surely ends by then may still use the GPU.  ``until`` None:
    the start time is unknown (or the GPU is being freed for it by preemption), so no one may."""

    job_id: int
    until: float | None

    def admits(self, end_at: float) -> bool:
        """May a job that ends at ``end_at`` use the held GPU meanwhile?"""
        return self.until is not None and end_at <= self.until


class _Template:
    """What never changes within one set of node snapshots."""

    def __init__(self, nodes: Sequence[NodeSnapshot], idle_mem_mib: int) -> None:
        self.names: list[str] = []
        #: where each node is reached by the other parts of a job across nodes
        self.addresses: list[str] = [n.address or n.node for n in nodes]
        #: CPU-only job slots per node (None: unbounded)
        self.cpu_slots: list[int | None] = [n.cpu_slots for n in nodes]
        self.node_slots: list[list[int]] = []
        self.node_of: list[int] = []
        self.gpu: list[GpuInfo] = []
        self.uuid_idx: dict[str, int] = {}
        for k, n in enumerate(nodes):
            self.names.append(n.node)
            idxs = []
            for g in sorted(n.gpus, key=lambda g: g.index):
                i = len(self.gpu)
                self.gpu.append(g)
                self.node_of.append(k)
                self.uuid_idx[g.uuid] = i
                idxs.append(i)
            self.node_slots.append(idxs)
        self.total = [g.mem_total_mib for g in self.gpu]
        self.used = [g.mem_used_mib for g in self.gpu]
        #: memory that running jobs took beyond their reservation: never packed onto
        self.overuse = [g.overuse_mib for g in self.gpu]
        self.base_idle = [g.mem_used_mib <= idle_mem_mib for g in self.gpu]
        self.base_idle_count = [sum(self.base_idle[i] for i in idxs) for idxs in self.node_slots]
        self.node_number = {name: k for k, name in enumerate(self.names)}
        self.max_node_gpus = max((len(x) for x in self.node_slots), default=0)
        #: GPUs that something outside gpuq uses (never idle; shared jobs may still fit)
        self.foreign = [i for i, idle in enumerate(self.base_idle) if not idle]
        #: GPU numbers of a placement's UUIDs (placements repeat from cycle to cycle)
        self.idx_cache: dict[tuple[str, ...], tuple[int, ...]] = {}

    def indices(self, uuids: tuple[str, ...]) -> tuple[int, ...]:
        got = self.idx_cache.get(uuids)
        if got is None:
            got = tuple(self.uuid_idx.get(u, -1) for u in uuids)
            if len(self.idx_cache) > 100000:
                self.idx_cache.clear()
            self.idx_cache[uuids] = got
        return got


_TEMPLATES: dict[tuple, tuple[tuple, _Template]] = {}


def _template(nodes: Sequence[NodeSnapshot], idle_mem_mib: int) -> _Template:
    # Snapshots are frozen: the same objects always give the same template.  The cache keeps a
    # reference to them, so their ids cannot be reused while the entry lives.
    key = (idle_mem_mib,) + tuple(id(n) for n in nodes)
    hit = _TEMPLATES.get(key)
    if hit is not None:
        return hit[1]
    t = _Template(nodes, idle_mem_mib)
    if len(_TEMPLATES) >= 8:
        _TEMPLATES.pop(next(iter(_TEMPLATES)))
    _TEMPLATES[key] = (tuple(nodes), t)
    return t


class Cluster:
    """All GPUs, with the reservations of running jobs applied."""

    def __init__(self, nodes: Sequence[NodeSnapshot], running: Iterable[Job], idle_mem_mib: int,
                 now: float = 0.0, end_of: Callable[[Job], float] | None = None) -> None:
        t = self.t = _template(nodes, idle_mem_mib)
        n = len(t.gpu)
        self.reserved = list(t.overuse)
        self.cpu_busy = [0] * len(t.names)  # CPU-only jobs running on each node
        self.holders = [0] * n
        self.busy_until = [0.0] * n  # when its last gpuq job is expected to end (inf: unknown)
        self._holds: dict[int, Hold] = {}  # GPU number -> the waiting job it is kept for
        self.idle_count = list(t.base_idle_count)
        self.bounded_running = 0
        partial: set[int] = set()
        base_idle, node_of = t.base_idle, t.node_of
        total, used = t.total, t.used
        reserved, holders, busy, idle_count = self.reserved, self.holders, self.busy_until, self.idle_count
        node_k = {name: k for k, name in enumerate(t.names)}
        for job in running:
            p = job.placement
            if p is None:
                continue
            if not p.gpu_uuids and p.node in node_k:
                self.cpu_busy[node_k[p.node]] += 1
            if job.spec.time_limit_s is None or end_of is None:
                end = INF
            else:
                end = end_of(job)
                self.bounded_running += 1
            for i, mib in zip(t.indices(p.gpu_uuids), p.reserved_mib):
                if i < 0:
                    continue
                if holders[i] == 0 and reserved[i] == 0 and base_idle[i]:
                    idle_count[node_of[i]] -= 1
                r = reserved[i] = reserved[i] + mib
                holders[i] += 1
                if end > busy[i]:
                    busy[i] = end
                if total[i] > r and total[i] > used[i]:
                    partial.add(i)
                else:
                    partial.discard(i)
        self.total_idle = sum(idle_count)
        self.partial = partial

    # ---- per GPU ----
    @property
    def names(self) -> list[str]:
        return self.t.names

    @property
    def max_node_gpus(self) -> int:
        return self.t.max_node_gpus

    def idle_gpus_on(self, node: str) -> int:
        k = self.t.node_number.get(node)
        return 0 if k is None else self.idle_count[k]

    def free_mib(self, i: int) -> int:
        return self.t.total[i] - max(self.reserved[i], self.t.used[i])

    def is_idle(self, i: int) -> bool:
        return self.holders[i] == 0 and self.reserved[i] == 0 and self.t.base_idle[i]

    # ---- CPU-only slots (a node resource like a GPU) ----
    def fit_cpu(self) -> str | None:
        """The node with the most free CPU-only slots, or None when every slot is busy."""
        best: tuple[float, int] | None = None
        for k, slots in enumerate(self.t.cpu_slots):
            free = INF if slots is None else slots - self.cpu_busy[k]
            if free > 0 and (best is None or free > best[0]):
                best = (free, k)
        return None if best is None else self.t.names[best[1]]

    def take_cpu(self, node: str) -> None:
        self.cpu_busy[self.t.names.index(node)] += 1

    def cpu_slots_total(self) -> float:
        return sum(INF if s is None else s for s in self.t.cpu_slots)

    def why_not_cpu(self) -> str:
        if not self.t.names:
            return "no node is up"
        total = self.cpu_slots_total()
        return f"all {total:g} CPU slots busy" if total < INF else "no CPU slot free"

    def usable(self, i: int, end_at: float) -> bool:
        """A GPU held for the head job may take a job that surely ends before the head starts."""
        h = self._holds.get(i)
        return h is None or h.admits(end_at)

    # ---- holds: GPUs kept free for a waiting job ----
    def hold(self, gpus: Iterable[int], job_id: int, until: float | None) -> None:
        """Keep ``gpus`` for job ``job_id`` until ``until`` (None: until it starts)."""
        h = Hold(job_id, until)
        for i in gpus:
            self._holds[i] = h

    def release_holds(self) -> None:
        """Keep no GPU for anyone any more."""
        self._holds = {}

    def held(self, i: int) -> Hold | None:
        return self._holds.get(i)

    def is_held(self, i: int) -> bool:
        return i in self._holds

    @contextmanager
    def holds_lifted(self) -> Iterator[None]:
        """Within the block no GPU is held (to ask "would it fit but for the holds?")."""
        saved, self._holds = self._holds, {}
        try:
            yield
        finally:
            self._holds = saved

    def fits(self, i: int, res: Resources, end_at: float = INF) -> bool:
        if not self.usable(i, end_at):
            return False
        if res.whole_gpus:
            return self.is_idle(i)
        return self.free_mib(i) >= res.request_mib(self.t.total[i])

    # ---- changes ----
    def _apply(self, placement: Placement, sign: int, end_at: float | None = None) -> None:
        t = self.t
        for uuid, mib in zip(placement.gpu_uuids, placement.reserved_mib):
            i = t.uuid_idx.get(uuid)
            if i is None:
                continue
            was_idle = self.is_idle(i)
            self.reserved[i] += sign * mib
            self.holders[i] += sign
            if end_at is not None and end_at > self.busy_until[i]:
                self.busy_until[i] = end_at
            now_idle = self.is_idle(i)
            if was_idle != now_idle:
                d = 1 if now_idle else -1
                self.idle_count[t.node_of[i]] += d
                self.total_idle += d
            if self.holders[i] and self.free_mib(i) > 0:
                self.partial.add(i)
            else:
                self.partial.discard(i)

    def reserve(self, placement: Placement, end_at: float | None = None) -> None:
        if end_at is not None and end_at < INF:
            self.bounded_running += 1
        self._apply(placement, 1, end_at)

    def release(self, placement: Placement) -> None:
        self._apply(placement, -1)

    # ---- queries ----
    def could_fit_anything(self) -> bool:
        """False when no GPU has any room at all (nothing can start this cycle)."""
        return bool(self.total_idle or self.partial) or any(self.free_mib(i) > 0 for i in self.t.foreign)

    def fit(self, res: Resources, end_at: float = INF, packing: str = "best",
            only_node: str | None = None) -> tuple[str, list[int]] | None:
        """Choose ``res.gpus`` GPUs on one node for ``res``: (node, GPU numbers) or None."""
        g = res.gpus
        t = self.t
        if g == 1 and not res.whole_gpus and only_node is None:
            return self._fit_one_shared(res, end_at, packing)
        best: tuple | None = None
        if only_node is None:
            nodes: Iterable[tuple[int, list[int]]] = enumerate(t.node_slots)
        else:
            k = t.node_number.get(only_node)
            nodes = () if k is None else ((k, t.node_slots[k]),)
        for k, idxs in nodes:
            if res.whole_gpus:
                if self.idle_count[k] < g:
                    continue
                ok = [i for i in idxs if self.is_idle(i) and self.usable(i, end_at)]
                if len(ok) < g:
                    continue
                if packing == "first":
                    return t.names[k], ok[:g]
                rank: tuple = (len(ok), k)
                if best is None or rank < best[0]:
                    best = (rank, k, ok[:g])
                    if len(ok) == g:
                        break
                continue
            ok = [i for i in idxs if self.fits(i, res, end_at)]
            if len(ok) < g:
                continue
            if packing == "first":
                return t.names[k], ok[:g]
            # best fit: shared GPUs before idle ones, then least memory left over
            left = {i: self.free_mib(i) - res.request_mib(t.total[i]) for i in ok}
            ok.sort(key=lambda i: (self.is_idle(i), left[i], i))
            chosen = ok[:g]
            rank = (sum(self.is_idle(i) for i in chosen), sum(left[i] for i in chosen), k)
            if best is None or rank < best[0]:
                best = (rank, k, chosen)
        return None if best is None else (t.names[best[1]], best[2])

    def _fit_one_shared(self, res: Resources, end_at: float, packing: str) -> tuple[str, list[int]] | None:
        """One GPU for a shared job without scanning every GPU: GPUs already shared (or used
        outside gpuq) first, least memory left over (best) or lowest number (first); else an idle GPU."""
        t = self.t
        first = packing == "first"
        need_for: dict[int, int] = {}  # GPU size -> memory the job reserves on it
        best = self._best_shared(self.partial.union(t.foreign), res, end_at, first, need_for)
        if best is None:
            for k, idxs in enumerate(t.node_slots):
                if not self.idle_count[k]:
                    continue
                got = self._best_shared((i for i in idxs if self.is_idle(i)), res, end_at, first, need_for)
                if got is not None and (best is None or got < best):
                    best = got
                if first and best is not None:
                    break
        if best is None:
            return None
        i = best[-1]
        return t.names[t.node_of[i]], [i]

    def _best_shared(self, candidates: Iterable[int], res: Resources, end_at: float, first: bool,
                     need_for: dict[int, int]) -> tuple | None:
        """The best rank among ``candidates`` for one GPU of a shared job (or None)."""
        total, used, reserved, holds = self.t.total, self.t.used, self.reserved, self._holds
        best: tuple | None = None
        for i in candidates:
            if holds:
                h = holds.get(i)
                if h is not None and not h.admits(end_at):
                    continue
            tot = total[i]
            need = need_for.get(tot)
            if need is None:
                need = need_for[tot] = res.request_mib(tot)
            taken = reserved[i] if reserved[i] > used[i] else used[i]
            left = tot - taken - need
            if left < 0:
                continue
            rank = (i,) if first else (left, i)
            if best is None or rank < best:
                best = rank
        return best

    def fit_gang(self, res: Resources, end_at: float = INF) -> tuple[str, list[int]] | None:
        """Whole GPUs spread over several nodes (fullest-idle nodes first) for a job wider than any node."""
        if not res.whole_gpus or self.total_idle < res.gpus:
            return None
        t = self.t
        per_node = []
        for k, idxs in enumerate(t.node_slots):
            if self.idle_count[k]:
                ok = [i for i in idxs if self.is_idle(i) and self.usable(i, end_at)]
                if ok:
                    per_node.append((-len(ok), k, ok))
        per_node.sort()
        chosen: list[int] = []
        names = []
        for _, k, ok in per_node:
            take = ok[: res.gpus - len(chosen)]
            chosen += take
            names.append(t.names[k])
            if len(chosen) == res.gpus:
                return "+".join(names), chosen
        return None

    def fit_nodes(self, res: Resources, end_at: float = INF) -> list[tuple[int, list[int]]] | None:
        """A job across nodes (``res.nodes`` > 1): exactly ``res.gpus_per_node`` idle GPUs on each of
        ``res.nodes`` different nodes, as (node number, GPU numbers) in rank order, or None.
        Best fit: the nodes with the fewest idle GPUs that are enough, so whole nodes stay whole."""
        per, want = res.gpus_per_node, res.nodes
        if self.total_idle < res.gpus:
            return None
        candidates = []
        for k, idxs in enumerate(self.t.node_slots):
            if self.idle_count[k] < per:
                continue
            ok = [i for i in idxs if self.is_idle(i) and self.usable(i, end_at)]
            if len(ok) >= per:
                candidates.append((len(ok), k, ok[:per]))
        if len(candidates) < want:
            return None
        candidates.sort()
        return [(k, ok) for _, k, ok in candidates[:want]]

    def why_not(self, res: Resources) -> str:
        """A person-readable reason why ``res`` does not fit right now."""
        t = self.t
        if not t.gpu:
            return "no node with GPUs is up"
        if res.nodes > 1:
            per = res.gpus_per_node
            have = sum(1 for idxs in t.node_slots
                       if sum(1 for i in idxs if self.is_idle(i) and not self.is_held(i)) >= per)
            return (f"needs {per} GPU{'s' if per != 1 else ''} on each of {res.nodes} nodes; "
                    f"{have} node{'s have' if have != 1 else ' has'} that free")
        if res.whole_gpus:
            most = max(sum(1 for i in idxs if self.is_idle(i) and not self.is_held(i)) for idxs in t.node_slots)
            what = f"{res.gpus} GPU" + ("s" if res.gpus != 1 else "")
            if res.gpus > t.max_node_gpus:
                free = sum(1 for i in range(len(t.gpu)) if self.is_idle(i) and not self.is_held(i))
                return f"needs {what} across nodes; {free} free"
            return f"needs {what} on one node; at most {most} free"
        top = max(range(len(t.gpu)), key=self.free_mib)
        need = res.mem_mib if res.mem_mib is not None else res.request_mib(t.total[top])
        if res.gpus == 1:
            where = f"GPU {t.gpu[top].index}" + ("" if len(t.names) == 1 else f" on {t.names[t.node_of[top]]}")
            return (f"needs {format_mib(need)} on one GPU; most free is {format_mib(max(self.free_mib(top), 0))} "
                    f"({where})")
        most = max(sum(1 for i in idxs if self.fits(i, res)) for idxs in t.node_slots)
        return f"needs {format_mib(need)} on each of {res.gpus} GPUs on one node; at most {most} have that free"


def make_placement(cluster: Cluster, res: Resources, node: str, chosen: Sequence[int]) -> Placement:
    t = cluster.t
    return Placement(
        node=node,
        gpu_uuids=tuple(t.gpu[i].uuid for i in chosen),
        gpu_indices=tuple(t.gpu[i].index for i in chosen),
        reserved_mib=tuple(res.request_mib(t.total[i]) for i in chosen),
        limit_mib=tuple(res.limit_mib(t.total[i]) for i in chosen),
        gpu_total_mib=tuple(t.total[i] for i in chosen),
    )


def make_gang_placement(cluster: Cluster, res: Resources, parts: Sequence[tuple[int, Sequence[int]]]) -> Placement:
    """The placement of a job across nodes: its parts in rank order (``port`` is chosen per run by
    the daemon when it applies the start)."""
    t = cluster.t
    chosen = [i for _, idxs in parts for i in idxs]
    one = make_placement(cluster, res, "+".join(t.names[k] for k, _ in parts), chosen)
    return Placement(node=one.node, gpu_uuids=one.gpu_uuids, gpu_indices=one.gpu_indices,
                     reserved_mib=one.reserved_mib, limit_mib=one.limit_mib, gpu_total_mib=one.gpu_total_mib,
                     parts=tuple(Part(t.names[k], t.addresses[k], len(idxs)) for k, idxs in parts))


def never_fits(res: Resources, nodes: Sequence[NodeSnapshot], gang: bool = False) -> str | None:
    """Why ``res`` could never run on any node even when all is idle, or None if it could."""
    if res.gpus == 0:
        return None
    if not nodes:
        return "no node has reported its GPUs yet"
    if res.nodes > 1:
        per = res.gpus_per_node
        have = sum(1 for n in nodes if len(n.gpus) >= per)
        if have >= res.nodes:
            return None
        return (f"it asks for {per} GPU{'s' if per != 1 else ''} on each of {res.nodes} nodes, but "
                f"{'only ' if have else ''}{have} node{'s have' if have != 1 else ' has'} {per} or more GPUs")
    for n in nodes:
        ok = [g for g in n.gpus if res.whole_gpus or res.request_mib(g.mem_total_mib) <= g.mem_total_mib]
        if len(ok) >= res.gpus:
            return None
    total = sum(len(n.gpus) for n in nodes)
    if gang and res.whole_gpus and res.gpus <= total:
        return None
    most = max(len(n.gpus) for n in nodes)
    if res.gpus > most:
        return f"it asks for {res.gpus} GPUs on one node, but the largest node has {most}"
    biggest = max((g.mem_total_mib for n in nodes for g in n.gpus), default=0)
    return (f"it asks for {format_mib(res.mem_mib)} per GPU on {res.gpus} GPU(s), "
            f"but the largest GPU has {format_mib(biggest)}")

