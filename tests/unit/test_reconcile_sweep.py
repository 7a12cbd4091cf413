"""The node's sweep of leftover cgroups never takes a job that is starting for a leftover.

The cgroups here are a recording stand-in (a unit test of the sweep's order of reads); the run
records are real files.  The real cgroups are swept in tests/integration/test_supervision.py."""

from __future__ import annotations

import os
from pathlib import Path

from gpuq.workers import reconcile, runrecord


class StartDuringSweep:
    """Job cgroups as the sweep sees them; the first listing races a start: the start's
    supervisor writes its run record and creates its cgroup while the listing is being made (so
    the listing already shows the cgroup), exactly as a start can land between two reads."""

    def __init__(self, home: Path, starting: int, leftover: int) -> None:
        self.home, self.starting, self.leftover = home, starting, leftover
        self.cgroups = {leftover}
        self.killed: list[int] = []
        self.removed: list[int] = []

    def jobs(self) -> list[int]:
        if self.starting not in self.cgroups:  # the start: record first, then the cgroup
            me = os.getpid()
            runrecord.write(self.home, runrecord.RunRecord(self.starting, 1.0, me, runrecord.proc_start_ticks(me) or 0))
            self.cgroups.add(self.starting)
        return sorted(self.cgroups)

    def kill_all(self, job_id: int, timeout_s: float = 5.0) -> None:
        self.killed.append(job_id)

    def remove(self, job_id: int) -> None:
        self.removed.append(job_id)
        self.cgroups.discard(job_id)


def test_a_job_starting_during_the_sweep_is_not_swept_and_a_real_leftover_is(tmp_path):
    c = StartDuringSweep(tmp_path, starting=7, leftover=3)
    swept = reconcile.sweep_leftovers(tmp_path, c, current={})  # type: ignore[arg-type]
    assert swept == [3] and c.killed == [3]  # the leftover (no record, not current) goes
    assert runrecord.read(tmp_path, 7) is not None  # the starting job's record stays, its cgroup too
    assert 7 in c.cgroups
