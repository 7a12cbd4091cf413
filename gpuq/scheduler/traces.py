"""Trace loaders for ``gpuq sim``: Philly CSV, Alibaba pod list, and gpuq's plain CSV (pure parsing).

Every loader returns :class:`TraceJob` rows with submit times in seconds from the trace's
start.  Traces without users (Philly, Alibaba) get synthetic users, derived deterministically
from the seed: submissions less than ``burst_gap_s`` apart form one burst (a sweep), and each
burst belongs to one user drawn from a Zipf-like distribution, so a few users are heavy.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from gpuq.errors import InvalidInput

FORMATS = ("philly", "alibaba", "csv")
PHILLY_WINDOW = ("2017-10-01", "2017-12-01")  # the Helios comparison window, [from, to)


@dataclass(frozen=True)
class TraceJob:
    id: int
    submit_s: float
    duration_s: float
    gpus: int
    user: str
    tenant: str = ""
    mem_mib: int | None = None  # per GPU, for shared jobs
    fraction: float | None = None  # per GPU, for shared jobs
    priority: int = 0
    time_limit_s: float | None = None
    checkpointable: bool | None = None


class TraceError(InvalidInput):
    """A trace file is missing or malformed."""


def _open(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} does not exist: give the path of a CSV trace with --trace.")
    return p.open(newline="")


def _epoch(text: str) -> float:
    return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def _day(text: str, what: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise TraceError(f"{what} {text!r} is not a date: write it like 2017-10-01.") from None


def synthetic_users(submits: Iterable[float], prefix: str, seed: int, n_users: int = 20,
                    burst_gap_s: float = 600.0) -> list[str]:
    """One user per job, in the order given (which must be submit order)."""
    rng = random.Random(f"{prefix}:{seed}")
    weights = [1.0 / (k + 1) for k in range(n_users)]
    users: list[str] = []
    last = None
    current = ""
    for t in submits:
        if last is None or t - last > burst_gap_s:
            current = f"{prefix}u{rng.choices(range(n_users), weights)[0]:02d}"
        users.append(current)
        last = t
    return users


def load_philly(path: str | Path, vc: str | None = None, start: str | None = PHILLY_WINDOW[0],
                end: str | None = PHILLY_WINDOW[1], seed: int = 0) -> list[TraceJob]:
    """Jobs of one VC (or all) submitted in [start, end); whole GPUs; the VC is the tenant."""
    lo = _day(start, "--from") if start else -1e18
    hi = _day(end, "--to") if end else 1e18
    rows: list[tuple[float, float, int, str]] = []
    vcs: set[str] = set()
    with _open(path) as f:
        reader = csv.DictReader(f)
        need = {"timestamp", "duration", "num_gpus", "cluster"}
        if not need <= set(reader.fieldnames or ()):
            raise TraceError(f"{path} is not a Philly trace: it needs the columns {', '.join(sorted(need))}.")
        for r in reader:
            vcs.add(r["cluster"])
            if vc is not None and r["cluster"] != vc:
                continue
            try:
                t = _epoch(r["timestamp"])
                rows.append((t, float(r["duration"]), int(float(r["num_gpus"])), r["cluster"]))
            except ValueError:
                raise TraceError(f"{path}: a row has a bad timestamp, duration or num_gpus: {r}.") from None
    if vc is not None and vc not in vcs:
        raise TraceError(f"VC {vc!r} is not in {path}: it has {', '.join(sorted(vcs))}.")
    rows = [r for r in rows if lo <= r[0] < hi and r[1] > 0 and r[2] > 0]
    rows.sort(key=lambda r: r[0])
    if not rows:
        return []
    t0 = lo if start else rows[0][0]
    out: list[TraceJob] = []
    by_vc: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_vc.setdefault(r[3], []).append(i)
    users = [""] * len(rows)
    for v, idx in by_vc.items():
        for i, u in zip(idx, synthetic_users((rows[i][0] for i in idx), f"{v}-", seed)):
            users[i] = u
    for i, (t, d, g, c) in enumerate(rows):
        out.append(TraceJob(id=i + 1, submit_s=t - t0, duration_s=d, gpus=g, user=users[i], tenant=c))
    return out


def load_alibaba(path: str | Path, seed: int = 0, gpu_mem_mib: int = 32768) -> list[TraceJob]:
    """GPU pods; ``gpu_milli`` below 1000 is a shared job asking for that share of one GPU."""
    rows = []
    with _open(path) as f:
        reader = csv.DictReader(f)
        need = {"num_gpu", "gpu_milli", "creation_time"}
        if not need <= set(reader.fieldnames or ()):
            raise TraceError(f"{path} is not an Alibaba pod list: it needs the columns {', '.join(sorted(need))}.")
        for r in reader:
            try:
                g = int(r["num_gpu"])
                milli = int(r["gpu_milli"])
                t = float(r["creation_time"])
                end = float(r["deletion_time"]) if r.get("deletion_time") else t + 3600.0
            except ValueError:
                raise TraceError(f"{path}: a row has a bad number: {r}.") from None
            if g <= 0 or milli <= 0:
                continue
            rows.append((t, max(end - t, 1.0), g, milli, r.get("name", "")))
    rows.sort(key=lambda r: r[0])
    users = synthetic_users((r[0] for r in rows), "ali-", seed)
    out = []
    for i, (t, d, g, milli, _name) in enumerate(rows):
        frac = None if milli >= 1000 else milli / 1000.0
        out.append(TraceJob(id=i + 1, submit_s=t - rows[0][0], duration_s=d, gpus=g, user=users[i],
                            tenant=users[i], fraction=frac))
    return out


CSV_COLUMNS = ("submit_s", "duration_s", "gpus", "user")
CSV_OPTIONAL = ("mem_mib", "fraction", "priority", "time_limit_s", "checkpointable", "tenant")


def load_plain_csv(path: str | Path) -> list[TraceJob]:
    """gpuq's own trace format (see docs/scheduling.md): a header, then one job per row."""
    out = []
    with _open(path) as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if not set(CSV_COLUMNS) <= cols:
            raise TraceError(f"{path} needs the columns {', '.join(CSV_COLUMNS)} "
                             f"(optional: {', '.join(CSV_OPTIONAL)}).")
        for n, r in enumerate(reader, start=2):
            try:
                opt = {k: (r.get(k) or "").strip() for k in CSV_OPTIONAL}
                job = TraceJob(
                    id=len(out) + 1, submit_s=float(r["submit_s"]), duration_s=float(r["duration_s"]),
                    gpus=int(r["gpus"]), user=r["user"].strip() or "user", tenant=opt["tenant"] or r["user"].strip(),
                    mem_mib=int(opt["mem_mib"]) if opt["mem_mib"] else None,
                    fraction=float(opt["fraction"]) if opt["fraction"] else None,
                    priority=int(opt["priority"]) if opt["priority"] else 0,
                    time_limit_s=float(opt["time_limit_s"]) if opt["time_limit_s"] else None,
                    checkpointable=(opt["checkpointable"].lower() in ("1", "true", "yes")
                                    if opt["checkpointable"] else None),
                )
            except (ValueError, KeyError):
                raise TraceError(f"{path} line {n}: a value is not a number where one is needed.") from None
            if job.duration_s <= 0 or job.gpus < 0 or job.submit_s < 0:
                raise TraceError(f"{path} line {n}: duration must be positive, gpus and submit_s not negative.")
            out.append(job)
    out.sort(key=lambda j: (j.submit_s, j.id))
    return out


def load_trace(path: str | Path, fmt: str, vc: str | None = None, seed: int = 0,
               start: str | None = None, end: str | None = None) -> list[TraceJob]:
    if fmt == "philly":
        return load_philly(path, vc=vc, start=start or PHILLY_WINDOW[0], end=end or PHILLY_WINDOW[1], seed=seed)
    if fmt == "alibaba":
        return load_alibaba(path, seed=seed)
    if fmt == "csv":
        return load_plain_csv(path)
    raise TraceError(f"trace format {fmt!r} is unknown: use one of {', '.join(FORMATS)}.")


def philly_vc_sizes(path: str | Path) -> dict[str, tuple[int, int]]:
    """{vc: (nodes, gpus_per_node)} from philly_vc.csv."""
    out = {}
    with _open(path) as f:
        for r in csv.DictReader(f):
            out[r["vc"]] = (int(r["nodes"]), int(r["gpus_per_node"]))
    return out
