"""Property tests of plan() (hypothesis; SIMULATED GPUs)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.scheduler.config import UserLimits
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.policy import plan

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USERS = ("ann", "ben", "cat")
POLICIES = ("fifo", "sjf", "default", "fairshare", "las")


def make_nodes(shape):
    return [NodeSnapshot(f"n{k}", tuple(GpuInfo(i, f"n{k}-g{i}", "SIMULATED", mem, used, simulated=True)
                                        for i, (mem, used) in enumerate(gpus)), 0.0, simulated=True)
            for k, gpus in enumerate(shape)]


gpu_st = st.tuples(st.sampled_from([8192, 16384, 24576]), st.sampled_from([0, 0, 0, 500, 4096, 12000]))
nodes_st = st.lists(st.lists(gpu_st, min_size=1, max_size=4), min_size=1, max_size=3)
res_st = st.one_of(
    st.builds(Resources, gpus=st.integers(1, 4)),
    st.builds(Resources, gpus=st.integers(1, 2), mem_mib=st.sampled_from([1024, 3000, 6000, 10000])),
    st.builds(Resources, gpus=st.just(1), fraction=st.sampled_from([0.25, 0.5, 0.75])),
)
job_st = st.tuples(res_st, st.sampled_from(USERS), st.integers(0, 1000),
                   st.one_of(st.none(), st.sampled_from([100.0, 1000.0, 10000.0])), st.integers(0, 1))


def pending_jobs(specs, after=None):
    out = []
    for k, (res, user, sub, tl, prio) in enumerate(specs):
        deps = after.get(k, ()) if after else ()
        out.append(Job(100 + k, JobSpec(("x",), "/", resources=res, time_limit_s=tl, priority=prio, after=deps),
                       Owner(1, 1, user), JobState.PENDING, float(sub)))
    return out


def place_running(nodes, specs):
    """Running jobs placed validly by a simple first-fit (independent of the policy under test)."""
    reserved = {g.uuid: 0 for n in nodes for g in n.gpus}
    holders = {g.uuid: 0 for n in nodes for g in n.gpus}
    out = []
    for k, (res, user, sub, tl, _prio) in enumerate(specs):
        for n in nodes:
            ok = []
            for g in n.gpus:
                free = g.mem_total_mib - max(reserved[g.uuid], g.mem_used_mib)
                if res.whole_gpus:
                    good = holders[g.uuid] == 0 and g.mem_used_mib <= 1024
                else:
                    good = free >= res.request_mib(g.mem_total_mib)
                if good:
                    ok.append(g)
            if len(ok) >= res.gpus:
                gs = ok[: res.gpus]
                for g in gs:
                    reserved[g.uuid] += res.request_mib(g.mem_total_mib)
                    holders[g.uuid] += 1
                p = Placement(n.node, tuple(g.uuid for g in gs), tuple(g.index for g in gs),
                              tuple(res.request_mib(g.mem_total_mib) for g in gs),
                              tuple(res.limit_mib(g.mem_total_mib) for g in gs), tuple(g.mem_total_mib for g in gs))
                j = Job(k + 1, JobSpec(("x",), "/", resources=res, time_limit_s=tl, checkpointable=True),
                        Owner(1, 1, user), JobState.RUNNING, float(sub), placement=p, placed_at=float(sub),
                        started_at=float(sub))
                out.append(j)
                break
    return out


@SETTINGS
@given(nodes_st, st.lists(job_st, max_size=6), st.lists(job_st, max_size=10), st.sampled_from(POLICIES))
def test_never_overcommits_memory_or_gpus(shape, run_specs, pend_specs, policy):
    nodes = make_nodes(shape)
    running = place_running(nodes, run_specs)
    pending = pending_jobs(pend_specs)
    p = plan(pending, running, nodes, {}, PolicyConfig(policy=policy), 2000.0)
    gpu = {g.uuid: g for n in nodes for g in n.gpus}
    node_of = {g.uuid: n.node for n in nodes for g in n.gpus}
    reserved = {u: 0 for u in gpu}
    whole = {u: 0 for u in gpu}
    holders = {u: 0 for u in gpu}
    by_id = {j.id: j for j in pending}
    for j in running:
        for u, mib in zip(j.placement.gpu_uuids, j.placement.reserved_mib):
            reserved[u] += mib
            holders[u] += 1
            whole[u] += j.spec.resources.whole_gpus
    for s in p.starts:
        res = by_id[s.job_id].spec.resources
        pl = s.placement
        assert len(pl.gpu_uuids) == res.gpus == len(set(pl.gpu_uuids))
        assert {node_of[u] for u in pl.gpu_uuids} == {pl.node}
        for u, mib in zip(pl.gpu_uuids, pl.reserved_mib):
            g = gpu[u]
            if res.whole_gpus:
                assert holders[u] == 0 and g.mem_used_mib <= 1024
            else:
                assert whole[u] == 0
                assert mib <= g.mem_total_mib - max(reserved[u], g.mem_used_mib)  # fits in what is free
            reserved[u] += mib
            holders[u] += 1
            whole[u] += res.whole_gpus
    started = {s.job_id for s in p.starts}
    assert set(p.reasons) == {j.id for j in pending} - started


@SETTINGS
@given(nodes_st, st.lists(job_st, min_size=1, max_size=8), st.data())
def test_never_starts_before_dependency(shape, pend_specs, data):
    nodes = make_nodes(shape)
    n = len(pend_specs)
    after = {k: (100 + data.draw(st.integers(0, n - 1)),) for k in range(n) if data.draw(st.booleans())}
    pending = pending_jobs(pend_specs, after)
    done = data.draw(st.dictionaries(st.integers(100, 100 + n - 1),
                                     st.sampled_from([JobState.COMPLETED, JobState.FAILED]), max_size=n))
    p = plan(pending, [], nodes, {}, PolicyConfig(), 5000.0, finished=done)
    by_id = {j.id: j for j in pending}
    for s in p.starts:
        for dep in by_id[s.job_id].spec.after:
            assert done.get(dep) is JobState.COMPLETED


@SETTINGS
@given(nodes_st, st.lists(job_st, max_size=6), st.lists(job_st, max_size=12), st.integers(0, 4),
       st.sampled_from(POLICIES))
def test_never_exceeds_user_gpu_limit(shape, run_specs, pend_specs, limit, policy):
    nodes = make_nodes(shape)
    running = place_running(nodes, run_specs)
    pending = pending_jobs(pend_specs)
    cfg = PolicyConfig(policy=policy, default_limits=UserLimits(max_gpus=limit))
    p = plan(pending, running, nodes, {}, cfg, 2000.0)
    by_id = {j.id: j for j in pending}
    for user in USERS:
        before = sum(j.spec.resources.gpus for j in running if j.owner.user == user)
        added = sum(by_id[s.job_id].spec.resources.gpus for s in p.starts if by_id[s.job_id].owner.user == user)
        if added:
            assert before + added <= limit


def earliest_start(gpus_needed, nodes, busy):
    """Earliest time a whole-GPU job fits on one node, given (uuid, end time) of the GPUs in use."""
    ends = {}
    for u, end in busy:
        ends[u] = max(ends.get(u, 0.0), end)
    best = math.inf
    for n in nodes:
        free_at = sorted(ends.get(g.uuid, 0.0) for g in n.gpus)
        if len(free_at) >= gpus_needed:
            best = min(best, free_at[gpus_needed - 1])
    return best


whole_job_st = st.tuples(st.integers(1, 4), st.one_of(st.none(), st.sampled_from([50.0, 300.0, 1000.0, 5000.0])))


bounded_st = st.tuples(st.integers(1, 2), st.sampled_from([50.0, 300.0, 1000.0, 5000.0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(2, 4), min_size=1, max_size=3), st.lists(bounded_st, min_size=1, max_size=6),
       st.integers(2, 4), st.lists(whole_job_st, min_size=1, max_size=10))
def test_backfill_never_delays_the_head_job(sizes, run_specs, head_gpus, rest_specs):
    pend_specs = [(head_gpus, None)] + rest_specs
    now = 1000.0
    nodes = make_nodes([[(16384, 0)] * s for s in sizes])
    running = place_running(nodes, [(Resources(gpus=g), "ann", 900, tl, 0) for g, tl in run_specs])
    pending = [Job(100 + k, JobSpec(("x",), "/", resources=Resources(gpus=g), time_limit_s=tl),
                   Owner(1, 1, "ann"), JobState.PENDING, float(k)) for k, (g, tl) in enumerate(pend_specs)]
    p = plan(pending, running, nodes, {}, PolicyConfig(policy="fifo", backfill=True), now)
    started = {s.job_id: s for s in p.starts}
    most = max(sizes)
    head = next((j for j in pending if j.id not in started and j.spec.resources.gpus <= most), None)
    if head is None:
        return

    def end(tl, start):
        return math.inf if tl is None else start + tl

    base = [(u, end(j.spec.time_limit_s, j.started_at) if j.spec.time_limit_s is None else
             max(now, j.started_at + j.spec.time_limit_s)) for j in running for u in j.placement.gpu_uuids]
    ahead = [(u, end(j.spec.time_limit_s, now)) for j in pending if j.id in started and j.submitted_at < head.submitted_at
             for u in started[j.id].placement.gpu_uuids]
    behind = [(u, end(j.spec.time_limit_s, now)) for j in pending if j.id in started and j.submitted_at > head.submitted_at
              for u in started[j.id].placement.gpu_uuids]
    planned = earliest_start(head.spec.resources.gpus, nodes, base + ahead)
    with_backfill = earliest_start(head.spec.resources.gpus, nodes, base + ahead + behind)
    assert with_backfill <= planned


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.lists(st.integers(0, 5000), min_size=1, max_size=10),
       st.integers(0, 5000), st.floats(1.0, 100.0), st.sampled_from(["default", "fairshare"]))
def test_heavy_user_never_starves_a_user_without_usage(n_nodes, per_node, heavy_subs, light_sub, heavy_days, policy):
    nodes = make_nodes([[(16384, 0)] * per_node] * n_nodes)
    now = 10000.0
    pending = [Job(200 + k, JobSpec(("x",), "/"), Owner(1, 1, "heavy"), JobState.PENDING, float(s))
               for k, s in enumerate(heavy_subs)]
    light = Job(999, JobSpec(("x",), "/"), Owner(2, 2, "light"), JobState.PENDING, float(light_sub))
    pending.append(light)
    usage = {"heavy": {"gpu_s": heavy_days * 86400.0, "at": now}}
    p = plan(pending, [], nodes, usage, PolicyConfig(policy=policy), now)
    assert light.id in {s.job_id for s in p.starts}
