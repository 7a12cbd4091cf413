"""The API's one typed request schema: every request body and query string is parsed here, at the
edge, into a frozen dataclass, or refused with :class:`InvalidInput` (HTTP 400, one sentence).

Nothing past this module sees raw JSON from a client.  Every field is typed and bounded: text is
valid UTF-8 without NUL bytes, numbers are finite and in range, lists and mappings have a size
limit, and an unknown field is refused (a client and daemon of different versions say so instead of
silently dropping an option).  Adding a field means adding it to one dataclass and one parser here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gpuq.daemon.brief import MAX_PER_USER
from gpuq.errors import InvalidInput
from gpuq.jobs.model import MAX_CPUS, MIN_CPUS, MIN_GPU_MEM_MIB, MIN_HOST_MEM_MIB
from gpuq.units import parse_cpus, parse_duration_s, parse_fraction, parse_size_mib

#: A request body larger than this is refused before it is parsed.
MAX_BODY_BYTES = 1024 * 1024
#: argv plus environment of one job (UTF-8 bytes); the daemon's ``max_job_bytes`` can change it.
DEFAULT_MAX_JOB_BYTES = 64 * 1024
MAX_ARGS = 4096
MAX_ENV_VARS = 4096
MAX_NAME_CHARS = 200
MAX_PATH_BYTES = 4096
MAX_OPTION_CHARS = 64  # sizes, durations, fractions as text
MAX_IDS = 1000
MAX_JOB_ID = 2**53  # ids are INCR counters; anything larger is not one
MAX_GPUS = 1024
MAX_NODES = 64  # nodes one job may span
PRIORITY_RANGE = (-1000, 1000)
MAX_LOG_OFFSET = 2**62


def _clip(text: str, n: int = 40) -> str:
    """A user's text, shortened for an error message (a 400-digit value is not echoed whole)."""
    return text if len(text) <= n else text[:n] + "…"


# ---- field parsers -------------------------------------------------------------------------------


