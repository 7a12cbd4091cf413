"""The job data model: spec, states, legal transitions and versioned JSON.

Everything here is pure: no Redis, no clock, no processes.  A record written by
an older gpuq must keep loading, so ``from_dict`` tolerates missing fields and
``SCHEMA_VERSION`` is bumped when the meaning of a field changes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from gpuq.errors import IllegalTransition, InvalidInput

SCHEMA_VERSION = 1

#: Exit status a job uses to say "I was preempted and saved a checkpoint: requeue me".
#: 75 is EX_TEMPFAIL from sysexits.h ("temporary failure; try again later").
REQUEUE_EXIT_CODE = 75

#: The smallest GPU memory a job reserves on a shared GPU: a tiny --fraction or --gpu-mem is
#: rounded up to it, so no job ever reserves 0 MiB.
MIN_GPU_MEM_MIB = 256

#: Host memory and CPU limits a job may ask for (``--mem``, ``--cpus``): limits its cgroup
#: enforces, not reservations the scheduler counts.  Below these nothing useful can run (16 MiB),
#: and the kernel's CPU quota has a floor of 1 ms per 100 ms period (0.01 of a CPU).
MIN_HOST_MEM_MIB = 16
MIN_CPUS = 0.01
MAX_CPUS = 4096


class JobState(str, Enum):
    PENDING = "pending"
    HELD = "held"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        return not self.terminal


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})

#: Legal state changes.  RUNNING -> PENDING is a requeue (preemption, checkpoint exit,
#: ``gpuq requeue``, daemon shutdown or recovery).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.HELD, JobState.RUNNING, JobState.CANCELLED}),
    JobState.HELD: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.PENDING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT}
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
}


class StopKind(str, Enum):
    """Why a running job is being asked to stop; decides the state it ends in."""

    CANCEL = "cancel"  # -> cancelled
    REQUEUE = "requeue"  # gpuq requeue -> pending
    PREEMPT = "preempt"  # scheduler preemption -> pending
    SHUTDOWN = "shutdown"  # daemon stopping -> pending


@dataclass(frozen=True)
class Resources:
    """What a job asks for.  ``mem_mib`` and ``fraction`` are per GPU and exclusive of each other;
    with neither, the job takes whole GPUs.  ``host_mem_mib`` and ``cpus`` (``--mem``, ``--cpus``)
    are limits of the job's cgroup, not counted by the scheduler."""

    gpus: int = 1  # in all: with ``nodes`` > 1, ``gpus_per_node`` on each of ``nodes`` nodes
    mem_mib: int | None = None
    fraction: float | None = None
    exclusive: bool = False
    host_mem_mib: int | None = None
    cpus: float | None = None
    nodes: int = 1  # > 1: a job across nodes (a gang), the same number of whole GPUs on each

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise InvalidInput(f"--gpus {self.gpus} is negative: give 0 for a CPU-only job or a positive count.")
        if self.nodes < 1:
            raise InvalidInput(f"--nodes {self.nodes} is less than 1: give 1 or more nodes.")
        if self.nodes > 1:
            if self.gpus == 0 or self.gpus % self.nodes:
                raise InvalidInput("--nodes needs --gpus of 1 or more: the GPUs each node gives the job.")
            if self.mem_mib is not None or self.fraction is not None:
                raise InvalidInput("--nodes takes whole GPUs: leave out --gpu-mem and --fraction.")
        if self.mem_mib is not None and self.fraction is not None:
            raise InvalidInput("--gpu-mem and --fraction both set the memory per GPU: give only one of them.")
        if self.mem_mib is not None and self.mem_mib <= 0:
            raise InvalidInput("--gpu-mem must be larger than zero, like 512MiB or 10GiB.")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise InvalidInput("--fraction must be above 0 and at most 1, like 0.25.")
        if self.gpus == 0 and (self.mem_mib is not None or self.fraction is not None or self.exclusive):
            raise InvalidInput("--gpu-mem, --fraction and --exclusive need --gpus of 1 or more.")
        if self.host_mem_mib is not None and self.host_mem_mib < MIN_HOST_MEM_MIB:
            raise InvalidInput(f"--mem {self.host_mem_mib} MiB is too little to run any program: give at least "
                               f"{MIN_HOST_MEM_MIB}MiB, like 4GiB.")
        if self.cpus is not None and not (MIN_CPUS <= self.cpus <= MAX_CPUS):
            raise InvalidInput(f"--cpus {self.cpus:g} is out of range: give a number of CPUs from {MIN_CPUS:g} "
                               f"to {MAX_CPUS}, like 4 or 0.5.")

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    @property
    def whole_gpus(self) -> bool:
        """True when each GPU is reserved whole (no memory share given, or exclusive)."""
        return self.gpus > 0 and (self.exclusive or (self.mem_mib is None and self.fraction is None))

    def request_mib(self, gpu_total_mib: int) -> int:
        """Memory this job reserves on one GPU of the given size."""
        if self.whole_gpus:
            return gpu_total_mib
        share = self.limit_mib(gpu_total_mib)
        return 0 if share is None else share  # None: a CPU-only job

    def limit_mib(self, gpu_total_mib: int) -> int | None:
        """The framework memory limit for one GPU, or None for "whole GPU, allow growth".
        Never below :data:`MIN_GPU_MEM_MIB` (nor above the GPU)."""
        if self.mem_mib is not None:
            share = self.mem_mib
        elif self.fraction is not None:
            share = int(self.fraction * gpu_total_mib)
        else:
            return None
        return max(share, min(MIN_GPU_MEM_MIB, gpu_total_mib))


