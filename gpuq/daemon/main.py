"""``gpuq daemon``: everything for one node in one process tree.

    probe GPUs -> start (or connect to) Redis -> reconcile -> serve the API ->
    schedule (if leader) -> keep the node agent ticking -> on SIGTERM/Ctrl-C stop cleanly
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from gpuq.config import DaemonConfig
from gpuq.daemon import children
from gpuq.daemon.api import ApiServer
from gpuq.daemon.dashboard import start_dashboard
from gpuq.daemon.metrics import start_metrics
from gpuq.daemon.embedded_redis import EmbeddedRedis
from gpuq.daemon.service import Service
from gpuq.errors import GpuqError, StoreUnavailable
from gpuq.daemon.scheduler_loop import SchedulerLoop
from gpuq.store import Store, redacted
from gpuq.workers import cgroup
from gpuq.workers.agent import NodeAgent
from gpuq.workers.probe import make_probe
from gpuq.workers.reconcile import LostNodes

_PR_SET_CHILD_SUBREAPER = 36
LOST_NODE_CHECK_S = 5.0
REDIS_WATCH_S = 0.2

log = logging.getLogger("gpuq.daemon")


def _socket_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def become_subreaper() -> None:
    """Supervisors (double-forked by the workers) are re-parented to the daemon, which reaps them."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def prepare_home(cfg: DaemonConfig) -> None:
    p = cfg.paths
    p.home.mkdir(parents=True, exist_ok=True)
    os.chmod(p.home, 0o755)  # users must reach the API socket and their checkpoint directories
    for d in (p.logs, p.checkpoints, p.progress):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    if cfg.simulate_gpus:
        p.simulated_gpu_usage.mkdir(exist_ok=True)
        os.chmod(p.simulated_gpu_usage, 0o1777)  # jobs of any user declare simulated usage here


class Daemon:
    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.stop = threading.Event()
        self.agent_wake = threading.Event()  # set after a cycle a wake-up started (a job ended: re-probe) or on shutdown
        self.redis: EmbeddedRedis | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop.set()  # handlers only set flags
        self.agent_wake.set()

    def _watch_redis(self) -> None:
        """Restart a dead embedded redis-server within REDIS_WATCH_S (its own thread: a node-agent
        tick may be stuck in the client's reconnect back-off meanwhile)."""
        assert self.redis is not None
        while not self.stop.wait(REDIS_WATCH_S):
            if self.redis.died():
                log.error("the embedded redis-server exited; starting it again on the same data")
                try:
                    self.redis.restart()
                except StoreUnavailable as e:
                    log.error("%s (retrying)", e)

    def _connect(self) -> tuple[Store, str]:
        if self.cfg.redis_url:
            store = Store.from_url(self.cfg.redis_url)
            try:
                store.ping()
            except StoreUnavailable as e:
                raise StoreUnavailable(
                    f"cannot reach Redis at {redacted(self.cfg.redis_url)} ({e.__cause__ or e}): check that it runs and the URL "
                    "is right, or leave --redis-url out to use the embedded server."
                ) from e
            return store, self.cfg.redis_url
        self.redis = EmbeddedRedis(self.cfg.paths.redis_dir, self.cfg.paths.redis_socket)
        self.redis.start()
        store = Store.from_url(self.redis.url)
        store.ping()
        return store, self.redis.url

    def run(self) -> int:
        cfg = self.cfg
        sock = cfg.paths.socket
        if sock.exists() and _socket_answers(str(sock)):
            raise GpuqError(f"a gpuq daemon is already running with state directory {cfg.home} (socket {sock}); "
                            "stop it first or choose another GPUQ_HOME.")
        prepare_home(cfg)
        probe = make_probe(cfg.simulate_gpus, str(cfg.paths.simulated_gpu_usage), cfg.node)
        try:
            store, url = self._connect()
        except BaseException:
            probe.close()
            if self.redis:
                self.redis.stop()
            raise
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        containment, note = cgroup.choose(cfg.cgroups, cgroup.scope_name(cfg.node, store.store_id()))
        (log.info if not isinstance(containment, cgroup.ProcessGroupOnly) else log.warning)("%s", note)
        become_subreaper()
        agent = NodeAgent(store, cfg, probe, url, containment, note)
        lost = LostNodes(cfg.node_lost_s)
        next_lost_check = 0.0
        api: ApiServer | None = None
        views: list = []  # the opt-in metrics endpoint and dashboard
        sched_thread: threading.Thread | None = None
        try:
            agent.reconcile_on_start()
            agent.tick()
            api = ApiServer(sock, Service(store, cfg, time.time))
            api.start()
            views = [v for v in (start_metrics(cfg, store), start_dashboard(cfg, store)) if v is not None]
            if cfg.scheduler:
                loop = SchedulerLoop(store, cfg, on_wake=self.agent_wake.set)
                sched_thread = threading.Thread(target=loop.run, args=(self.stop,), name="gpuq-scheduler",
                                                daemon=True)
                sched_thread.start()
            inv = "SIMULATED " if probe.simulated else ""
            log.info("gpuq daemon up: node %s, %s%d GPU(s), store %s, socket %s", cfg.node, inv,
                     len(probe.snapshot(cfg.node, time.time(), {}).gpus), redacted(url), sock)
            if self.redis is not None:
                threading.Thread(target=self._watch_redis, name="gpuq-redis-watch", daemon=True).start()
            while not self.stop.is_set():
                children.reap_adopted({w.pid for w in agent.workers} | ({self.redis.proc.pid} if self.redis and self.redis.proc else set()))
                try:
                    agent.tick()
                    if cfg.scheduler and time.monotonic() >= next_lost_check:
                        next_lost_check = time.monotonic() + LOST_NODE_CHECK_S
                        if store.leader() == cfg.node:
                            lost.check(store, time.time())
                except StoreUnavailable as e:
                    log.error("%s (retrying)", e)
                except Exception:  # one bad probe must not end the daemon; the log keeps the evidence
                    log.exception("node agent tick failed (retrying)")
                self.agent_wake.wait(cfg.probe_interval_s)
                self.agent_wake.clear()
            log.info("stopping: %s", "draining: running jobs get SIGTERM and go back to the queue" if cfg.drain
                     else "running jobs keep running under their supervisors; the next daemon adopts them")
        finally:
            if api is not None:
                api.stop()
            for v in views:
                v.stop()
            try:
                store.wake("shutdown")
            except StoreUnavailable:
                pass
            if sched_thread is not None:
                sched_thread.join(timeout=5)
            try:
                agent.shutdown(cfg.grace_s, drain=cfg.drain)
            except StoreUnavailable as e:
                log.error("could not stop jobs cleanly: %s", e)
            try:  # nothing left running here (a drain, an idle node): leave no empty cgroup behind
                containment.remove_scope()
            except OSError as e:
                log.warning("could not remove this daemon's cgroup directory: %s", e)
            try:
                store.r.close()
            except Exception:  # closing a dead connection may fail; nothing to keep
                pass
            if self.redis is not None:
                self.redis.stop()
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            log.info("gpuq daemon stopped")
        return 0

