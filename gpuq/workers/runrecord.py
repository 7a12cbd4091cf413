"""Local records of the supervisors running on this node (no Redis needed to read them).

``$GPUQ_HOME/supervisors/<job id>.json`` (directory mode 0700, root only) says which process
supervises which run of which job: ``{"job", "token", "pid", "start_ticks"}``.  The token is the
run's ``started_at`` (the fence every record change of the run is checked against); the start
ticks (field 22 of ``/proc/<pid>/stat``) tell "still that supervisor" from "a new process that
got the same pid".  The node agent reads these every tick, whether Redis answers or not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRecord:
    job: int
    token: float
    pid: int
    start_ticks: int


def records_dir(home: Path) -> Path:
    return home / "supervisors"


def _path(home: Path, job_id: int) -> Path:
    return records_dir(home) / f"{job_id}.json"


def proc_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_alive(rec: RunRecord) -> bool:
    """Is the supervisor of ``rec`` still running (the same process, not a reused pid)?"""
    return proc_start_ticks(rec.pid) == rec.start_ticks


def write(home: Path, rec: RunRecord) -> None:
    d = records_dir(home)
    d.mkdir(mode=0o700, exist_ok=True)
    tmp = d / f".{rec.job}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"job": rec.job, "token": rec.token, "pid": rec.pid, "start_ticks": rec.start_ticks}, f)
    os.replace(tmp, _path(home, rec.job))


def read(home: Path, job_id: int) -> RunRecord | None:
    try:
        d = json.loads(_path(home, job_id).read_text())
        return RunRecord(int(d["job"]), float(d["token"]), int(d["pid"]), int(d["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(home: Path, job_id: int, token: float | None = None) -> None:
    """Remove the record (only the run ``token``'s, when given)."""
    if token is not None:
        rec = read(home, job_id)
        if rec is not None and rec.token != token:
            return
    try:
        _path(home, job_id).unlink()
    except FileNotFoundError:
        pass


def all_records(home: Path) -> list[RunRecord]:
    try:
        names = os.listdir(records_dir(home))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(".json") and n[:-5].isdigit():
            rec = read(home, int(n[:-5]))
            if rec is not None:
                out.append(rec)
    return out
