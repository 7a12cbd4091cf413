"""What a node's GPUs look like at one moment (pure data, shared by probe, policy and simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: int | None  # NVML may not know a process's memory
    job_id: int | None = None  # the gpuq job it belongs to, if any
    user: str = ""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    mem_total_mib: int
    mem_used_mib: int  # as NVML (or the simulator) sees it, driver reservation included
    util_pct: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    simulated: bool = False
    #: memory gpuq jobs use beyond what they reserved (placement counts it as taken)
    overuse_mib: int = 0


@dataclass(frozen=True)
class NodeSnapshot:
    node: str
    gpus: tuple[GpuInfo, ...]
    probed_at: float
    simulated: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: how many CPU-only jobs may run here at once (None: no bound)
    cpu_slots: int | None = None
    #: how jobs are contained here ("cgroup v1", "cgroup v2", or "process group (no cgroups)")
    containment: str = ""
    #: things gpuq warns about on this node (e.g. a job using more GPU memory than it reserved)
    warnings: tuple[str, ...] = ()
    #: where the parts of a job across nodes reach this node (``[daemon] address``)
    address: str = ""


def snapshot_to_dict(s: NodeSnapshot) -> dict[str, Any]:
    return {
        "v": 1,
        "node": s.node,
        "probed_at": s.probed_at,
        "simulated": s.simulated,
        "cpu_slots": s.cpu_slots,
        "containment": s.containment,
        "warnings": list(s.warnings),
        "address": s.address,
        "gpus": [
            {
                "index": g.index, "uuid": g.uuid, "name": g.name, "mem_total_mib": g.mem_total_mib,
                "mem_used_mib": g.mem_used_mib, "util_pct": g.util_pct, "simulated": g.simulated,
                "overuse_mib": g.overuse_mib,
                "processes": [{"pid": p.pid, "used_mib": p.used_mib, "job_id": p.job_id, "user": p.user}
                              for p in g.processes],
            }
            for g in s.gpus
        ],
    }


def snapshot_from_dict(d: Mapping[str, Any]) -> NodeSnapshot:
    return NodeSnapshot(
        node=d["node"],
        probed_at=float(d.get("probed_at", 0.0)),
        simulated=bool(d.get("simulated", False)),
        cpu_slots=None if d.get("cpu_slots") is None else int(d["cpu_slots"]),
        containment=str(d.get("containment", "")),
        warnings=tuple(str(w) for w in d.get("warnings", ())),
        address=str(d.get("address", "")),
        gpus=tuple(
            GpuInfo(
                index=int(g["index"]), uuid=g["uuid"], name=g.get("name", "?"),
                mem_total_mib=int(g["mem_total_mib"]), mem_used_mib=int(g.get("mem_used_mib", 0)),
                util_pct=g.get("util_pct"), simulated=bool(g.get("simulated", False)),
                overuse_mib=int(g.get("overuse_mib", 0)),
                processes=tuple(GpuProcess(pid=int(p["pid"]), used_mib=p.get("used_mib"), job_id=p.get("job_id"),
                                           user=p.get("user", "")) for p in g.get("processes", ())),
            )
            for g in d.get("gpus", ())
        ),
    )
