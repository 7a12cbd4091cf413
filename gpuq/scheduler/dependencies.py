"""When a job may start, as far as other jobs decide it (pure; used by ``plan()``).

* Dependencies, as Slurm users know them: ``--after`` (each job completed successfully),
  ``--after-any`` (each job ended, however it ended), ``--after-notok`` (each job ended without
  success: failed, cancelled or timed out).
* Array throttles: ``--array 0-99%8`` lets at most 8 of the array's jobs run at once.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from gpuq.jobs.model import Job, JobState


def dependency_ids(job: Job) -> tuple[int, ...]:
    """Every job this one waits for, whatever the kind of dependency."""
    s = job.spec
    return s.after + s.after_any + s.after_notok


def dependency_never(job: Job, finished: Mapping[int, JobState]) -> str | None:
    """Why the job's dependencies can never be satisfied, or None while they still can be."""
    for dep in job.spec.after:
        state = finished.get(dep)
        if state is not None and state.terminal and state is not JobState.COMPLETED:
            return f"job {dep} ended {state.value}, and --after needs it to complete successfully"
    for dep in job.spec.after_notok:
        if finished.get(dep) is JobState.COMPLETED:
            return f"job {dep} completed successfully, and --after-notok needs it to fail"
    return None


def dependency_reason(job: Job, finished: Mapping[int, JobState]) -> str | None:
    """None when the job's dependencies are satisfied; else why it waits.  ``finished`` maps the
    ids of the jobs it depends on to their current states (an id missing: not ended yet)."""
    never = dependency_never(job, finished)
    if never is not None:
        return f"it will never start: {never}"
    for kind, deps in (("after", job.spec.after), ("after-any", job.spec.after_any),
                       ("after-notok", job.spec.after_notok)):
        for dep in deps:
            state = finished.get(dep)
            if state is None or not state.terminal:
                return f"{kind} job {dep}"
    return None


class ArrayThrottle:
    """Counts the running jobs of each throttled array as ``plan()`` starts more of them."""

    def __init__(self, running: Iterable[Job]) -> None:
        self.running: dict[int, int] = {}
        for j in running:
            self.started(j)

    def started(self, job: Job) -> None:
        a = job.spec.array
        if a is not None and a.limit is not None:
            self.running[a.array_id] = self.running.get(a.array_id, 0) + 1

    def reason(self, job: Job) -> str | None:
        """Why this array job may not start now, or None."""
        a = job.spec.array
        if a is None or a.limit is None:
            return None
        n = self.running.get(a.array_id, 0)
        if n >= a.limit:
            return f"array {a.array_id} runs at most {a.limit} at once (%{a.limit}); {n} running"
        return None
