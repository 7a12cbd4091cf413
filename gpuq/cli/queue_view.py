"""The queue as `gpuq status` shows it (pure: dicts in, text out).

* GPUS is always how many GPUs a job asks for; ON is where a running job is (GPU indices, with
  the node when there are several).  One column, one meaning.
* A job array is one line (``17_[0-99%8]``) with its jobs counted by state, unless expanded.
* Everything a user controls (names, reasons, progress) goes through ``render.safe``: a job name
  cannot drive the terminal.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from gpuq.cli.render import job_note, parts_text, safe, table
from gpuq.units import format_duration, format_mib

STATES = ("pending", "held", "running", "completed", "failed", "cancelled", "timeout")
FINISHED = frozenset({"completed", "failed", "cancelled", "timeout"})
def parse_states(text: str | None) -> set[str] | None:
    """``--state running,pending`` -> the set; unknown names are an error the caller reports."""
    if not text:
        return None
    want = {s.strip().lower() for s in text.split(",") if s.strip()}
    unknown = sorted(want - set(STATES))
    if unknown:
        raise ValueError(f"--state {','.join(unknown)} is not a job state: give one or more of {', '.join(STATES)}.")
    return want


def select(jobs: Iterable[dict[str, Any]], users: set[str] | None, states: set[str] | None) -> list[dict[str, Any]]:
    return [j for j in jobs if (users is None or j["owner"]["user"] in users)
            and (states is None or j["state"] in states)]


def gpu_count(job: dict[str, Any]) -> int:
    return int(job["spec"].get("resources", {}).get("gpus", 1))


def memory(job: dict[str, Any]) -> str:
    r = job["spec"].get("resources", {})
    if int(r.get("gpus", 1)) == 0:
        return "-"
    p = job.get("placement")
    if r.get("exclusive"):
        return "exclusive"
    if r.get("mem_mib"):
        return format_mib(r["mem_mib"])
    if r.get("fraction"):
        if job["state"] == "running" and p and p.get("reserved_mib"):
            return format_mib(p["reserved_mib"][0])
        return f"{r['fraction'] * 100:g}%"
    return "whole"


def where(job: dict[str, Any], multi_node: bool) -> str:
    p = job.get("placement")
    if job["state"] != "running" or not p:
        return "-"
    if p.get("parts"):
        return parts_text(p)
    gpus = ",".join(str(i) for i in p.get("gpu_indices", [])) or "cpu"
    return f"{p['node']}:{gpus}" if multi_node else gpus


def array_label(a: dict[str, Any], indices: Sequence[int]) -> str:
    """``17_[0-99%8]``: the array id, its index ranges and its throttle."""
    ranges: list[str] = []
    xs = sorted(indices)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        ranges.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    text = ",".join(ranges) if len(ranges) <= 3 else f"{ranges[0]},...,{ranges[-1]}"
    limit = f"%{a['limit']}" if a.get("limit") else ""
    return f"{a['array_id']}_[{text}{limit}]"


def _job_row(j: dict[str, Any], multi_node: bool, label: str | None = None) -> list[str]:
    elapsed = format_duration(j["elapsed_s"]) if j.get("elapsed_s") is not None else "-"
    return [label or str(j["id"]), safe(j.get("display_name", ""))[:24], safe(j["owner"]["user"]),
            j["state"], str(gpu_count(j)), where(j, multi_node), memory(j), elapsed, safe(job_note(j))]


def _array_row(members: list[dict[str, Any]], multi_node: bool) -> list[str]:
    first = members[0]
    a = first["spec"]["array"]
    counts: dict[str, int] = {}
    for m in members:
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    state = ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts)
    if a.get("size", 0) > len(members):
        state += f", {a['size'] - len(members)} ended"
    running = [m for m in members if m["state"] == "running"]
    on = ";".join(where(m, multi_node) for m in running[:4]) + (";..." if len(running) > 4 else "") or "-"
    waiting = [m for m in members if m["state"] in ("pending", "held")]
    note = f"next {m_id(waiting[0])}: {job_note(waiting[0])}" if waiting else ""
    label = array_label(a, [m["spec"]["array"]["index"] for m in members])
    return [label, safe(first.get("display_name", ""))[:24], safe(first["owner"]["user"]), state,
            f"{gpu_count(first)} each", on, memory(first), "-", safe(note)]


def m_id(job: dict[str, Any]) -> str:
    a = job["spec"].get("array")
    return f"{a['array_id']}_{a['index']}" if a else str(job["id"])


HEADERS = ["ID", "NAME", "USER", "STATE", "GPUS", "ON", "MEM/GPU", "ELAPSED", "REASON / PROGRESS"]


def _summary_row(s: dict[str, Any]) -> list[str]:
    """Another user's waiting jobs that the bounded view does not list, as one line."""
    n = int(s.get("pending", 0)) + int(s.get("held", 0))
    state = ", ".join(f"{s[k]} {k}" for k in ("pending", "held") if s.get(k))
    user = safe(s.get("user", "?"))
    return [f"{s.get('first_id', '?')}-{s.get('last_id', '?')}", f"({n} jobs)", user, state, str(s.get("gpus", "?")),
            "-", "-", "-", f"not listed: gpuq status --user {user}"]


def jobs_table(jobs: Sequence[dict[str, Any]], multi_node: bool = False, expand: bool = False,
               others_waiting: Sequence[dict[str, Any]] = ()) -> str:
    """The queue, one line per job, or per array unless ``expand``; then one line per other user
    whose waiting jobs the daemon summed up (``others_waiting``, the bounded view)."""
    rows: list[list[str]] = []
    arrays: dict[int, list[dict[str, Any]]] = {}
    order: list[tuple[str, Any]] = []
    for j in jobs:
        a = j["spec"].get("array")
        if a is None:
            order.append(("job", j))
        elif expand:
            order.append(("member", j))
        else:
            if a["array_id"] not in arrays:
                arrays[a["array_id"]] = []
                order.append(("array", a["array_id"]))
            arrays[a["array_id"]].append(j)
    for kind, item in order:
        if kind == "job":
            rows.append(_job_row(item, multi_node))
        elif kind == "member":
            rows.append(_job_row(item, multi_node, label=f"{item['id']} ({m_id(item)})"))
        else:
            rows.append(_array_row(arrays[item], multi_node))
    rows += [_summary_row(s) for s in others_waiting]
    if not rows:
        return "No jobs."
    return table(HEADERS, rows)
