"""The daemon's door: HTTP/1.1 + JSON on a Unix socket.

Every local user may connect (the socket is mode 0666); the caller is identified by the
socket's peer credentials (SO_PEERCRED), never by anything in the request.

    GET  /v1/status[?all=1]          queue and GPUs
    GET  /v1/jobs/ID                 one job in full (its environment only for its owner or root)
    GET  /v1/jobs/ID/log?offset=N    log bytes from N; headers X-Gpuq-Offset, X-Gpuq-State
    POST /v1/jobs                    submit (JSON body)
    POST /v1/jobs/cancel|hold|release|requeue   {"ids": [...]}
    GET  /v1/jobs/ID/log-tail?lines=N  {"offset": where the last N lines begin}
    POST /v1/jobs/lookup             {"ids": [17, "17_3"]} -> the jobs (array ids expanded)
    GET  /v1/history?user=U&state=S&since=T&until=T&limit=N   finished jobs, newest first
    GET  /v1/usage                   fair-share usage per user
    GET  /v1/health

    curl --unix-socket $GPUQ_HOME/gpuq.sock http://gpuq/v1/status
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from gpuq.daemon import schema
from gpuq.daemon.service import Caller, Service
from gpuq.errors import DaemonBusy, GpuqError, InvalidInput, StoreUnavailable

log = logging.getLogger("gpuq.api")

#: Connections served at once, in all; more are answered 503 at once.
MAX_CONNECTIONS = 128
#: Connections one uid may hold open at once (root's included): one user's idle or slow
#: connections cannot take every slot.
MAX_CONNECTIONS_PER_UID = 16
#: A client has this long, in all, to send its whole request (a byte every few seconds does not
#: keep a connection: the deadline is for the request, not for each read).
REQUEST_DEADLINE_S = 10.0
#: ... and this long to read the answer.
WRITE_TIMEOUT_S = 30.0
#: How often the daemon deletes finished jobs past their retention (more often for a short retention).
HOUSEKEEPING_INTERVAL_S = 60.0


def housekeeping_interval_s(retention_s: float) -> float:
    return min(HOUSEKEEPING_INTERVAL_S, max(1.0, retention_s / 4))


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": message, "kind": "DaemonBusy"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog: socketserver's default of 5 overflows when a burst of CLI processes connect
    # while the accept loop waits for the CPU, and a client then fails at once with EAGAIN.
    request_queue_size = 256
    service: Service

    def __init__(self, path: str, handler: type) -> None:
        super().__init__(path, handler)
        self.conn_lock = threading.Lock()
        self.open_by_uid: Counter[int] = Counter()

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            uid = _peer(request)[1]
        except OSError:
            self.shutdown_request(request)
            return
        with self.conn_lock:
            total = sum(self.open_by_uid.values())
            if total >= MAX_CONNECTIONS:
                why = f"the gpuq daemon is busy ({total} connections open); try again in a moment."
            elif self.open_by_uid[uid] >= MAX_CONNECTIONS_PER_UID:
                why = (f"the gpuq daemon is busy: you already have {self.open_by_uid[uid]} connections open to it; "
                       "close some and try again.")
            else:
                why = ""
                self.open_by_uid[uid] += 1
        if why:
            try:
                request.settimeout(0.5)
                request.sendall(_refusal(why))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, (uid,))

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.open_by_uid[client_address[0]] -= 1
                if self.open_by_uid[client_address[0]] <= 0:
                    del self.open_by_uid[client_address[0]]


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all end by one deadline (not a timeout per read)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its request in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(b)


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as null, so the reply is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def strict_json(payload: Any) -> bytes:
    try:
        return json.dumps(payload, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(payload), allow_nan=False).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "gpuq"

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + REQUEST_DEADLINE_S))
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()  # one request per connection

    def address_string(self) -> str:  # Unix sockets have no address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, a header too long, an
        unknown method), as a 4xx with a JSON sentence: a bad request is never a 5xx."""
        if code == 501:
            code, sentence = 405, f"method {self.command!r} is not supported: use GET or POST."
        elif code >= 500:
            code, sentence = 400, "the request is not HTTP/1.x: use the gpuq command or curl."
        else:
            sentence = f"the request is malformed ({message or code}): use the gpuq command or curl."
        self.close_connection = True
        try:
            self._send_json(code, {"error": sentence})
        except OSError:
            pass

    def _caller(self) -> Caller:
        pid, uid, gid = _peer(self.request)
        return Caller.from_peer(pid, uid, gid)

    def _send_json(self, status: int, payload: Any) -> None:
        body = strict_json(payload)
        self.request_version = "HTTP/1.1"  # always a status line and headers, even to an HTTP/0.9-style request
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise InvalidInput("send the request with a Content-Length, not a Transfer-Encoding.")
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isascii() or not text.isdigit() or len(text) > 12:
            raise InvalidInput("the Content-Length header is not a number of bytes.")
        length = int(text)
        if length > schema.MAX_BODY_BYTES:
            raise InvalidInput(f"the request is larger than {schema.MAX_BODY_BYTES // 1024} KiB.")
        raw = self.rfile.read(length) if length else b"{}"
        if len(raw) < length:
            raise InvalidInput("the request body ended before its Content-Length.")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidInput("the request body is not valid JSON.") from None

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        svc = self.server.service
        try:
            try:
                query = parse_qs(url.query, strict_parsing=False, max_num_fields=20)
            except ValueError:
                raise InvalidInput("the query string has too many parameters.") from None
            caller = self._caller()
            if parts[:1] != ["v1"]:
                raise _NotFound()
            route = parts[1:]
            if method == "GET" and route == ["health"]:
                return self._send_json(200, {"ok": True, "pid": os.getpid()})
            if method == "GET" and route == ["status"]:
                q = schema.parse_status_query(query)
                return self._send_json(200, svc.status(caller, include_finished=q.include_finished,
                                                          others_per_user=q.others_per_user))
            if method == "GET" and route == ["usage"]:
                return self._send_json(200, svc.usage(caller))
            if method == "POST" and route == ["jobs", "lookup"]:
                return self._send_json(200, {"jobs": svc.lookup(caller, schema.parse_ids(self._body()).ids)})
            if method == "GET" and route == ["history"]:
                return self._send_json(200, svc.history(caller, schema.parse_history_query(query)))
            if method == "POST" and route == ["jobs"]:
                req = schema.parse_submit(self._body(), svc.cfg.max_job_bytes)
                return self._send_json(201, svc.submit(caller, req))
            if method == "POST" and len(route) == 2 and route[0] == "jobs" and route[1] in (
                    "cancel", "hold", "release", "requeue"):
                ids = schema.parse_ids(self._body()).ids
                results = getattr(svc, route[1])(caller, ids)
                return self._send_json(200, {"results": results})
            if method == "GET" and len(route) >= 2 and route[0] == "jobs":
                job_id = schema.check_job_id(route[1])
                if len(route) == 2:
                    return self._send_json(200, svc.job(caller, job_id))
                if route[2:] == ["log-tail"]:
                    lines = schema.parse_tail_query(query).lines
                    return self._send_json(200, {"offset": svc.log_tail_offset(caller, job_id, lines)})
                if route[2:] == ["log"]:
                    offset = schema.parse_log_query(query).offset
                    data, new_offset, job = svc.log(caller, job_id, offset)
                    self.connection.settimeout(WRITE_TIMEOUT_S)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("X-Gpuq-Offset", str(new_offset))
                    self.send_header("X-Gpuq-State", job.state.value)
                    self.end_headers()
                    self.wfile.write(data)
                    return None
            raise _NotFound()
        except _NotFound:
            self._send_json(404, {"error": f"no such API route: {method} {url.path[:200]}."})
        except StoreUnavailable as e:
            log.error("store unavailable: %s", e)
            self._send_json(e.http_status, {"error": str(e)})
        except GpuqError as e:
            self._send_json(e.http_status, {"error": str(e), "kind": type(e).__name__})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away or stalled; nothing to answer
        except Exception:  # the server must survive any one bad request; the log keeps the evidence
            log.exception("internal error on %s %.200s", method, self.path)
            self._send_json(500, {"error": "the gpuq daemon hit an internal error; see its log."})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class _NotFound(Exception):
    pass


class ApiServer:
    def __init__(self, socket_path: Path, service: Service):
        self.path = socket_path
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        self.server = _Server(str(socket_path), _Handler)
        self.server.service = service
        os.chmod(socket_path, 0o666)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="gpuq-api", daemon=True)
        self.stopping = threading.Event()
        self.housekeeper = threading.Thread(target=self._housekeep, name="gpuq-housekeeping", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.housekeeper.start()

    def _housekeep(self) -> None:
        """Delete finished jobs past their retention (their accounting is kept in aggregate)."""
        while True:
            try:
                self.server.service.housekeep()
            except Exception:  # a bad pass must not end the daemon; the next one retries
                log.exception("housekeeping failed (retrying)")
            if self.stopping.wait(housekeeping_interval_s(self.server.service.cfg.retention_s)):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
