"""``gpuq sim``: replay a cluster trace through gpuq's scheduling policy on a SIMULATED cluster.

Only typer and the standard library are imported here; the simulator, numpy and matplotlib
are imported inside the command, so the CLI starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

POLICIES = ("fifo", "sjf", "srtf", "default", "fairshare", "las")
FORMATS = ("philly", "alibaba", "csv")


def _fail(msg: str) -> None:
    typer.echo(f"gpuq sim: {msg}", err=True)
    raise typer.Exit(1)


def sim(
    trace: Path = typer.Option(..., "--trace", help="trace file (CSV)."),
    fmt: str = typer.Option("philly", "--format", help="philly | alibaba | csv (gpuq's plain CSV)."),
    vc: Optional[str] = typer.Option(None, "--vc", help="Philly virtual cluster to replay, like 6214e9."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="cluster size in GPUs (nodes of --gpus-per-node)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per node with --gpus."),
    nodes: Optional[str] = typer.Option(None, "--nodes", help="node layout instead of --gpus, like 8x8 or 4x8:16384,2x4."),
    policy: str = typer.Option("default", "--policy", help="fifo | sjf | srtf | default | fairshare | las."),
    start: Optional[str] = typer.Option(None, "--from", help="Philly: first submit day (default 2017-10-01)."),
    end: Optional[str] = typer.Option(None, "--to", help="Philly: day after the last submit (default 2017-12-01)."),
    preempt_cost: float = typer.Option(30.0, "--preempt-cost-s", help="seconds to checkpoint and restart a preempted job."),
    time_limits: str = typer.Option("auto", "--time-limits",
                                    help="exact (every job's limit is its duration), none, a factor like 2x, or auto (exact for sjf/srtf)."),
    no_gang: bool = typer.Option(False, "--no-gang", help="drop jobs wider than a node instead of spreading them."),
    seed: int = typer.Option(0, "--seed", help="seed for the synthetic users of traces without users."),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG of queue length, utilisation and shares."),
) -> None:
    """Replay a trace through the scheduler's plan() on a SIMULATED cluster and report JCT, delay, utilisation, fairness."""
    if fmt not in FORMATS:
        _fail(f"trace format {fmt!r} is unknown: use one of {', '.join(FORMATS)}.")
    if policy not in POLICIES:
        _fail(f"policy {policy!r} is unknown: use one of {', '.join(POLICIES)}.")
    if time_limits not in ("auto", "exact", "none") and not time_limits.endswith("x"):
        _fail(f"--time-limits {time_limits!r} is unknown: use auto, exact, none or a factor like 2x.")
    if not trace.is_file():
        _fail(f"trace file {str(trace)!r} does not exist.")
    if gpus is not None and nodes is not None:
        _fail("give --gpus or --nodes, not both.")
    from gpuq.errors import GpuqError
    from gpuq.scheduler import metrics, sim as simmod, traces

    try:
        if nodes is not None:
            layout = simmod.parse_layout(nodes)
        elif gpus is not None:
            layout = simmod.layout_for_gpus(gpus, gpus_per_node)
        else:
            sizes_file = trace.parent / "philly_vc.csv"
            if fmt == "philly" and vc is not None and sizes_file.is_file():
                sizes = traces.philly_vc_sizes(sizes_file)
                if vc not in sizes:
                    _fail(f"VC {vc!r} has no size in {sizes_file}: give --gpus or --nodes.")
                n, g = sizes[vc]
                layout = simmod.layout_for_gpus(n * g, g)
            else:
                _fail("give the cluster size with --gpus or --nodes.")
        jobs = traces.load_trace(trace, fmt, vc=vc, seed=seed, start=start, end=end)
        if not jobs:
            _fail("the trace has no jobs in the chosen window.")
        cfg = simmod.SimConfig(policy=policy, layout=layout, preempt_cost_s=preempt_cost,
                               time_limits=time_limits, gang=not no_gang)
        res = simmod.simulate(jobs, cfg)
    except GpuqError as e:
        _fail(str(e))
        return
    summary = metrics.summarize(res)
    summary["trace"] = {"path": str(trace), "format": fmt, "vc": vc, "seed": seed}
    summary["layout"] = [{"nodes": n, "gpus_per_node": g, "gpu_mem_mib": m} for n, g, m in layout]
    if plot is not None:
        from gpuq.scheduler.plot import plot_run

        plot_run(res, plot, title=f"{fmt} {vc or ''}".strip())
        summary["plot"] = str(plot)
    if as_json:
        summary["share_over_time"] = metrics.share_over_time(res)
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    typer.echo(render_summary(summary))


def render_summary(s: dict) -> str:
    def d(x: float) -> str:
        return f"{x:,.0f}"

    lay = " + ".join(f"{l['nodes']} nodes x {l['gpus_per_node']}" for l in s["layout"]) if "layout" in s else "?"
    lines = [
        f"SIMULATED cluster: {s['gpus']} GPUs ({lay} GPUs); policy {s['policy']}",
        f"jobs: {s['jobs']} replayed, {s['completed']} completed, {s['dropped']} dropped"
        + (f" (sizes {s['dropped_gpus']})" if s["dropped"] else ""),
        f"JCT s           mean {d(s['jct_mean_s'])}  p50 {d(s['jct_p50_s'])}  p90 {d(s['jct_p90_s'])}  p99 {d(s['jct_p99_s'])}",
        f"queueing s      mean {d(s['queue_delay_mean_s'])}  p50 {d(s['queue_delay_p50_s'])}  p99 {d(s['queue_delay_p99_s'])}",
        f"waiting s       mean {d(s['wait_mean_s'])}  p99 {d(s['wait_p99_s'])}  (JCT minus run time alone)",
        f"GPU utilisation {s['utilisation_pct']:.1f}%   makespan {s['makespan_s'] / 86400:.1f} days",
        f"preemptions     {s['preemptions']}",
        f"fairness        Jain index of share vs entitlement {s['jain_mean']:.3f} "
        f"(contended {s['contended_pct']:.0f}% of the time)",
        f"plan() calls    {s['plan_calls']} in {s['wall_s']:.1f} s",
        "",
        f"{'tenant':<14}{'jobs':>7}{'GPU-h':>10}{'share%':>8}{'entitled%':>10}{'mean JCT s':>12}",
    ]
    for t in s["tenants"][:12]:
        jct = "-" if t["jct_mean_s"] is None else d(t["jct_mean_s"])
        lines.append(f"{t['tenant']:<14}{t['jobs']:>7}{t['gpu_h']:>10,.0f}{t['share_pct']:>8.1f}"
                     f"{t['entitled_pct']:>10.1f}{jct:>12}")
    if len(s["tenants"]) > 12:
        lines.append(f"... and {len(s['tenants']) - 12} more tenants (see --json)")
    if "plot" in s:
        lines.append(f"plot: {s['plot']}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    typer.run(sim)
    sys.exit(0)
