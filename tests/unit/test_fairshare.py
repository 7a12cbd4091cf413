"""Fair-share accounting helpers and the `gpuq usage` report (pure)."""

from __future__ import annotations

import math

from gpuq.cli.usage_render import render_usage
from gpuq.gpus import GpuInfo, NodeSnapshot
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.scheduler.config import PolicyConfig, UserLimits
from gpuq.accounting import gpu_share
from gpuq.scheduler.fairshare import (add_run_usage, add_usage, decayed_usage, run_usage_gpu_s,
                                      usage_report)

DAY = 86400.0
H = 7 * DAY


def test_usage_halves_every_half_life():
    rec = add_usage(None, 1000.0, now=0.0, half_life_s=H)
    assert rec == {"gpu_s": 1000.0, "at": 0.0}
    assert math.isclose(decayed_usage(rec, H, H), 500.0)
    assert math.isclose(decayed_usage(rec, 2 * H, H), 250.0)
    assert decayed_usage(None, 5.0, H) == 0.0
    rec2 = add_usage(rec, 100.0, now=H, half_life_s=H)
    assert math.isclose(rec2["gpu_s"], 600.0) and rec2["at"] == H
    assert decayed_usage(rec, -10.0, H) == 1000.0  # clock skew never grows usage
    assert add_usage(rec, -5.0, 0.0, H)["gpu_s"] == 1000.0


def test_run_usage_is_the_decayed_integral():
    # short run: about gpus * seconds
    assert math.isclose(run_usage_gpu_s(2, 0.0, 100.0, H), 200.0, rel_tol=1e-3)
    # a run as long as the half-life counts less than its raw GPU-seconds
    assert run_usage_gpu_s(1, 0.0, H, H) < H
    # recording a finished run gives what plan() counted while it ran
    rec = add_run_usage(None, 4, 10.0, 10.0 + DAY, H)
    assert math.isclose(rec["gpu_s"], run_usage_gpu_s(4, 10.0, 10.0 + DAY, H))
    assert run_usage_gpu_s(1, 10.0, 5.0, H) == 0.0


def _node():
    return NodeSnapshot("n", tuple(GpuInfo(i, f"g{i}", "SIMULATED", 16384, 0, simulated=True) for i in range(2)),
                        0.0, simulated=True)


def _job(i, user, state=JobState.PENDING, sub=0.0, res=None):
    return Job(i, JobSpec(("x",), "/", resources=res or Resources(gpus=1)), Owner(1, 1, user), state, sub)


def test_gpu_share_counts_memory_shares():
    n = _node()
    j = _job(1, "a", res=Resources(gpus=1, mem_mib=4096))
    r = j.transition(JobState.RUNNING, placed_at=0.0, started_at=0.0,
                     placement=Placement("n", ("g0",), (0,), (4096,), (4096,), (16384,)))
    assert gpu_share(r) == 0.25
    assert gpu_share(_job(2, "a", res=Resources(gpus=2))) == 2.0
    assert n.gpus[0].mem_total_mib == 16384


def test_usage_report_rows_and_render():
    run = _job(1, "alice").transition(JobState.RUNNING, placed_at=0.0, started_at=0.0,
                                      placement=Placement("n", ("g0",), (0,), (16384,), (None,), (16384,)))
    pend = [_job(2, "alice", sub=100.0), _job(3, "bob", sub=200.0)]
    cfg = PolicyConfig(user_shares={"bob": 3.0}, default_limits=UserLimits(max_gpus=4))
    rows = usage_report({"carol": {"gpu_s": 7200.0, "at": 0.0}}, pend, [run], cfg, 3600.0)
    by = {r["user"]: r for r in rows}
    assert set(by) == {"alice", "bob", "carol"}
    assert by["bob"]["share"] == 3.0 and by["bob"]["share_norm"] == 0.75
    assert math.isclose(by["alice"]["usage_running_gpu_s"], 3600.0, rel_tol=1e-2)
    assert by["bob"]["fairshare_factor"] == 1.0 > by["alice"]["fairshare_factor"]
    assert by["alice"]["gpus_in_use"] == 1 and by["alice"]["max_gpus"] == 4
    assert [j["job_id"] for j in by["alice"]["jobs"]] == [2]
    part = by["alice"]["jobs"][0]
    assert math.isclose(part["priority"], part["fairshare"] + part["age"], abs_tol=0.2)
    assert rows[0]["user"] == "bob"  # highest factor first
    text = render_usage(rows)
    assert "FACTOR" in text and "alice" in text and "1/4" in text and "half-life of 7 days" in text
    assert render_usage([]) == "No usage recorded and no active jobs."
