"""Plain-text rendering of ``gpuq usage`` rows (pure, stdlib only)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def _gpu_h(gpu_s: float | None) -> str:
    return "-" if gpu_s is None else f"{gpu_s / 3600.0:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def _limit(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit is not None else f"{used}"


def render_usage(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of users (share, usage, fair-share factor, limits) and their waiting jobs' priority parts."""
    if not rows:
        return "No usage recorded and no active jobs."
    head = ("USER", "SHARE", "SHARE%", "USAGE GPU-h", "(RUNNING)", "USAGE%", "FACTOR", "RUN", "PEND", "GPUS")
    table = [head]
    for r in rows:
        table.append((
            str(r.get("user", "?")), f"{r.get('share', 1):g}", _pct(r.get("share_norm")),
            _gpu_h(r.get("usage_gpu_s")), _gpu_h(r.get("usage_running_gpu_s")), _pct(r.get("usage_norm")),
            f"{r.get('fairshare_factor', 0.0):.3f}", str(r.get("running_jobs", 0)),
            _limit(int(r.get("pending_jobs", 0)), r.get("max_pending")),
            _limit(int(r.get("gpus_in_use", 0)), r.get("max_gpus")),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    jobs = [(r["user"], j) for r in rows for j in r.get("jobs", ())]
    if jobs:
        lines.append("")
        lines.append("Waiting jobs: priority = fair share + age (a higher --priority tier always goes first)")
        jt = [("JOB", "USER", "STATE", "TIER", "FAIRSHARE", "AGE", "PRIORITY")]
        for user, j in jobs:
            jt.append((str(j.get("job_id")), str(user), str(j.get("state", "")), str(j.get("tier", 0)),
                       f"{j.get('fairshare', 0):.0f}", f"{j.get('age', 0):.0f}", f"{j.get('priority', 0):.0f}"))
        w2 = [max(len(row[i]) for row in jt) for i in range(len(jt[0]))]
        lines += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, w2))).rstrip()
                  for row in jt]
    half = rows[0].get("half_life_s")
    if half:
        lines.append("")
        lines.append(f"Usage decays with a half-life of {half / 86400.0:g} days; policy: {rows[0].get('policy', '?')}. "
                     f"Factor 1.0 = no recent usage, 0.5 = used exactly the share.")
    return "\n".join(lines)
