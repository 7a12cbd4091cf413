"""A read-only web dashboard served by the daemon (opt-in: ``[daemon] dashboard_port``).

``http://127.0.0.1:PORT/`` (``dashboard_address`` to bind elsewhere) shows the GPUs with their jobs
and users, the queue with the reason each job waits, usage per user and a 24-hour timeline of who
held which GPU.  The page (gpuq/daemon/dashboard_page.py) fetches ``/api/dashboard.json`` every
two seconds.  Only GET: nothing here changes the queue.  Whoever can reach the port sees it, so it
never shows environments, and command lines only with ``dashboard_commands = true``.

The timeline comes from a sampler thread: every ``SAMPLE_S`` it records each running job of this
node with its GPUs and the time last seen (``Store.record_gpu_holds``), so it survives daemon
restarts and covers every node whose daemon has the dashboard on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gpuq.config import DaemonConfig
from gpuq.daemon.dashboard_page import PAGE
from gpuq.errors import GpuqError
from gpuq.jobs.model import Job, JobState
from gpuq.store import Store

log = logging.getLogger("gpuq.dashboard")
SAMPLE_S = 2.0
TIMELINE_S = 24 * 3600.0
MAX_QUEUE_ROWS = 500


def _name(job: Job, commands: bool) -> str:
    return job.display_name if commands or job.spec.name else f"job {job.id}"


def dashboard_data(store: Store, cfg: DaemonConfig, now: float) -> dict[str, Any]:
    """Everything the page shows, as JSON (no environments; command lines only when allowed)."""
    from gpuq.scheduler import fairshare

    show = cfg.dashboard_commands
    jobs = store.active_jobs()
    reasons = store.reasons()
    running = [j for j in jobs if j.state is JobState.RUNNING and j.placement is not None]
    waiting = [j for j in jobs if j.state in (JobState.PENDING, JobState.HELD)]
    nodes = []
    for n in store.nodes():
        gpus = []
        for g in n.gpus:
            on = [j for j in running if g.uuid in j.placement.gpu_uuids]
            gpus.append({
                "index": g.index, "name": g.name, "mem_total_mib": g.mem_total_mib, "mem_used_mib": g.mem_used_mib,
                "reserved_mib": sum(j.placement.reserved_mib[j.placement.gpu_uuids.index(g.uuid)] for j in on
                                    if len(j.placement.reserved_mib) == len(j.placement.gpu_uuids)),
                "util_pct": g.util_pct,
                "jobs": [{"id": j.id, "user": j.owner.user, "name": _name(j, show),
                          "elapsed_s": None if j.started_at is None else now - j.started_at} for j in on],
            })
        nodes.append({"node": n.node, "simulated": n.simulated, "gpus": gpus})

    def row(j: Job) -> dict[str, Any]:
        d = {"id": j.id, "user": j.owner.user, "name": _name(j, show), "state": j.state.value,
             "gpus": j.spec.resources.gpus, "submitted_at": j.submitted_at,
             "reason": reasons.get(j.id) or ("held" if j.state is JobState.HELD else "waiting for the scheduler")}
        if show:
            d["command"] = list(j.spec.argv)
        if j.spec.array is not None:
            d["array"] = f"{j.spec.array.array_id}_{j.spec.array.index}"
        return d

    usage = fairshare.usage_report(store.usage_records(), waiting, running, cfg.policy, now)
    since = now - TIMELINE_S
    holds = sorted((h for h in store.gpu_holds() if float(h.get("end", 0)) >= since),
                   key=lambda h: (h.get("node", ""), h.get("start", 0)))
    if not show:
        holds = [{k: v for k, v in h.items() if k != "name"} for h in holds]
    return {
        "now": now, "since": since, "nodes": nodes, "queue": [row(j) for j in waiting[:MAX_QUEUE_ROWS]],
        "queue_total": len(waiting),
        "usage": [{"user": r["user"], "usage_gpu_s": r["usage_gpu_s"], "share_norm": r["share_norm"],
                   "running_jobs": r["running_jobs"], "pending_jobs": r["pending_jobs"],
                   "gpus_in_use": r["gpus_in_use"]} for r in usage],
        "timeline": holds,
    }


def sample_holds(store: Store, node: str, now: float) -> None:
    """Record who holds which GPU on this node right now (the timeline's raw data)."""
    holds = []
    for j in store.running_on(node):
        p = j.placement
        if j.started_at is None or p is None or not p.gpu_uuids:
            continue
        rank = p.rank_of(node) if p.is_gang else None  # a job across nodes: this node's part only
        mine = p if rank is None else p.part(rank)
        holds.append({"job": j.id, "user": j.owner.user, "node": node, "gpus": list(mine.gpu_indices),
                      "name": j.display_name, "start": j.started_at, "end": now,
                      **({} if rank is None else {"part": rank})})
    store.record_gpu_holds(holds, keep_after=now - TIMELINE_S)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "gpuq-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                                                    "style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/dashboard.json":
            try:
                data = dashboard_data(self.server.store, self.server.cfg, time.time())
            except GpuqError as e:
                return self._send(503, json.dumps({"error": str(e)}).encode(), "application/json")
            return self._send(200, json.dumps(data).encode(), "application/json")
        return self._send(404, b'{"error": "no such page"}', "application/json")

    def _read_only(self) -> None:
        self._send(405, b'{"error": "the dashboard is read-only"}', "application/json")

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store
    cfg: DaemonConfig


class Dashboard:
    def __init__(self, server: _Server, stop: threading.Event) -> None:
        self.server, self._stop = server, stop

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def _sampler(store: Store, node: str, stop: threading.Event) -> None:
    while True:
        try:
            sample_holds(store, node, time.time())
        except GpuqError as e:
            log.debug("dashboard sampler: %s", e)
        except Exception:  # never end the daemon over the dashboard
            log.exception("dashboard sampler failed (continuing)")
        if stop.wait(SAMPLE_S):
            return


def start_dashboard(cfg: DaemonConfig, store: Store) -> Dashboard | None:
    """Serve the dashboard when ``dashboard_port`` is set; None when it is not."""
    if not cfg.dashboard_port:
        return None
    server = _Server((cfg.dashboard_address, cfg.dashboard_port), _Handler)
    server.store, server.cfg = store, cfg
    stop = threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="gpuq-dashboard",
                     daemon=True).start()
    threading.Thread(target=_sampler, args=(store, cfg.node, stop), name="gpuq-dashboard-sampler",
                     daemon=True).start()
    log.info("dashboard on http://%s:%d/", cfg.dashboard_address, cfg.dashboard_port)
    return Dashboard(server, stop)
