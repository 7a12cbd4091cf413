"""GPU probes: NVML on a real machine, a SIMULATED inventory elsewhere.

A probe returns a :class:`gpuq.gpus.NodeSnapshot`.  Processes on a GPU are
attributed to gpuq jobs by their session id: each job runs in its own session,
whose id is the job's leader pid.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Protocol

from gpuq.errors import InvalidInput, NoGpuInventory
from gpuq.gpus import GpuInfo, GpuProcess, NodeSnapshot
from gpuq.units import parse_size_mib
from gpuq.workers.cgroup import cgroup_job_of

#: session id (= job leader pid) -> (job id, user)
JobSessions = Mapping[int, tuple[int, str]]


class Probe(Protocol):
    simulated: bool

    def snapshot(self, node: str, now: float, sessions: JobSessions) -> NodeSnapshot: ...

    def gpu_minors(self) -> list[tuple[str, int]]: ...

    def close(self) -> None: ...


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (from /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # fields after the ")" that closes the command name: state ppid pgrp session ...
    rest = stat.rsplit(")", 1)[-1].split()
    return int(rest[3]) if len(rest) > 3 else None


def attribute(pid: int, used_mib: int | None, sessions: JobSessions) -> GpuProcess:
    """The gpuq job a GPU process belongs to: by its session, else by its cgroup (a process that
    left the job's session is still in the job's cgroup)."""
    sid = session_of(pid)
    if sid is not None and sid in sessions:
        job_id, user = sessions[sid]
        return GpuProcess(pid=pid, used_mib=used_mib, job_id=job_id, user=user)
    in_cgroup = cgroup_job_of(pid)
    if in_cgroup is not None:
        for job_id, user in sessions.values():
            if job_id == in_cgroup:
                return GpuProcess(pid=pid, used_mib=used_mib, job_id=job_id, user=user)
    return GpuProcess(pid=pid, used_mib=used_mib, user=_owner_of(pid))


def _owner_of(pid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    except (OSError, KeyError):
        return ""


# ---- NVML -----------------------------------------------------------------------------------


class NvmlProbe:
    """Reads the real GPUs through NVML (``nvidia-ml-py``), addressed by UUID."""

    simulated = False

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as e:  # pragma: no cover - dependency is declared
            raise NoGpuInventory("the nvidia-ml-py package is missing: reinstall gpuq.") from e
        self.nv = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            raise NoGpuInventory(
                f"NVML is not available on this machine ({e}): install the NVIDIA driver, or start the daemon "
                "with --simulate-gpus 4x24GiB to use a SIMULATED GPU inventory."
            ) from e
        if count == 0:
            raise NoGpuInventory("NVML reports no GPUs on this machine: start with --simulate-gpus 4x24GiB for a "
                                 "SIMULATED inventory, or check the driver with nvidia-smi.")

    def snapshot(self, node: str, now: float, sessions: JobSessions) -> NodeSnapshot:
        nv = self.nv
        gpus = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(h)
            name = nv.nvmlDeviceGetName(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            name = name.decode() if isinstance(name, bytes) else name
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                util: int | None = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except nv.NVMLError:
                util = None
            procs = []
            try:
                running = list(nv.nvmlDeviceGetComputeRunningProcesses(h))
            except nv.NVMLError:
                running = []
            for p in running:
                used = p.usedGpuMemory
                used_mib = None if used is None or used >= 2**63 else int(used // 2**20)
                procs.append(attribute(int(p.pid), used_mib, sessions))
            gpus.append(GpuInfo(index=i, uuid=uuid, name=name, mem_total_mib=int(mem.total // 2**20),
                                mem_used_mib=int(mem.used // 2**20), util_pct=util, processes=tuple(procs)))
        return NodeSnapshot(node=node, gpus=tuple(gpus), probed_at=now, simulated=False)

    def gpu_minors(self) -> list[tuple[str, int]]:
        """(UUID, /dev/nvidiaN minor) of every GPU, for the devices controller."""
        nv = self.nv
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            try:
                minor = int(nv.nvmlDeviceGetMinorNumber(h))
            except nv.NVMLError:
                minor = i
            out.append((uuid, minor))
        return out

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except self.nv.NVMLError:
            pass


# ---- SIMULATED ------------------------------------------------------------------------------

_SPEC_PART = re.compile(r"^\s*(?:(\d+)\s*[xX×]\s*)?(.+?)\s*$")


def parse_simulated_spec(spec: str) -> list[int]:
    """``4x24GiB`` or ``2x80GiB,1x24GiB`` -> the memory of each SIMULATED GPU in MiB."""
    sizes: list[int] = []
    for part in str(spec).split(","):
        m = _SPEC_PART.match(part)
        if not m or not m.group(2):
            raise InvalidInput(f"--simulate-gpus {spec!r} is not an inventory: write COUNTxSIZE, like 4x24GiB.")
        count = int(m.group(1) or 1)
        if count <= 0 or count > 64:
            raise InvalidInput(f"--simulate-gpus {spec!r}: the GPU count must be between 1 and 64.")
        try:
            size = parse_size_mib(m.group(2))
        except InvalidInput:
            raise InvalidInput(f"--simulate-gpus {spec!r} is not an inventory: write COUNTxSIZE, like 4x24GiB "
                               "(or 2x80GiB,1x24GiB).") from None
        sizes.extend([size] * count)
    if not sizes:
        raise InvalidInput(f"--simulate-gpus {spec!r} names no GPU: write COUNTxSIZE, like 4x24GiB.")
    return sizes


class SimulatedProbe:
    """A SIMULATED GPU inventory whose memory use comes from claim files.

    A claim is a JSON file in ``usage_dir`` (see :mod:`gpuq.workers.simgpu`): memory on one
    simulated GPU, held by a process until it exits, or by "something outside gpuq" (no pid)
    until the file is removed.
    """

    simulated = True

    def __init__(self, sizes_mib: list[int], usage_dir: str, node: str):
        self.sizes_mib = sizes_mib
        self.usage_dir = usage_dir
        self.uuids = [simulated_uuid(node, i) for i in range(len(sizes_mib))]

    def snapshot(self, node: str, now: float, sessions: JobSessions) -> NodeSnapshot:
        from gpuq.workers import simgpu

        claims = simgpu.read_claims(self.usage_dir)
        gpus = []
        for i, (uuid, total) in enumerate(zip(self.uuids, self.sizes_mib)):
            mine = [c for c in claims if c.uuid == uuid]
            used = sum(c.mem_mib for c in mine)
            util = min(100, sum(c.util_pct for c in mine))
            procs = tuple(
                attribute(c.pid, c.mem_mib, sessions) if c.pid else GpuProcess(pid=0, used_mib=c.mem_mib,
                                                                                user=c.label or "outside gpuq")
                for c in mine
            )
            gpus.append(GpuInfo(index=i, uuid=uuid, name=f"SIMULATED GPU {total // 1024} GiB", mem_total_mib=total,
                                mem_used_mib=min(used, total), util_pct=util, processes=procs, simulated=True))
        return NodeSnapshot(node=node, gpus=tuple(gpus), probed_at=now, simulated=True)

    def gpu_minors(self) -> list[tuple[str, int]]:
        """SIMULATED GPU i stands for /dev/nvidia<i> (char 195:i), as on most real machines."""
        return [(u, i) for i, u in enumerate(self.uuids)]

    def close(self) -> None:
        pass


def simulated_uuid(node: str, index: int) -> str:
    return f"GPU-SIMULATED-{node}-{index}"


def make_probe(simulate_gpus: str | None, usage_dir: str, node: str) -> Probe:
    if simulate_gpus:
        return SimulatedProbe(parse_simulated_spec(simulate_gpus), usage_dir, node)
    return NvmlProbe()
