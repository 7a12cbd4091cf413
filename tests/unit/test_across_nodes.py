"""Jobs across nodes (``--nodes N``): the request, the pure placement, the record and the
distributed environment each part gets (SIMULATED GPUs: no GPU exists here)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuq.daemon.schema import parse_submit
from gpuq.errors import InvalidInput
from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.placement import never_fits
from gpuq.scheduler.policy import plan
from gpuq.workers.env import build_job_env

GIB = 1024


def node(name: str, n: int = 4, address: str = "") -> NodeSnapshot:
    return NodeSnapshot(name, tuple(GpuInfo(i, f"GPU-{name}-{i}", "SIMULATED", 16 * GIB, 0, simulated=True)
                                    for i in range(n)), 0.0, simulated=True, address=address)


def job(i: int, res: Resources, user: str = "alice", sub: float = 0.0) -> Job:
    return Job(i, JobSpec(("python", "train.py"), "/", resources=res), Owner(1000, 1000, user), JobState.PENDING, sub)


def gang(per: int, nodes: int) -> Resources:
    return Resources(gpus=per * nodes, nodes=nodes)


def test_a_job_across_nodes_gets_exactly_its_gpus_per_node_on_distinct_nodes():
    nodes = [node("a", 4, "10.0.0.1"), node("b", 2, "10.0.0.2"), node("c", 4, "10.0.0.3")]
    p = plan([job(1, gang(2, 2))], [], nodes, {}, PolicyConfig(), 0.0)
    (start,) = p.starts
    pl = start.placement
    assert pl.is_gang and len(pl.parts) == 2
    assert [x.gpus for x in pl.parts] == [2, 2]
    assert len(set(pl.nodes)) == 2
    assert pl.parts[0].node == "b"  # best fit: the node with just enough idle GPUs first
    assert pl.parts[0].address == "10.0.0.2"
    for r in range(2):
        part = pl.part(r)
        assert part.node == pl.parts[r].node and len(part.gpu_uuids) == 2
        assert all(u.startswith(f"GPU-{part.node}-") for u in part.gpu_uuids)
    assert pl.node == "+".join(pl.nodes)


def test_eight_gpus_on_each_of_two_nodes_never_spread_unevenly():
    # a has 2 GPUs busy: 22 idle GPUs in all, but only b and c have 8 free each
    nodes = [node("a", 8), node("b", 8), node("c", 8)]
    busy = job(1, Resources(gpus=2))
    p_busy = Placement("a", ("GPU-a-0", "GPU-a-1"), (0, 1), (16 * GIB,) * 2, (None, None), (16 * GIB,) * 2)
    running = [busy.transition(JobState.RUNNING, placement=p_busy, placed_at=0.0, started_at=0.0)]
    p = plan([job(3, gang(8, 2))], running, nodes, {}, PolicyConfig(), 1.0)
    (start,) = p.starts
    assert sorted(start.placement.nodes) == ["b", "c"]
    assert [x.gpus for x in start.placement.parts] == [8, 8]
    # on a and b alone (14 idle GPUs, 6 + 8) it waits rather than spreading 6 + 8 + 2
    p2 = plan([job(3, gang(8, 2)), job(4, Resources(gpus=6))], running, nodes[:2], {}, PolicyConfig(), 1.0)
    assert 3 not in {s.job_id for s in p2.starts}
    assert p2.reasons[3].startswith("needs 8 GPUs on each of 2 nodes; 1 node has that free")


def test_a_job_across_nodes_that_can_never_fit_is_refused_with_one_sentence():
    nodes = [node("a", 8), node("b", 4)]
    why = never_fits(gang(8, 2), nodes)
    assert why == "it asks for 8 GPUs on each of 2 nodes, but only 1 node has 8 or more GPUs"
    assert never_fits(gang(4, 2), nodes) is None
    assert never_fits(gang(1, 3), nodes) == "it asks for 1 GPU on each of 3 nodes, but only 2 nodes have 1 or more GPUs"


def test_the_request_schema_checks_nodes():
    base = {"argv": ["true"], "cwd": "/"}
    req = parse_submit({**base, "gpus": 8, "nodes": 2}, 1 << 20)
    assert (req.gpus, req.nodes) == (8, 2)
    assert parse_submit(base, 1 << 20).nodes == 1
    for body, words in (({"nodes": 0}, "--nodes 0 is less than 1"),
                        ({"nodes": 2, "gpus": 0}, "--nodes needs --gpus of 1 or more"),
                        ({"nodes": 2, "gpu_mem": "4GiB"}, "--nodes takes whole GPUs"),
                        ({"nodes": 2, "fraction": "0.5"}, "--nodes takes whole GPUs"),
                        ({"nodes": "two"}, "--nodes"),
                        ({"nodes": 64, "gpus": 64}, "more than the")):
        with pytest.raises(InvalidInput) as e:
            parse_submit({**base, **body}, 1 << 20)
        assert words in str(e.value)
        assert str(e.value).endswith(".")


def test_the_record_of_a_job_across_nodes_round_trips_and_old_records_load():
    nodes = [node("a", 2, "127.0.0.1"), node("b", 2, "127.0.0.1")]
    (start,) = plan([job(1, gang(2, 2))], [], nodes, {}, PolicyConfig(), 0.0).starts
    import dataclasses
    pl = dataclasses.replace(start.placement, port=23456)
    j = job(1, gang(2, 2)).transition(JobState.RUNNING, placement=pl, placed_at=1.0, gang_ready=("a",))
    back = Job.from_dict(json.loads(json.dumps(j.to_dict())))
    assert back == j
    assert back.transition(JobState.PENDING).gang_ready == ()
    old = job(2, Resources(gpus=1)).to_dict()
    assert "nodes" not in old["spec"]["resources"]  # a one-node record is written as before
    assert Job.from_dict(old).spec.resources.nodes == 1
    with pytest.raises(ValueError):
        dataclasses.replace(job(3, Resources(gpus=1)), gang_ready=("a",))  # only while running


def test_each_part_gets_its_own_gpus_and_the_distributed_environment():
    nodes = [node("a", 2, "127.0.0.1"), node("b", 2, "127.0.0.1")]
    (start,) = plan([job(1, gang(2, 2))], [], nodes, {}, PolicyConfig(), 0.0).starts
    import dataclasses
    pl = dataclasses.replace(start.placement, port=24000)
    j = job(1, gang(2, 2)).transition(JobState.RUNNING, placement=pl, placed_at=1.0, started_at=2.0)
    j = dataclasses.replace(j, spec=dataclasses.replace(j.spec, env={"TF_CONFIG": "mine", "RANK": "7"}))
    envs = [build_job_env(j, "/c", "/p", node=n) for n in pl.nodes]
    for rank, env in enumerate(envs):
        part = pl.part(rank)
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(part.gpu_uuids)
        tf = json.loads(env["TF_CONFIG"])
        assert tf == {"cluster": {"worker": ["127.0.0.1:24001", "127.0.0.1:24002"]},
                      "task": {"type": "worker", "index": rank}}
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "24000")
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"]) == ("2", str(rank), "0")
    assert set(envs[0]["CUDA_VISIBLE_DEVICES"].split(",")).isdisjoint(envs[1]["CUDA_VISIBLE_DEVICES"].split(","))
    with pytest.raises(ValueError):
        build_job_env(j, "/c", "/p", node="elsewhere")
    one = job(2, Resources(gpus=1))
    assert "TF_CONFIG" not in build_job_env(one, "/c", "/p")


def test_accounting_counts_every_parts_gpus():
    from gpuq import accounting

    nodes = [node("a", 2), node("b", 2)]
    (start,) = plan([job(1, gang(2, 2))], [], nodes, {}, PolicyConfig(), 0.0).starts
    j = job(1, gang(2, 2)).transition(JobState.RUNNING, placement=start.placement, placed_at=0.0, started_at=0.0)
    assert accounting.gpu_share(j) == 4.0
    assert accounting.attained_gpu_s(j, 10.0) == 40.0


def test_a_running_job_across_nodes_can_be_preempted_whole():
    """LAS: a checkpointable 2-node job that had much GPU time makes room for a new job; the
    victim is the whole job (its stop request stops every part)."""
    import dataclasses

    nodes = [node("a", 1), node("b", 1)]
    (start,) = plan([job(1, gang(1, 2))], [], nodes, {}, PolicyConfig(), 0.0).starts
    big = job(1, dataclasses.replace(gang(1, 2)))
    big = dataclasses.replace(big, spec=dataclasses.replace(big.spec, checkpointable=True), attained_gpu_s=50000.0)
    run = [big.transition(JobState.RUNNING, placement=dataclasses.replace(start.placement, port=21000), placed_at=0.0,
                          started_at=0.0)]
    cfg = PolicyConfig(policy="las", preemption="checkpointable", min_run_s=600.0)
    p = plan([job(2, Resources(gpus=1), sub=10.0)], run, nodes, {}, cfg, 700.0)
    assert [x.job_id for x in p.preempts] == [1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 4), min_size=2, max_size=5), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)),
                                                                      max_size=6),
       st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=8),
       st.sampled_from(["default", "fifo", "fairshare", "las"]))
def test_jobs_across_nodes_get_exact_counts_on_distinct_nodes_and_never_share_a_gpu(sizes, busy, requests, policy):
    nodes = [node(f"n{k}", n) for k, n in enumerate(sizes)]
    taken: dict[str, int] = {}  # uuid -> holders (running one-GPU jobs)
    running = []
    for i, (k, g) in enumerate(busy):
        if k < len(nodes) and g < sizes[k] and f"GPU-n{k}-{g}" not in taken:
            uuid = f"GPU-n{k}-{g}"
            taken[uuid] = 1
            pl = Placement(f"n{k}", (uuid,), (g,), (16 * GIB,), (None,), (16 * GIB,))
            running.append(job(100 + i, Resources(gpus=1)).transition(JobState.RUNNING, placement=pl, placed_at=0.0,
                                                                       started_at=0.0))
    pending = [job(i + 1, gang(per, n) if n > 1 else Resources(gpus=per), user=f"u{i % 3}", sub=float(i))
               for i, (per, n) in enumerate(requests)]
    p = plan(pending, running, nodes, {}, PolicyConfig(policy=policy), 10.0)
    by_id = {j.id: j for j in pending}
    for s in p.starts:
        res, pl = by_id[s.job_id].spec.resources, s.placement
        assert len(pl.gpu_uuids) == res.gpus == len(set(pl.gpu_uuids))
        if res.nodes > 1:
            assert len(pl.parts) == res.nodes == len(set(pl.nodes))
            for r, part in enumerate(pl.parts):
                mine = pl.part(r)
                assert part.gpus == res.gpus_per_node == len(mine.gpu_uuids)
                assert all(u.startswith(f"GPU-{part.node}-") for u in mine.gpu_uuids)
        else:
            assert not pl.parts and all(u.startswith(f"GPU-{pl.node}-") for u in pl.gpu_uuids)
        for u in pl.gpu_uuids:
            assert u not in taken, f"GPU {u} given twice"
            taken[u] = 1
    started = {s.job_id for s in p.starts}
    assert set(p.reasons) == {j.id for j in pending} - started
