"""The daemon's configuration: command-line options over environment over config file over defaults."""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from gpuq.errors import ConfigError, GpuqError
from gpuq.paths import Paths, config_files, default_home
from gpuq.scheduler.config import PolicyConfig
from gpuq.units import parse_duration_s, parse_size_bytes, parse_size_mib


@dataclass(frozen=True)
class DaemonConfig:
    home: Path
    node: str
    redis_url: str | None = None  # None: start the embedded server
    simulate_gpus: str | None = None  # e.g. "4x24GiB": a SIMULATED inventory instead of NVML
    grace_s: float = 30.0  # SIGTERM -> SIGKILL for a stopping job
    cycle_s: float = 1.0  # the scheduler runs at least this often (and at once when woken)
    probe_interval_s: float = 1.0
    node_ttl_s: float = 15.0  # a node whose snapshot is older than this is considered down
    max_workers: int = 64  # upper bound on RQ worker processes per node
    spare_workers: int = 2  # RQ workers per node: a launch takes milliseconds, so a few serve any load
    scheduler: bool = True  # take part in the scheduler leader election
    keep_impossible_dependents: bool = False  # True: a job whose dependency failed stays pending
    # ---- views for people and monitoring (opt-in; bound to localhost unless told) ----
    metrics_port: int = 0  # Prometheus /metrics (gpuq/daemon/metrics.py); 0: off
    metrics_address: str = "127.0.0.1"
    dashboard_port: int = 0  # read-only web dashboard (gpuq/daemon/dashboard.py); 0: off
    dashboard_address: str = "127.0.0.1"
    dashboard_commands: bool = False  # the dashboard shows jobs' command lines (never environments)
    # ---- launching and supervising jobs: see docs/architecture.md and docs/reliability.md ----
    cpu_slots: int = field(default_factory=lambda: os.cpu_count() or 1)  # CPU-only jobs running at once here
    cgroups: str = "auto"  # auto | v2 | v1 | off: how jobs are contained (gpuq/workers/cgroup.py)
    overuse: str = "warn"  # warn | kill: a job using more GPU memory than it reserved
    overuse_grace_s: float = 60.0  # with overuse = "kill": how long a job may stay over
    log_cap_mib: int = 1024  # per job log; beyond it the oldest part is dropped with a note
    node_lost_s: float = 300.0  # a node silent this long has its started jobs requeued or failed
    drain: bool = False  # on SIGTERM stop (requeue) this node's jobs instead of leaving them running
    # ---- jobs across nodes (--nodes): see docs/architecture.md ----
    address: str = ""  # where other nodes' parts of a job reach this node ("" : the host name)
    gang_start_s: float = 60.0  # every part of a job across nodes starts within this, or none does
    # ---- the door (API): see docs/security.md ----
    max_job_bytes: int = 64 * 1024  # argv + environment of one job
    retention_s: float = 30 * 86400.0  # finished jobs' records are deleted after this (accounting kept)
    min_free_mib: int = 1024  # below this much free space in the state directory, submissions are refused
    show_others_commands: bool = True  # users see each other's argv and cwd (like ps)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    @property
    def paths(self) -> Paths:
        return Paths(self.home)


_KNOWN = {"redis_url", "simulate_gpus", "grace", "cycle", "probe_interval", "node", "node_ttl", "max_workers",
          "spare_workers", "scheduler", "max_job_size", "retention", "min_free_space", "show_others_commands",
          "cpu_slots", "cgroups", "overuse", "overuse_grace", "log_cap", "node_lost_timeout", "drain",
          "keep_impossible_dependents", "metrics_port", "metrics_address", "dashboard_port", "dashboard_address",
          "dashboard_commands", "address", "gang_start_timeout"}


def _policy_from(table: Mapping[str, Any]) -> PolicyConfig:
    from_mapping = getattr(PolicyConfig, "from_mapping", None)
    if from_mapping is not None:
        return from_mapping(table)
    try:
        return PolicyConfig(**table)
    except TypeError as e:
        raise ConfigError(f"the [scheduler] table has an unknown setting ({e}).") from None


