"""Unit tests of the pure scheduling policy (SIMULATED GPUs: no GPU exists here)."""

from __future__ import annotations

import pytest

from gpuq.errors import ConfigError
from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources, StopKind, StopRequest
from gpuq.scheduler.config import UserLimits
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.policy import plan

GIB = 1024


def node(name: str, n: int = 4, mem_mib: int = 16 * GIB, used=None) -> NodeSnapshot:
    used = used or {}
    return NodeSnapshot(name, tuple(GpuInfo(i, f"{name}-g{i}", "SIMULATED", mem_mib, used.get(i, 0), simulated=True)
                                    for i in range(n)), 0.0, simulated=True)


def job(i, user="alice", gpus=1, sub=0.0, state=JobState.PENDING, res=None, attained_gpu_s=0.0, total_run_s=0.0,
        **spec) -> Job:
    return Job(i, JobSpec(("python", "train.py"), "/", resources=res or Resources(gpus=gpus), **spec),
               Owner(1000, 1000, user), state, sub, attained_gpu_s=attained_gpu_s, total_run_s=total_run_s)


def running(j: Job, nodes, gpu_idx, started_at=0.0, node_i=0) -> Job:
    n = nodes[node_i]
    gs = [n.gpus[i] for i in gpu_idx]
    res = j.spec.resources
    p = Placement(n.node, tuple(g.uuid for g in gs), tuple(g.index for g in gs),
                  tuple(res.request_mib(g.mem_total_mib) for g in gs),
                  tuple(res.limit_mib(g.mem_total_mib) for g in gs), tuple(g.mem_total_mib for g in gs))
    return j.transition(JobState.RUNNING, placement=p, placed_at=started_at, started_at=started_at)


def test_whole_gpu_jobs_start_best_fit_and_the_rest_get_reasons():
    nodes = [node("a", 4), node("b", 2)]
    p = plan([job(1, gpus=2), job(2, gpus=4), job(3, gpus=2), job(4, gpus=1)], [], nodes, {}, PolicyConfig(policy="fifo"), 10.0)
    started = {s.job_id: s.placement for s in p.starts}
    assert started[1].node == "b"  # best fit: the node that is left with least
    assert started[2].node == "a"
    assert set(p.reasons) == {3, 4}
    assert p.reasons[3] == "needs 2 GPUs on one node; at most 0 free"
    assert "1 earlier job is ahead" in p.reasons[4]


def test_held_dependency_and_never_fits_reasons():
    nodes = [node("a", 2)]
    pend = [job(1, state=JobState.HELD), job(2, after=(12,)), job(3, gpus=8)]
    p = plan(pend, [], nodes, {}, PolicyConfig(), 0.0, finished={})
    assert p.reasons[1] == "held"
    assert p.reasons[2] == "after job 12"
    assert "largest node has 2" in p.reasons[3]
    p2 = plan([job(2, after=(12,))], [], nodes, {}, PolicyConfig(), 0.0, finished={12: JobState.COMPLETED})
    assert [s.job_id for s in p2.starts] == [2]
    p3 = plan([job(2, after=(12,))], [], nodes, {}, PolicyConfig(), 0.0, finished={12: JobState.FAILED})
    assert "never start" in p3.reasons[2]


def test_user_gpu_limit():
    nodes = [node("a", 8)]
    cfg = PolicyConfig(default_limits=UserLimits(max_gpus=4), user_limits={"bob": UserLimits(max_gpus=1)})
    run = [running(job(1, gpus=4), nodes, [0, 1, 2, 3])]
    p = plan([job(2), job(3, user="bob"), job(4, user="bob")], run, nodes, {}, cfg, 1.0)
    assert [s.job_id for s in p.starts] == [3]
    assert p.reasons[2] == "user limit: you have 4/4 GPUs in use"
    assert p.reasons[4] == "user limit: you have 1/1 GPUs in use"


def test_fair_share_orders_light_user_first():
    nodes = [node("a", 1)]
    pend = [job(1, user="heavy", sub=0.0), job(2, user="light", sub=50.0)]
    usage = {"heavy": {"gpu_s": 1e6, "at": 100.0}}
    p = plan(pend, [], nodes, usage, PolicyConfig(policy="default"), 100.0)
    assert [s.job_id for s in p.starts] == [2]
    assert p.reasons[1].startswith("needs 1 GPU on one node")
    fifo = plan(pend, [], nodes, usage, PolicyConfig(policy="fifo"), 100.0)
    assert [s.job_id for s in fifo.starts] == [1]


