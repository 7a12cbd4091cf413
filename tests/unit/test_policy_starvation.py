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


def _wait_of_wide(trace, policy: str, starve_after_s: float, gpus: int, checkpointable: bool):
    res = simulate(trace, SimConfig(policy=policy, layout=((1, gpus, 32768),), time_limits="none",
                                    overrides={"starve_after_s": starve_after_s, "preempt_wait_s": 1e9}))
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