def load_config(
    home: Path | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DaemonConfig:
    """Build the config: file (``$GPUQ_HOME/config.toml`` or ``config_file``), then the
    environment (``GPUQ_REDIS_URL``, ``GPUQ_SIMULATE_GPUS``, ``GPUQ_NODE``), then ``overrides``."""
    home = home or default_home()
    path = config_file or next((p for p in config_files(home) if p.exists()), Paths(home).config_file)
    data: dict[str, Any] = {}
    if config_file is not None or path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist: give an existing file or leave --config out.") from None
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read ({e}); fix it or move it away.") from None
    daemon = dict(data.get("daemon", {}))
    unknown = set(daemon) - _KNOWN
    if unknown:
        raise ConfigError(f"config file {path}: unknown [daemon] setting(s) {sorted(unknown)}; known: {sorted(_KNOWN)}.")
    cfg = DaemonConfig(home=home, node=socket.gethostname().split(".")[0])
    try:
        simple: dict[str, Any] = {}
        for k in ("redis_url", "simulate_gpus", "node", "address"):
            if k in daemon:
                simple[k] = str(daemon[k])
        for k, attr in (("grace", "grace_s"), ("cycle", "cycle_s"), ("probe_interval", "probe_interval_s"),
                        ("node_ttl", "node_ttl_s"), ("overuse_grace", "overuse_grace_s"),
                        ("node_lost_timeout", "node_lost_s"), ("gang_start_timeout", "gang_start_s")):
            if k in daemon:
                simple[attr] = parse_duration_s(str(daemon[k]), what=f"[daemon] {k}")
        for k in ("max_workers", "spare_workers", "cpu_slots"):
            if k in daemon:
                simple[k] = int(daemon[k])
        for k in ("metrics_port", "dashboard_port"):
            if k in daemon:
                v = daemon[k]
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
                    raise ConfigError(f"[daemon] {k} must be a port number (1-65535, 0: off).")
                simple[k] = v
        for k in ("metrics_address", "dashboard_address"):
            if k in daemon:
                simple[k] = str(daemon[k])
        for k in ("scheduler", "keep_impossible_dependents", "drain", "dashboard_commands"):
            if k in daemon:
                simple[k] = bool(daemon[k])
        for k in ("cgroups", "overuse"):
            if k in daemon:
                simple[k] = str(daemon[k])
        if "log_cap" in daemon:
            simple["log_cap_mib"] = parse_size_mib(str(daemon["log_cap"]), what="[daemon] log_cap")
        if "max_job_size" in daemon:
            simple["max_job_bytes"] = parse_size_bytes(str(daemon["max_job_size"]), what="[daemon] max_job_size")
        if "retention" in daemon:
            simple["retention_s"] = parse_duration_s(str(daemon["retention"]), what="[daemon] retention")
        if "min_free_space" in daemon:
            simple["min_free_mib"] = parse_size_mib(str(daemon["min_free_space"]), what="[daemon] min_free_space")
        if "show_others_commands" in daemon:
            if not isinstance(daemon["show_others_commands"], bool):
                raise ConfigError(f"config file {path}: [daemon] show_others_commands must be true or false.")
            simple["show_others_commands"] = daemon["show_others_commands"]
        cfg = replace(cfg, **simple)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config file {path}: a [daemon] value has the wrong type ({e}).") from None
    except GpuqError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if "scheduler" in data:
        cfg = replace(cfg, policy=_policy_from(data["scheduler"]))
    env = os.environ
    if env.get("GPUQ_REDIS_URL"):
        cfg = replace(cfg, redis_url=env["GPUQ_REDIS_URL"])
    if env.get("GPUQ_SIMULATE_GPUS"):
        cfg = replace(cfg, simulate_gpus=env["GPUQ_SIMULATE_GPUS"])
    if env.get("GPUQ_NODE"):
        cfg = replace(cfg, node=env["GPUQ_NODE"])
    if overrides:
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if not cfg.address:
        cfg = replace(cfg, address=socket.gethostname())
    if cfg.grace_s < 0 or cfg.max_workers < 1 or cfg.spare_workers < 1 or cfg.cpu_slots < 0:
        raise ConfigError("grace must be zero or more, max_workers and spare_workers at least 1, cpu_slots not negative.")
    if cfg.cgroups not in ("auto", "v2", "v1", "off"):
        raise ConfigError(f"[daemon] cgroups = {cfg.cgroups!r} is unknown: use auto, v2, v1 or off.")
    if cfg.overuse not in ("warn", "kill"):
        raise ConfigError(f"[daemon] overuse = {cfg.overuse!r} is unknown: use warn or kill.")
    return cfg