def test_running_jobs_usage_counts():
    nodes = [node("a", 2)]
    run = [running(job(1, user="busy"), nodes, [0], started_at=0.0)]
    pend = [job(2, user="busy", sub=0.0), job(3, user="idle", sub=10.0)]
    p = plan(pend, run, nodes, {}, PolicyConfig(), 3600.0)
    assert [s.job_id for s in p.starts] == [3]


def test_explicit_priority_tier_goes_first():
    nodes = [node("a", 1)]
    pend = [job(1, sub=0.0), job(2, sub=5.0, priority=5)]
    p = plan(pend, [], nodes, {}, PolicyConfig(policy="fifo"), 10.0)
    assert [s.job_id for s in p.starts] == [2]


def test_fractional_best_fit_prefers_shared_gpu():
    nodes = [node("a", 2, mem_mib=16 * GIB)]
    run = [running(job(1, res=Resources(gpus=1, mem_mib=8 * GIB)), nodes, [1])]
    p = plan([job(2, res=Resources(gpus=1, mem_mib=6 * GIB))], run, nodes, {}, PolicyConfig(), 0.0)
    assert p.starts[0].placement.gpu_indices == (1,)  # packs next to job 1, keeps GPU 0 whole
    p2 = plan([job(2, res=Resources(gpus=1, mem_mib=10 * GIB))], run, nodes, {}, PolicyConfig(), 0.0)
    assert p2.starts[0].placement.gpu_indices == (0,)


def test_nvml_used_memory_counts():
    nodes = [node("a", 1, mem_mib=16 * GIB, used={0: 12 * GIB})]
    p = plan([job(1, res=Resources(gpus=1, mem_mib=8 * GIB)), job(2)], [], nodes, {}, PolicyConfig(), 0.0)
    assert not p.starts
    assert "most free is 4.0 GiB" in p.reasons[1]


def test_backfill_short_job_uses_held_gpus_long_one_does_not():
    nodes = [node("a", 4)]
    run = [running(job(1, gpus=2, time_limit_s=1000.0), nodes, [0, 1], started_at=0.0)]
    pend = [job(2, gpus=4, sub=1.0), job(3, gpus=1, sub=2.0, time_limit_s=500.0),
            job(4, gpus=1, sub=3.0, time_limit_s=5000.0), job(5, gpus=1, sub=4.0)]
    p = plan(pend, run, nodes, {}, PolicyConfig(policy="fifo", backfill=True), 100.0)
    assert [s.job_id for s in p.starts] == [3]  # ends at 600 < shadow 1000
    assert "expected to start in" in p.reasons[2]
    assert "held for job 2" in p.reasons[4] and "held for job 2" in p.reasons[5]


def test_plain_fifo_head_blocks():
    nodes = [node("a", 4)]
    run = [running(job(1, gpus=2), nodes, [0, 1])]
    p = plan([job(2, gpus=4, sub=1.0), job(3, gpus=1, sub=2.0)], run, nodes, {}, PolicyConfig(policy="fifo"), 5.0)
    assert not p.starts
    assert "job 2 goes first" in p.reasons[3]
    p2 = plan([job(2, gpus=4, sub=1.0), job(3, gpus=1, sub=2.0)], run, nodes, {}, PolicyConfig(policy="default"), 5.0)
    assert not p2.starts  # unbounded job 3 may not take GPUs held for job 2 ...
    nodes2 = [node("a", 4), node("b", 1)]
    p3 = plan([job(2, gpus=4, sub=1.0), job(3, gpus=1, sub=2.0)], run, nodes2, {}, PolicyConfig(policy="default"), 5.0)
    assert [s.job_id for s in p3.starts] == [3]  # ... but may use GPUs the head job does not need


def test_fairshare_preemption_of_over_share_user():
    nodes = [node("a", 2)]
    cfg = PolicyConfig(policy="fairshare", preemption="checkpointable", preempt_wait_s=600.0, min_run_s=60.0)
    run = [running(job(1, user="hog", checkpointable=True), nodes, [0], started_at=0.0),
           running(job(2, user="hog", checkpointable=True), nodes, [1], started_at=50.0)]
    usage = {"hog": {"gpu_s": 5e5, "at": 1000.0}}
    waiting = job(3, user="newbie", sub=100.0)
    p = plan([waiting], run, nodes, usage, cfg, 1000.0)
    assert [x.job_id for x in p.preempts] == [2]  # one is enough; the later-started one
    assert "over their share" in p.preempts[0].reason
    # not before the wait threshold
    assert not plan([waiting], run, nodes, usage, cfg, 650.0).preempts
    # not when preemption is off, not non-checkpointable jobs
    assert not plan([waiting], run, nodes, usage, PolicyConfig(policy="fairshare"), 1000.0).preempts
    run2 = [running(job(1, user="hog"), nodes, [0]), running(job(2, user="hog"), nodes, [1])]
    assert not plan([waiting], run2, nodes, usage, cfg, 1000.0).preempts
    # a job already being preempted counts as leaving: no second victim
    stopping = [run[0], run[1].with_changes(stop_request=StopRequest(StopKind.PREEMPT, 999.0))]
    assert not plan([waiting], stopping, nodes, usage, cfg, 1000.0).preempts


