"""One accounting of a job's time, across all its runs (pure: no clock, no store).

Three quantities, computed here and nowhere else:

- **run time**: wall seconds a run lasted, from the moment a worker claimed the placement
  (``started_at``) to its end.  ``Job.total_run_s`` sums every finished run, requeued ones
  included; :func:`total_run_s` adds the run in progress.
- **attained GPU-time**: GPU-seconds received, a shared GPU counted by the part of its memory
  the job reserved (:func:`gpu_share`).  LAS ranks jobs by it; fair-share usage is the same
  quantity, decayed over time (:mod:`gpuq.scheduler.fairshare`).
- **time left**: the time limit minus the total run time, so a limit counts every run and does
  not start again after a requeue (a preemption or a checkpoint exit).

The daemon's launcher records a run with :func:`end_of_run` and enforces the limit with
:func:`out_of_time`; ``plan()`` (ordering, backfill, preemption) and the simulator read the same
functions, so the daemon and ``gpuq sim`` keep the same records.
"""

from __future__ import annotations

import math

from gpuq.jobs.model import Job

INF = math.inf


def gpu_share(job: Job) -> float:
    """GPUs a job occupies: a whole GPU counts 1, a shared one the part of its memory the job
    reserved; before it is placed, the GPUs it asks for."""
    p = job.placement
    res = job.spec.resources
    if p is None or not p.gpu_uuids:
        return float(res.gpus)
    if res.whole_gpus:
        return float(len(p.gpu_uuids))
    return sum(min(1.0, r / t) if t else 1.0 for r, t in zip(p.reserved_mib, p.gpu_total_mib))


def current_run_s(job: Job, now: float) -> float:
    """Wall seconds of the run in progress (0 when the job is not running or not yet claimed)."""
    started = job.started_at
    if started is None or now <= started:
        return 0.0
    return now - started


def total_run_s(job: Job, now: float) -> float:
    """Wall seconds of every run so far, the one in progress included."""
    return job.total_run_s + current_run_s(job, now)


def attained_gpu_s(job: Job, now: float) -> float:
    """GPU-seconds received so far, the run in progress included."""
    run = current_run_s(job, now)
    return job.attained_gpu_s + (gpu_share(job) * run if run else 0.0)


def time_left_s(job: Job, now: float) -> float:
    """The time limit minus every run so far (inf without a time limit)."""
    limit = job.spec.time_limit_s
    if limit is None:
        return INF
    started = job.started_at  # (total_run_s, inlined: plan() asks this of every waiting job)
    if started is None or now <= started:
        return limit - job.total_run_s
    return limit - job.total_run_s - (now - started)


def out_of_time(job: Job, now: float) -> bool:
    """The job has used up its time limit, counting all its runs."""
    return time_left_s(job, now) < 0.0


def expected_end(job: Job, now: float) -> float:
    """When a running job will have used up its time limit (inf without one)."""
    return now + max(0.0, time_left_s(job, now))


def end_of_run(job: Job, run_s: float) -> dict[str, float]:
    """The job's fields once the run in progress ended after ``run_s`` seconds (for
    ``Job.transition``): the previous run, the total run time and the attained GPU-time."""
    run_s = max(0.0, run_s)
    return {
        "last_run_s": run_s,
        "total_run_s": job.total_run_s + run_s,
        "attained_gpu_s": job.attained_gpu_s + gpu_share(job) * run_s,
    }
