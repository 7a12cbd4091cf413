"""Where gpuq keeps its state; shared by the daemon and the CLI (stdlib only, imports fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


#: The shared (system) install: the root daemon's state, its well-known API socket inside it,
#: and the administrator's config file.  Clients find the system daemon here with no variable set.
SYSTEM_HOME = Path("/var/lib/gpuq")
SYSTEM_CONFIG = Path("/etc/gpuq/config.toml")


def personal_home() -> Path:
    """A per-user daemon's state (``gpuq daemon --personal``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "gpuq"


def default_home() -> Path:
    """The daemon's state directory: ``GPUQ_HOME``, else the system one for root, else the
    user's own (only used when the user asks for a personal daemon)."""
    env = os.environ.get("GPUQ_HOME")
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return SYSTEM_HOME
    return personal_home()


def client_home() -> Path:
    """Where the CLI finds its daemon: ``GPUQ_HOME`` when set; else the system daemon (the shared
    install); else the user's own personal daemon when one runs; else the system location (whose
    absence the error message explains)."""
    env = os.environ.get("GPUQ_HOME")
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0 or Paths(SYSTEM_HOME).socket.exists() or SYSTEM_CONFIG.exists():
        return SYSTEM_HOME
    mine = personal_home()
    if Paths(mine).socket.exists():
        return mine
    return SYSTEM_HOME


def no_daemon_advice(socket_path: Path) -> str:
    """What to do when nothing answers on ``socket_path`` (one sentence, for the CLI's error)."""
    if socket_path == Paths(SYSTEM_HOME).socket:
        if SYSTEM_CONFIG.exists():
            return ("the shared gpuq daemon is not running (nothing answers on "
                    f"{socket_path}): ask the administrator to start it (systemctl start gpuq).")
        return ("gpuq is not set up on this machine (no daemon answers on "
                f"{socket_path}): an administrator installs it for everyone with `sudo bash scripts/install.sh`, "
                "or run your own queue with `gpuq daemon --personal`.")
    return (f"the gpuq daemon is not running (nothing answers on {socket_path}): start it, or unset GPUQ_HOME "
            "to use the machine's shared daemon.")


def config_files(home: Path) -> list[Path]:
    """Config files for a daemon with this state directory, the first that exists wins: the
    administrator's ``/etc/gpuq/config.toml`` for the system daemon, else ``$GPUQ_HOME/config.toml``."""
    own = Paths(home).config_file
    return [SYSTEM_CONFIG, own] if home == SYSTEM_HOME else [own]


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
