"""Containment: one cgroup per job, so that everything the job starts can be found and killed.

Two named implementations and a fallback, chosen once per daemon (``cgroups`` in the config):

* :class:`CgroupV2` - the unified hierarchy (``/sys/fs/cgroup`` on a pure-v2 server, or a
  ``cgroup2`` mount such as ``/sys/fs/cgroup/unified`` on a hybrid one).  Kill is
  ``cgroup.kill`` (Linux 5.14+), else freeze + SIGKILL every member.  Memory and CPU limits
  where the controllers are enabled.  Devices: an eBPF device program per job
  (:mod:`gpuq.workers.devfilter`) lets through only the job's own GPUs, where the kernel allows
  one (probed once when the daemon chooses; otherwise the daemon and each job's log say so).
* :class:`CgroupV1` - one directory per controller (freezer, devices, memory, cpu, pids).
  Kill is freeze + SIGKILL every task + thaw, until none is left.  ``devices`` denies the
  node's GPUs that are not the job's (``/dev/nvidiaN``, major 195).
* :class:`ProcessGroupOnly` - no usable cgroup: the job's session is signalled, as before
  (a process that calls ``setsid`` escapes).  The daemon says so once in its log and in
  ``gpuq status``.

A job's cgroup is ``<hierarchy>/gpuq/<scope>/job-<id>``, the scope being ``<node>.<store id>`` (:func:`scope_name`):
job ids are unique only within one store, and several daemons (per-user ones, nodes of one store,
test daemons) may share a machine, so no daemon ever sees, sweeps or kills another's jobs.  The
job's process joins its cgroup before it drops to
its user (``join_files`` are written from the child between fork and exec).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from gpuq.workers import devfilter

NVIDIA_MAJOR = 195  # /dev/nvidia0.. are char 195:N; 195:254 nvidia-modeset, 195:255 nvidiactl
V1_CONTROLLERS = ("freezer", "devices", "memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
BASE = "gpuq"


@dataclass(frozen=True)
class JobLimits:
    """What a job's cgroup enforces.  ``deny_gpu_minors``: /dev/nvidiaN minors of the node's
    GPUs that are not the job's; ``own_gpu_minors``: the job's own (v2's device program lets
    only these of the GPU minors through)."""

    mem_mib: int | None = None
    cpus: float | None = None
    deny_gpu_minors: tuple[int, ...] = ()
    own_gpu_minors: tuple[int, ...] = ()


class Containment(Protocol):
    name: str

    def create(self, job_id: int, limits: JobLimits) -> list[str]: ...  # returns notes (limits not enforced)

    def join_files(self, job_id: int) -> list[str]: ...

    def pids(self, job_id: int) -> list[int]: ...

    def signal_all(self, job_id: int, sig: int) -> None: ...

    def kill_all(self, job_id: int, timeout_s: float = 10.0) -> bool: ...

    def oom_kills(self, job_id: int) -> int: ...  # processes the kernel's OOM killer killed in the job's cgroup

    def remove(self, job_id: int) -> None: ...

    def remove_scope(self) -> None: ...  # this daemon's own directory, once no job's cgroup is left in it

    def jobs(self) -> list[int]: ...


def _write(path: Path | str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_pids(path: Path) -> list[int]:
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ValueError):
        return []


def _kill_each(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _oom_kill_count(path: Path) -> int:
    """``oom_kill N`` from v2 ``memory.events`` or v1 ``memory.oom_control`` (0 when absent)."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _rmdir_if_done(d: Path) -> None:
    """Remove a cgroup directory (a job's, or a daemon's scope); one already gone or still busy (a
    member not yet reaped, a job's cgroup still inside) stays as it is."""
    try:
        d.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise


def _job_name(job_id: int) -> str:
    return f"job-{job_id}"


def _job_ids(base: Path) -> list[int]:
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    return sorted(int(n[4:]) for n in names if n.startswith("job-") and n[4:].isdigit())