@dataclass(frozen=True)
class Owner:
    """Who submitted a job, as the daemon read it from the socket's peer credentials."""

    uid: int
    gid: int
    user: str
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ArrayMember:
    """This job is element ``index`` of job array ``array_id`` (the id of the array's first job;
    the array's jobs have the consecutive ids ``array_id .. array_id + size - 1``).  ``limit``:
    at most this many of the array's jobs run at once (``--array 0-99%8``); None: no limit."""

    array_id: int
    index: int
    size: int
    limit: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """What the user asked to run.  ``argv`` is the final command (interpreter resolved)."""

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    priority: int = 0
    after: tuple[int, ...] = ()
    time_limit_s: float | None = None
    checkpointable: bool = False
    resources: Resources = field(default_factory=Resources)
    after_any: tuple[int, ...] = ()  # starts once these ended, however they ended
    after_notok: tuple[int, ...] = ()  # starts once these ended without success
    array: ArrayMember | None = None
    notify: str = ""  # shell command run as the owner when the job ends (gpuq/workers/notify.py)

    def __post_init__(self) -> None:
        if not self.argv:
            raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")


@dataclass(frozen=True)
class Part:
    """One node's part of a job across nodes.  Parts are in rank order (rank 0 first); a part's
    GPUs are the next ``gpus`` entries of the placement's per-GPU tuples."""

    node: str
    address: str  # where the other parts reach this one (the node's advertised address)
    gpus: int


