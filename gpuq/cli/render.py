"""Plain-text tables for the CLI (pure: dicts in, text out).

Everything another user controls (names, commands, paths, progress, reasons) passes through
:func:`safe` before it reaches a terminal: control characters, escape sequences, bidirectional
overrides and broken UTF-8 are shown as visible escapes, never interpreted.
"""

from __future__ import annotations

import datetime as _dt
import math
import unicodedata
from typing import Any, Sequence

from gpuq.units import format_duration, format_mib

_VISIBLE_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(c: str) -> str:
    o = ord(c)
    if c in _VISIBLE_ESCAPES:
        return _VISIBLE_ESCAPES[c]
    return f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")


def safe(value: Any) -> str:
    """``value`` as text that is safe to print: C0/C1 controls (ESC included), DEL, Unicode format
    characters (bidirectional overrides, zero-width joiners) and lone surrogates become escapes."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and text.isascii():
        return text
    out = []
    for c in text:
        cat = unicodedata.category(c)
        out.append(_escape(c) if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") else c)
    return "".join(out)


def _number(v: Any) -> float | None:
    """A finite number from a reply, or None (NaN, Infinity and junk are "unknown")."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def parts_text(p: dict[str, Any]) -> str:
    """A job across nodes on one line, each node with its GPUs, rank 0 first: ``a:0,1+b:0,1``."""
    indices = [str(i) for i in p.get("gpu_indices", [])]
    out, at = [], 0
    for part in p.get("parts") or []:
        n = int(part.get("gpus", 0))
        out.append(f"{part.get('node', '?')}:{','.join(indices[at:at + n])}")
        at += n
    return "+".join(out)


def bar(frac: float, width: int = 10) -> str:
    frac = min(max(frac, 0.0), 1.0)
    full = int(round(frac * width))
    return "[" + "#" * full + "." * (width - full) + "]"


def _request(job: dict[str, Any]) -> tuple[str, str]:
    r = job["spec"].get("resources", {})
    gpus = int(r.get("gpus", 1))
    if gpus == 0:
        return "0", "-"
    if r.get("exclusive"):
        mem = "exclusive"
    elif r.get("mem_mib"):
        mem = format_mib(r["mem_mib"])
    elif r.get("fraction"):
        mem = f"{r['fraction'] * 100:g}%"
    else:
        mem = "whole"
    return str(gpus), mem


def _progress(p: Any) -> str:
    if not isinstance(p, dict):
        return ""
    epoch, step, total, loss, eta = (_number(p.get(k)) for k in ("epoch", "step", "total", "loss", "eta_s"))
    parts = []
    if epoch is not None:
        parts.append(f"epoch {epoch:g}")
    if step is not None:
        parts.append(f"step {step:g}" + (f"/{total:g}" if total else ""))
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    if eta is not None:
        parts.append(f"eta {format_duration(min(eta, 1e9))}")
    return " ".join(parts)


def job_note(job: dict[str, Any]) -> str:
    return safe(_note(job))


def _note(job: dict[str, Any]) -> str:
    state = job["state"]
    if state in ("pending", "held"):
        return job.get("reason") or ("held" if state == "held" else "waiting for the scheduler")
    if state == "running":
        if job.get("stop_request"):
            return f"stopping ({job['stop_request']['kind']})"
        if job.get("reason"):
            return job["reason"]
        return _progress(job.get("progress"))
    note = job.get("end_reason", "")
    return note


def gpus_table(nodes: Sequence[dict[str, Any]]) -> str:
    rows = []
    simulated = any(n.get("simulated") for n in nodes)
    multi = len(nodes) > 1
    for n in nodes:
        for g in n["gpus"]:
            total = g["mem_total_mib"] or 1
            used = g["mem_used_mib"]
            held = max(used, g.get("reserved_mib", 0))
            jobs = safe(", ".join(f"{x['id']}({x['user']})" for x in g.get("jobs", [])) or "-")
            outside = g.get("outside_gpuq_mib", 0)
            outside_txt = format_mib(outside) if outside else "-"
            idx = f"{n['node']}:{g['index']}" if multi else str(g["index"])
            util = "-" if g.get("util_pct") is None else f"{g['util_pct']}%"
            rows.append([safe(idx), safe(g["name"]), f"{format_mib(used)} / {format_mib(total)}", bar(held / total),
                         format_mib(g.get("reserved_mib", 0)), util, jobs, outside_txt])
    if not rows:
        return "No GPUs reported (is the daemon's node agent running?)."
    title = "GPUs (SIMULATED inventory)" if simulated else "GPUs"
    return title + "\n" + table(["GPU", "NAME", "USED / TOTAL", "HELD", "RESERVED", "UTIL", "JOBS", "OUTSIDE GPUQ"],
                                rows)


