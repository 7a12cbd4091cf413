"""Prometheus metrics, built on ``prometheus_client`` (opt-in: ``[daemon] metrics_port``).

Served at ``http://127.0.0.1:PORT/metrics`` (``metrics_address`` to bind elsewhere).  Read from
the store at each scrape (every daemon of a cluster shows the same queue; GPUs are labelled by
node):

===========================================  ==================================================
``gpuq_jobs{state,user}``                     jobs waiting or running, by state and user
``gpuq_gpu_memory_total_bytes{node,gpu}``     each GPU's memory
``gpuq_gpu_memory_used_bytes{node,gpu}``      memory in use as NVML sees it
``gpuq_gpu_memory_reserved_bytes{node,gpu}``  memory gpuq reserved for the jobs placed on it
``gpuq_gpu_utilization_ratio{node,gpu}``      utilisation, 0 to 1
``gpuq_user_usage_gpu_seconds{user}``         each user's decayed usage (what fair share ranks)
``gpuq_wait_seconds``                         histogram: submit to placement, first runs
``gpuq_dispatch_latency_seconds``             histogram: placement to process start
===========================================  ==================================================

The two histograms are observed by a sampler thread that looks at this node's running jobs every
``SAMPLE_S`` (each run once, by its start time), so every daemon counts only its own node's jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from gpuq.config import DaemonConfig
from gpuq.errors import GpuqError
from gpuq.jobs.model import JobState
from gpuq.store import Store

log = logging.getLogger("gpuq.metrics")
MIB = 1024 * 1024
SAMPLE_S = 0.5
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, float("inf"))
DISPATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf"))


class QueueCollector:
    """Gauges computed from the store at each scrape."""

    def __init__(self, store: Store, cfg: DaemonConfig) -> None:
        self.store = store
        self.cfg = cfg

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from gpuq.scheduler import fairshare

        now = time.time()
        try:
            jobs = self.store.active_jobs()
            nodes = self.store.nodes()
            usage = self.store.usage_records()
        except GpuqError as e:
            log.warning("metrics: the store did not answer (%s)", e)
            return
        by = GaugeMetricFamily("gpuq_jobs", "Jobs waiting or running, by state and user.", labels=["state", "user"])
        counts: dict[tuple[str, str], int] = {}
        for j in jobs:
            counts[(j.state.value, j.owner.user)] = counts.get((j.state.value, j.owner.user), 0) + 1
        for (state, user), n in sorted(counts.items()):
            by.add_metric([state, user], n)
        yield by

        running = [j for j in jobs if j.state is JobState.RUNNING and j.placement is not None]
        total = GaugeMetricFamily("gpuq_gpu_memory_total_bytes", "GPU memory.", labels=["node", "gpu"])
        used = GaugeMetricFamily("gpuq_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["node", "gpu"])
        reserved = GaugeMetricFamily("gpuq_gpu_memory_reserved_bytes", "GPU memory gpuq reserved for its jobs.",
                                     labels=["node", "gpu"])
        util = GaugeMetricFamily("gpuq_gpu_utilization_ratio", "GPU utilisation (0-1).", labels=["node", "gpu"])
        for n in nodes:
            for g in n.gpus:
                labels = [n.node, str(g.index)]
                total.add_metric(labels, g.mem_total_mib * MIB)
                used.add_metric(labels, g.mem_used_mib * MIB)
                mib = sum(j.placement.reserved_mib[j.placement.gpu_uuids.index(g.uuid)] for j in running
                          if g.uuid in j.placement.gpu_uuids and len(j.placement.reserved_mib) == len(j.placement.gpu_uuids))
                reserved.add_metric(labels, mib * MIB)
                if g.util_pct is not None:
                    util.add_metric(labels, g.util_pct / 100.0)
        yield from (total, used, reserved, util)

        pending = [j for j in jobs if j.state in (JobState.PENDING, JobState.HELD)]
        rows = fairshare.usage_report(usage, pending, running, self.cfg.policy, now)
        u = GaugeMetricFamily("gpuq_user_usage_gpu_seconds", "Each user's decayed GPU usage (fair share).",
                              labels=["user"])
        for r in rows:
            u.add_metric([r["user"]], float(r["usage_gpu_s"]))
        yield u


class RunSampler:
    """Observes each run of this node's jobs once: wait (first runs) and dispatch latency."""

    def __init__(self, store: Store, node: str, wait: Histogram, dispatch: Histogram) -> None:
        self.store, self.node, self.wait, self.dispatch = store, node, wait, dispatch
        self.seen: dict[int, float] = {}  # job id -> started_at of the run already observed

    def sample(self) -> None:
        live = {}
        for j in self.store.running_on(self.node):
            if j.started_at is None or j.placed_at is None:
                continue
            live[j.id] = j.started_at
            if self.seen.get(j.id) == j.started_at:
                continue
            self.dispatch.observe(max(0.0, j.started_at - j.placed_at))
            if j.requeues == 0:
                self.wait.observe(max(0.0, j.placed_at - j.submitted_at))
        self.seen = live

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_S):
            try:
                self.sample()
            except GpuqError as e:
                log.debug("metrics sampler: %s", e)
            except Exception:  # never end the daemon over a metric
                log.exception("metrics sampler failed (continuing)")


class MetricsServer:
    def __init__(self, server: Any, thread: threading.Thread, stop: threading.Event) -> None:
        self.server, self.thread, self._stop = server, thread, stop

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def start_metrics(cfg: DaemonConfig, store: Store) -> MetricsServer | None:
    """Serve /metrics when ``metrics_port`` is set; None when it is not."""
    if not cfg.metrics_port:
        return None
    registry = CollectorRegistry()
    registry.register(QueueCollector(store, cfg))
    wait = Histogram("gpuq_wait_seconds", "Seconds from submission to placement (first runs).",
                     buckets=WAIT_BUCKETS, registry=registry)
    dispatch = Histogram("gpuq_dispatch_latency_seconds", "Seconds from placement to the process start.",
                         buckets=DISPATCH_BUCKETS, registry=registry)
    server, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_address, registry=registry)
    stop = threading.Event()
    sampler = threading.Thread(target=RunSampler(store, cfg.node, wait, dispatch).run, args=(stop,),
                               name="gpuq-metrics-sampler", daemon=True)
    sampler.start()
    log.info("Prometheus metrics on http://%s:%d/metrics", cfg.metrics_address, cfg.metrics_port)
    return MetricsServer(server, sampler, stop)