@dataclass(frozen=True)
class Placement:
    """Where a running job was put: one entry per GPU, on one node, or for a job across nodes
    on each of its ``parts`` (then ``node`` is their names joined by ``+``, as in the simulator)."""

    node: str
    gpu_uuids: tuple[str, ...] = ()
    gpu_indices: tuple[int, ...] = ()
    reserved_mib: tuple[int, ...] = ()  # memory held on each GPU for scheduling
    limit_mib: tuple[int | None, ...] = ()  # framework memory limit on each GPU (None: allow growth)
    gpu_total_mib: tuple[int, ...] = ()
    parts: tuple[Part, ...] = ()  # a job across nodes only
    port: int | None = None  # a job across nodes only: chosen per run (MASTER_PORT; TF workers use the next ones)

    @property
    def is_gang(self) -> bool:
        return len(self.parts) > 1

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node the job runs on, rank 0 first."""
        return tuple(p.node for p in self.parts) if self.parts else (self.node,)

    def rank_of(self, node: str) -> int | None:
        nodes = self.nodes
        return nodes.index(node) if node in nodes else None

    def part(self, rank: int) -> "Placement":
        """The one-node view of part ``rank``: its node and its GPUs only."""
        if not self.parts:
            return self
        start = sum(p.gpus for p in self.parts[:rank])
        end = start + self.parts[rank].gpus
        return Placement(node=self.parts[rank].node, gpu_uuids=self.gpu_uuids[start:end],
                         gpu_indices=self.gpu_indices[start:end], reserved_mib=self.reserved_mib[start:end],
                         limit_mib=self.limit_mib[start:end], gpu_total_mib=self.gpu_total_mib[start:end])


@dataclass(frozen=True)
class PartEnd:
    """How the first part of a job across nodes that ended other than by exiting 0 ended: the
    state (and exit code, reason) the whole job ends in once its last part has ended."""

    state: JobState
    exit_code: int | None
    reason: str


@dataclass(frozen=True)
class StopRequest:
    kind: StopKind
    at: float
    by: str = ""


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total: int | None = None
    epoch: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True)
class Job:
    id: int
    spec: JobSpec
    owner: Owner
    state: JobState
    submitted_at: float
    # RUNNING only
    placement: Placement | None = None
    placed_at: float | None = None
    started_at: float | None = None  # when the process started (None: placed, not yet started)
    pid: int | None = None
    stop_request: StopRequest | None = None
    progress: Progress | None = None
    gang_ready: tuple[str, ...] = ()  # a job across nodes: the nodes whose part was claimed (the start barrier)
    gang_done: tuple[str, ...] = ()  # a job across nodes: the nodes whose part has ended (the others still run)
    gang_end: PartEnd | None = None  # a job across nodes: how it ends once its last part ended (None: completed)
    # terminal only
    ended_at: float | None = None
    exit_code: int | None = None
    # any state
    end_reason: str = ""  # why it last stopped (for a requeued or finished job)
    requeues: int = 0
    attained_gpu_s: float = 0.0  # GPU-seconds received in earlier runs (for LAS)
    last_run_s: float = 0.0  # wall seconds of the previous run
    total_run_s: float = 0.0  # wall seconds of all finished runs (requeued ones included)

    def __post_init__(self) -> None:
        running_only = {
            "placement": self.placement, "placed_at": self.placed_at, "started_at": self.started_at,
            "pid": self.pid, "stop_request": self.stop_request, "progress": self.progress,
            "gang_ready": self.gang_ready or None, "gang_done": self.gang_done or None, "gang_end": self.gang_end,
        }
        if self.state is JobState.RUNNING:
            if self.placement is None or self.placed_at is None:
                raise ValueError(f"job {self.id}: a running job needs a placement")
        else:
            extra = [k for k, v in running_only.items() if v is not None]
            if extra:
                raise ValueError(f"job {self.id}: fields {extra} are only valid while running")
        if self.state.terminal and self.ended_at is None:
            raise ValueError(f"job {self.id}: a finished job needs ended_at")
        if not self.state.terminal and (self.ended_at is not None or self.exit_code is not None):
            raise ValueError(f"job {self.id}: only a finished job has ended_at/exit_code")

    @property
    def display_name(self) -> str:
        if self.spec.name:
            return self.spec.name
        for arg in self.spec.argv[1:] if _is_interpreter(self.spec.argv[0]) else self.spec.argv:
            return arg.rsplit("/", 1)[-1]
        return self.spec.argv[0]

    def transition(self, to: JobState, **changes: Any) -> "Job":
        """Return this job in state ``to``; fields not valid in ``to`` are dropped."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"job {self.id} is {self.state.value} and cannot become {to.value}."
            )
        base: dict[str, Any] = {}
        if to is not JobState.RUNNING:
            base.update(placement=None, placed_at=None, started_at=None, pid=None,
                        stop_request=None, progress=None, gang_ready=(), gang_done=(), gang_end=None)
        base.update(changes)
        return dataclasses.replace(self, state=to, **base)

    def with_changes(self, **changes: Any) -> "Job":
        return dataclasses.replace(self, **changes)

    # ---- JSON -------------------------------------------------------------------------------

    def to_dict(self, with_env: bool = True) -> dict[str, Any]:
        return job_to_dict(self, with_env=with_env)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Job":
        return job_from_dict(d)


