"""Where gpuq keeps its state; shared by the daemon and the CLI (stdlib only, imports fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    env = os.environ.get("GPUQ_HOME")
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/gpuq")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "gpuq"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def socket(self) -> Path:
        """The daemon's API socket (HTTP+JSON); every local user may connect."""
        return self.home / "gpuq.sock"

    @property
    def redis_dir(self) -> Path:
        """Embedded Redis: data and socket, in a directory only the daemon's user can enter."""
        return self.home / "redis"

    @property
    def redis_socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"

    @property
    def progress(self) -> Path:
        return self.home / "progress"

    @property
    def simulated_gpu_usage(self) -> Path:
        """SIMULATED GPUs only: files here declare memory "used" on a simulated GPU."""
        return self.home / "simulated-gpu-usage"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    def job_log(self, job_id: int) -> Path:
        return self.logs / f"{job_id}.log"

    def job_checkpoint_dir(self, job_id: int) -> Path:
        return self.checkpoints / str(job_id)

    def job_progress_file(self, job_id: int) -> Path:
        return self.progress / str(job_id) / "progress.json"
