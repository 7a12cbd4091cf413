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


def hold_for_head(cluster: Cluster, res: Resources, now: float, gang: bool = False) -> tuple[str, float] | None:
    """Hold GPUs for the head job; return (node, shadow time) or None if no node could ever fit it."""
    g = max(res.gpus, 1)
    t = cluster.t
    if gang and g > t.max_node_gpus:
        groups = [list(range(len(t.gpu)))]  # a gang may use GPUs of any node
    else:
        groups = t.node_slots
    if cluster.bounded_running == 0 and res.whole_gpus and len(groups) > 1:
        # every running job is unbounded: no node frees up at a known time; hold on the node
        # with the most idle GPUs (the shadow time is unknown)
        k = max(range(len(groups)), key=lambda k: (cluster.idle_count[k], -k))
        if len(groups[k]) < g:
            return None
        for i in groups[k]:
            if cluster.is_idle(i) and cluster.shadow[i] is None:
                cluster.shadow[i] = INF
        return t.names[k], INF
    best: tuple | None = None
    for k, idxs in enumerate(groups):
        if len(idxs) < g:
            continue
        times = []
        for i in idxs:
            if cluster.shadow[i] is not None:
                continue  # already held for someone
            if cluster.fits(i, res):
                times.append((now, i))
            elif res.whole_gpus or t.total[i] >= res.request_mib(t.total[i]):
                times.append((max(cluster.busy_until[i], now), i))
        if len(times) < g:
            continue
        times.sort()
        shadow = times[g - 1][0]
        idle_now = sum(1 for at, _ in times if at <= now)
        rank = (shadow, -idle_now, k)
        if best is None or rank < best[0]:
            best = (rank, k, [i for _, i in times[:g]], shadow)
    if best is None:
        return None
    _, k, chosen, shadow = best
    for i in chosen:
        if cluster.fits(i, res):
            cluster.shadow[i] = shadow
    return (t.names[k] if len(groups) > 1 else "all nodes"), shadow
