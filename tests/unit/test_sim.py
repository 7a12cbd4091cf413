"""The trace simulator on small synthetic traces (SIMULATED cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuq.errors import InvalidInput
from gpuq.scheduler.metrics import entitlement, jain, percentile, summarize
from gpuq.scheduler.sim import SimConfig, layout_for_gpus, parse_layout, simulate
from gpuq.scheduler.traces import TraceJob, load_alibaba, load_philly, load_plain_csv, synthetic_users


def tj(i, submit, duration, gpus=1, user="u", **kw):
    return TraceJob(i, float(submit), float(duration), gpus, user, tenant=user, **kw)


def mean_jct(res):
    done = [r for r in res.records if r.end_s is not None]
    return sum(r.end_s - r.submit_s for r in done) / len(done)


# a long job arrives first, then many short ones, on one GPU
CRAFTED = [tj(1, 0, 10000)] + [tj(i, 10 + i, 100) for i in range(2, 12)]


def test_srtf_and_las_beat_fifo_on_a_crafted_trace():
    lay = layout_for_gpus(1, 1)
    fifo = simulate(CRAFTED, SimConfig(policy="fifo", layout=lay))
    srtf = simulate(CRAFTED, SimConfig(policy="srtf", layout=lay, preempt_cost_s=0.0))
    las = simulate(CRAFTED, SimConfig(policy="las", layout=lay, overrides={"min_run_s": 0.0,
                                                                          "las_thresholds_gpu_s": (50.0,)}))
    sjf = simulate(CRAFTED, SimConfig(policy="sjf", layout=lay))
    assert all(r.end_s is not None for r in fifo.records + srtf.records + las.records + sjf.records)
    assert mean_jct(srtf) < mean_jct(fifo) / 3
    assert mean_jct(las) < mean_jct(fifo) / 3
    assert srtf.preemptions == 1 and las.preemptions >= 1
    # preemption costs time: the long job finishes later than its duration alone
    long_end = next(r.end_s for r in srtf.records if r.id == 1)
    assert long_end == pytest.approx(10000 + 10 * 100)


def test_preemption_cost_is_paid_on_restart():
    lay = layout_for_gpus(1, 1)
    a = simulate(CRAFTED, SimConfig(policy="srtf", layout=lay, preempt_cost_s=0.0))
    b = simulate(CRAFTED, SimConfig(policy="srtf", layout=lay, preempt_cost_s=60.0))
    end = {r.id: r.end_s for r in b.records}
    assert end[1] == pytest.approx({r.id: r.end_s for r in a.records}[1] + 60.0)


def test_deterministic_for_a_seed(tmp_path):
    rows = ["timestamp,duration,num_gpus,gpu_time,cluster"]
    for k in range(60):
        rows.append(f"2017-10-0{1 + k % 5} {k % 24:02d}:{k % 60:02d}:00,{300 + 37 * k},{1 + k % 3},0,vcA")
    p = tmp_path / "philly.csv"
    p.write_text("\n".join(rows) + "\n")
    jobs = load_philly(p, vc="vcA", seed=7)
    again = load_philly(p, vc="vcA", seed=7)
    other = load_philly(p, vc="vcA", seed=8)
    assert jobs == again and len(jobs) == 60
    assert [j.user for j in jobs] != [j.user for j in other]
    cfg = SimConfig(policy="fairshare", layout=layout_for_gpus(4, 2))
    r1, r2 = summarize(simulate(jobs, cfg)), summarize(simulate(again, cfg))
    for k in ("wall_s",):
        r1.pop(k), r2.pop(k)
    assert r1 == r2
    assert r1["completed"] == 60 and r1["simulated"] is True


def test_wide_jobs_are_ganged_or_dropped_and_counted():
    trace = [tj(1, 0, 100, gpus=12), tj(2, 0, 100, gpus=4), tj(3, 0, 50, gpus=40)]
    lay = layout_for_gpus(16, 8)
    ganged = simulate(trace, SimConfig(policy="fifo", layout=lay))
    assert [(d[0], d[1]) for d in ganged.dropped] == [(3, 40)]
    assert {r.id for r in ganged.records if r.end_s is not None} == {1, 2}
    dropped = simulate(trace, SimConfig(policy="fifo", layout=lay, gang=False))
    assert sorted(d[0] for d in dropped.dropped) == [1, 3]
    assert summarize(dropped)["dropped"] == 2


def test_fair_share_gives_light_user_a_fair_share():
    heavy = [tj(i, 0, 1000, user="heavy") for i in range(1, 41)]
    light = [tj(100 + i, 10, 1000, user="light") for i in range(10)]
    lay = layout_for_gpus(4, 4)
    fifo = summarize(simulate(heavy + light, SimConfig(policy="fifo", layout=lay, sample_s=60.0)))
    fs = summarize(simulate(heavy + light, SimConfig(policy="default", layout=lay, sample_s=60.0)))
    jct = {p: {t["tenant"]: t["jct_mean_s"] for t in s["tenants"]} for p, s in (("fifo", fifo), ("fs", fs))}
    assert jct["fs"]["light"] < jct["fifo"]["light"] / 2
    assert fs["jain_mean"] > fifo["jain_mean"]


def test_fractional_jobs_pack_on_shared_gpus():
    trace = [tj(i, 0, 1000, fraction=0.25) for i in range(1, 9)]
    res = simulate(trace, SimConfig(policy="default", layout=layout_for_gpus(2, 2)))
    assert all(r.first_start_s == 0.0 for r in res.records)
    assert max(res.series_busy) == pytest.approx(2.0)
    whole = simulate(trace, SimConfig(policy="default", layout=layout_for_gpus(2, 2), exclusive=True))
    assert max(whole.series_busy) == pytest.approx(2.0)
    assert sorted(r.first_start_s for r in whole.records) == [0.0] * 2 + [1000.0] * 2 + [2000.0] * 2 + [3000.0] * 2


def test_metrics_helpers():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 90) == 0.0
    assert entitlement({"a": 10, "b": 1}, {}, 8) == {"b": 1, "a": 7}
    assert entitlement({"a": 10, "b": 10}, {"a": 3.0}, 8) == {"a": 6.0, "b": 2.0}
    assert jain([1, 1, 1]) == pytest.approx(1.0) and jain([1, 0]) == pytest.approx(0.5)


def test_layouts():
    assert parse_layout("2x8,1x4:16384") == ((2, 8, 32768), (1, 4, 16384))
    assert layout_for_gpus(20, 8) == ((2, 8, 32768), (1, 4, 32768))
    with pytest.raises(InvalidInput):
        parse_layout("eight")


def test_plain_csv_and_alibaba_loaders(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("submit_s,duration_s,gpus,user,mem_mib,priority,time_limit_s,checkpointable\n"
                 "5,100,1,ann,4096,1,200,yes\n0,50,2,ben,,,,\n")
    jobs = load_plain_csv(p)
    assert [j.user for j in jobs] == ["ben", "ann"]
    assert jobs[1].mem_mib == 4096 and jobs[1].checkpointable is True and jobs[1].time_limit_s == 200
    bad = tmp_path / "bad.csv"
    bad.write_text("submit_s,duration_s,gpus,user\n0,-1,1,ann\n")
    with pytest.raises(InvalidInput, match="line 2"):
        load_plain_csv(bad)
    a = tmp_path / "pods.csv"
    a.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
                 "p0,1,1,1,460,,LS,Running,0,100,0\np1,1,1,0,0,,LS,Running,5,50,5\np2,1,1,2,1000,,LS,Running,10,70,10\n")
    pods = load_alibaba(a)
    assert [(j.gpus, j.fraction) for j in pods] == [(1, 0.46), (2, None)]
    users = synthetic_users([0, 1, 2, 5000, 5001], "x-", 1)
    assert len(set(users[:3])) == 1 and users[3] == users[4] and users[0].startswith("x-u")


def test_cli_sim_json_and_errors(tmp_path):
    from gpuq.cli.sim_cmd import sim
    import typer

    app = typer.Typer()
    app.command()(sim)
    trace = tmp_path / "t.csv"
    trace.write_text("submit_s,duration_s,gpus,user\n0,100,1,ann\n0,100,2,ben\n10,50,1,ann\n")
    runner = CliRunner()
    out = runner.invoke(app, ["--trace", str(trace), "--format", "csv", "--gpus", "2", "--policy", "fifo", "--json",
                              "--plot", str(tmp_path / "p.png")])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["simulated"] is True and data["completed"] == 3 and data["jct_mean_s"] > 0
    assert Path(tmp_path / "p.png").stat().st_size > 1000
    text = runner.invoke(app, ["--trace", str(trace), "--format", "csv", "--gpus", "2"])
    assert "SIMULATED cluster" in text.output
    for args, msg in [(["--trace", str(tmp_path / "no.csv"), "--gpus", "2"], "does not exist"),
                      (["--trace", str(trace), "--format", "xml", "--gpus", "2"], "format 'xml' is unknown"),
                      (["--trace", str(trace), "--format", "csv", "--gpus", "2", "--policy", "rr"], "policy 'rr'"),
                      (["--trace", str(trace), "--format", "csv"], "--gpus or --nodes")]:
        bad = runner.invoke(app, args)
        assert bad.exit_code == 1 and msg in bad.output and "Traceback" not in bad.output


def test_time_limit_modes():
    from gpuq.scheduler.sim import time_limit_factor

    assert time_limit_factor("auto", "sjf") == 1.0 and time_limit_factor("auto", "las") is None
    assert time_limit_factor("2x", "default") == 2.0 and time_limit_factor("none", "srtf") is None
    for bad in ("0.5x", "twice", "x"):
        with pytest.raises(InvalidInput):
            time_limit_factor(bad, "default")
    # with exact limits, backfill lets short jobs use GPUs held for a wide head job
    trace = [tj(1, 0, 1000, gpus=2), tj(2, 1, 1000, gpus=4), tj(3, 2, 500, gpus=1), tj(4, 3, 500, gpus=1)]
    lay = layout_for_gpus(4, 4)
    none = {r.id: r.first_start_s for r in simulate(trace, SimConfig(policy="default", layout=lay)).records}
    exact = {r.id: r.first_start_s for r in simulate(trace, SimConfig(policy="default", layout=lay,
                                                                      time_limits="exact")).records}
    assert none[3] == 2000.0 and exact[3] == 2.0 and exact[2] == none[2] == 1000.0
