"""What a simulation run achieved: JCT, queueing delay, utilisation, fairness (pure)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from gpuq.scheduler.sim import SimResult


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


def entitlement(demand: Mapping[str, float], weight: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Weighted max-min fair split of ``capacity`` GPUs among users with these demands."""
    ent: dict[str, float] = {}
    active = {u for u, d in demand.items() if d > 0}
    cap = float(capacity)
    while active and cap > 1e-9:
        total_w = sum(weight.get(u, 1.0) for u in active)
        sat = {u for u in active if demand[u] <= cap * weight.get(u, 1.0) / total_w + 1e-9}
        if not sat:
            for u in active:
                ent[u] = cap * weight.get(u, 1.0) / total_w
            return ent
        for u in sat:
            ent[u] = demand[u]
            cap -= demand[u]
        active -= sat
    return ent


def jain(values: Sequence[float]) -> float:
    if not values:
        return 1.0
    s = sum(values)
    sq = sum(v * v for v in values)
    return (s * s) / (len(values) * sq) if sq > 0 else 1.0


def summarize(res: SimResult) -> dict[str, Any]:
    done = [r for r in res.records if r.end_s is not None]
    jct = sorted(r.end_s - r.submit_s for r in done)  # type: ignore[operator]
    delay = sorted(r.first_start_s - r.submit_s for r in done)  # type: ignore[operator]
    # waiting in all: JCT minus the run time alone (preempted jobs wait more than once)
    wait = sorted(max(0.0, r.end_s - r.submit_s - r.duration_s) for r in done)  # type: ignore[operator]
    t0 = min((r.submit_s for r in res.records), default=0.0)
    t1 = max((r.end_s for r in done), default=t0)
    makespan = max(t1 - t0, 1e-9)
    # fairness: each sample's Jain index of allocation / entitlement among users with demand
    js = []
    per_user_alloc: dict[str, float] = {}
    per_user_ent: dict[str, float] = {}
    contended = 0
    for _t, alloc, demand in res.samples:
        if len(demand) < 2:
            continue
        ent = entitlement(demand, res.shares, res.total_gpus)
        xs = [alloc.get(u, 0.0) / e for u, e in ent.items() if e > 0]
        if len(xs) >= 2:
            js.append(jain(xs))
        if sum(demand.values()) > res.total_gpus:
            contended += 1
        for u, e in ent.items():
            per_user_ent[u] = per_user_ent.get(u, 0.0) + e
            per_user_alloc[u] = per_user_alloc.get(u, 0.0) + alloc.get(u, 0.0)
    n_samples = max(len(res.samples), 1)
    users: dict[str, dict[str, float]] = {}
    for r in res.records:
        u = users.setdefault(r.user, {"jobs": 0, "gpu_h": 0.0})
        u["jobs"] += 1
        u["gpu_h"] += r.gpus * r.duration_s / 3600.0
    tenants = []
    for name, u in sorted(users.items(), key=lambda kv: -kv[1]["gpu_h"]):
        ujct = [r.end_s - r.submit_s for r in done if r.user == name]  # type: ignore[operator]
        tenants.append({
            "tenant": name, "jobs": int(u["jobs"]), "gpu_h": round(u["gpu_h"], 1),
            "share_pct": round(100.0 * per_user_alloc.get(name, 0.0) / n_samples / res.total_gpus, 2),
            "entitled_pct": round(100.0 * per_user_ent.get(name, 0.0) / n_samples / res.total_gpus, 2),
            "jct_mean_s": round(sum(ujct) / len(ujct), 1) if ujct else None,
        })
    return {
        "simulated": True,
        "policy": res.policy,
        "gpus": res.total_gpus,
        "jobs": len(res.records),
        "completed": len(done),
        "dropped": len(res.dropped),
        "dropped_gpus": sorted({g for _, g, _ in res.dropped}),
        "jct_mean_s": round(sum(jct) / len(jct), 1) if jct else 0.0,
        "jct_p50_s": percentile(jct, 50), "jct_p90_s": percentile(jct, 90), "jct_p99_s": percentile(jct, 99),
        "queue_delay_mean_s": round(sum(delay) / len(delay), 1) if delay else 0.0,
        "queue_delay_p50_s": percentile(delay, 50), "queue_delay_p99_s": percentile(delay, 99),
        "wait_mean_s": round(sum(wait) / len(wait), 1) if wait else 0.0, "wait_p99_s": percentile(wait, 99),
        "utilisation_pct": round(100.0 * res.busy_gpu_s / (res.total_gpus * makespan), 2),
        "makespan_s": round(makespan, 1),
        "preemptions": res.preemptions,
        "jain_mean": round(sum(js) / len(js), 4) if js else 1.0,
        "contended_pct": round(100.0 * contended / n_samples, 1),
        "plan_calls": res.plan_calls,
        "wall_s": round(res.wall_s, 2),
        "tenants": tenants,
    }


def share_over_time(res: SimResult, bucket_s: float = 86400.0, top: int = 5) -> dict[str, Any]:
    """Each big tenant's share of the GPUs, averaged per bucket (for plots and JSON)."""
    if not res.samples:
        return {"t_s": [], "tenants": {}}
    t0 = res.samples[0][0]
    gpu_h: dict[str, float] = {}
    for r in res.records:
        gpu_h[r.user] = gpu_h.get(r.user, 0.0) + r.gpus * r.duration_s
    names = [u for u, _ in sorted(gpu_h.items(), key=lambda kv: -kv[1])[:top]]
    buckets: dict[int, list] = {}
    for t, alloc, _d in res.samples:
        buckets.setdefault(int((t - t0) // bucket_s), []).append(alloc)
    ts = sorted(buckets)
    out = {u: [] for u in names}
    for b in ts:
        allocs = buckets[b]
        for u in names:
            out[u].append(round(sum(a.get(u, 0.0) for a in allocs) / len(allocs) / res.total_gpus, 4))
    return {"t_s": [t0 + b * bucket_s for b in ts], "tenants": out}
