"""HTTP/1.1 + JSON over the daemon's Unix socket.

Deliberately tiny and stdlib-only (socket + json): ``http.client`` alone costs ~40 ms of
imports, and the CLI must start fast.  One request per connection, ``Connection: close``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from gpuq.errors import DaemonBusy, DaemonNotRunning, GpuqError, JobNotFound, PermissionDenied, WouldNeverFit
from gpuq.paths import no_daemon_advice

_ERRORS = {"JobNotFound": JobNotFound, "PermissionDenied": PermissionDenied, "WouldNeverFit": WouldNeverFit,
           "DaemonBusy": DaemonBusy}


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body


def _read_response(sock: socket.socket) -> Response:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection before answering")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"malformed status line {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError("the daemon closed the connection mid-answer")
        body += chunk
    return Response(status, headers, body[:length])


#: While the daemon answers "busy" (too many connections, or too many of this user's), try again
#: after these pauses: a burst of parallel submits waits its turn instead of failing.  A busy
#: refusal comes before the daemon reads the request, so repeating a POST is safe.
BUSY_RETRY_PAUSES_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)


def _is_busy(resp: Response) -> bool:
    return resp.status == 503 and b'"DaemonBusy"' in resp.body


class Client:
    def __init__(self, socket_path: Path, timeout_s: float = 60.0):
        self.path = socket_path
        self.timeout_s = timeout_s

    def request(self, method: str, url: str, body: Any = None) -> Response:
        import random
        import time

        for pause in BUSY_RETRY_PAUSES_S:
            resp = self._request_once(method, url, body)
            if resp is not None and not _is_busy(resp):
                return resp
            time.sleep(pause * (0.5 + random.random()))  # jitter: a burst does not retry in step
        resp = self._request_once(method, url, body)
        if resp is None:
            raise GpuqError("the gpuq daemon is too busy to take the connection; try again in a moment.")
        return resp

    def _request_once(self, method: str, url: str, body: Any = None) -> Response | None:
        """One request; None when the daemon's listen queue is full (connect fails with EAGAIN:
        nothing was sent, so trying again is safe)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {url} HTTP/1.1\r\nHost: gpuq\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            try:
                s.connect(str(self.path))
            except BlockingIOError:
                return None
            try:
                s.sendall(head + payload)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon may have answered and closed before reading our request (503 busy):
                # its answer is still waiting to be read, and it says more than "broken pipe".
                return _read_response(s)
            return _read_response(s)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(no_daemon_advice(self.path)) from None
        except PermissionError:
            raise DaemonNotRunning(f"cannot open {self.path}: permission denied; ask the administrator to check "
                                   "the socket's mode.") from None
        except (socket.timeout, TimeoutError):
            raise GpuqError(f"the gpuq daemon did not answer within {self.timeout_s:g} s; check its log.") from None
        except OSError as e:
            raise GpuqError(f"lost the connection to the gpuq daemon ({e}); check that it is still running.") from None
        finally:
            s.close()

    @staticmethod
    def _raise_for(resp: Response) -> None:
        if resp.status < 400:
            return
        try:
            payload = json.loads(resp.body) if resp.body else {}
        except ValueError:
            payload = {}
        err = _ERRORS.get(payload.get("kind", ""), GpuqError)
        raise err(payload.get("error") or f"the gpuq daemon refused the request (HTTP {resp.status}).")

    def call(self, method: str, url: str, body: Any = None) -> Any:
        resp = self.request(method, url, body)
        self._raise_for(resp)
        try:
            return json.loads(resp.body) if resp.body else {}
        except ValueError:
            raise GpuqError(f"the gpuq daemon sent a reply that is not JSON (HTTP {resp.status}).") from None

    def log_chunk(self, job_id: int, offset: int) -> tuple[bytes, int, str]:
        resp = self.request("GET", f"/v1/jobs/{job_id}/log?offset={offset}")
        self._raise_for(resp)
        return resp.body, int(resp.headers.get("x-gpuq-offset", offset)), resp.headers.get("x-gpuq-state", "?")
