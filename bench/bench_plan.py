"""Benchmark: one plan() with 10,000 pending jobs on 64 nodes x 8 GPUs (SIMULATED inventory).

    .venv/bin/python bench/bench_plan.py [--pending 10000] [--repeat 5]

The world: 512 GPUs, about 85% of them busy with 300 running jobs (whole and shared), 10,000
pending jobs of 50 users (mostly 1 GPU, some 2/4/8, some shared by memory, some with time
limits, some held or waiting on --after), usage records for every user.  It times plan() as
the daemon calls it: the first cycle (a plain list: the index is built in the call) and the
following ones (the daemon keeps the index, and 100 jobs leave or arrive per cycle), with a reason
for every job; and as the simulator calls it (a kept PendingIndex, no reasons), for several
policies.  Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
import random
import statistics
import time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's gpuq, not an installed one

from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.ordering import PendingIndex
from gpuq.scheduler.policy import plan
from gpuq.scheduler.sim import build_nodes


def world(n_pending: int, seed: int = 1):
    rng = random.Random(seed)
    nodes = build_nodes(((64, 8, 81920),))
    users = [f"user{k:02d}" for k in range(50)]
    running = []
    jid = 1
    for n in nodes:
        gpus = list(n.gpus)
        k = 0
        while k < len(gpus) - 1:  # leave about one GPU in eight free
            if rng.random() < 0.2:  # two shared jobs on one GPU
                g = gpus[k]
                for mem in (20000, 30000):
                    res = Resources(gpus=1, mem_mib=mem)
                    p = Placement(n.node, (g.uuid,), (g.index,), (mem,), (mem,), (g.mem_total_mib,))
                    running.append(Job(jid, JobSpec(("x",), "/", resources=res, checkpointable=True,
                                                    time_limit_s=rng.choice([None, 7200.0])),
                                       Owner(1, 1, rng.choice(users)), JobState.RUNNING, 0.0, placement=p,
                                       placed_at=float(rng.randint(0, 5000)), started_at=float(rng.randint(0, 5000))))
                    jid += 1
                k += 1
                continue
            width = min(rng.choice([1, 1, 1, 2]), len(gpus) - 1 - k)
            gs = gpus[k:k + width]
            res = Resources(gpus=width)
            p = Placement(n.node, tuple(g.uuid for g in gs), tuple(g.index for g in gs),
                          tuple(g.mem_total_mib for g in gs), (None,) * width, tuple(g.mem_total_mib for g in gs))
            t = float(rng.randint(0, 5000))
            running.append(Job(jid, JobSpec(("x",), "/", resources=res, checkpointable=rng.random() < 0.5,
                                            time_limit_s=rng.choice([None, 3600.0, 86400.0])),
                               Owner(1, 1, rng.choice(users)), JobState.RUNNING, 0.0, placement=p, placed_at=t,
                               started_at=t, attained_gpu_s=rng.choice([0.0, 5000.0, 50000.0])))
            jid += 1
            k += width
    pending = []
    for _ in range(n_pending):
        r = rng.random()
        if r < 0.1:
            res = Resources(gpus=1, mem_mib=rng.choice([8000, 16000, 40000]))
        else:
            res = Resources(gpus=rng.choice([1, 1, 1, 1, 2, 4, 8]))
        state = JobState.HELD if rng.random() < 0.01 else JobState.PENDING
        after = (rng.randint(1, jid),) if rng.random() < 0.02 else ()
        pending.append(Job(jid, JobSpec(("x",), "/", resources=res, after=after, priority=rng.choice([0] * 20 + [1]),
                                        time_limit_s=rng.choice([None, 600.0, 3600.0, 36000.0])),
                           Owner(1, 1, rng.choice(users)), state, float(rng.randint(0, 10000)),
                           attained_gpu_s=rng.choice([0.0, 0.0, 4000.0])))
        jid += 1
    usage = {u: {"gpu_s": rng.uniform(0, 5e6), "at": 9000.0} for u in users}
    return nodes, running, pending, usage


def timed(fn, repeat):
    """(median wall s, median CPU s of this process, least CPU s, result): CPU time is what the
    call itself costs when other work shares the machine; the least of several is the call
    least disturbed by it."""
    xs, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        xs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(xs), statistics.median(cpu), min(cpu), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    nodes, running, pending, usage = world(args.pending)
    busy = sum(len(j.placement.gpu_uuids) for j in running)
    print(f"SIMULATED cluster: {len(nodes)} nodes x 8 GPUs; {len(running)} running jobs on {busy} GPU slots; "
          f"{len(pending)} pending jobs")
    print(f"{'policy':<44}{'wall ms':>9}{'CPU ms':>8}{'least':>7}{'starts':>8}{'preempts':>9}{'reasons':>9}")
    for name, cfg in [
        ("fifo", PolicyConfig(policy="fifo")),
        ("default, no preemption", PolicyConfig(policy="default", preemption="off")),
        ("fairshare + preemption", PolicyConfig(policy="fairshare", preemption="checkpointable", preempt_wait_s=0)),
        ("default + preemption", PolicyConfig(policy="default", preemption="checkpointable", preempt_wait_s=0)),
        ("las + preemption", PolicyConfig(policy="las", preemption="checkpointable")),
    ]:
        med, cpu, least, p = timed(lambda: plan(pending, running, nodes, usage, cfg, 10000.0), args.repeat)
        print(f"{name + ' (daemon)':<44}{med * 1e3:>9.1f}{cpu * 1e3:>8.1f}{least * 1e3:>7.1f}{len(p.starts):>8}{len(p.preempts):>9}"
              f"{len(p.reasons):>9}")
        kept = PendingIndex(cfg)
        kept.sync(pending)
        cycles = iter([pending[:-100], pending] * args.repeat)  # 100 jobs leave or arrive per cycle

        def daemon_cycle():
            kept.sync(next(cycles))
            return plan(kept, running, nodes, usage, cfg, 10000.0)
        med, cpu, least, p = timed(daemon_cycle, args.repeat)
        print(f"{name + ' (daemon, kept index)':<44}{med * 1e3:>9.1f}{cpu * 1e3:>8.1f}{least * 1e3:>7.1f}{len(p.starts):>8}"
              f"{len(p.preempts):>9}{len(p.reasons):>9}")
        idx = PendingIndex(cfg, pending)
        med, cpu, least, p = timed(lambda: plan(idx, running, nodes, usage, cfg, 10000.0, explain=False), args.repeat)
        print(f"{name + ' (simulator)':<44}{med * 1e3:>9.1f}{cpu * 1e3:>8.1f}{least * 1e3:>7.1f}{len(p.starts):>8}{len(p.preempts):>9}"
              f"{len(p.reasons):>9}")
    t = time.perf_counter()
    PendingIndex(PolicyConfig(), pending)
    print(f"building the PendingIndex of {len(pending)} jobs: {(time.perf_counter() - t) * 1e3:.1f} ms (in the daemon rows)")


if __name__ == "__main__":
    main()