def test_min_run_time_guards_against_thrashing():
    nodes = [node("a", 1)]
    cfg = PolicyConfig(policy="las", preemption="checkpointable", min_run_s=600.0)
    long = running(job(1, checkpointable=True, attained_gpu_s=50000.0), nodes, [0], started_at=0.0)
    assert not plan([job(2, sub=10.0)], [long], nodes, {}, cfg, 300.0).preempts
    p = plan([job(2, sub=10.0)], [long], nodes, {}, cfg, 700.0)
    assert [x.job_id for x in p.preempts] == [1]
    assert "less GPU time" in p.preempts[0].reason


def test_las_orders_by_attained_service():
    nodes = [node("a", 1)]
    cfg = PolicyConfig(policy="las")
    pend = [job(1, sub=0.0, attained_gpu_s=40000.0), job(2, sub=50.0)]
    p = plan(pend, [], nodes, {}, cfg, 100.0)
    assert [s.job_id for s in p.starts] == [2]


def test_sjf_and_srtf_order_by_time_left():
    nodes = [node("a", 1)]
    pend = [job(1, sub=0.0, time_limit_s=9000.0), job(2, sub=5.0, time_limit_s=100.0),
            job(3, sub=6.0, time_limit_s=9000.0, attained_gpu_s=8950.0, total_run_s=8950.0)]
    assert [s.job_id for s in plan(pend, [], nodes, {}, PolicyConfig(policy="sjf"), 10.0).starts] == [2]
    assert [s.job_id for s in plan(pend, [], nodes, {}, PolicyConfig(policy="srtf"), 10.0).starts] == [3]


def test_gang_placement_across_nodes_only_when_enabled():
    nodes = [node("a", 4), node("b", 4)]
    j = job(1, gpus=6)
    p = plan([j], [], nodes, {}, PolicyConfig(), 0.0)
    assert not p.starts and "largest node has 4" in p.reasons[1]
    p2 = plan([j], [], nodes, {}, PolicyConfig(gang=True), 0.0)
    assert len(p2.starts[0].placement.gpu_uuids) == 6
    assert p2.starts[0].placement.node == "a+b"


def test_pending_index_matches_list_and_stays_sorted():
    cfg = PolicyConfig(policy="default")
    jobs = [job(i, user=u, sub=float(10 - i)) for i, u in enumerate("ababcab", start=1)]
    idx = PendingIndex(cfg, jobs)
    idx.remove(3)
    idx.add(job(3, user="a", sub=100.0))
    nodes = [node("a", 8)]
    by_idx = plan(idx, [], nodes, {}, cfg, 200.0)
    by_list = plan(list(idx), [], nodes, {}, cfg, 200.0)
    assert by_idx == by_list
    assert len(idx) == 7


@pytest.mark.parametrize("table,msg", [
    ({"policy": "lottery"}, "policy 'lottery' is unknown"),
    ({"half_life": "soon"}, "not a duration"),
    ({"shares": {"alice": -1}}, "larger than zero"),
    ({"limits": {"bob": {"max_gpus": "four"}}}, "whole number"),
    ({"preemption": "always"}, "preemption 'always' is unknown"),
    ({"colour": "blue"}, "'colour' is unknown"),
    ({"backfill": "yes"}, "true or false"),
    ({"starve_run_factor": -1}, "starve_run_factor must not be negative"),
    ({"starve_run_factor": float("nan")}, "starve_run_factor must be a finite number"),
    ({"starve_run_factor": float("inf")}, "starve_run_factor must be a finite number"),
    ({"weight_age": float("nan")}, "weight_age must be a finite number"),
    ({"shares": {"alice": float("inf")}}, "must be finite numbers"),
    ({"las_thresholds_gpu_s": [3600.0, float("inf")]}, "must be finite numbers"),
])
def test_config_errors_are_one_sentence(table, msg):
    with pytest.raises(ConfigError, match=msg):
        PolicyConfig.from_mapping(table)