def check_text(value: Any, what: str, max_bytes: int, allow_control: bool = True) -> str:
    """A string that is valid UTF-8 (no lone surrogates), has no NUL byte and fits ``max_bytes``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text, not {type(value).__name__}.")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid UTF-8 text: remove the broken characters.") from None
    if "\0" in value:
        raise InvalidInput(f"{what} contains a NUL byte, which no command line or environment can hold.")
    if size > max_bytes:
        raise InvalidInput(f"{what} is longer than {max_bytes} bytes: shorten it.")
    if not allow_control and any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise InvalidInput(f"{what} contains control characters: use printable text only.")
    return value


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number, not {_clip(repr(value))}.")
    if not lo <= value <= hi:
        raise InvalidInput(f"{what} {_clip(str(value))} is out of range: give a whole number from {lo} to {hi}.")
    return value


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, not {_clip(repr(value))}.")
    return value


def check_job_id(value: Any, what: str = "a job id") -> int:
    """A job id from JSON (a whole number) or from a URL path (its digits)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 16:
            raise InvalidInput(f"{_clip(value)!r} is not a job id: job ids are whole numbers.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOB_ID:
        raise InvalidInput(f"{_clip(repr(value))} is not a job id: job ids are whole numbers from 1.")
    return value


#: A job reference in a request: a job id (an array's id stands for all its jobs), or
#: ``"ARRAY_INDEX"`` text such as ``"17_3"`` for one element of array 17.
JobRef = int | str


def check_job_ref(value: Any, what: str = "a job id") -> JobRef:
    if isinstance(value, str) and "_" in value:
        arr, _, idx = value.strip().partition("_")
        if not (arr.isascii() and arr.isdigit() and idx.isascii() and idx.isdigit() and len(arr) <= 16
                and len(idx) <= 9):
            raise InvalidInput(f"{_clip(value)!r} is not a job id: give 17, or 17_3 for element 3 of array 17.")
        return f"{check_job_id(arr, what)}_{int(idx)}"
    return check_job_id(value, what)


def _refs(body: Mapping[str, Any], key: str, what: str) -> tuple[JobRef, ...]:
    raw = body.get(key) or []
    if not isinstance(raw, list):
        raw = [raw]
    if len(raw) > MAX_IDS:
        raise InvalidInput(f"{what} names more than {MAX_IDS} jobs: give an array id instead.")
    return tuple(check_job_ref(a, what) for a in raw)


def _option_text(value: Any, what: str, example: str) -> str:
    """A size, duration or fraction: text (or a finite number) of at most MAX_OPTION_CHARS."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be text like the command line takes, not {value!r}.")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{what} {value!r} is not a finite number.")
        value = repr(value)
    text = check_text(value, what, MAX_BODY_BYTES)
    if len(text) > MAX_OPTION_CHARS:
        raise InvalidInput(f"{what} {_clip(text)!r} is too long to be a value: give something like {example}.")
    return text


def _optional(body: Mapping[str, Any], key: str) -> Any:
    """The value of ``key``; None, "" and absent all mean "not given"."""
    v = body.get(key)
    return None if v is None or v == "" else v


def _refuse_unknown(body: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise InvalidInput(f"the {what} request has unknown field(s) {_clip(', '.join(map(str, unknown)), 80)}: "
                           "the gpuq client and daemon may be different versions.")


# ---- submit ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    """``POST /v1/jobs``.  ``argv`` is as typed (the daemon resolves the interpreter later)."""

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 1  # per node
    nodes: int = 1  # > 1: a job across nodes, ``gpus`` whole GPUs on each
    gpu_mem_mib: int | None = None
    fraction: float | None = None
    exclusive: bool = False
    name: str = ""
    priority: int = 0
    after: tuple[JobRef, ...] = ()
    time_limit_s: float | None = None
    checkpointable: bool = False
    after_any: tuple[JobRef, ...] = ()
    after_notok: tuple[JobRef, ...] = ()
    array: str | None = None  # "0-99%8" (gpuq/daemon/arrays.py parses it)
    commands: tuple[tuple[str, ...], ...] | None = None  # --from FILE: one argv per element
    notify: str = ""  # --notify CMD
    host_mem_mib: int | None = None  # --mem: the job's cgroup memory limit
    cpus: float | None = None  # --cpus: the job's cgroup CPU quota
    #: what the daemon changed about the request and tells the user (e.g. a rounded-up memory size)
    notes: tuple[str, ...] = ()


SUBMIT_FIELDS = ("argv", "cwd", "env", "gpus", "nodes", "gpu_mem", "fraction", "exclusive", "name", "priority",
                 "after", "time_limit", "checkpointable", "after_any", "after_notok", "array", "commands", "notify",
                 "mem", "cpus")
MAX_ARRAY_JOBS = 10_000
MAX_NOTIFY_BYTES = 4096


def _commands(value: Any, max_job_bytes: int) -> tuple[tuple[str, ...], ...] | None:
    """``--from FILE``: one argv per line, each bounded like a job's command."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise InvalidInput("--from: the file has no commands; write one command per line.")
    if len(value) > MAX_ARRAY_JOBS:
        raise InvalidInput(f"--from: the file has more than {MAX_ARRAY_JOBS} commands: split it.")
    out = tuple(_argv(c) for c in value)
    for c in out:
        if job_bytes(c, {}) > max_job_bytes:
            raise InvalidInput(f"--from: a command is longer than {max_job_bytes // 1024} KiB: shorten it.")
    return out


def _argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")
    if len(value) > MAX_ARGS:
        raise InvalidInput(f"the command has more than {MAX_ARGS} arguments: put them in a file.")
    argv = tuple(check_text(a, "an argument of the command", MAX_BODY_BYTES) for a in value)
    if not argv[0]:
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")
    return argv


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("env must map names to strings.")
    if len(value) > MAX_ENV_VARS:
        raise InvalidInput(f"the environment has more than {MAX_ENV_VARS} variables: unset some before submitting.")
    env = {}
    for k, v in value.items():
        name = check_text(k, "an environment variable name", 1024, allow_control=False)
        if not name or "=" in name:
            raise InvalidInput(f"environment variable name {_clip(name)!r} is not valid: names are non-empty "
                               "and have no '='.")
        env[name] = check_text(v, f"environment variable {_clip(name)}", MAX_BODY_BYTES)
    return env


def job_bytes(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """What a job's command line and environment take, as the kernel counts them (NUL-terminated)."""
    return (sum(len(a.encode()) + 1 for a in argv)
            + sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items()))


def parse_submit(body: Any, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES) -> SubmitRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object.")
    _refuse_unknown(body, SUBMIT_FIELDS, "submit")
    argv = _argv(body.get("argv"))
    cwd = check_text(body.get("cwd"), "the working directory", MAX_PATH_BYTES) if body.get("cwd") is not None else ""
    if not cwd.startswith("/"):
        raise InvalidInput("the working directory must be an absolute path.")
    env = _env(body.get("env"))
    size = job_bytes(argv, env)
    if size > max_job_bytes:
        raise InvalidInput(f"the command line and environment take {size // 1024} KiB, more than the "
                           f"{max_job_bytes // 1024} KiB a job may have: put arguments in a file or unset "
                           "large environment variables.")
    notes: list[str] = []
    gpus = 1 if _optional(body, "gpus") is None else check_int(body["gpus"], "--gpus", -MAX_GPUS, MAX_GPUS)
    if gpus < 0:
        raise InvalidInput(f"--gpus {gpus} is negative: give 0 for a CPU-only job or a positive count.")
    nodes = 1 if _optional(body, "nodes") is None else check_int(body["nodes"], "--nodes", -MAX_NODES, MAX_NODES)
    if nodes < 1:
        raise InvalidInput(f"--nodes {nodes} is less than 1: give the number of nodes the job runs on, like 2.")
    if nodes > 1 and gpus == 0:
        raise InvalidInput("--nodes needs --gpus of 1 or more: the GPUs the job takes on each node.")
    if nodes > 1 and (_optional(body, "gpu_mem") is not None or _optional(body, "fraction") is not None):
        raise InvalidInput("--nodes takes whole GPUs on each node: leave out --gpu-mem and --fraction.")
    if gpus * nodes > MAX_GPUS:
        raise InvalidInput(f"--nodes {nodes} with --gpus {gpus} asks for {gpus * nodes} GPUs, more than the "
                           f"{MAX_GPUS} a job may have: ask for fewer.")
    mem_mib = None
    if _optional(body, "gpu_mem") is not None:
        text = _option_text(body["gpu_mem"], "--gpu-mem", "10GiB")
        mem_mib = parse_size_mib(text, what="--gpu-mem")
        if mem_mib < MIN_GPU_MEM_MIB:
            notes.append(f"--gpu-mem {text} was rounded up to the smallest reservation, {MIN_GPU_MEM_MIB} MiB.")
            mem_mib = MIN_GPU_MEM_MIB
    host_mem_mib = None
    if _optional(body, "mem") is not None:
        text = _option_text(body["mem"], "--mem", "16GiB")
        host_mem_mib = parse_size_mib(text, what="--mem")
        if host_mem_mib < MIN_HOST_MEM_MIB:
            raise InvalidInput(f"--mem {_clip(text)} is too little to run any program: give at least "
                               f"{MIN_HOST_MEM_MIB}MiB, like 4GiB.")
    cpus = None
    if _optional(body, "cpus") is not None:
        cpus = parse_cpus(_option_text(body["cpus"], "--cpus", "4 or 0.5"), MIN_CPUS, MAX_CPUS)
    fraction = None
    if _optional(body, "fraction") is not None:
        fraction = parse_fraction(_option_text(body["fraction"], "--fraction", "0.25"))
    time_limit_s = None
    if _optional(body, "time_limit") is not None:
        time_limit_s = parse_duration_s(_option_text(body["time_limit"], "--time-limit", "2h or 3d"), what="--time-limit")
    after = _refs(body, "after", "--after")
    array = None
    if _optional(body, "array") is not None:
        array = _option_text(body["array"], "--array", "0-99%8")
    commands = _commands(body.get("commands"), max_job_bytes)
    notify = "" if _optional(body, "notify") is None else check_text(body["notify"], "--notify", MAX_NOTIFY_BYTES)
    name = "" if _optional(body, "name") is None else check_text(body["name"], "--name", 4 * MAX_NAME_CHARS,
                                                                   allow_control=False)
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"--name is longer than {MAX_NAME_CHARS} characters: give a shorter name.")
    return SubmitRequest(
        argv=argv, cwd=cwd, env=env, gpus=gpus, nodes=nodes, gpu_mem_mib=mem_mib, fraction=fraction,
        exclusive=False if body.get("exclusive") is None else check_bool(body["exclusive"], "--exclusive"),
        name=name,
        priority=0 if _optional(body, "priority") is None else check_int(body["priority"], "--priority",
                                                                          *PRIORITY_RANGE),
        after=after, time_limit_s=time_limit_s, after_any=_refs(body, "after_any", "--after-any"),
        after_notok=_refs(body, "after_notok", "--after-notok"), array=array, commands=commands, notify=notify.strip(),
        host_mem_mib=host_mem_mib, cpus=cpus,
        checkpointable=False if body.get("checkpointable") is None else check_bool(body["checkpointable"],
                                                                                   "--checkpointable"),
        notes=tuple(notes),
    )


