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

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from gpuq.daemon.service import Caller, Service
from gpuq.errors import GpuqError, InvalidInput, StoreUnavailable

log = logging.getLogger("gpuq.api")
MAX_BODY_BYTES = 8 * 1024 * 1024


MAX_CONNECTIONS = 128


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    service: Service
    slots: threading.BoundedSemaphore  # one thread per connection, at most MAX_CONNECTIONS

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: 62\r\n\r\n"
                                b'{"error": "the gpuq daemon is busy; try again in a moment."}  ')
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "gpuq"
    timeout = 30  # a client that holds a connection open without sending is dropped

    def address_string(self) -> str:  # Unix sockets have no address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _caller(self) -> Caller:
        creds = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return Caller.from_peer(pid, uid, gid)

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise InvalidInput("the request is too large.")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidInput("the request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object.")
        return body

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        svc = self.server.service
        try:
            caller = self._caller()
            if parts[:1] != ["v1"]:
                raise _NotFound()
            route = parts[1:]
            if method == "GET" and route == ["health"]:
                return self._send_json(200, {"ok": True, "pid": os.getpid()})
            if method == "GET" and route == ["status"]:
                return self._send_json(200, svc.status(caller, include_finished=query.get("all", ["0"])[0] == "1"))
            if method == "GET" and route == ["usage"]:
                return self._send_json(200, svc.usage(caller))
            if method == "POST" and route == ["jobs", "lookup"]:
                ids = self._body().get("ids")
                if not isinstance(ids, list) or not ids or len(ids) > 10_000:
                    raise InvalidInput("give one or more job ids.")
                return self._send_json(200, {"jobs": svc.lookup(caller, ids)})
            if method == "GET" and route == ["history"]:
                return self._send_json(200, svc.history(caller, query))
            if method == "POST" and route == ["jobs"]:
                return self._send_json(201, svc.submit(caller, self._body()))
            if method == "POST" and len(route) == 2 and route[0] == "jobs" and route[1] in (
                    "cancel", "hold", "release", "requeue"):
                ids = self._body().get("ids")
                if not isinstance(ids, list) or not ids:
                    raise InvalidInput("give one or more job ids.")
                results = getattr(svc, route[1])(caller, ids)
                return self._send_json(200, {"results": results})
            if method == "GET" and len(route) >= 2 and route[0] == "jobs":
                job_id = _job_id(route[1])
                if len(route) == 2:
                    return self._send_json(200, svc.job(caller, job_id))
                if route[2:] == ["log-tail"]:
                    try:
                        lines = int(query.get("lines", ["10"])[0])
                    except ValueError:
                        raise InvalidInput("lines must be a whole number.") from None
                    return self._send_json(200, {"offset": svc.log_tail_offset(caller, job_id, max(0, lines))})
                if route[2:] == ["log"]:
                    try:
                        offset = int(query.get("offset", ["0"])[0] or 0)
                    except ValueError:
                        raise InvalidInput("offset must be a whole number of bytes.") from None
                    data, new_offset, job = svc.log(caller, job_id, offset)
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
            self._send_json(404, {"error": f"no such API route: {method} {url.path}."})
        except StoreUnavailable as e:
            log.error("store unavailable: %s", e)
            self._send_json(e.http_status, {"error": str(e)})
        except GpuqError as e:
            self._send_json(e.http_status, {"error": str(e), "kind": type(e).__name__})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # the server must survive any one bad request; the log keeps the evidence
            log.exception("internal error on %s %s", method, self.path)
            self._send_json(500, {"error": "the gpuq daemon hit an internal error; see its log."})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class _NotFound(Exception):
    pass


def _job_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a job id: job ids are whole numbers.") from None


class ApiServer:
    def __init__(self, socket_path: Path, service: Service):
        self.path = socket_path
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        self.server = _Server(str(socket_path), _Handler)
        self.server.service = service
        self.server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        os.chmod(socket_path, 0o666)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="gpuq-api", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