def test_config_from_mapping():
    cfg = PolicyConfig.from_mapping({
        "policy": "fairshare", "half_life": "2d", "preemption": "checkpointable", "min_run": "5m",
        "max_gpus": 8, "max_pending": 50, "shares": {"alice": 2, "gid:1001": 4},
        "limits": {"alice": {"max_gpus": 16}}, "backfill": False, "weight_age": 10,
    })
    assert cfg.half_life_s == 2 * 86400 and cfg.min_run_s == 300
    assert cfg.limits_for("alice") == UserLimits(max_gpus=16, max_pending=50)
    assert cfg.limits_for("bob") == UserLimits(max_gpus=8, max_pending=50)
    assert cfg.share_for("alice") == 2 and cfg.share_for("carol", (1001,)) == 4 and cfg.share_for("dan") == 1
    assert cfg.backfill_on is False and cfg.weight_age == 10.0


def test_las_starvation_guard_promotes_a_long_waiting_job():
    nodes = [node("a", 1)]
    old = job(1, sub=0.0, attained_gpu_s=40000.0, total_run_s=40000.0)  # ran 40,000 s, then waited 60,000 s
    new = job(2, sub=99000.0)
    off = plan([old, new], [], nodes, {}, PolicyConfig(policy="las", starve_after_s=0), 100000.0)
    assert [s.job_id for s in off.starts] == [2]
    on = plan([old, new], [], nodes, {}, PolicyConfig(policy="las", las_starve_factor=1.0), 100000.0)
    assert [s.job_id for s in on.starts] == [1]
    idx = PendingIndex(PolicyConfig(policy="las", las_starve_factor=1.0), [old, new])
    assert plan(idx, [], nodes, {}, PolicyConfig(policy="las", las_starve_factor=1.0), 100000.0) == on


def test_after_any_after_notok_and_array_throttle():
    from gpuq.jobs.model import ArrayMember, JobSpec
    from gpuq.scheduler.dependencies import dependency_never

    nodes = [node("a", 4)]

    def dep_job(i, **kw):
        j = job(i, gpus=1)
        return j.with_changes(spec=JobSpec(argv=j.spec.argv, cwd="/", resources=j.spec.resources, **kw))

    any_ = dep_job(2, after_any=(12,))
    notok = dep_job(3, after_notok=(12,))
    p = plan([any_, notok], [], nodes, {}, PolicyConfig(), 0.0, finished={})
    assert p.reasons == {2: "after-any job 12", 3: "after-notok job 12"}
    p = plan([any_, notok], [], nodes, {}, PolicyConfig(), 0.0, finished={12: JobState.CANCELLED})
    assert sorted(s.job_id for s in p.starts) == [2, 3]
    assert "never start" in plan([notok], [], nodes, {}, PolicyConfig(), 0.0, finished={12: JobState.COMPLETED}).reasons[3]
    assert dependency_never(notok, {12: JobState.COMPLETED}) is not None
    assert dependency_never(any_, {12: JobState.FAILED}) is None

    members = [dep_job(10 + i, array=ArrayMember(array_id=10, index=i, size=4, limit=2)) for i in range(4)]
    p = plan(members, [], nodes, {}, PolicyConfig(), 0.0)
    assert [s.job_id for s in p.starts] == [10, 11]
    assert "at most 2 at once" in p.reasons[12] and "at most 2 at once" in p.reasons[13]


def test_the_head_jobs_hold_stands_against_later_jobs_of_other_users():
    """A 2-GPU head job waits for a node to drain: a later 1-GPU job of another user, without a
    time limit, does not take the GPU held for it (it could not be sure to leave in time)."""
    nodes = [node("a", 2)]
    busy = running(job(1, user="carl", checkpointable=False), nodes, [0], started_at=0.0)
    pend = [job(2, user="ann", gpus=2, sub=10.0), job(3, user="bob", sub=20.0)]
    for cfg in (PolicyConfig(), PolicyConfig(policy="las"), PolicyConfig(policy="fairshare")):
        p = plan(pend, [busy], nodes, {}, cfg, 100.0)
        assert p.starts == (), cfg.policy
        assert "held for job 2" in p.reasons[3], p.reasons
    # a later job that surely ends before the head can start may still use the held GPU
    timed = running(job(1, user="carl", time_limit_s=1000.0), nodes, [0], started_at=0.0)
    short = job(3, user="bob", sub=20.0, time_limit_s=300.0)
    p = plan([pend[0], short], [timed], nodes, {}, PolicyConfig(), 100.0)
    assert [s.job_id for s in p.starts] == [3]
