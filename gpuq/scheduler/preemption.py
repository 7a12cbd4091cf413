"""Which running jobs to preempt, and for whom (pure).

Only checkpointable jobs that have run at least ``min_run_s`` (the guard against thrashing),
with no stop already requested, are ever proposed; the worker sends SIGTERM, waits the grace
and requeues them.  Two triggers:

- fair share (default, fairshare, fifo with preemption on): a job of a user *under* their
  share waited longer than ``preempt_wait_s`` and does not fit; gpuq frees room on one node
  by preempting jobs of *over-share* users, the most over-share user first.
- las / srtf: a waiting job in a better queue (less attained service; shorter remaining time)
  than a running one takes its place, the worst-ranked running job first.

Jobs already asked to stop for preemption count as leaving, so a job is never preempted twice
for the same waiting job.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from gpuq import accounting
from gpuq.jobs.model import Job
from gpuq.scheduler.config import PolicyConfig
from gpuq.scheduler.fairshare import ShareState
from gpuq.scheduler.ordering import effective_key, running_key, waited_s
from gpuq.scheduler.placement import Cluster



def plan_preemptions(
    blocked: Sequence[Job],
    running: Sequence[Job],
    cluster: Cluster,
    states: Mapping[str, ShareState],
    config: PolicyConfig,
    now: float,
) -> list[tuple[int, str]]:
    """(job id, reason) of running jobs to preempt so that waiting ``blocked`` jobs can start."""
    if not config.preemption_on or not blocked or config.max_preempts_per_cycle == 0:
        return []
    # backfill is decided: from here on GPUs are kept only for the jobs preemption makes room for
    cluster.release_holds()
    # jobs already asked to stop (preempted, requeued, cancelled) free their GPUs soon
    for j in running:
        if j.stop_request is not None and j.placement:
            cluster.release(j.placement)
    latest_start = now - config.min_run_s
    rank_policy = config.policy in ("las", "srtf", "default")
    # fair share (or a starving job) may preempt jobs that rank no worse than the waiting one
    fair_policy = config.policy not in ("las", "srtf") or any(starved(w, config, now) for w in blocked)

    def skey(job: Job) -> tuple:
        return effective_key(job, config, now)
    rkeys: dict[int, tuple] = {}
    las = config.orders_by_service
    if las:
        # no running job can rank below the best waiting one: nothing to do (the common case)
        best_wait = min(skey(w)[:2] for w in blocked)
        th = config.las_thresholds_gpu_s
        bar = th[best_wait[1]] if best_wait[1] < len(th) else math.inf
    pool = []
    for j in running:
        if j.spec.checkpointable and j.stop_request is None and j.placement is not None:
            if j.started_at is None or j.started_at > latest_start or started_starving(j, config):
                continue
            if las and not fair_policy and -j.spec.priority == best_wait[0] and \
                    accounting.attained_gpu_s(j, now) < bar:
                continue  # in the same or a better queue than every waiting job
            pool.append(j)
    if not pool:
        return []
    if rank_policy:
        rkeys = {j.id: running_key(j, config, now) for j in pool}
        worst = max(rkeys.values())
        if not fair_policy and all(skey(w)[:2] >= worst for w in blocked):
            return []  # no running job ranks below any waiting one
        # worst first: lowest tier (las: the deepest queue; srtf: the longest remaining time),
        # then the latest started, which loses the least progress since its last checkpoint
        pool.sort(key=lambda j: (rkeys[j.id], j.started_at or 0.0, j.id), reverse=True)
    out: list[tuple[int, str]] = []
    taken: set[int] = set()
    for waiting in blocked:
        if len(out) >= config.max_preempts_per_cycle:
            break
        res = waiting.spec.resources
        if res.gpus == 0:
            continue
        gang = res.gpus > cluster.max_node_gpus
        room = (cluster.fit_gang(res) if config.gang else None) if gang else cluster.fit(res)
        if room is not None:
            # it will fit once the stopping jobs are gone: keep that room for it
            cluster.hold(room[1], waiting.id, None)
            continue
        victims, why = [], ""
        if starved(waiting, config, now):
            # the starvation guard: any checkpointable job that did not start starving makes room
            victims = [j for j in pool if j.id not in taken]
            why = "starvation guard: job {w} waited {m} min, more than its bound"
        elif rank_policy:
            wkey = skey(waiting)[:2]
            victims = [j for j in pool if j.id not in taken and rkeys[j.id] > wkey]
            why = ("srtf: job {w} has less time left" if config.policy == "srtf"
                   else "las: job {w} has had less GPU time")
        if not victims and fair_policy:
            victims = _over_share_victims(waiting, pool, taken, states, config, now)
            why = ("fair share: {u} is over their share and job {w} of {wu}, who is under theirs, "
                   "waited {m} min")
        if not victims:
            continue
        chosen = _victims_across_nodes(waiting, victims, cluster) if gang and config.gang \
            else _victims_on_best_node(waiting, victims, cluster)
        if chosen is None:
            continue
        for v in chosen:
            taken.add(v.id)
            if v.placement is not None:
                cluster.release(v.placement)
            out.append((v.id, why.format(w=waiting.id, u=v.owner.user, wu=waiting.owner.user,
                                         m=int((now - waiting.submitted_at) // 60))))
        # hold the freed GPUs for the waiting job, so this cycle's what-ifs do not reuse them
        fit = cluster.fit_gang(res) if gang else cluster.fit(res)
        if fit is not None:
            cluster.hold(fit[1], waiting.id, None)
    return out[: max(config.max_preempts_per_cycle, 0)]


def starved(job: Job, config: PolicyConfig, now: float) -> bool:
    """Has this waiting job waited ``starve_after_s`` per GPU it asks for (the guard's bound)?"""
    return config.starvation_guard_on and \
        waited_s(job, now) >= config.starve_after_s * max(job.spec.resources.gpus, 1)


def started_starving(job: Job, config: PolicyConfig) -> bool:
    """The starvation guard's promise: a job that had starved (waited ``starve_after_s`` per GPU)
    when this run started is never preempted, so it cannot be sent back to starve again."""
    if not config.starvation_guard_on or job.started_at is None:
        return False
    waited = job.started_at - job.submitted_at - job.total_run_s
    return waited >= config.starve_after_s * max(job.spec.resources.gpus, 1)


def _over_share_victims(waiting: Job, pool: Sequence[Job], taken: set[int], states: Mapping[str, ShareState],
                        config: PolicyConfig, now: float) -> list[Job]:
    """Fair share: running jobs of over-share users, the most over-share first, for a job of a
    user under their share that waited ``preempt_wait_s``."""
    st = states.get(waiting.owner.user)
    if st is None or st.over_share >= 1.0 or now - waiting.submitted_at < config.preempt_wait_s:
        return []
    over = {u for u, s in states.items() if s.over_share > 1.0}
    victims = [j for j in pool if j.id not in taken and j.owner.user in over
               and j.spec.priority <= waiting.spec.priority]
    victims.sort(key=lambda j: (states[j.owner.user].over_share, j.started_at or 0.0), reverse=True)
    return victims


def _victims_across_nodes(waiting: Job, victims: Sequence[Job], cluster: Cluster) -> list[Job] | None:
    """A gang job wider than a node: victims (in the given order) on any nodes until it fits."""
    res = waiting.spec.resources
    released: list[Job] = []
    fits = False
    for v in victims:
        if v.placement is None:
            continue
        cluster.release(v.placement)
        released.append(v)
        if cluster.fit_gang(res) is not None:
            fits = True
            break
    for v in released:
        cluster.reserve(v.placement)
    return released if fits else None


def _victims_on_best_node(waiting: Job, victims: Sequence[Job], cluster: Cluster) -> list[Job] | None:
    """The fewest victims (in the given order) on one node whose removal lets ``waiting`` fit."""
    res = waiting.spec.resources
    by_node: dict[str, list[Job]] = {}
    for v in victims:
        if v.placement is not None:
            by_node.setdefault(v.placement.node, []).append(v)
    best: list[Job] | None = None
    for node, vs in by_node.items():
        released: list[Job] = []
        ok = False
        for v in vs:
            if best is not None and len(released) + 1 >= len(best):
                break
            cluster.release(v.placement)
            released.append(v)
            if cluster.fit(res, only_node=node) is not None:
                ok = True
                break
        for v in released:
            cluster.reserve(v.placement)
        if ok and (best is None or len(released) < len(best)):
            best = list(released)
    return best
