"""The API can't be held hostage (issue 7.7): slow and idle clients are timed out and capped per
uid, and every bad request gets a 4xx with one sentence, never a 5xx (fuzzed)."""

from __future__ import annotations

import json
import pwd
import random
import socket
import subprocess
import sys
import time

import pytest

from gpuq.daemon.api import MAX_CONNECTIONS_PER_UID, REQUEST_DEADLINE_S
from tests.integration.doorkit import api_as

pytestmark = pytest.mark.integration

_TRICKLE = r"""
import json, socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    socks.append(s)
t0 = time.monotonic()
ended = {}  # connection -> (seconds after start, first bytes the daemon sent)
print("connected", flush=True)
while time.monotonic() - t0 < seconds and len(ended) < n:
    for i, s in enumerate(socks):
        if i in ended:
            continue
        try:
            data = s.recv(4096)
            ended[i] = (time.monotonic() - t0, data[:40].decode("latin-1"))
            continue
        except BlockingIOError:
            pass
        except OSError as e:
            ended[i] = (time.monotonic() - t0, type(e).__name__)
            continue
        try:
            s.send(b"G")  # one byte of a request line, then another a second later: never finished
        except OSError as e:
            ended[i] = (time.monotonic() - t0, type(e).__name__)
    time.sleep(1.0)
print(json.dumps({"n": n, "ended": ended}), flush=True)
"""


def test_slow_clients_are_timed_out_and_capped_per_uid(daemon, test_users):
    alice, bob = test_users
    pw = pwd.getpwnam(alice)
    sock = str(daemon.home / "gpuq.sock")
    hold_s = REQUEST_DEADLINE_S + 8
    attacker = subprocess.Popen([sys.executable, "-c", _TRICKLE, sock, "140", str(hold_s)], user=pw.pw_uid,
                                group=pw.pw_gid, extra_groups=[], stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert attacker.stdout.readline().strip() == "connected"
        # alice's next connection is refused at once, with the reason (one try: no client retry)
        reply = api_as(alice, daemon.home / "gpuq.sock", "GET", "/v1/status")
        assert reply["status"] == 503 and "connections open" in json.loads(reply["body"])["error"], reply
        # while alice holds 140 trickling connections, bob is served at once ...
        for _ in range(3):
            t0 = time.monotonic()
            r = daemon.cli("status", user=bob)
            assert r.rc == 0, r.err
            assert time.monotonic() - t0 < 10
        out = json.loads(attacker.communicate(timeout=hold_s + 60)[0].splitlines()[-1])
    finally:
        attacker.kill()
    ended = {int(k): v for k, v in out["ended"].items()}
    refused = [v for v in ended.values() if v[1].startswith("HTTP/1.1 503")]
    # all but her share were refused at once; her share was dropped at the request deadline
    # even though it kept sending a byte every second
    assert len(refused) == 140 - MAX_CONNECTIONS_PER_UID, ended
    assert all(t < 5 for t, _ in refused)
    dropped = [t for t, first in ended.values() if not first.startswith("HTTP/1.1 503")]
    assert len(dropped) == MAX_CONNECTIONS_PER_UID, ended
    assert all(REQUEST_DEADLINE_S - 1 <= t <= REQUEST_DEADLINE_S + 6 for t in dropped), dropped
    assert daemon.cli("status", user=alice).rc == 0  # her slots came back


def _exchange(sock_path: str, raw: bytes) -> tuple[int | None, bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.shutdown(socket.SHUT_WR)
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    s.close()
    if not reply:
        return None, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


_VALUES = [None, True, False, 0, -1, 1, 2**70, -(2**70), 1.5, 1e308, "", "x", "0", "-1", "1e-300", "9" * 400,
           "\ud800", "\x00", "\x1b[2J", [], [1, "a"], {}, {"a": 1}, "/", "/nonexistent", "a" * 70000,
           [["nested"]], "NaN", "1GiB", "2h"]
_FIELDS = ["argv", "cwd", "env", "gpus", "gpu_mem", "fraction", "exclusive", "name", "priority", "after",
           "time_limit", "checkpointable", "unknown_field"]


def _fuzz_requests(rng: random.Random, n: int) -> list[bytes]:
    good = {"argv": ["true"], "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"}, "gpus": 0}
    paths = ["/v1/status", "/v1/status?all=1", "/v1/status?all=2", "/v1/status?all=1&all=0", "/v1/status?x=1",
             "/v1/jobs/1", "/v1/jobs/abc", "/v1/jobs/" + "9" * 40, "/v1/jobs/-1", "/v1/jobs/1/log?offset=-1",
             "/v1/jobs/1/log?offset=" + "9" * 30, "/v1/jobs/%00", "/v1/usage", "/v1/health", "/", "/v2/x",
             "/v1/jobs/cancel", "/v1/jobs/hold", "/" + "a" * 70000, "/v1/jobs/1/log?offset=abc", "*"]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:  # a submit with fields replaced by odd values
            body = dict(good)
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(_FIELDS)] = rng.choice(_VALUES)
            text = json.dumps(body)
            if rng.random() < 0.2:
                text = text.replace("1e+308", "Infinity").replace("\"NaN\"", "NaN")
            payload = text.encode("utf-8", "surrogatepass")
            out.append(b"POST /v1/jobs HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        elif kind < 0.65:  # job actions with odd id lists
            payload = json.dumps({"ids": rng.choice(_VALUES + [[1, 2], list(range(2000))])}).encode(
                "utf-8", "surrogatepass")
            verb = rng.choice(["cancel", "hold", "release", "requeue", "nope"])
            out.append(b"POST /v1/jobs/%s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (verb.encode(), len(payload),
                                                                                    payload))
        elif kind < 0.8:  # odd methods, paths, versions
            method = rng.choice([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"FOO", b"G\x00T", b""])
            version = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"XYZ", b""])
            out.append(method + b" " + rng.choice(paths).encode() + b" " + version + b"\r\n\r\n")
        else:  # odd headers and bodies
            header = rng.choice([b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 99999999999",
                                 b"Content-Length: 50", b"Transfer-Encoding: chunked", b"X: " + b"y" * 70000,
                                 b"Content-Length: 3\r\nContent-Length: 4", b"Bad header line"])
            body = rng.choice([b"", b"{", b"[]", b"\xff\xfe", b"{\"ids\": [1]}", b"null", b"[" * 100000])
            out.append(b"POST /v1/jobs HTTP/1.1\r\n" + header + b"\r\n\r\n" + body)
    return out


def test_fuzzed_requests_get_a_4xx_with_one_sentence_never_a_5xx(daemon):
    sock = str(daemon.home / "gpuq.sock")
    rng = random.Random(7)
    seen: dict[int, int] = {}
    for raw in _fuzz_requests(rng, 400):
        status, body = _exchange(sock, raw)
        if status is None:
            continue  # the daemon may drop a request it cannot even parse as HTTP
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (raw[:300], status, body[:300])
        if status >= 400:
            err = json.loads(body)["error"]
            assert err and "\n" not in err and "Traceback" not in err, err
    assert seen.get(400, 0) > 100, seen  # most of them were refused, with reasons
    assert daemon.proc.poll() is None and daemon.cli("status").rc == 0
    assert "Traceback" not in daemon.log.read_text()
