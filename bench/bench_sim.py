"""Benchmark: how the cost of `gpuq sim` grows with the number of jobs and of GPUs.

    .venv/bin/python bench/bench_sim.py [--quick]

Replays prefixes of the Philly VC 6214e9 trace (Oct 1 - Nov 30 2017) on SIMULATED clusters,
under gpuq's default policy (no preemption) and LAS with preemption (the most plan() calls).
Prints wall seconds, CPU seconds of this process (robust when the machine is shared),
plan() calls and CPU microseconds per call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpuq.scheduler.sim import SimConfig, layout_for_gpus, simulate
from gpuq.scheduler.traces import load_philly

TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "philly.csv"


def run(jobs, gpus, policy):
    c0, w0 = time.process_time(), time.perf_counter()
    res = simulate(jobs, SimConfig(policy=policy, layout=layout_for_gpus(gpus)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    done = sum(1 for r in res.records if r.end_s is not None)
    return {"jobs": len(jobs), "done": done, "gpus": gpus, "policy": policy, "wall_s": wall, "cpu_s": cpu,
            "plan_calls": res.plan_calls, "us_per_plan": 1e6 * cpu / max(res.plan_calls, 1)}


def show(r):
    print(f"| {r['jobs']:>6} | {r['gpus']:>4} | {r['policy']:<7} | {r['wall_s']:>7.1f} | {r['cpu_s']:>6.1f} | "
          f"{r['plan_calls']:>7} | {r['us_per_plan']:>6.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sweep")
    args = ap.parse_args()
    full = load_philly(TRACE, vc="6214e9")
    month = [j for j in full if j.submit_s < 31 * 86400]
    print(f"Philly 6214e9: {len(full)} jobs Oct 1 - Nov 30 2017, {len(month)} in October")
    print("| jobs | GPUs | policy | wall s | CPU s | plan() calls | CPU µs per plan() |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    sizes = [2000, 8000] if args.quick else [2000, 4000, 8000, 16000, len(full)]
    for policy in ("default", "las"):
        for n in sizes:
            show(run(full[:n], 64, policy))
    for policy in ("default", "las"):
        for gpus in ([64, 512] if args.quick else [64, 128, 256, 512]):
            show(run(month, gpus, policy))


if __name__ == "__main__":
    main()
