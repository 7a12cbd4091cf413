"""One accounting of run time, attained GPU-time and time left (gpuq/accounting.py; SIMULATED GPUs)."""

from __future__ import annotations

import math

from gpuq import accounting
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources


def _job(res: Resources, limit=None, **kw) -> Job:
    return Job(1, JobSpec(("x",), "/", resources=res, time_limit_s=limit), Owner(1, 1, "u"), JobState.PENDING, 0.0, **kw)


def _run(j: Job, started_at: float, reserved=(80 * 1024,), total=(80 * 1024,)) -> Job:
    n = len(reserved)
    p = Placement("n", tuple(f"g{i}" for i in range(n)), tuple(range(n)), tuple(reserved), (None,) * n, tuple(total))
    return j.transition(JobState.RUNNING, placement=p, placed_at=started_at, started_at=started_at)


def test_a_shared_job_attains_gpu_time_by_its_memory_share():
    j = _run(_job(Resources(gpus=1, mem_mib=20 * 1024)), 100.0, reserved=(20 * 1024,))
    assert accounting.gpu_share(j) == 0.25
    assert accounting.attained_gpu_s(j, 500.0) == 100.0  # 400 s x 0.25
    whole = _run(_job(Resources(gpus=2)), 100.0, reserved=(81920, 81920), total=(81920, 81920))
    assert accounting.attained_gpu_s(whole, 500.0) == 800.0


def test_the_time_limit_counts_every_run_across_requeues():
    j = _run(_job(Resources(gpus=1), limit=1000.0), 0.0)
    assert accounting.time_left_s(j, 600.0) == 400.0
    # preempted after 600 s: requeued with the run recorded, then placed again
    back = j.transition(JobState.PENDING, requeues=1, **accounting.end_of_run(j, 600.0))
    assert (back.total_run_s, back.last_run_s, back.attained_gpu_s) == (600.0, 600.0, 600.0)
    again = _run(back, 5000.0)
    assert accounting.time_left_s(again, 5300.0) == 100.0
    assert not accounting.out_of_time(again, 5400.0)
    assert accounting.out_of_time(again, 5401.0)  # 600 + 401 s > 1000 s: it does not restart
    assert accounting.expected_end(again, 5300.0) == 5400.0


def test_no_time_limit_means_unbounded_and_a_cpu_job_attains_no_gpu_time():
    j = _run(_job(Resources(gpus=0)), 0.0, reserved=(), total=())
    assert accounting.time_left_s(j, 10.0) == math.inf and not accounting.out_of_time(j, 1e12)
    assert accounting.expected_end(j, 10.0) == math.inf
    assert accounting.end_of_run(j, 10.0)["attained_gpu_s"] == 0.0
    # a placed job that no worker claimed yet has not started running
    placed = j.with_changes(started_at=None)
    assert accounting.current_run_s(placed, 100.0) == 0.0