class CgroupV2:
    name = "cgroup v2"

    def __init__(self, mount: Path, node: str, device_filter: bool = False):
        self.mount = mount
        self.node = node
        self.base = mount / BASE / node
        self.device_filter = device_filter  # the kernel accepted a device program (probe_device_filter)
        self._oom_before: dict[int, int] = {}

    def controllers(self) -> set[str]:
        """The controllers this hierarchy has (on a hybrid system, those not bound to v1)."""
        try:
            return set((self.mount / "cgroup.controllers").read_text().split())
        except OSError:
            return set()

    def probe_device_filter(self) -> str:
        """Try the device program once on a scratch cgroup: "" when it works, else why not."""
        d = self.base / "device-probe"
        try:
            self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
            d.mkdir(mode=0o755, exist_ok=True)
            devfilter.attach(str(d), ())
        except OSError as e:
            return e.strerror or str(e)
        finally:
            _rmdir_if_done(d)
        self.device_filter = True
        return ""

    def _dir(self, job_id: int) -> Path:
        return self.base / _job_name(job_id)

    def _enable(self, parent: Path, wanted: Iterable[str]) -> set[str]:
        try:
            available = set((parent / "cgroup.controllers").read_text().split())
        except OSError:
            return set()
        on = set()
        for c in wanted:
            if c in available:
                try:
                    _write(parent / "cgroup.subtree_control", f"+{c}")
                    on.add(c)
                except OSError:
                    pass
        return on

    def create(self, job_id: int, limits: JobLimits) -> list[str]:
        notes = []
        self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._enable(self.mount, ("memory", "cpu", "pids"))
        self._enable(self.base.parent, ("memory", "cpu", "pids"))
        enabled = self._enable(self.base, ("memory", "cpu", "pids"))
        d = self._dir(job_id)
        d.mkdir(mode=0o755, exist_ok=True)
        self._oom_before[job_id] = _oom_kill_count(d / "memory.events")  # a cgroup left by an earlier run
        if limits.mem_mib is not None:
            if "memory" in enabled:
                _write(d / "memory.max", str(limits.mem_mib * 2**20))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
            else:
                notes.append("the memory controller is not available here: --mem is not enforced")
        if limits.cpus is not None:
            if "cpu" in enabled:
                _write(d / "cpu.max", f"{max(1000, int(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            else:
                notes.append("the cpu controller is not available here: --cpus is not enforced")
        if limits.deny_gpu_minors:
            if self.device_filter:  # it worked when the daemon started: a refusal now fails the job
                devfilter.attach(str(d), limits.own_gpu_minors)
            else:
                notes.append("the kernel refused gpuq's eBPF device program when the daemon started: "
                             "other GPUs are hidden by CUDA_VISIBLE_DEVICES only")
        return notes

    def join_files(self, job_id: int) -> list[str]:
        return [str(self._dir(job_id) / "cgroup.procs")]

    def pids(self, job_id: int) -> list[int]:
        return _read_pids(self._dir(job_id) / "cgroup.procs")

    def signal_all(self, job_id: int, sig: int) -> None:
        _kill_each(self.pids(job_id), sig)

    def kill_all(self, job_id: int, timeout_s: float = 10.0) -> bool:
        d = self._dir(job_id)
        if not d.exists():
            return True
        deadline = time.monotonic() + timeout_s
        kill_file = d / "cgroup.kill"
        freeze_file = d / "cgroup.freeze"
        while True:
            pids = self.pids(job_id)
            if not pids:
                return True
            if kill_file.exists():
                _write(kill_file, "1")
            else:  # before Linux 5.14: freeze so nothing forks while we kill
                if freeze_file.exists():
                    _write(freeze_file, "1")
                _kill_each(pids, signal.SIGKILL)
                if freeze_file.exists():
                    _write(freeze_file, "0")
            if time.monotonic() > deadline:
                return not self.pids(job_id)
            time.sleep(0.01)

    def oom_kills(self, job_id: int) -> int:
        """OOM kills in the job's cgroup since :meth:`create` (this run's)."""
        return _oom_kill_count(self._dir(job_id) / "memory.events") - self._oom_before.get(job_id, 0)

    def remove(self, job_id: int) -> None:
        _rmdir_if_done(self._dir(job_id))

    def remove_scope(self) -> None:
        _rmdir_if_done(self.base)

    def jobs(self) -> list[int]:
        return _job_ids(self.base)


class CgroupV1:
    name = "cgroup v1"

    def __init__(self, root: Path, controllers: tuple[str, ...], node: str):
        self.root = root
        self.controllers = controllers  # those mounted here, freezer first when present
        self.node = node
        self._oom_before: dict[int, int] = {}

    def _dirs(self, job_id: int) -> dict[str, Path]:
        return {c: self.root / c / BASE / self.node / _job_name(job_id) for c in self.controllers}

    def create(self, job_id: int, limits: JobLimits) -> list[str]:
        notes = []
        dirs = self._dirs(job_id)
        for c, d in dirs.items():
            d.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            d.mkdir(mode=0o755, exist_ok=True)
        self._oom_before[job_id] = self._oom_total(job_id)  # a cgroup left by an earlier run keeps its count
        if limits.mem_mib is not None:
            if "memory" in dirs:
                mem, limit = dirs["memory"], str(limits.mem_mib * 2**20)
                memsw = mem / "memory.memsw.limit_in_bytes"  # with swap accounting: memory + swap
                if memsw.exists():
                    _write(memsw, "-1")  # memsw may never be below the memory limit, whatever was there
                _write(mem / "memory.limit_in_bytes", limit)
                if memsw.exists():
                    _write(memsw, limit)  # no swapping past the limit: over it, the OOM killer acts
            else:
                notes.append("no memory controller is mounted: --mem is not enforced")
        if limits.cpus is not None:
            if "cpu" in dirs:
                _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
            else:
                notes.append("no cpu controller is mounted: --cpus is not enforced")
        if "devices" in dirs:
            for minor in limits.deny_gpu_minors:
                _write(dirs["devices"] / "devices.deny", f"c {NVIDIA_MAJOR}:{minor} rwm")
        elif limits.deny_gpu_minors:
            notes.append("no devices controller is mounted: other GPUs are hidden by CUDA_VISIBLE_DEVICES only")
        return notes

    def join_files(self, job_id: int) -> list[str]:
        return [str(d / "cgroup.procs") for d in self._dirs(job_id).values()]

    def _tasks_file(self, job_id: int) -> Path:
        return next(iter(self._dirs(job_id).values())) / "cgroup.procs"

    def pids(self, job_id: int) -> list[int]:
        return _read_pids(self._tasks_file(job_id))

    def signal_all(self, job_id: int, sig: int) -> None:
        _kill_each(self.pids(job_id), sig)

    def kill_all(self, job_id: int, timeout_s: float = 10.0) -> bool:
        dirs = self._dirs(job_id)
        freezer = dirs.get("freezer")
        if freezer is not None and not freezer.exists():
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids(job_id)
            if not pids:
                return True
            if freezer is not None:
                _write(freezer / "freezer.state", "FROZEN")  # nothing forks while we kill
                settle = time.monotonic() + 1.0
                while (freezer / "freezer.state").read_text().strip() != "FROZEN" and time.monotonic() < settle:
                    time.sleep(0.005)
            _kill_each(self.pids(job_id), signal.SIGKILL)
            if freezer is not None:
                _write(freezer / "freezer.state", "THAWED")  # the kills are delivered on thaw
            if time.monotonic() > deadline:
                return not self.pids(job_id)
            time.sleep(0.01)

    def _oom_total(self, job_id: int) -> int:
        mem = self._dirs(job_id).get("memory")
        return 0 if mem is None else _oom_kill_count(mem / "memory.oom_control")

    def oom_kills(self, job_id: int) -> int:
        """OOM kills in the job's cgroup since :meth:`create` (this run's)."""
        return self._oom_total(job_id) - self._oom_before.get(job_id, 0)

    def remove(self, job_id: int) -> None:
        for d in self._dirs(job_id).values():
            _rmdir_if_done(d)

    def remove_scope(self) -> None:
        for c in self.controllers:
            _rmdir_if_done(self.root / c / BASE / self.node)

    def jobs(self) -> list[int]:
        return _job_ids(self.root / self.controllers[0] / BASE / self.node)


class ProcessGroupOnly:
    """No cgroups: the job is its session; a process that leaves it is not found."""

    name = "process group (no cgroups)"

    def create(self, job_id: int, limits: JobLimits) -> list[str]:
        notes = []
        if limits.mem_mib is not None or limits.cpus is not None:
            notes.append("cgroups are unavailable: --mem and --cpus are not enforced")
        return notes

    def join_files(self, job_id: int) -> list[str]:
        return []

    def pids(self, job_id: int) -> list[int]:
        return []

    def signal_all(self, job_id: int, sig: int) -> None:
        pass

    def kill_all(self, job_id: int, timeout_s: float = 10.0) -> bool:
        return True

    def oom_kills(self, job_id: int) -> int:
        return 0

    def remove(self, job_id: int) -> None:
        pass

    def remove_scope(self) -> None:
        pass

    def jobs(self) -> list[int]:
        return []


# ---- choosing one -------------------------------------------------------------------------------

MODES = ("auto", "v2", "v1", "off")


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                    out.append((parts[2], parts[1], set(parts[3].split(","))))
    except OSError:
        pass
    return out


def _writable(d: Path) -> bool:
    probe = d / BASE
    try:
        probe.mkdir(mode=0o755, exist_ok=True)
        return os.access(probe, os.W_OK)
    except OSError:
        return False


def scope_name(node: str, store_id: str) -> str:
    """The directory under ``gpuq/`` that holds one daemon's job cgroups (see the module doc)."""
    return f"{node}.{store_id}"


def scope_of(c: Containment) -> str:
    """The scope a containment was made for ("" without cgroups)."""
    return c.node if isinstance(c, (CgroupV2, CgroupV1)) else ""


def find_v2(node: str) -> CgroupV2 | None:
    for kind, where, _ in _mounts():
        if kind == "cgroup2" and _writable(Path(where)):
            return CgroupV2(Path(where), node)
    return None


def find_v1(node: str) -> CgroupV1 | None:
    found: dict[str, Path] = {}
    for kind, where, opts in _mounts():
        if kind == "cgroup":
            for c in V1_CONTROLLERS:
                if c in opts and Path(where).name == c:
                    found[c] = Path(where)
    if "freezer" not in found:
        return None  # without a freezer a fork bomb could outrun the kill loop: prefer v2
    roots = {p.parent for p in found.values()}
    if len(roots) != 1:
        return None
    root = roots.pop()
    ctrls = tuple(c for c in V1_CONTROLLERS if c in found and _writable(found[c]))
    return CgroupV1(root, ctrls, node) if "freezer" in ctrls else None


def choose(mode: str, node: str) -> tuple[Containment, str]:
    """The containment for ``mode`` and a sentence for the log and ``gpuq status``.

    auto: pure v2 (``/sys/fs/cgroup`` is cgroup2) first; else v1 with a freezer (it also has
    the devices controller on a hybrid system); else a v2 mount; else process groups."""
    if os.geteuid() != 0 or mode == "off":
        why = "turned off in the config" if mode == "off" else "the daemon does not run as root"
        return ProcessGroupOnly(), f"cgroups unavailable ({why}): jobs are contained by process group only"
    pure_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    order = {"v2": ("v2",), "v1": ("v1",), "auto": ("v2", "v1", "v2any") if pure_v2 else ("v1", "v2any")}[mode]
    for kind in order:
        c: Containment | None = find_v1(node) if kind == "v1" else find_v2(node)
        if c is not None:
            return c, f"jobs are contained by {c.name} under {_described(c)}"
    return ProcessGroupOnly(), (f"cgroups unavailable (no writable {mode if mode != 'auto' else 'cgroup'} "
                                "hierarchy): jobs are contained by process group only")


def _described(c: CgroupV1 | CgroupV2) -> str:
    """Where, with what, and what a job may ask for that is not enforced here (for the log and
    ``gpuq status``)."""
    missing = []
    if isinstance(c, CgroupV1):
        have, where = set(c.controllers), f"{c.root} ({', '.join(c.controllers)})"
        devices = "" if "devices" in have else "no devices controller"
    else:
        have = c.controllers()
        why = c.probe_device_filter()
        devices = "" if not why else f"the kernel refused the eBPF device program: {why}"
        where = f"{c.mount} ({', '.join(sorted(have & {'memory', 'cpu', 'pids'})) or 'no controllers'}" \
                f"{', eBPF devices' if not why else ''})"
    if "memory" not in have:
        missing.append("--mem (no memory controller)")
    if "cpu" not in have:
        missing.append("--cpus (no cpu controller)")
    if devices:
        missing.append(f"GPU device isolation ({devices})")
    return where + ("; not enforced here: " + ", ".join(missing) if missing else "")


def from_description(kind: str, where: str, controllers: tuple[str, ...], node: str) -> Containment:
    """Rebuild the daemon's choice in a worker (passed through its environment)."""
    if kind == "v2":
        return CgroupV2(Path(where), node, device_filter="devices" in controllers)
    if kind == "v1":
        return CgroupV1(Path(where), controllers, node)
    return ProcessGroupOnly()


def describe(c: Containment) -> tuple[str, str, tuple[str, ...]]:
    if isinstance(c, CgroupV2):
        return "v2", str(c.mount), ("devices",) if c.device_filter else ()
    if isinstance(c, CgroupV1):
        return "v1", str(c.root), c.controllers
    return "none", "", ()


def cgroup_job_of(pid: int) -> int | None:
    """The gpuq job whose cgroup holds ``pid`` (for GPU memory attribution), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)[-1].split("/")
        for i, part in enumerate(parts[:-2]):
            if part == BASE and parts[i + 2].startswith("job-") and parts[i + 2][4:].isdigit():
                return int(parts[i + 2][4:])
    return None
