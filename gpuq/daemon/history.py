"""`gpuq history`: finished jobs read from the store's ``finished`` index (newest first), with the
figures sacct users expect.  Times are epoch seconds; ``wait_s`` is all the time the job spent
queued (between requeues too), ``run_s`` all its runs, ``gpu_hours`` GPU-equivalent hours (a job
holding a quarter of a GPU for an hour counts 0.25)."""

from __future__ import annotations

from typing import Any

from gpuq.daemon.schema import HistoryQuery
from gpuq.jobs.model import Job
from gpuq.store import Store

SCAN_BATCH = 500
MAX_SCANNED = 200_000  # a filter that matches little stops here rather than read the whole history


def history_row(job: Job) -> dict[str, Any]:
    ended = job.ended_at if job.ended_at is not None else job.submitted_at
    run_s = job.total_run_s
    return {
        "id": job.id, "name": job.display_name, "given_name": job.spec.name, "user": job.owner.user, "state": job.state.value,
        "exit_code": job.exit_code, "submitted_at": job.submitted_at, "ended_at": job.ended_at,
        "wait_s": max(0.0, ended - job.submitted_at - run_s), "run_s": run_s,
        "gpu_hours": job.attained_gpu_s / 3600.0, "gpus": job.spec.resources.gpus,
        "array_id": job.spec.array.array_id if job.spec.array else None,
        "array_index": job.spec.array.index if job.spec.array else None,
        "end_reason": job.end_reason,
    }


def history(store: Store, q: HistoryQuery) -> list[dict[str, Any]]:
    """Rows for the finished jobs that match the query (users, end states, ended in [since, until)),
    at most ``q.limit``, newest first."""
    users, states, limit, since, until = set(q.users), set(q.states), q.limit, q.since, q.until
    rows: list[dict[str, Any]] = []
    offset = 0
    while len(rows) < limit and offset < MAX_SCANNED:
        ids = store.finished_ids(since, until, offset, SCAN_BATCH)
        if not ids:
            break
        offset += len(ids)
        for job in store.get_many(ids):
            if (not users or job.owner.user in users) and (not states or job.state.value in states):
                rows.append(history_row(job))
                if len(rows) >= limit:
                    break
    return rows
