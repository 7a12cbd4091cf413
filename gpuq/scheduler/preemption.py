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
    return _Preemption(blocked, running, cluster, states, config, now).plan()


class _Preemption:
    """One cycle's preemption planning; each method is one step."""

    def __init__(self, blocked: Sequence[Job], running: Sequence[Job], cluster: Cluster,
                 states: Mapping[str, ShareState], config: PolicyConfig, now: float) -> None:
        self.blocked, self.running, self.cluster = blocked, running, cluster
        self.states, self.config, self.now = states, config, now
        self.rank_policy = config.policy in ("las", "srtf", "default")
        # fair share (or a starving job) may preempt jobs that rank no worse than the waiting one
        self.fair_policy = config.policy not in ("las", "srtf") or any(starved(w, config, now) for w in blocked)
        self.rkeys: dict[int, tuple] = {}
        self.taken: set[int] = set()
        self.out: list[tuple[int, str]] = []

    def plan(self) -> list[tuple[int, str]]:
        self._settle_cluster()
        pool = self._candidates()
        if not pool:
            return []
        for waiting in self.blocked:
            if len(self.out) >= self.config.max_preempts_per_cycle:
                break
            self._make_room(waiting, pool)
        return self.out[: max(self.config.max_preempts_per_cycle, 0)]

    def _wait_key(self, job: Job) -> tuple:
        return effective_key(job, self.config, self.now)[:2]

    def _settle_cluster(self) -> None:
        # backfill is decided: from here on GPUs are kept only for the jobs preemption makes room for
        self.cluster.release_holds()
        # jobs already asked to stop (preempted, requeued, cancelled) free their GPUs soon
        for j in self.running:
            if j.stop_request is not None and j.placement:
                self.cluster.release(j.placement)

    def _candidates(self) -> list[Job]:
        """Running jobs that may be preempted (checkpointable, past ``min_run``, not stopping,
        not started starved), worst-ranked first; [] when none could help a waiting job."""
        config, now = self.config, self.now
        latest_start = now - config.min_run_s
        bar_tier, bar = None, math.inf
        if config.orders_by_service and not self.fair_policy:
            # a running job in the same or a better LAS queue than every waiting job is no victim
            bar_tier, level = min(self._wait_key(w) for w in self.blocked)
            th = config.las_thresholds_gpu_s
            bar = th[level] if level < len(th) else math.inf
        pool = []
        for j in self.running:
            if not j.spec.checkpointable or j.stop_request is not None or j.placement is None:
                continue
            if j.started_at is None or j.started_at > latest_start or started_starving(j, config):
                continue
            if bar_tier is not None and -j.spec.priority == bar_tier and accounting.attained_gpu_s(j, now) < bar:
                continue
            pool.append(j)
        if pool and self.rank_policy:
            rkeys = self.rkeys = {j.id: running_key(j, config, now) for j in pool}
            worst = max(rkeys.values())
            if not self.fair_policy and all(self._wait_key(w) >= worst for w in self.blocked):
                return []  # no running job ranks below any waiting one
            # worst first: lowest tier (las: the deepest queue; srtf: the longest remaining time),
            # then the latest started, which loses the least progress since its last checkpoint
            pool.sort(key=lambda j: (rkeys[j.id], j.started_at or 0.0, j.id), reverse=True)
        return pool

    def _victims_for(self, waiting: Job, pool: Sequence[Job]) -> tuple[list[Job], str]:
        """Who may make room for ``waiting``, in order, and the reason to give them."""
        free = [j for j in pool if j.id not in self.taken]
        if starved(waiting, self.config, self.now):
            # the starvation guard: any checkpointable job that did not start starved makes room
            return free, "starvation guard: job {w} waited {m} min, more than its bound"
        if self.rank_policy:
            wkey = self._wait_key(waiting)
            victims = [j for j in free if self.rkeys[j.id] > wkey]
            if victims:
                return victims, ("srtf: job {w} has less time left" if self.config.policy == "srtf"
                                 else "las: job {w} has had less GPU time")
        if self.fair_policy:
            return (_over_share_victims(waiting, free, self.states, self.config, self.now),
                    "fair share: {u} is over their share and job {w} of {wu}, who is under theirs, waited {m} min")
        return [], ""

    def _make_room(self, waiting: Job, pool: Sequence[Job]) -> None:
        cluster, res = self.cluster, waiting.spec.resources
        if res.gpus == 0 or res.nodes > 1:
            return  # (no preemption on behalf of a job across nodes: docs/scheduling.md)
        gang = res.gpus > cluster.max_node_gpus
        if gang and not self.config.gang:
            return
        room = cluster.fit_gang(res) if gang else cluster.fit(res)
        if room is not None:
            # it will fit once the stopping jobs are gone: keep that room for it
            cluster.hold(room[1], waiting.id, None)
            return
        victims, why = self._victims_for(waiting, pool)
        if not victims:
            return
        chosen = _victims_across_nodes(waiting, victims, cluster) if gang \
            else _victims_on_best_node(waiting, victims, cluster)
        if chosen is None:
            return
        for v in chosen:
            self.taken.add(v.id)
            if v.placement is not None:
                cluster.release(v.placement)
            self.out.append((v.id, why.format(w=waiting.id, u=v.owner.user, wu=waiting.owner.user,
                                              m=int((self.now - waiting.submitted_at) // 60))))
        # hold the freed GPUs for the waiting job, so this cycle's what-ifs do not reuse them
        fit = cluster.fit_gang(res) if gang else cluster.fit(res)
        if fit is not None:
            cluster.hold(fit[1], waiting.id, None)


def starved(job: Job, config: PolicyConfig, now: float) -> bool:
    """Has this waiting job waited its bound (``starve_after_s`` per GPU it asks for, plus
    ``starve_run_factor`` x the time it already ran)?"""
    return config.starvation_guard_on and \
        waited_s(job, now) >= config.starve_bound_s(job.spec.resources.gpus, job.total_run_s)


def started_starving(job: Job, config: PolicyConfig) -> bool:
    """The starvation guard's promise: a run that started starved (the job had waited its bound,
    ``starve_bound_s``) is never preempted, so it cannot be sent back to starve again.  Runs that
    did not start starved may be preempted; each raises the job's bound by ``starve_run_factor``
    x its length, so a long job that LAS stopped after days waits again before it is put first."""
    if not config.starvation_guard_on or job.started_at is None:
        return False
    waited = job.started_at - job.submitted_at - job.total_run_s
    return waited >= config.starve_bound_s(job.spec.resources.gpus, job.total_run_s)


def _over_share_victims(waiting: Job, pool: Sequence[Job], states: Mapping[str, ShareState],
                        config: PolicyConfig, now: float) -> list[Job]:
    """Fair share: running jobs of over-share users, the most over-share first, for a job of a
    user under their share that waited ``preempt_wait_s``."""
    st = states.get(waiting.owner.user)
    if st is None or st.over_share >= 1.0 or now - waiting.submitted_at < config.preempt_wait_s:
        return []
    over = {u for u, s in states.items() if s.over_share > 1.0}
    victims = [j for j in pool if j.owner.user in over
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
            for n in v.placement.nodes:  # a job across nodes frees GPUs on each of its nodes
                by_node.setdefault(n, []).append(v)
    best: list[Job] | None = None
    for node, vs in by_node.items():
        if res.whole_gpus and cluster.idle_gpus_on(node) + len({u for v in vs for u in v.placement.gpu_uuids}) \
                < res.gpus:
            continue  # even with all these victims gone, too few GPUs of this node would be idle
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