def _is_interpreter(arg0: str) -> bool:
    base = arg0.rsplit("/", 1)[-1]
    return base.startswith("python")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def job_to_dict(job: Job, with_env: bool = True) -> dict[str, Any]:
    spec = job.spec
    r = spec.resources
    out: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": job.id,
        "state": job.state.value,
        "submitted_at": job.submitted_at,
        "owner": {"uid": job.owner.uid, "gid": job.owner.gid, "user": job.owner.user,
                  "groups": list(job.owner.groups)},
        "spec": _drop_none({
            "argv": list(spec.argv), "cwd": spec.cwd, "name": spec.name, "priority": spec.priority,
            "after": list(spec.after), "time_limit_s": spec.time_limit_s,
            "checkpointable": spec.checkpointable,
            "after_any": list(spec.after_any) or None, "after_notok": list(spec.after_notok) or None,
            "array": None if spec.array is None else _drop_none(dataclasses.asdict(spec.array)),
            "notify": spec.notify or None,
            "resources": _drop_none({"gpus": r.gpus, "mem_mib": r.mem_mib, "fraction": r.fraction,
                                     "exclusive": r.exclusive, "host_mem_mib": r.host_mem_mib, "cpus": r.cpus,
                                     "nodes": r.nodes if r.nodes > 1 else None}),
        }),
        "requeues": job.requeues,
        "attained_gpu_s": job.attained_gpu_s,
        "last_run_s": job.last_run_s,
        "total_run_s": job.total_run_s,
    }
    if with_env:
        out["spec"]["env"] = dict(spec.env)
    if job.end_reason:
        out["end_reason"] = job.end_reason
    if job.placement is not None:
        p = job.placement
        out["placement"] = {"node": p.node, "gpu_uuids": list(p.gpu_uuids), "gpu_indices": list(p.gpu_indices),
                            "reserved_mib": list(p.reserved_mib), "limit_mib": list(p.limit_mib),
                            "gpu_total_mib": list(p.gpu_total_mib)}
        if p.parts:
            out["placement"]["parts"] = [{"node": x.node, "address": x.address, "gpus": x.gpus} for x in p.parts]
            out["placement"]["port"] = p.port
    for k in ("gang_ready", "gang_done"):
        if getattr(job, k):
            out[k] = list(getattr(job, k))
    if job.gang_end is not None:
        out["gang_end"] = _drop_none({"state": job.gang_end.state.value, "exit_code": job.gang_end.exit_code,
                                      "reason": job.gang_end.reason})
    if job.stop_request is not None:
        out["stop_request"] = {"kind": job.stop_request.kind.value, "at": job.stop_request.at,
                               "by": job.stop_request.by}
    if job.progress is not None:
        out["progress"] = _drop_none({k: _measure(v) for k, v in dataclasses.asdict(job.progress).items()})
    for k in ("placed_at", "started_at", "pid", "ended_at", "exit_code"):
        v = getattr(job, k)
        if v is not None:
            out[k] = v
    return out


class BadRecord(ValueError):
    """A stored job record that cannot be read: bad JSON, a missing or invalid field."""


def _obj(v: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):  # a record is parsed JSON: objects are dicts
        raise BadRecord(f"{what} is not an object")
    return v


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRecord(f"{what} is not a whole number")
    return v


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadRecord(f"{what} is not a finite number")
    return float(v)


def _opt_num(v: Any, what: str) -> float | None:
    return None if v is None else _num(v, what)


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise BadRecord(f"{what} is not text")
    return v


