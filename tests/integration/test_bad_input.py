"""Bad input and failures: one clear sentence, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import GPUQ, run_cli

pytestmark = pytest.mark.integration


def one_sentence(r, *needles: str) -> None:
    assert r.rc != 0, (r.out, r.err)
    err = r.err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gpuq: "), err
    for n in needles:
        assert n in err, err


def _jobs(daemon) -> list:
    return daemon.cli("status", "--all", "--json").json()["jobs"]


def test_daemon_not_running(open_tmp):
    r = run_cli(open_tmp / "nowhere", "status")
    one_sentence(r, "not running", "gpuq daemon")
    assert r.rc == 2


@pytest.mark.parametrize("args, needle", [
    (["--gpu-mem", "10GB?", "x.py"], "is not a size"),
    (["--gpu-mem", "0GiB", "x.py"], "larger than zero"),
    (["--gpu-mem", "-5GiB", "x.py"], "is not a size"),
    (["--gpus", "-1", "x.py"], "negative"),
    (["--fraction", "0", "x.py"], "out of range"),
    (["--fraction", "1.5", "x.py"], "out of range"),
    (["--fraction", "half", "x.py"], "not a number"),
    (["--gpu-mem", "1GiB", "--fraction", "0.5", "x.py"], "only one"),
    (["--time-limit", "soon", "x.py"], "not a duration"),
    (["--time-limit", "0s", "x.py"], "longer than zero"),
    (["missing.py"], "does not exist"),
    (["--", "./missing.sh"], "does not exist"),
    (["--", "no-such-command-xyz"], "not on your PATH"),
    (["--gpu-mem", "100GiB", "x.py"], "could never run"),
    (["--gpus", "3", "x.py"], "could never run"),
    (["--after", "999", "x.py"], "no job 999"),
])
def test_bad_submissions_are_refused_and_nothing_is_written(daemon, open_tmp, args, needle):
    (open_tmp / "x.py").write_text("print('hi')\n")
    before = _jobs(daemon)
    r = daemon.cli("submit", *args, cwd=open_tmp)
    one_sentence(r, needle)
    assert _jobs(daemon) == before


def test_unknown_job_ids(daemon):
    for cmd in (["status", "4242"], ["cancel", "4242"], ["logs", "4242"], ["hold", "4242"], ["release", "4242"]):
        one_sentence(daemon.cli(*cmd), "no job 4242")
    one_sentence(daemon.cli("cancel", "abc"), "not a job id")


def test_acting_on_a_finished_job(daemon, open_tmp):
    j = daemon.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    daemon.wait_state(j, "completed")
    one_sentence(daemon.cli("cancel", str(j)), "already ended")
    one_sentence(daemon.cli("release", str(j)), "only a held job")
    assert daemon.job(j)["state"] == "completed"


def test_requeue_refuses_a_job_that_is_not_checkpointable(daemon, open_tmp):
    j = daemon.submit("--gpus", "0", "--", "sleep", "20", cwd=open_tmp)
    daemon.wait_state(j, "running")
    one_sentence(daemon.cli("requeue", str(j)), "--checkpointable")
    assert daemon.job(j)["state"] == "running"
    daemon.cli("cancel", str(j))


def _daemon_start_fails(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "GPUQ_HOME": str(home)}
    return subprocess.run([GPUQ, "daemon", *args], capture_output=True, text=True, env=env, timeout=60)


def test_daemon_without_nvml_or_simulated_inventory(open_tmp):
    p = _daemon_start_fails(open_tmp / "h1")
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr
    assert err[-1].startswith("gpuq: NVML is not available") and "--simulate-gpus" in err[-1], p.stderr
    assert not (open_tmp / "h1" / "redis").exists()  # nothing started, nothing half-written


def test_daemon_with_unreachable_redis(open_tmp):
    p = _daemon_start_fails(open_tmp / "h2", "--simulate-gpus", "1x8GiB", "--redis-url",
                            f"unix://{open_tmp}/no-such-redis.sock")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("gpuq: cannot reach Redis at unix://") and "--redis-url" in last, p.stderr
    assert not (open_tmp / "h2" / "gpuq.sock").exists()


def test_daemon_with_bad_simulated_inventory_and_config(open_tmp):
    p = _daemon_start_fails(open_tmp / "h3", "--simulate-gpus", "4xlots")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "is not an inventory: write COUNTxSIZE" in p.stderr.strip().splitlines()[-1]
    home = open_tmp / "h4"
    home.mkdir()
    (home / "config.toml").write_text("[daemon]\ngrace = 'forever'\n")
    p = _daemon_start_fails(home, "--simulate-gpus", "1x8GiB")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "not a duration" in p.stderr.strip().splitlines()[-1]


def test_second_daemon_on_the_same_state_directory(daemon):
    p = _daemon_start_fails(daemon.home, "--simulate-gpus", "1x8GiB")
    assert p.returncode != 0 and "already running" in p.stderr and "Traceback" not in p.stderr
    assert daemon.cli("status").rc == 0  # the first one is untouched


def test_api_rejects_garbage_without_dying(daemon):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.home / "gpuq.sock"))
    body = b"{not json"
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    reply = b""
    while chunk := s.recv(4096):
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"not valid JSON" in reply
    assert daemon.cli("status").rc == 0


def test_idle_connections_cannot_lock_others_out(daemon):
    from gpuq.daemon.api import MAX_CONNECTIONS

    held = []
    for _ in range(MAX_CONNECTIONS + 5):  # connect and say nothing
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.home / "gpuq.sock"))
        held.append(s)
    time.sleep(0.5)
    r = daemon.cli("status")
    assert r.rc != 0 and "busy" in r.err and "Traceback" not in r.err  # refused at once, not hung
    for s in held:
        s.close()
    deadline = time.monotonic() + 10
    while daemon.cli("status").rc != 0:  # the slots come back as the idle connections close
        assert time.monotonic() < deadline
        time.sleep(0.2)
