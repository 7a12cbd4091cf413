"""EASY backfill: hold GPUs for the head job; later jobs may use them only if they end first.

When the first job in order that could run does not fit (the *head*), gpuq picks the node
where it can start earliest (from the running jobs' time limits, counted over all their runs
by :mod:`gpuq.accounting`) and holds that node's idle GPUs for it until then (its *shadow
time*).  A job further down may start on held GPUs only if its own time limit ends before the
shadow time; on other GPUs it may start freely, since it takes nothing the head job needs.  A
job without a time limit is unbounded: it never ends before a shadow time, and a head job
that waits for an unbounded job has an unknown shadow time, so nothing may use its held GPUs.
The hold is the head's whoever submitted the later jobs: it lasts until the head starts.
"""

from __future__ import annotations

from typing import NamedTuple

from gpuq.jobs.model import Resources
from gpuq.scheduler.placement import Cluster


class HeadHold(NamedTuple):
    """Where the head job will start, and when (None: not known, some job it waits for has no
    time limit)."""

    node: str
    start_at: float | None


def hold_for_head(cluster: Cluster, job_id: int, res: Resources, now: float, gang: bool = False) -> HeadHold | None:
    """Hold GPUs for head job ``job_id``; None if no node could ever fit it."""
    g = max(res.gpus, 1)
    t = cluster.t
    if (gang and g > t.max_node_gpus) or res.nodes > 1:
        groups = [list(range(len(t.gpu)))]  # a gang may use GPUs of any node
    else:
        groups = t.node_slots
    if cluster.bounded_running == 0 and res.whole_gpus and len(groups) > 1:
        return _hold_most_idle(cluster, job_id, groups, g)
    best: tuple | None = None
    for k, idxs in enumerate(groups):
        if len(idxs) < g:
            continue
        times = _free_times(cluster, idxs, res, now)
        if len(times) < g:
            continue
        shadow = times[g - 1][0]
        idle_now = sum(1 for at, _ in times if at <= now)
        rank = (shadow, -idle_now, k)
        if best is None or rank < best[0]:
            best = (rank, k, [i for _, i in times[:g]], shadow)
    if best is None:
        return None
    _, k, chosen, shadow = best
    until = None if shadow == float("inf") else shadow
    cluster.hold([i for i in chosen if cluster.fits(i, res)], job_id, until)
    return HeadHold(t.names[k] if len(groups) > 1 else "all nodes", until)


def _hold_most_idle(cluster: Cluster, job_id: int, groups, g: int) -> HeadHold | None:
    """Every running job is unbounded: no node frees up at a known time.  Hold the idle GPUs of
    the node with the most of them (the shadow time is unknown)."""
    k = max(range(len(groups)), key=lambda k: (cluster.idle_count[k], -k))
    if len(groups[k]) < g:
        return None
    cluster.hold([i for i in groups[k] if cluster.is_idle(i) and not cluster.is_held(i)], job_id, None)
    return HeadHold(cluster.t.names[k], None)


def _free_times(cluster: Cluster, idxs, res: Resources, now: float) -> list[tuple[float, int]]:
    """(when it is free for ``res``, GPU number) for each GPU not held for someone else, soonest first."""
    t = cluster.t
    times = []
    for i in idxs:
        if cluster.is_held(i):
            continue
        if cluster.fits(i, res):
            times.append((now, i))
        elif res.whole_gpus or t.total[i] >= res.request_mib(t.total[i]):
            times.append((max(cluster.busy_until[i], now), i))
    times.sort()
    return times
