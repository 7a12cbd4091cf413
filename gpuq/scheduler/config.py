"""Policy settings: one frozen dataclass, validated from the TOML ``[scheduler]`` table.

Pure: no I/O.  ``PolicyConfig.from_mapping`` raises :class:`ConfigError` with one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from gpuq.errors import ConfigError

POLICIES = ("fifo", "sjf", "srtf", "default", "fairshare", "las")
PREEMPTION_MODES = ("off", "checkpointable")
DAY_S = 86400.0


@dataclass(frozen=True)
class UserLimits:
    """At most ``max_gpus`` GPUs in use and ``max_pending`` jobs waiting; None means no limit.
    ``max_cpu_jobs``: CPU-only jobs running at once; None means half the cluster's CPU slots
    (at least one), so one user cannot take every slot by default."""

    max_gpus: int | None = None
    max_pending: int | None = None
    max_cpu_jobs: int | None = None


#: every numeric setting of PolicyConfig: each must be finite (a NaN or an infinity would break
#: the orderings, e.g. the starvation guard's sorted clocks)
_NUMBERS = ("idle_mem_mib", "half_life_s", "default_share", "weight_fairshare", "weight_age", "max_age_s",
            "preempt_wait_s", "min_run_s", "las_starve_factor", "starve_after_s", "starve_run_factor")


@dataclass(frozen=True)
class PolicyConfig:
    #: fifo | sjf | srtf (oracle: order by time limit) | default | fairshare | las
    policy: str = "default"
    #: A GPU counts as idle (free for a whole-GPU job) while NVML sees at most this much in use:
    #: NVML's "used" includes memory the driver reserves on an idle GPU.
    idle_mem_mib: int = 1024
    # ---- fair share (default, fairshare) ----
    half_life_s: float = 7 * DAY_S
    user_shares: Mapping[str, float] = field(default_factory=dict)
    #: shares by group id (as a string); a user gets the largest share among their groups
    group_shares: Mapping[str, float] = field(default_factory=dict)
    default_share: float = 1.0
    weight_fairshare: float = 10000.0
    weight_age: float = 1000.0
    max_age_s: float = 7 * DAY_S
    # ---- limits ----
    default_limits: UserLimits = field(default_factory=UserLimits)
    user_limits: Mapping[str, UserLimits] = field(default_factory=dict)
    # ---- backfill ----
    #: None: on for every policy but fifo (plain FIFO lets the head job block the queue)
    backfill: bool | None = None
    # ---- preemption ----
    #: off | checkpointable (only jobs submitted --checkpointable are ever preempted);
    #: None: checkpointable for the policies that rank by service or share (default, fairshare,
    #: las, srtf), off for fifo and sjf
    preemption: str | None = None
    #: a job of a user under their share must have waited this long before gpuq preempts for it
    preempt_wait_s: float = 3600.0
    #: a job runs at least this long before it can be preempted (guards against thrashing)
    min_run_s: float = 600.0
    #: at most this many jobs are preempted in one cycle
    max_preempts_per_cycle: int = 8
    # ---- least attained service (las) ----
    #: attained GPU-seconds that move a job down one queue (Tiresias' discretised 2D-LAS)
    las_thresholds_gpu_s: tuple[float, ...] = (3600.0, 36000.0, 360000.0)
    #: starvation guard: a job that has waited this many times as long as it has run goes back
    #: to the first queue; 0 (the default) turns it off (on Philly it traded many preemptions
    #: for little gain in the tail, see docs/scheduling.md)
    las_starve_factor: float = 0.0
    # ---- starvation guard (every policy but fifo) ----
    #: a job that has waited this long per GPU it asks for (its size), plus ``starve_run_factor``
    #: times the time it has already run, goes ahead of every job of its tier that is not
    #: starving, so the GPUs held for it (backfill) are its own until it starts, whoever submits
    #: later; 0 turns the guard off
    starve_after_s: float = 24 * 3600.0
    #: the guard's bound grows by this many times the job's run time so far (issue 10: with 1, a
    #: long job that was preempted after a protected run waits again before it is put first)
    starve_run_factor: float = 1.0
    # ---- packing of shared (fractional) jobs ----
    #: best (least memory left over; shared GPUs first) or first (lowest node and GPU index)
    packing: str = "best"
    #: allow a whole-GPU job wider than any node to take GPUs on several nodes (the simulator
    #: uses this for Philly's wide jobs; the daemon launches single-node jobs only)
    gang: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"scheduler policy {self.policy!r} is unknown: use one of {', '.join(POLICIES)}.")
        if self.packing not in ("best", "first"):
            raise ConfigError(f"scheduler packing {self.packing!r} is unknown: use best or first.")
        if self.preemption is not None and self.preemption not in PREEMPTION_MODES:
            raise ConfigError(f"scheduler preemption {self.preemption!r} is unknown: use off or checkpointable.")
        for name in _NUMBERS:
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"scheduler {name} must be a finite number, not {getattr(self, name)!r}.")
        if not all(math.isfinite(x) for x in list(self.las_thresholds_gpu_s) + list(self.user_shares.values())
                   + list(self.group_shares.values())):
            raise ConfigError("scheduler shares and las_thresholds_gpu_s must be finite numbers.")
        for name in ("half_life_s", "default_share", "max_age_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"scheduler {name} must be larger than zero.")
        for name in ("weight_fairshare", "weight_age", "preempt_wait_s", "min_run_s", "idle_mem_mib",
                     "las_starve_factor", "starve_after_s", "starve_run_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scheduler {name} must not be negative.")
        if self.max_preempts_per_cycle < 0:
            raise ConfigError("scheduler max_preempts_per_cycle must not be negative.")
        if list(self.las_thresholds_gpu_s) != sorted(self.las_thresholds_gpu_s) or any(
                t <= 0 for t in self.las_thresholds_gpu_s):
            raise ConfigError("scheduler las_thresholds_gpu_s must be positive and increasing.")
        for who, share in list(self.user_shares.items()) + list(self.group_shares.items()):
            if not share > 0:
                raise ConfigError(f"scheduler share for {who!r} must be larger than zero.")

    # ---- derived ----
    @property
    def backfill_on(self) -> bool:
        return self.backfill if self.backfill is not None else self.policy != "fifo"

    @property
    def uses_fairshare(self) -> bool:
        return self.policy in ("default", "fairshare")

    @property
    def starvation_guard_on(self) -> bool:
        return self.starve_after_s > 0 and self.policy != "fifo"

    def starve_bound_s(self, gpus: int, ran_s: float) -> float:
        """How long a job of ``gpus`` GPUs that already ran ``ran_s`` (finished runs) may wait in
        all before the starvation guard puts it first."""
        return self.starve_after_s * max(gpus, 1) + self.starve_run_factor * ran_s

    @property
    def orders_by_service(self) -> bool:
        """las and default: jobs that received less GPU time go first (Tiresias' 2D-LAS)."""
        return self.policy in ("las", "default")

    @property
    def preemption_on(self) -> bool:
        if self.preemption is None:
            return self.policy in ("default", "fairshare", "las", "srtf")
        return self.preemption == "checkpointable"

    def limits_for(self, user: str) -> UserLimits:
        own = self.user_limits.get(user)
        if own is None:
            return self.default_limits
        return UserLimits(
            max_gpus=own.max_gpus if own.max_gpus is not None else self.default_limits.max_gpus,
            max_pending=own.max_pending if own.max_pending is not None else self.default_limits.max_pending,
            max_cpu_jobs=own.max_cpu_jobs if own.max_cpu_jobs is not None else self.default_limits.max_cpu_jobs,
        )

    def share_for(self, user: str, groups: tuple[int, ...] = ()) -> float:
        if user in self.user_shares:
            return float(self.user_shares[user])
        group = [self.group_shares[str(g)] for g in groups if str(g) in self.group_shares]
        return float(max(group)) if group else self.default_share

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "PolicyConfig":
        """Build from a TOML ``[scheduler]`` table, e.g.::

            [scheduler]
            policy = "default"          # fifo | sjf | srtf | default | fairshare | las
            half_life = "7d"            # or half_life_s = 604800
            preemption = "checkpointable"
            preempt_wait = "1h"
            min_run = "10m"
            max_gpus = 8                # default limit per user
            max_pending = 100
            [scheduler.shares]          # per user; "gid:1001" keys are groups
            alice = 2
            "gid:1001" = 4
            [scheduler.limits.alice]
            max_gpus = 16
        """
        if not isinstance(d, Mapping):
            raise ConfigError("the [scheduler] section must be a table of settings.")
        d = dict(d)
        kw: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for dur in ("half_life", "max_age", "preempt_wait", "min_run", "starve_after"):
            if dur in d:
                kw[dur + "_s"] = _duration(d.pop(dur), dur)
        shares = d.pop("shares", {})
        if not isinstance(shares, Mapping):
            raise ConfigError("[scheduler.shares] must be a table of user = share.")
        users: dict[str, float] = {}
        groups: dict[str, float] = {}
        for k, v in shares.items():
            val = _number(v, f"share for {k!r}")
            if str(k).startswith("gid:"):
                groups[str(k)[4:]] = val
            else:
                users[str(k)] = val
        if users:
            kw["user_shares"] = users
        if groups:
            kw["group_shares"] = groups
        dl = {k: d.pop(k) for k in ("max_gpus", "max_pending", "max_cpu_jobs") if k in d}
        if dl:
            kw["default_limits"] = _limits(dl, "the default")
        limits = d.pop("limits", {})
        if not isinstance(limits, Mapping):
            raise ConfigError("[scheduler.limits] must hold one table per user, like [scheduler.limits.alice].")
        if limits:
            kw["user_limits"] = {str(u): _limits(v, f"user {u!r}") for u, v in limits.items()}
        if "las_thresholds_gpu_s" in d:
            v = d.pop("las_thresholds_gpu_s")
            if not isinstance(v, (list, tuple)):
                raise ConfigError("scheduler las_thresholds_gpu_s must be a list of GPU-seconds.")
            kw["las_thresholds_gpu_s"] = tuple(_number(x, "las_thresholds_gpu_s") for x in v)
        for k, v in d.items():
            if k not in known or k in ("default_limits", "user_limits", "user_shares", "group_shares"):
                raise ConfigError(f"scheduler setting {k!r} is unknown; see docs/scheduling.md for the list.")
            want = {f.name: f for f in fields(cls)}[k]
            default = want.default
            if isinstance(default, bool) or k == "backfill":
                if not isinstance(v, bool):
                    raise ConfigError(f"scheduler {k} must be true or false.")
                kw[k] = v
            elif isinstance(default, str) or k == "preemption":
                if not isinstance(v, str):
                    raise ConfigError(f"scheduler {k} must be a string.")
                kw[k] = v
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"scheduler {k} must be a whole number.")
                kw[k] = v
            else:
                kw[k] = _number(v, k)
        return cls(**kw)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"scheduler {what} must be a number, not {v!r}.")
    return float(v)


def _duration(v: Any, what: str) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    from gpuq.errors import InvalidInput
    from gpuq.units import parse_duration_s
    try:
        return parse_duration_s(str(v), what)
    except InvalidInput as e:
        raise ConfigError(f"scheduler {e}") from None


def _limits(v: Any, who: str) -> UserLimits:
    if not isinstance(v, Mapping):
        raise ConfigError(f"limits for {who} must be a table with max_gpus, max_pending and/or max_cpu_jobs.")
    out: dict[str, int | None] = {}
    for k, x in v.items():
        if k not in ("max_gpus", "max_pending", "max_cpu_jobs"):
            raise ConfigError(f"limit {k!r} for {who} is unknown: use max_gpus, max_pending or max_cpu_jobs.")
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ConfigError(f"limit {k} for {who} must be a whole number of at least 0.")
        out[k] = x
    return UserLimits(**out)

