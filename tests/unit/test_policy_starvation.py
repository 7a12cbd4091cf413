"""The starvation guard (PolicyConfig.starve_after_s) and the head job's hold across users,
replayed by the simulator over the same plan() the daemon runs (SIMULATED GPUs)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuq.scheduler.sim import SimConfig, simulate
from gpuq.scheduler.traces import TraceJob

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STARVE_S = 2000.0  # per GPU


def _stream(wide_gpus: int, durations: list[int], gaps: list[int], wide_s: int) -> list[TraceJob]:
    """A heavy user's 1-GPU job, then their wide job, then a stream of 1-GPU jobs of light users
    that each pass the wide job in fair-share order (they have less usage)."""
    jobs = [TraceJob(100000, 0.0, 3000.0, 1, "heavy"), TraceJob(1, 1.0, float(wide_s), wide_gpus, "heavy")]
    t = 2.0
    for k, (d, gap) in enumerate(zip(durations, gaps)):
        jobs.append(TraceJob(k + 2, t, float(d), 1, f"light{k % 3}"))
        t += gap
    return jobs


def _run(trace, policy: str, starve_after_s: float, gpus: int, run_factor: float = 1.0):
    return simulate(trace, SimConfig(policy=policy, layout=((1, gpus, 32768),), time_limits="none",
                                     overrides={"starve_after_s": starve_after_s, "preempt_wait_s": 1e9,
                                                "starve_run_factor": run_factor}))


def _wait_of_wide(trace, policy: str, starve_after_s: float, gpus: int, checkpointable: bool):
    res = _run(trace, policy, starve_after_s, gpus)
    wide = next(r for r in res.records if r.id == 1)
    assert wide.first_start_s is not None, "the wide job never started"
    # jobs whose own bound ran out before the wide job's and that were still waiting then go first
    bound = wide.submit_s + starve_after_s * wide.gpus
    earlier = [r for r in res.records if r.id != 1 and r.submit_s + starve_after_s * r.gpus < bound
               and (r.first_start_s or 0) > bound]
    return wide.first_start_s - wide.submit_s, len(earlier)


@SETTINGS
@given(gpus=st.integers(2, 4), data=st.data())
def test_a_wide_job_waits_at_most_its_bound_whatever_the_stream(gpus, data):
    """Bound: a job of g GPUs waits at most starve_after_s x g; then it goes first (after the jobs
    whose own bound ran out earlier and still wait, each served the same way), and no job that it
    precedes takes the GPUs held for it, so it waits at most until the jobs running then end:
    the longest duration D in the trace, once per job served before it."""
    wide = data.draw(st.integers(2, gpus))
    n = data.draw(st.integers(5, 40))
    durations = data.draw(st.lists(st.integers(100, 3000), min_size=n, max_size=n))
    gaps = data.draw(st.lists(st.integers(10, 600), min_size=n, max_size=n))
    policy = data.draw(st.sampled_from(["default", "fairshare", "las"]))
    trace = _stream(wide, durations, gaps, 500)
    wait, earlier = _wait_of_wide(trace, policy, STARVE_S, gpus, True)
    assert wait <= STARVE_S * wide + (1 + earlier) * max(durations + [3000]) + 1.0


def test_without_the_guard_a_stream_of_small_jobs_starves_a_wide_one():
    """The bound above is real: with the guard off, the same kind of stream keeps a 2-GPU job
    waiting far longer (the property test could fail)."""
    trace = _stream(2, [2500] * 60, [1200] * 60, 500)
    off, _ = _wait_of_wide(trace, "default", 0.0, 2, True)
    on, earlier = _wait_of_wide(trace, "default", STARVE_S, 2, True)
    assert on <= STARVE_S * 2 + (1 + earlier) * 3000 + 1.0
    assert off > STARVE_S * 2 + 3000 + 1.0 > on  # without the guard the bound does not hold


def _bound_with_runs(res, starve_after_s: float, run_factor: float, longest_s: float):
    """The wide job's waiting in all, and its bound: ``starve_after_s`` x its GPUs, plus
    ``run_factor`` x the time it ran before its last start (at most its whole run), plus, once,
    the time the jobs running then need to end for itself and for each job served before it by
    the guard (every other job that ever starved, once per run it had), plus the simulator's
    preemption cost for each of its own preemptions."""
    wide = next(r for r in res.records if r.id == 1)
    assert wide.end_s is not None, "the wide job never ended"
    waited = wide.end_s - wide.submit_s - wide.total_run_s
    starved_before = sum(1 + r.preemptions for r in res.records if r.id != 1 and r.end_s is not None
                         and r.end_s - r.submit_s - r.total_run_s >= starve_after_s * r.gpus)
    bound = (starve_after_s * wide.gpus + run_factor * wide.total_run_s
             + (1 + starved_before) * longest_s + 30.0 * (wide.preemptions + 1) + 1.0)
    return wide, waited, bound


@SETTINGS
@given(gpus=st.integers(2, 4), data=st.data())
def test_a_long_wide_job_that_las_preempts_waits_at_most_its_bound_plus_its_run(gpus, data):
    """With ``starve_run_factor`` k (default 1) a job whose earlier runs were preempted (LAS sends
    a long job back behind new ones) is put first only once it waited its bound plus k x the time
    it ran; a run that starts starved is never preempted.  So its waiting in all never exceeds
    ``starve_after_s`` x GPUs + k x its run time + the drain terms, however the stream goes."""
    wide_gpus = data.draw(st.integers(2, gpus))
    n = data.draw(st.integers(5, 40))
    durations = data.draw(st.lists(st.integers(100, 3000), min_size=n, max_size=n))
    gaps = data.draw(st.lists(st.integers(10, 600), min_size=n, max_size=n))
    wide_s = data.draw(st.integers(3000, 20000))
    policy = data.draw(st.sampled_from(["default", "las"]))
    run_factor = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    res = _run(_stream(wide_gpus, durations, gaps, wide_s), policy, STARVE_S, gpus, run_factor)
    _wide, waited, bound = _bound_with_runs(res, STARVE_S, run_factor, max(durations + [3000]))
    assert waited <= bound


def test_a_preempted_long_job_waits_past_its_size_bound_but_within_its_run_bound():
    """The run term is used: LAS preempts the long 2-GPU job for the stream of new 1-GPU jobs,
    it waits longer than ``starve_after_s`` x 2 in all, and still within the bound with its run."""
    trace = _stream(2, [1500] * 80, [200] * 80, 15000)
    res = _run(trace, "default", STARVE_S, 4)
    wide, waited, bound = _bound_with_runs(res, STARVE_S, 1.0, 3000)
    assert wide.preemptions >= 1
    assert STARVE_S * 2 < waited <= bound
