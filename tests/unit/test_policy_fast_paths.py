"""plan()'s fast paths decide exactly what the plain call decides (SIMULATED GPUs):

- the daemon keeps the index of pending jobs from cycle to cycle (``PendingIndex.sync``);
- the simulator asks for no reasons (``explain=False``), so the scan stops as soon as nothing
  more could start.
Reference: plan() on the plain list of pending jobs, with every reason."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuq.jobs.model import JobState
from gpuq.scheduler import ordering
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.policy import plan
from tests.unit.test_policy_properties import job_st, make_nodes, nodes_st, pending_jobs, place_running

POLICIES = ("fifo", "sjf", "srtf", "default", "fairshare", "las")
#: what changes between two cycles: (jobs that leave, new jobs, jobs that change)
cycle_st = st.tuples(st.lists(st.integers(0, 30), max_size=4), st.lists(job_st, max_size=4),
                     st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["held", "attained", "pending"])),
                              max_size=3))


def _changed(job, how):
    if how == "held":
        return dataclasses.replace(job, state=JobState.HELD)
    if how == "attained":
        return dataclasses.replace(job, attained_gpu_s=job.attained_gpu_s + 5000.0, total_run_s=job.total_run_s + 900)
    return dataclasses.replace(job, state=JobState.PENDING)


def _same(a, b):
    assert a.starts == b.starts
    assert a.preempts == b.preempts
    assert dict(a.reasons) == dict(b.reasons)


@pytest.mark.parametrize("bulk_after", [ordering._BULK_AFTER, 0])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(shape=nodes_st, run_specs=st.lists(job_st, max_size=6), first=st.lists(job_st, max_size=12),
       cycles=st.lists(cycle_st, min_size=1, max_size=4), policy=st.sampled_from(POLICIES),
       preempt=st.booleans())
def test_kept_index_decides_as_the_plain_list(monkeypatch, bulk_after, shape, run_specs, first, cycles, policy,
                                              preempt):
    monkeypatch.setattr(ordering, "_BULK_AFTER", bulk_after)  # 0: every sync with a change reloads in bulk
    nodes = make_nodes(shape)
    running = place_running(nodes, run_specs)
    cfg = PolicyConfig(policy=policy, preemption="checkpointable" if preempt else "off", preempt_wait_s=0,
                       min_run_s=0, starve_after_s=3600.0)
    usage = {"ann": {"gpu_s": 50000.0, "at": 500.0}, "ben": {"gpu_s": 100.0, "at": 900.0}}
    pending = pending_jobs(first)
    next_id = 1000
    kept = PendingIndex(cfg)
    now = 2000.0
    for leave, new, change in [((), (), ())] + cycles:
        by_pos = list(pending)
        gone = {by_pos[i].id for i in leave if i < len(by_pos)}
        changes = {by_pos[i].id: how for i, how in change if i < len(by_pos)}
        pending = [_changed(j, changes[j.id]) if j.id in changes else j for j in pending if j.id not in gone]
        for j in pending_jobs(new):
            pending.append(dataclasses.replace(j, id=next_id))
            next_id += 1
        kept.sync(pending)
        assert sorted(j.id for j in kept) == sorted(j.id for j in pending)
        reference = plan(list(pending), running, nodes, usage, cfg, now)
        _same(plan(kept, running, nodes, usage, cfg, now), reference)
        quiet = plan(kept, running, nodes, usage, cfg, now, explain=False)
        assert (quiet.starts, quiet.preempts) == (reference.starts, reference.preempts)
        now += 4000.0
