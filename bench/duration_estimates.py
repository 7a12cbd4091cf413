"""Could a duration estimate bring `default` near SRTF on the Philly dev VCs?  (issue 10.2)

    .venv/bin/python bench/duration_estimates.py                 # the three dev VCs, ~2 minutes
    .venv/bin/python bench/duration_estimates.py --vc 6214e9 --replay

Three looks, all SIMULATED (synthetic users, as in docs/scheduling.md):

1. Helios' QSSF idea: estimate a job's duration from its user's past finished jobs (median of
   the last K).  How well does log(estimate) follow log(duration)?  A job's history is the jobs
   of its user that had finished when it was submitted, had each started at submission
   (``delay`` 0: optimistic) or ``delay`` seconds later (a loaded queue).
2. ``--replay``: the estimate used as if it were each job's exact time limit under `sjf` (no
   preemption), on the loaded cluster: what ordering by the estimate would buy at best.
3. Tiresias' Gittins index of the distribution of GPU time of the VC's jobs, by attained service:
   G(a) = max over d of P(S - a <= d | S > a) / E[min(S - a, d) | S > a].  Jobs with the higher
   index go first.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's gpuq

from gpuq.scheduler.metrics import summarize
from gpuq.scheduler.sim import SimConfig, layout_for_gpus, simulate
from gpuq.scheduler.traces import TraceJob, load_philly

TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "philly.csv"
LOADED = {"6214e9": 64, "11cb48": 32, "103959": 32}


def estimates(trace: list[TraceJob], delay_s: float, k: int) -> dict[int, float]:
    """Each job's estimate: the median duration of its user's last ``k`` finished jobs (else the
    median of the last 100 finished jobs of anyone; else one hour)."""
    history: dict[str, list[float]] = {}
    everyone: list[float] = []
    ends: list[tuple[float, str, float]] = []
    out = {}
    for tj in sorted(trace, key=lambda t: t.submit_s):
        while ends and ends[0][0] <= tj.submit_s:
            _, user, d = heapq.heappop(ends)
            history.setdefault(user, []).append(d)
            everyone.append(d)
        mine = history.get(tj.user)
        out[tj.id] = statistics.median(mine[-k:]) if mine else (
            statistics.median(everyone[-100:]) if everyone else 3600.0)
        heapq.heappush(ends, (tj.submit_s + tj.duration_s + delay_s, tj.user, tj.duration_s))
    return out


def log_correlation(trace: list[TraceJob], est: dict[int, float]) -> float:
    xs = [math.log1p(est[t.id]) for t in trace]
    ys = [math.log1p(t.duration_s) for t in trace]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in xs) * sum((b - my) ** 2 for b in ys))


def gittins(sizes: list[float], attained: float) -> float:
    """Gittins index (per GPU-hour) of a job that received ``attained`` GPU-seconds."""
    rest = [s - attained for s in sizes if s > attained]
    if not rest:
        return 0.0
    best = 0.0
    for d in (30 * 2 ** (k / 2) for k in range(36)):
        done = sum(1 for r in rest if r <= d) / len(rest)
        cost = sum(min(r, d) for r in rest) / len(rest)
        best = max(best, done / cost)
    return best * 3600


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vc", action="append", help="dev VC (default: all three)")
    ap.add_argument("--replay", action="store_true", help="also replay sjf with the estimates as limits")
    args = ap.parse_args()
    for vc in args.vc or list(LOADED):
        trace = load_philly(str(TRACE), vc=vc)
        for delay in (0.0, 20000.0):
            for k in (1, 10, 30):
                print(f"{vc} QSSF median of last {k:>2}, finished {delay:>7.0f} s late: log-correlation "
                      f"{log_correlation(trace, estimates(trace, delay, k)):+.2f}")
        if args.replay:
            for delay in (0.0, 20000.0):
                est = estimates(trace, delay, 10)
                jobs = [dataclasses.replace(t, time_limit_s=max(60.0, est[t.id])) for t in trace]
                s = summarize(simulate(jobs, SimConfig(policy="sjf", layout=layout_for_gpus(LOADED[vc], 8))))
                print(f"{vc} sjf ordered by the estimate (last 10, {delay:.0f} s late) on {LOADED[vc]} GPUs: "
                      f"mean JCT {s['jct_mean_s']:,.0f} s, Jain {s['jain_mean']:.2f}")
        sizes = [t.duration_s * t.gpus for t in trace]
        marks = (0, 5, 10, 20, 30, 45, 60, 90, 120, 240, 600)
        print(f"{vc} Gittins index per GPU-hour at attained service (min): " +
              " ".join(f"{m}:{gittins(sizes, m * 60.0):.2f}" for m in marks))


if __name__ == "__main__":
    main()
