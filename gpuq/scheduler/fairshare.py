"""Fair share: decayed GPU-second usage per user and the priority it gives (pure).

A usage record is a small JSON-able dict ``{"gpu_s": float, "at": float}``: the user's
decayed usage in GPU-seconds as of time ``at``.  It halves every ``half_life_s``.

The fair-share factor of a user is ``2 ** -(usage_norm / share_norm)`` (as in Slurm's
classic algorithm): 1.0 for a user with no usage, 0.5 for a user who used exactly their
share, and towards 0 for heavy users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from gpuq.accounting import gpu_share
from gpuq.jobs.model import Job
from gpuq.scheduler.config import PolicyConfig

LN2 = math.log(2.0)
UsageRecord = Mapping[str, float]


def _decay(seconds: float, half_life_s: float) -> float:
    if seconds <= 0:
        return 1.0
    return 2.0 ** (-seconds / half_life_s)


def decayed_usage(record: UsageRecord | None, now: float, half_life_s: float) -> float:
    """The user's usage in GPU-seconds as of ``now`` (0.0 for no record)."""
    if not record:
        return 0.0
    return float(record.get("gpu_s", 0.0)) * _decay(now - float(record.get("at", now)), half_life_s)


def add_usage(record: UsageRecord | None, gpu_s: float, now: float, half_life_s: float) -> dict[str, float]:
    """A new record: the old usage decayed to ``now`` plus ``gpu_s`` used just now."""
    return {"gpu_s": decayed_usage(record, now, half_life_s) + max(0.0, float(gpu_s)), "at": float(now)}


def run_usage_gpu_s(gpus: float, started_at: float, now: float, half_life_s: float) -> float:
    """Decayed GPU-seconds as of ``now`` of a run on ``gpus`` GPUs since ``started_at``
    (the integral of the decay over the run)."""
    span = now - started_at
    if span <= 0 or gpus <= 0:
        return 0.0
    return gpus * half_life_s / LN2 * (1.0 - _decay(span, half_life_s))


def add_run_usage(record: UsageRecord | None, gpus: float, started_at: float, ended_at: float,
                  half_life_s: float) -> dict[str, float]:
    """Record a finished (or requeued) run; consistent with what plan() counted while it ran."""
    return add_usage(record, run_usage_gpu_s(gpus, started_at, ended_at, half_life_s), ended_at, half_life_s)


def ongoing_usage(running: Iterable[Job], now: float, half_life_s: float) -> dict[str, float]:
    """Decayed GPU-seconds of the runs now in progress, per user (not yet in the records)."""
    out: dict[str, float] = {}
    scale = half_life_s / LN2
    rate = -LN2 / half_life_s
    exp = math.exp
    for job in running:
        since = job.started_at
        if since is None or since >= now:
            continue
        u = gpu_share(job) * scale * (1.0 - exp(rate * (now - since)))  # = run_usage_gpu_s
        user = job.owner.user
        out[user] = out.get(user, 0.0) + u
    return out


@dataclass(frozen=True)
class ShareState:
    """One user's standing at one moment."""

    user: str
    share: float
    share_norm: float
    usage_gpu_s: float
    usage_norm: float
    factor: float

    @property
    def over_share(self) -> float:
        """usage_norm / share_norm: above 1 means more than their share."""
        return self.usage_norm / self.share_norm if self.share_norm > 0 else math.inf


def usage_values(usage: Mapping[str, Any], now: float, half_life_s: float) -> dict[str, float]:
    """Accept records (dicts) or already-decayed floats; return decayed GPU-seconds per user."""
    out: dict[str, float] = {}
    for user, v in usage.items():
        if isinstance(v, (int, float)):
            out[user] = float(v)
        elif v is None:
            out[user] = 0.0
        else:
            out[user] = decayed_usage(v, now, half_life_s)
    return out


