"""CPU-only slots and GPU memory over-use in the pure placement (SIMULATED GPUs)."""

from __future__ import annotations

import dataclasses

from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.scheduler.config import UserLimits
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.policy import plan

GIB = 1024


def node(name: str, n: int = 2, cpu_slots: int | None = 2, overuse=None, used=None) -> NodeSnapshot:
    overuse, used = overuse or {}, used or {}
    return NodeSnapshot(name, tuple(GpuInfo(i, f"{name}-g{i}", "SIMULATED", 16 * GIB, used.get(i, 0), simulated=True,
                                            overuse_mib=overuse.get(i, 0)) for i in range(n)),
                        0.0, simulated=True, cpu_slots=cpu_slots)


def job(i, user="alice", gpus=0, res=None) -> Job:
    return Job(i, JobSpec(("sleep", "1"), "/", resources=res or Resources(gpus=gpus)), Owner(1000, 1000, user),
               JobState.PENDING, float(i))


def run(j: Job, where: str, uuids=(), mib=()) -> Job:
    return j.transition(JobState.RUNNING, placement=Placement(where, tuple(uuids), tuple(range(len(uuids))),
                                                             tuple(mib), tuple(mib), (16 * GIB,) * len(uuids)),
                        placed_at=0.0, started_at=0.0)


def test_cpu_only_jobs_take_bounded_slots_and_gpu_jobs_still_start():
    nodes = [node("a", cpu_slots=2)]
    cfg = PolicyConfig(policy="fifo", default_limits=UserLimits(max_cpu_jobs=10))
    pend = [job(i) for i in range(1, 6)] + [job(9, user="bob", gpus=1)]
    p = plan(pend, [], nodes, {}, cfg, 10.0)
    started = sorted(s.job_id for s in p.starts)
    assert started[:2] == [1, 2] and 9 in started and len(started) == 3
    assert p.reasons[3] == "all 2 CPU slots busy"


def test_cpu_slots_count_running_jobs_and_spread_over_nodes():
    nodes = [node("a", cpu_slots=1), node("b", cpu_slots=3)]
    cfg = PolicyConfig(policy="fifo", default_limits=UserLimits(max_cpu_jobs=10))
    p = plan([job(2), job(3), job(4)], [run(job(1), "b")], nodes, {}, cfg, 10.0)
    where = {s.job_id: s.placement.node for s in p.starts}
    assert where == {2: "b", 3: "b", 4: "a"} or sorted(where.values()) == ["a", "b", "b"]


def test_default_per_user_cpu_limit_is_half_the_slots():
    nodes = [node("a", cpu_slots=4)]
    p = plan([job(1), job(2), job(3), job(4, user="bob")], [], nodes, {}, PolicyConfig(policy="fifo"), 10.0)
    assert sorted(s.job_id for s in p.starts) == [1, 2, 4]
    assert p.reasons[3] == "user limit: you have 2/2 CPU-only jobs running"


def test_memory_taken_beyond_a_share_is_never_packed_onto():
    small = Resources(gpus=1, mem_mib=2 * GIB)
    # job 1 reserved 4 GiB but uses 12; job 3 reserved 8 GiB and has not allocated yet:
    # 12 + 8 of 16 GiB are taken, nothing is left for job 2
    over = node("a", n=1, overuse={0: 8 * GIB}, used={0: 12 * GIB})
    running = [run(job(1, gpus=1, res=Resources(gpus=1, mem_mib=4 * GIB)), "a", ["a-g0"], [4 * GIB]),
               run(job(3, gpus=1, res=Resources(gpus=1, mem_mib=8 * GIB)), "a", ["a-g0"], [8 * GIB])]
    p = plan([job(2, gpus=1, res=small)], running, [over], {}, PolicyConfig(policy="fifo"), 10.0)
    assert not p.starts, "packed onto memory job 1 took beyond its share"
    within = dataclasses.replace(over, gpus=(dataclasses.replace(over.gpus[0], overuse_mib=0, mem_used_mib=4 * GIB),))
    p2 = plan([job(2, gpus=1, res=small)], running, [within], {}, PolicyConfig(policy="fifo"), 10.0)
    assert [s.job_id for s in p2.starts] == [2]
