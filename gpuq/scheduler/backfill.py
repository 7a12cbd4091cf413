"""EASY backfill: hold GPUs for the head job; later jobs may use them only if they end first.

When the first job in order that could run does not fit, gpuq picks the node where it can
start earliest (from the running jobs' time limits) and holds that node's idle GPUs for it
until then (its *shadow time*).  A job further down may start on held GPUs only if its own
time limit ends before the shadow time; on other GPUs it may start freely, since it takes
nothing the head job needs.  A job without a time limit is unbounded: it never ends before a
shadow time, and a head job that waits for an unbounded job has an unknown (infinite) shadow
time, so nothing may use its held GPUs.
"""

from __future__ import annotations

import math

from gpuq.jobs.model import Resources
from gpuq.scheduler.placement import Cluster

INF = math.inf


def hold_for_head(cluster: Cluster, res: Resources, now: float) -> tuple[str, float] | None:
    """Hold GPUs for the head job; return (node, shadow time) or None if no node could ever fit it."""
    g = max(res.gpus, 1)
    best: tuple | None = None
    for node, slots in cluster.nodes.items():
        if len(slots) < g:
            continue
        times = []
        for s in slots:
            if s.shadow_until is not None:
                continue  # already held for someone
            if s.fits(res):
                times.append((now, s))
            elif res.whole_gpus or s.total_mib >= res.request_mib(s.total_mib):
                times.append((max(s.busy_until, now), s))
        if len(times) < g:
            continue
        times.sort(key=lambda t: (t[0], t[1].gpu.index))
        shadow = times[g - 1][0]
        idle_now = sum(1 for t, _ in times if t <= now)
        rank = (shadow, -idle_now, node)
        if best is None or rank < best[0]:
            best = (rank, node, [s for _, s in times[:g]], shadow)
    if best is None:
        return None
    _, node, chosen, shadow = best
    for s in chosen:
        if s.fits(res):
            s.shadow_until = shadow
    return node, shadow
