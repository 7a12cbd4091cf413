"""Helpers for the door's tests: raw API requests as a real user, the embedded Redis, user dirs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).parent

_RAW = r"""
import json, socket, sys
path, method, url, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
payload = body.encode("utf-8", "surrogatepass")
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(path)
try:
    s.sendall(f"{method} {url} HTTP/1.1\r\nHost: gpuq\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
except (BrokenPipeError, ConnectionResetError):
    pass  # the daemon answered (503) and closed before reading: its answer is still there
reply = b""
try:
    while chunk := s.recv(65536):
        reply += chunk
except ConnectionResetError:
    pass  # after a refusal the kernel reports the unread request as a reset, after the answer
head, _, rest = reply.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": rest.decode("utf-8", "replace")}))
"""


def api_as(user: str | None, sock: Path, method: str, url: str, body: Any = None, raw: str | None = None) -> dict:
    """One HTTP request on the daemon's socket from a process of ``user`` (root when None).
    Returns {"status": int, "body": str}."""
    text = raw if raw is not None else ("" if body is None else json.dumps(body))
    kw: dict[str, Any] = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    p = subprocess.run([sys.executable, "-c", _RAW, str(sock), method, url, text], capture_output=True, text=True,
                       timeout=60, cwd="/", **kw)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def redis_of(daemon) -> redis.Redis:
    """A client for the daemon's embedded Redis (root only: its directory is 0700)."""
    return redis.Redis(unix_socket_path=str(daemon.home / "redis" / "redis.sock"))


def user_dir(base: Path, user: str, mode: int = 0o755) -> Path:
    pw = pwd.getpwnam(user)
    d = base / user
    d.mkdir()
    shutil.copy(HERE / "jobscript.py", d / "jobscript.py")
    for p in (d, d / "jobscript.py"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(d, mode)
    return d


def write_config(daemon_home: Path, text: str) -> None:
    daemon_home.mkdir(parents=True, exist_ok=True)
    (daemon_home / "config.toml").write_text(text)


def strict_json(text: str) -> Any:
    """Parse as strict JSON: NaN and Infinity are not JSON."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)
