"""The default ``gpuq status`` view, bounded however long the queue (pure: no I/O).

Listed in full: every running job, and every job of the caller.  Another user's waiting jobs
(pending or held) are listed when they are at most ``per_user`` of them; beyond that, that user's
waiting jobs are one summary line (``gpuq status --user U`` or ``--all`` lists them).  So a user with
1,000 queued jobs adds one line to everyone else's status, not 1,000, and the daemon encodes, sends
and the CLI decodes and renders a bounded reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gpuq.jobs.model import Job, JobState

#: Another user's waiting jobs listed one by one up to this many; more become one summary line.
DEFAULT_PER_USER = 10
MAX_PER_USER = 1000
_WAITING = (JobState.PENDING, JobState.HELD)


@dataclass(frozen=True)
class WaitingSummary:
    """One other user's waiting jobs that are not listed."""

    user: str
    pending: int
    held: int
    gpus: int  # GPUs they ask for, all together
    first_id: int
    last_id: int

    def to_dict(self) -> dict[str, object]:
        return {"user": self.user, "pending": self.pending, "held": self.held, "gpus": self.gpus,
                "first_id": self.first_id, "last_id": self.last_id}


def brief(jobs: Sequence[Job], caller_uid: int, per_user: int) -> tuple[list[Job], list[WaitingSummary]]:
    """The jobs to list, and a summary per other user whose waiting jobs are more than ``per_user``."""
    waiting_of: dict[int, list[Job]] = {}
    for j in jobs:
        if j.owner.uid != caller_uid and j.state in _WAITING:
            waiting_of.setdefault(j.owner.uid, []).append(j)
    summarised = {uid for uid, js in waiting_of.items() if len(js) > per_user}
    shown = [j for j in jobs if not (j.owner.uid in summarised and j.state in _WAITING)]
    summaries = []
    for uid in summarised:
        js = waiting_of[uid]
        summaries.append(WaitingSummary(
            user=js[0].owner.user, pending=sum(j.state is JobState.PENDING for j in js),
            held=sum(j.state is JobState.HELD for j in js),
            gpus=sum(j.spec.resources.gpus for j in js),
            first_id=min(j.id for j in js), last_id=max(j.id for j in js)))
    return shown, sorted(summaries, key=lambda s: s.first_id)
