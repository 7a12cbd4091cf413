"""Per-user limits as plan() applies them (pure): GPUs in use (``max_gpus``) and CPU-only jobs
running (``max_cpu_jobs``), counted from the running jobs and from each start of the cycle.
(``max_pending`` is the store's: it refuses a submission past it.)"""

from __future__ import annotations

import math
from typing import Iterable

from gpuq.jobs.model import Job
from gpuq.scheduler.config import PolicyConfig, UserLimits
from gpuq.scheduler.placement import Cluster

INF = math.inf


class UsageLimits:
    """Per-user ``max_gpus`` (GPUs in use) and ``max_cpu_jobs`` (CPU-only jobs running), counted
    as plan() starts more jobs."""

    def __init__(self, config: PolicyConfig, running: Iterable[Job]) -> None:
        self.config = config
        self.on = config.default_limits.max_gpus is not None or bool(config.user_limits)
        self.gpus: dict[str, int] = {}
        self.cpu_jobs: dict[str, int] = {}
        self.cache: dict[str, UserLimits] = {}
        for j in running:
            self.started(j)

    def _limits(self, user: str) -> UserLimits:
        lim = self.cache.get(user)
        if lim is None:
            lim = self.cache[user] = self.config.limits_for(user)
        return lim

    def reason(self, job: Job) -> str | None:
        """Why the job would take its user past ``max_gpus`` (None: it would not)."""
        if not self.on:
            return None
        lim = self._limits(job.owner.user)
        used = self.gpus.get(job.owner.user, 0)
        if lim.max_gpus is not None and used + job.spec.resources.gpus > lim.max_gpus:
            return f"user limit: you have {used}/{lim.max_gpus} GPUs in use"
        return None

    def cpu_reason(self, job: Job, cluster: Cluster) -> str | None:
        """Why a CPU-only job would take its user past ``max_cpu_jobs`` (default: half the slots)."""
        lim = self._limits(job.owner.user).max_cpu_jobs
        if lim is None:
            total = cluster.cpu_slots_total()
            lim = None if total == INF else max(1, int(total) // 2)
        have = self.cpu_jobs.get(job.owner.user, 0)
        if lim is not None and have >= lim:
            return f"user limit: you have {have}/{lim} CPU-only jobs running"
        return None

    def started(self, job: Job) -> None:
        user, gpus = job.owner.user, job.spec.resources.gpus
        if gpus == 0:
            self.cpu_jobs[user] = self.cpu_jobs.get(user, 0) + 1
        else:
            self.gpus[user] = self.gpus.get(user, 0) + gpus