def share_states(
    active: Mapping[str, tuple[int, ...]],
    usage_gpu_s: Mapping[str, float],
    shares_for,
) -> dict[str, ShareState]:
    """Fair-share standing of each active user (``active`` maps user -> groups).

    ``usage_gpu_s`` holds everyone's decayed usage including runs in progress;
    ``shares_for(user, groups)`` gives the configured share.
    """
    total_usage = sum(v for v in usage_gpu_s.values() if v > 0)
    shares = {u: shares_for(u, g) for u, g in active.items()}
    total_share = math.fsum(shares.values()) or 1.0  # exact: the same whatever the users' order
    out: dict[str, ShareState] = {}
    for u, s in shares.items():
        used = max(0.0, usage_gpu_s.get(u, 0.0))
        un = used / total_usage if total_usage > 0 else 0.0
        sn = s / total_share
        out[u] = ShareState(u, s, sn, used, un, 2.0 ** (-un / sn))
    return out


# ---- `gpuq usage` ---------------------------------------------------------------------------



def usage_report(usage_records: Mapping[str, Any], pending: Iterable[Job], running: Iterable[Job],
                 config: PolicyConfig, now: float) -> list[dict[str, Any]]:
    """One JSON-able row per user (everyone with a record or an active job), like sshare/sprio.

    Each row: the user's share (configured and normalised among active users), usage in
    GPU-seconds (recorded, in progress, total decayed, normalised), the fair-share factor,
    their limits and GPUs in use, and for each of their waiting jobs the parts of its priority
    (tier from ``--priority``, fair-share part, age part, total).
    """
    pending = list(pending)
    running = list(running)
    h = config.half_life_s
    recorded = usage_values(usage_records, now, h)
    ongoing = ongoing_usage(running, now, h)
    total = dict(recorded)
    for u, v in ongoing.items():
        total[u] = total.get(u, 0.0) + v
    groups: dict[str, tuple[int, ...]] = {}
    for j in pending + running:
        groups.setdefault(j.owner.user, j.owner.groups)
    active = dict(groups)
    states = share_states(active, total, config.share_for)
    all_users = sorted(set(total) | set(groups))
    total_usage = sum(v for v in total.values() if v > 0)
    rows = []
    for user in all_users:
        st = states.get(user)
        share = config.share_for(user, groups.get(user, ()))
        used = total.get(user, 0.0)
        factor = st.factor if st else 2.0 ** (-(used / total_usage if total_usage else 0.0))
        mine_p = [j for j in pending if j.owner.user == user]
        mine_r = [j for j in running if j.owner.user == user]
        lim = config.limits_for(user)
        jobs = []
        for j in sorted(mine_p, key=lambda j: (-j.spec.priority, j.submitted_at, j.id)):
            age = min(max(now - j.submitted_at, 0.0) / config.max_age_s, 1.0)
            fs_part = config.weight_fairshare * factor
            age_part = config.weight_age * age
            jobs.append({"job_id": j.id, "state": j.state.value, "tier": j.spec.priority,
                         "fairshare": round(fs_part, 1), "age": round(age_part, 1),
                         "priority": round(fs_part + age_part, 1)})
        rows.append({
            "user": user,
            "share": share,
            "share_norm": round(st.share_norm, 4) if st else None,
            "usage_recorded_gpu_s": round(recorded.get(user, 0.0), 1),
            "usage_running_gpu_s": round(ongoing.get(user, 0.0), 1),
            "usage_gpu_s": round(used, 1),
            "usage_norm": round(used / total_usage, 4) if total_usage else 0.0,
            "fairshare_factor": round(factor, 4),
            "running_jobs": len(mine_r),
            "pending_jobs": len(mine_p),
            "gpus_in_use": sum(j.spec.resources.gpus for j in mine_r),
            "max_gpus": lim.max_gpus,
            "max_pending": lim.max_pending,
            "half_life_s": h,
            "policy": config.policy,
            "jobs": jobs,
        })
    rows.sort(key=lambda r: (-r["fairshare_factor"], r["user"]))
    return rows


__all__ = ["add_usage", "decayed_usage", "add_run_usage", "run_usage_gpu_s", "ongoing_usage",
           "share_states", "usage_values", "usage_report", "ShareState"]