# ---- actions on jobs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdsRequest:
    """``POST /v1/jobs/cancel|hold|release|requeue``."""

    ids: tuple[JobRef, ...]


def parse_ids(body: Any) -> IdsRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object.")
    _refuse_unknown(body, ("ids",), "job action")
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids:
        raise InvalidInput("give one or more job ids.")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"at most {MAX_IDS} job ids at once: split the list.")
    return IdsRequest(ids=tuple(check_job_ref(i) for i in ids))


# ---- queries -----------------------------------------------------------------------------------------


def _query_value(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(f"the query gives {key} more than once.")
    return values[0]


def _refuse_unknown_query(query: Mapping[str, list[str]], known: Sequence[str]) -> None:
    unknown = sorted(k for k in query if k not in known)
    if unknown:
        raise InvalidInput(f"unknown query parameter(s) {_clip(', '.join(unknown), 80)}.")


@dataclass(frozen=True)
class StatusQuery:
    """``GET /v1/status[?all=1][&others=N]``.  ``others``: the bounded view (gpuq/daemon/brief.py),
    another user's waiting jobs listed up to N, beyond that summed up; absent: every active job."""

    include_finished: bool = False
    others_per_user: int | None = None


def parse_status_query(query: Mapping[str, list[str]]) -> StatusQuery:
    _refuse_unknown_query(query, ("all", "others"))
    v = _query_value(query, "all")
    if v not in (None, "0", "1"):
        raise InvalidInput("all must be 0 or 1.")
    o = _query_value(query, "others")
    if o is not None and not (o.isascii() and o.isdigit() and len(o) <= 4 and int(o) <= MAX_PER_USER):
        raise InvalidInput(f"others must be a whole number from 0 to {MAX_PER_USER}.")
    return StatusQuery(include_finished=v == "1", others_per_user=None if o is None else int(o))


@dataclass(frozen=True)
class LogQuery:
    """``GET /v1/jobs/ID/log?offset=N``."""

    offset: int = 0


def parse_log_query(query: Mapping[str, list[str]]) -> LogQuery:
    _refuse_unknown_query(query, ("offset",))
    v = _query_value(query, "offset")
    if v is None or v == "":
        return LogQuery()
    if not v.isascii() or not v.isdigit() or len(v) > 19 or int(v) > MAX_LOG_OFFSET:
        raise InvalidInput("offset must be a whole number of bytes.")
    return LogQuery(offset=int(v))


@dataclass(frozen=True)
class TailQuery:
    """``GET /v1/jobs/ID/log-tail?lines=N``."""

    lines: int = 10


def parse_tail_query(query: Mapping[str, list[str]]) -> TailQuery:
    _refuse_unknown_query(query, ("lines",))
    v = _query_value(query, "lines")
    if v is None:
        return TailQuery()
    if not v.isascii() or not v.isdigit() or len(v) > 9:
        raise InvalidInput("lines must be a whole number, 0 or more.")
    return TailQuery(lines=int(v))


@dataclass(frozen=True)
class HistoryQuery:
    """``GET /v1/history?user=U&state=S&since=T&until=T&limit=N`` (user and state repeatable;
    since/until in epoch seconds: jobs that ended in [since, until))."""

    users: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    limit: int = 100


HISTORY_MAX = 10_000
END_STATES = ("completed", "failed", "cancelled", "timeout")


def _epoch(query: Mapping[str, list[str]], key: str) -> float | None:
    v = _query_value(query, key)
    if v is None:
        return None
    try:
        t = float(v)
    except ValueError:
        raise InvalidInput(f"{key} must be epoch seconds.") from None
    if not math.isfinite(t):
        raise InvalidInput(f"{key} must be a finite number of epoch seconds.")
    return t


def parse_history_query(query: Mapping[str, list[str]]) -> HistoryQuery:
    _refuse_unknown_query(query, ("user", "state", "since", "until", "limit"))
    users = tuple(check_text(u, "user", 256, allow_control=False) for u in query.get("user", []))
    states = tuple(query.get("state", []))
    bad = sorted(set(states) - set(END_STATES))
    if bad:
        raise InvalidInput(f"state {_clip(', '.join(bad))} is not an end state: give {', '.join(END_STATES)}.")
    v = _query_value(query, "limit")
    limit = 100 if v is None else check_int(int(v) if v.isascii() and v.isdigit() and len(v) < 10 else -1,
                                            "limit", 1, HISTORY_MAX)
    return HistoryQuery(users=users, states=states, since=_epoch(query, "since"), until=_epoch(query, "until"),
                        limit=limit)
