"""PNG plot of a simulation run: queue length, GPU utilisation and tenants' shares over time.

matplotlib is imported here only (lazily, by the caller), with the non-interactive backend.
"""

from __future__ import annotations

from pathlib import Path

from gpuq.scheduler.metrics import share_over_time
from gpuq.scheduler.sim import SimResult


def _binned(ts, values, t0, bucket_s):
    """Time-weighted mean of a step function per bucket."""
    if not ts:
        return [], []
    n = int((ts[-1] - t0) // bucket_s) + 1
    acc = [0.0] * n
    for k in range(len(ts) - 1):
        a, b, v = ts[k], ts[k + 1], values[k]
        while a < b:
            i = int((a - t0) // bucket_s)
            edge = min(b, t0 + (i + 1) * bucket_s)
            acc[i] += v * (edge - a)
            a = edge
    return [(i + 0.5) * bucket_s / 86400.0 for i in range(n)], [x / bucket_s for x in acc]


def plot_run(res: SimResult, path: str | Path, title: str = "", bucket_s: float = 3600.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = res.series_t[0] if res.series_t else 0.0
    xq, q = _binned(res.series_t, res.series_queue, t0, bucket_s)
    xb, b = _binned(res.series_t, res.series_busy, t0, bucket_s)
    fig, axes = plt.subplots(3, 1, figsize=(7, 5.4), sharex=True)
    axes[0].plot(xq, q, lw=0.8, color="tab:red")
    axes[0].set_ylabel("pending jobs")
    axes[1].plot(xb, [100.0 * v / res.total_gpus for v in b], lw=0.8, color="tab:blue")
    axes[1].set_ylabel("GPU util. %")
    axes[1].set_ylim(0, 105)
    sot = share_over_time(res)
    if sot["t_s"]:
        xs = [(t - t0) / 86400.0 for t in sot["t_s"]]
        axes[2].stackplot(xs, *[[100 * v for v in vals] for vals in sot["tenants"].values()],
                          labels=list(sot["tenants"]), alpha=0.8)
        axes[2].legend(fontsize=6, loc="upper right", ncol=3)
    axes[2].set_ylabel("share % (top 5)")
    axes[2].set_xlabel("days since trace start")
    fig.suptitle((title + " " if title else "") + f"[SIMULATED {res.total_gpus} GPUs, {res.policy}]", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=70)
    plt.close(fig)
    return out
