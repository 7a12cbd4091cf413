"""`gpuq history`: finished jobs read from the store's ``finished`` index (newest first), with the
figures sacct users expect.  Times are epoch seconds; ``wait_s`` is all the time the job spent
queued (between requeues too), ``run_s`` all its runs, ``gpu_hours`` GPU-equivalent hours (a job
holding a quarter of a GPU for an hour counts 0.25)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from gpuq.errors import InvalidInput
from gpuq.jobs.model import Job, JobState
from gpuq.store import Store

MAX_LIMIT = 10_000
SCAN_BATCH = 500
MAX_SCANNED = 200_000  # a filter that matches little stops here rather than read the whole history


def history_row(job: Job) -> dict[str, Any]:
    ended = job.ended_at if job.ended_at is not None else job.submitted_at
    run_s = job.total_run_s
    return {
        "id": job.id, "name": job.display_name, "user": job.owner.user, "state": job.state.value,
        "exit_code": job.exit_code, "submitted_at": job.submitted_at, "ended_at": job.ended_at,
        "wait_s": max(0.0, ended - job.submitted_at - run_s), "run_s": run_s,
        "gpu_hours": job.attained_gpu_s / 3600.0, "gpus": job.spec.resources.gpus,
        "array_id": job.spec.array.array_id if job.spec.array else None,
        "array_index": job.spec.array.index if job.spec.array else None,
        "end_reason": job.end_reason,
    }


def _floats(query: Mapping[str, Sequence[str]], key: str) -> float | None:
    v = query.get(key)
    if not v:
        return None
    try:
        return float(v[0])
    except ValueError:
        raise InvalidInput(f"{key} must be epoch seconds.") from None


def history(store: Store, query: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Rows for the finished jobs that match ``user``/``state`` (repeatable), ``since``/``until``
    (ended in [since, until)) and ``limit``, newest first."""
    users = set(query.get("user", []))
    states = set(query.get("state", []))
    unknown = states - {s.value for s in JobState if s.terminal}
    if unknown:
        raise InvalidInput(f"state {sorted(unknown)} is not an end state.")
    try:
        limit = int(query.get("limit", ["100"])[0])
    except ValueError:
        raise InvalidInput("limit must be a whole number.") from None
    limit = max(1, min(limit, MAX_LIMIT))
    since, until = _floats(query, "since"), _floats(query, "until")
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