def _ts(t: Any) -> str:
    t = _number(t)
    if t is None:
        return "-"
    try:
        return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "-"


def _host_limits(r: dict[str, Any]) -> str:
    """``--mem`` and ``--cpus`` as the request line shows them ("" when not asked for)."""
    mem, cpus = _number(r.get("host_mem_mib")), _number(r.get("cpus"))
    return (f", host memory limit {format_mib(mem)}" if mem else "") + (f", CPU limit {cpus:g}" if cpus else "")


def job_detail(j: dict[str, Any]) -> str:
    n_gpus, mem = _request(j)
    spec = j["spec"]
    lines = [
        f"Job {j['id']}  {safe(j.get('display_name', ''))}",
        f"  state:       {j['state']}" + (f" (exit code {j['exit_code']})" if j.get("exit_code") is not None else ""),
        f"  user:        {safe(j['owner']['user'])} (uid {j['owner']['uid']})",
        f"  command:     {safe(' '.join(spec['argv'])) if spec.get('argv') else '(hidden)'}",
        f"  cwd:         {safe(spec['cwd']) if spec.get('cwd') else '(hidden)'}",
        f"  request:     {n_gpus} GPU(s), memory {mem}" + _host_limits(spec.get("resources") or {})
        + (", checkpointable" if spec.get("checkpointable") else ""),
        f"  priority:    {spec.get('priority', 0)}",
    ]
    if spec.get("after"):
        lines.append(f"  after:       {', '.join(str(a) for a in spec['after'])}")
    if _number(spec.get("time_limit_s")):
        lines.append(f"  time limit:  {format_duration(spec['time_limit_s'])}")
    lines.append(f"  submitted:   {_ts(j.get('submitted_at'))}")
    p = j.get("placement")
    if p and p.get("parts"):
        lines.append(safe(f"  placement:   {len(p['parts'])} nodes, one process each (rank 0 first): "
                          f"{parts_text(p)}; port {p.get('port')}"))
        lines.append(f"  started:     {_ts(j.get('started_at'))}" + (f", rank 0 pid {j['pid']}" if j.get("pid") else "")
                     + (f"; parts claimed: {', '.join(j.get('gang_ready', []))}" if not j.get("started_at") else ""))
    elif p:
        lines.append(safe(f"  placement:   node {p['node']}, GPUs {','.join(str(i) for i in p['gpu_indices']) or '-'}"
                          f" ({', '.join(p['gpu_uuids']) or 'CPU only'})"))
        lines.append(f"  started:     {_ts(j.get('started_at'))}" + (f", pid {j['pid']}" if j.get("pid") else ""))
    if _number(j.get("elapsed_s")) is not None:
        lines.append(f"  elapsed:     {format_duration(j['elapsed_s'])}")
    if j.get("progress"):
        lines.append(f"  progress:    {_progress(j['progress'])}")
    if j.get("ended_at"):
        lines.append(f"  ended:       {_ts(j['ended_at'])}")
    note = job_note(j)
    if note:
        label = "reason:  " if j["state"] in ("pending", "held") else "note:    "
        lines.append(f"  {label}    {note}")
    if j.get("requeues"):
        lines.append(f"  requeues:    {j['requeues']}")
    if j.get("log_path"):
        lines.append(f"  log:         {safe(j['log_path'])}  (gpuq logs {j['id']})")
    if j.get("events"):
        lines.append("  events:")
        for e in j["events"][-15:]:
            lines.append(f"    {_ts(e.get('at'))}  {safe(e.get('text', ''))}")
    return "\n".join(lines)


def notices(status: dict[str, Any]) -> str:
    """Lines about the store itself (records set aside) and the nodes (containment, GPU memory
    over-use), or "" when there is nothing to say."""
    lines = [f"Warning: {safe(w)}." for n in status.get("nodes") or [] for w in n.get("warnings") or []]
    lines += [f"Note: on {safe(n.get('node', '?'))} {safe(n['containment'])}." for n in status.get("nodes") or []
              if str(n.get("containment", "")).startswith("cgroups unavailable")
              or "not enforced here" in str(n.get("containment", ""))]
    aside = status.get("set_aside") or []
    if aside:
        ids = ", ".join(safe(r.get("id", "?")) for r in aside[:10]) + (" …" if len(aside) > 10 else "")
        lines.append(f"Note: {len(aside)} stored job record(s) could not be read and were set aside with their "
                     f"evidence (job {ids}); the rest of the queue is unaffected. Root sees the details in "
                     "`gpuq status --json`.")
    return "\n".join(lines)
