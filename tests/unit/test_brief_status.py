"""The bounded default view of `gpuq status` (gpuq/daemon/brief.py) and its rendering."""

from __future__ import annotations

import pytest

from gpuq.cli.queue_view import jobs_table
from gpuq.daemon.brief import brief
from gpuq.daemon.schema import parse_status_query
from gpuq.errors import InvalidInput
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources

ME, ALICE, BOB = Owner(1000, 1000, "me"), Owner(1001, 1001, "alice"), Owner(1002, 1002, "bob")


def _job(i: int, owner: Owner, state: JobState = JobState.PENDING, gpus: int = 1) -> Job:
    kw = {}
    if state is JobState.RUNNING:
        kw = dict(placement=Placement("n", ("GPU-0",), (0,), (24576,), (None,), (24576,)), placed_at=1.0, started_at=1.0)
    return Job(i, JobSpec(("x",), "/", resources=Resources(gpus=gpus)), owner, state, 0.0, **kw)


def test_others_waiting_jobs_beyond_the_limit_become_one_line_and_mine_and_running_stay():
    jobs = ([_job(1, ALICE, JobState.RUNNING)] + [_job(i, ALICE, gpus=2) for i in range(2, 1002)]
            + [_job(1002, ALICE, JobState.HELD)] + [_job(i, ME) for i in range(1003, 1023)]
            + [_job(i, BOB) for i in range(1023, 1026)])
    shown, summaries = brief(jobs, ME.uid, per_user=10)
    assert {j.id for j in shown} == {1} | set(range(1003, 1026))  # alice's running, all mine, bob's 3
    (s,) = summaries
    assert (s.user, s.pending, s.held, s.gpus, s.first_id, s.last_id) == ("alice", 1000, 1, 2001, 2, 1002)
    # at the limit nothing is summed up
    shown, summaries = brief(jobs[:11], ME.uid, per_user=10)
    assert len(shown) == 11 and summaries == []


def test_the_summary_is_one_table_line():
    text = jobs_table([], others_waiting=[{"user": "alice\x1b[2J", "pending": 1000, "held": 1, "gpus": 2001,
                                           "first_id": 2, "last_id": 1002}])
    lines = text.splitlines()
    assert len(lines) == 2 and "2-1002" in lines[1] and "1000 pending, 1 held" in lines[1]
    assert "\x1b" not in text and "gpuq status --user alice" in lines[1]


def test_the_status_query_takes_a_bounded_others():
    assert parse_status_query({"others": ["10"]}).others_per_user == 10
    assert parse_status_query({}).others_per_user is None
    for bad in ("-1", "x", "1001", "9" * 30):
        with pytest.raises(InvalidInput):
            parse_status_query({"others": [bad]})
