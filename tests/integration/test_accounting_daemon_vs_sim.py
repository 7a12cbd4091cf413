"""One accounting (gpuq/accounting.py) in the daemon and in the simulator.

The real daemon (SIMULATED GPUs, real embedded Redis, real CLI) runs a small workload; `gpuq sim`'s
replay of the same jobs on the same SIMULATED inventory must keep the same records: which jobs
ran together, each job's run time and attained GPU-time (a shared GPU counted by its share), and
each user's fair-share usage.  A second test checks that the time limit counts every run.
"""

from __future__ import annotations

import os
import time

import pytest

from gpuq.scheduler.sim import SimConfig, simulate
from gpuq.scheduler.traces import TraceJob

pytestmark = pytest.mark.integration

# (gpus, GiB per GPU or None for whole GPUs, seconds it runs)
WORKLOAD = [(2, None, 2.0), (1, 12, 3.0), (1, 12, 2.0), (1, None, 1.0)]
#: process start, polling and recording add a little to each run in the daemon
SLACK_S = 0.8


def _events(job: dict, prefix: str) -> list[float]:
    return [e["at"] for e in job["events"] if e["text"].startswith(prefix)]


def test_daemon_and_simulator_keep_the_same_records(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "2x24GiB", "--grace", "2s", "--node", f"acct-{os.getpid()}")
    ids = []
    for gpus, gib, secs in WORKLOAD:
        opts = ["--gpus", str(gpus)] + (["--gpu-mem", f"{gib}GiB"] if gib else [])
        ids.append(d.submit(*opts, "--", "sleep", str(secs), cwd=open_tmp))
    jobs = [d.wait_state(i, "completed", timeout=90) for i in ids]
    user = jobs[0]["owner"]["user"]

    # the same jobs, replayed by the simulator on the same inventory (one node, 2 x 24 GiB)
    t0 = min(j["submitted_at"] for j in jobs)
    trace = [TraceJob(j["id"], j["submitted_at"] - t0, secs, gpus, user, tenant=user,
                      mem_mib=gib * 1024 if gib else None)
             for j, (gpus, gib, secs) in zip(jobs, WORKLOAD)]
    sim = simulate(trace, SimConfig(policy="default", layout=((1, 2, 24 * 1024),)))
    rec = {r.id: r for r in sim.records}

    for j, (gpus, gib, secs) in zip(jobs, WORKLOAD):
        r = rec[j["id"]]
        assert r.end_s is not None
        share = gpus if gib is None else gib / 24
        # run time and attained GPU-time: the same quantity in both, within the daemon's overhead
        assert r.total_run_s == pytest.approx(secs)
        assert r.attained_gpu_s == pytest.approx(share * secs)
        assert j["total_run_s"] == pytest.approx(r.total_run_s, abs=SLACK_S)
        assert j["attained_gpu_s"] == pytest.approx(r.attained_gpu_s, abs=SLACK_S * share)
        assert j["attained_gpu_s"] == pytest.approx(j["total_run_s"] * share, rel=1e-6)

    # the same schedule: the 2-GPU job alone first, then the two shared jobs together on one GPU
    # and the 1-GPU job on the other
    start = {j["id"]: _events(j, "started pid")[0] - t0 for j in jobs}
    sim_start = {r.id: r.first_start_s for r in sim.records}
    order = sorted(start, key=start.get)
    assert order[0] == sorted(sim_start, key=sim_start.get)[0] == ids[0]
    for i in ids[1:]:
        assert start[i] >= start[ids[0]] + WORKLOAD[0][2] - 0.2  # none ran beside the 2-GPU job
        submitted = next(t.submit_s for t in trace if t.id == i)
        assert sim_start[i] == pytest.approx(max(submitted, sim_start[ids[0]] + WORKLOAD[0][2]))
    placed = {j["id"]: [e["text"] for e in j["events"] if e["text"].startswith("placed on")][0] for j in jobs}
    assert placed[ids[1]].split("GPUs ")[1] == placed[ids[2]].split("GPUs ")[1]  # packed on one GPU
    assert placed[ids[3]].split("GPUs ")[1] != placed[ids[1]].split("GPUs ")[1]

    # fair-share usage: the decayed sum of the runs, as the simulator keeps it
    rows = {r["user"]: r for r in d.cli("usage", "--json").json()["users"]}
    sim_usage = sim.usage[user]["gpu_s"]
    assert sim_usage == pytest.approx(sum(r.attained_gpu_s for r in sim.records), rel=1e-3)
    assert rows[user]["usage_recorded_gpu_s"] == pytest.approx(sim_usage, abs=SLACK_S * 4)


def test_the_time_limit_counts_every_run_not_only_the_last(make_daemon, open_tmp):
    # its own node name: job cgroups are named by node and job id
    daemon = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "2s", "--node", f"acct-tl-{os.getpid()}")
    j = daemon.submit("--checkpointable", "--time-limit", "20s", "--", "sleep", "120", cwd=open_tmp)
    daemon.wait_state(j, "running")
    time.sleep(6.0)
    r = daemon.cli("requeue", str(j))
    assert r.rc == 0, r.err
    job = daemon.wait_state(j, {"timeout", "failed", "completed"}, timeout=90)
    assert job["state"] == "timeout", (job["end_reason"], [e["text"] for e in job["events"]])
    assert job["requeues"] == 1
    # 20 s in all: the second run lasted what the first left, not another 20 s
    first = job["total_run_s"] - job["last_run_s"]
    assert first >= 5.0
    assert job["last_run_s"] < 20.0 - first + 3.0, job
    assert job["total_run_s"] == pytest.approx(20.0, abs=3.0)