def _strs(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise BadRecord(f"{what} is not a list")
    return tuple(_str(x, what) for x in v)


def _measure(v: Any) -> float | None:
    """A progress figure the job itself reported: NaN, Infinity or junk reads as "unknown"."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def job_from_dict(d: Mapping[str, Any]) -> Job:
    """The job a stored record describes; :class:`BadRecord` when it cannot be one."""
    try:
        return _job_from_dict(_obj(d, "the record"))
    except BadRecord:
        raise
    except (KeyError, ValueError, TypeError, InvalidInput) as e:
        raise BadRecord(f"{type(e).__name__}: {e}") from e


def _check_parts(p: Placement) -> Placement:
    """A placement across nodes must be whole: its parts cover its GPUs, on distinct nodes, with a port."""
    if p.parts:
        if sum(x.gpus for x in p.parts) != len(p.gpu_uuids) or any(x.gpus < 0 for x in p.parts):
            raise BadRecord("placement.parts do not cover the placement's GPUs")
        if len({x.node for x in p.parts}) != len(p.parts):
            raise BadRecord("placement.parts name a node twice")
        if p.port is None or not 0 < p.port < 65536 - len(p.parts):
            raise BadRecord("placement.port is missing or not a port")
    return p


def _job_from_dict(d: Mapping[str, Any]) -> Job:
    version = _int(d.get("v", 1), "v")
    if version > SCHEMA_VERSION:
        raise BadRecord(f"job record version {version} is newer than this gpuq understands ({SCHEMA_VERSION})")
    s = _obj(d.get("spec", {}), "spec")
    r = _obj(s.get("resources", {}), "spec.resources")
    o = _obj(d.get("owner", {}), "owner")
    p = d.get("placement")
    sr = d.get("stop_request")
    pr = d.get("progress")
    ar = s.get("array")
    env = _obj(s.get("env", {}), "spec.env")
    if not all(type(k) is str and type(v) is str for k, v in env.items()):
        raise BadRecord("spec.env does not map names to text")
    return Job(
        id=_int(d["id"], "id"),
        state=JobState(d["state"]),
        submitted_at=_num(d.get("submitted_at", 0.0), "submitted_at"),
        owner=Owner(uid=_int(o.get("uid", -1), "owner.uid"), gid=_int(o.get("gid", -1), "owner.gid"),
                    user=_str(o.get("user", "?"), "owner.user"),
                    groups=tuple(_int(g, "owner.groups") for g in o.get("groups", ()))),
        spec=JobSpec(
            argv=_strs(s.get("argv", ()), "spec.argv"),
            cwd=_str(s.get("cwd", "/"), "spec.cwd"),
            env=dict(env),
            name=_str(s.get("name", ""), "spec.name"),
            priority=_int(s.get("priority", 0), "spec.priority"),
            after=tuple(_int(a, "spec.after") for a in s.get("after", ())),
            time_limit_s=_opt_num(s.get("time_limit_s"), "spec.time_limit_s"),
            checkpointable=bool(s.get("checkpointable", False)),
            after_any=tuple(_int(a, "spec.after_any") for a in s.get("after_any", ())),
            after_notok=tuple(_int(a, "spec.after_notok") for a in s.get("after_notok", ())),
            array=None if ar is None else ArrayMember(
                array_id=_int(_obj(ar, "spec.array")["array_id"], "spec.array.array_id"),
                index=_int(ar["index"], "spec.array.index"), size=_int(ar["size"], "spec.array.size"),
                limit=_opt_int(ar.get("limit"), "spec.array.limit")),
            notify=_str(s.get("notify", ""), "spec.notify"),
            resources=Resources(gpus=_int(r.get("gpus", 1), "gpus"), mem_mib=_opt_int(r.get("mem_mib"), "mem_mib"),
                                fraction=_opt_num(r.get("fraction"), "fraction"),
                                exclusive=bool(r.get("exclusive", False)),
                                host_mem_mib=_opt_int(r.get("host_mem_mib"), "host_mem_mib"),
                                cpus=_opt_num(r.get("cpus"), "cpus"), nodes=_int(r.get("nodes", 1), "nodes")),
        ),
        placement=None if p is None else _check_parts(Placement(
            node=_str(_obj(p, "placement")["node"], "placement.node"),
            gpu_uuids=_strs(p.get("gpu_uuids", ()), "placement.gpu_uuids"),
            gpu_indices=tuple(_int(i, "placement.gpu_indices") for i in p.get("gpu_indices", ())),
            reserved_mib=tuple(_int(i, "placement.reserved_mib") for i in p.get("reserved_mib", ())),
            limit_mib=tuple(_opt_int(i, "placement.limit_mib") for i in p.get("limit_mib", ())),
            gpu_total_mib=tuple(_int(i, "placement.gpu_total_mib") for i in p.get("gpu_total_mib", ())),
            parts=tuple(Part(node=_str(_obj(x, "placement.parts")["node"], "placement.parts.node"),
                             address=_str(x.get("address", ""), "placement.parts.address"),
                             gpus=_int(x["gpus"], "placement.parts.gpus")) for x in p.get("parts", ())),
            port=_opt_int(p.get("port"), "placement.port"),
        )),
        gang_ready=_strs(d.get("gang_ready", ()), "gang_ready"),
        gang_done=_strs(d.get("gang_done", ()), "gang_done"),
        gang_end=None if d.get("gang_end") is None else PartEnd(
            state=JobState(_obj(d["gang_end"], "gang_end")["state"]),
            exit_code=_opt_int(d["gang_end"].get("exit_code"), "gang_end.exit_code"),
            reason=_str(d["gang_end"].get("reason", ""), "gang_end.reason")),
        placed_at=_opt_num(d.get("placed_at"), "placed_at"),
        started_at=_opt_num(d.get("started_at"), "started_at"),
        pid=_opt_int(d.get("pid"), "pid"),
        stop_request=None if sr is None else StopRequest(kind=StopKind(_obj(sr, "stop_request")["kind"]),
                                                          at=_num(sr["at"], "stop_request.at"),
                                                          by=_str(sr.get("by", ""), "stop_request.by")),
        progress=None if pr is None else Progress(**{k: _measure(_obj(pr, "progress").get(k)) for k in
                                                     ("step", "total", "epoch", "loss", "eta_s", "updated_at")}),
        ended_at=_opt_num(d.get("ended_at"), "ended_at"),
        exit_code=_opt_int(d.get("exit_code"), "exit_code"),
        end_reason=_str(d.get("end_reason", ""), "end_reason"),
        requeues=_int(d.get("requeues", 0), "requeues"),
        attained_gpu_s=_num(d.get("attained_gpu_s", 0.0), "attained_gpu_s"),
        last_run_s=_num(d.get("last_run_s", 0.0), "last_run_s"),
        total_run_s=_num(d.get("total_run_s", d.get("last_run_s", 0.0)), "total_run_s"),
    )
