"""Shared fixtures: a real redis-server on a private socket, the real daemon and the real CLI
as subprocesses, and real Linux users.  GPUs are SIMULATED (no GPU can exist here)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
GPUQ = str(BIN / "gpuq")
TEST_USERS = ("gpuqtest-alice", "gpuqtest-bob")


def process_alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def end_leftover_supervisors(home: Path) -> list[str]:
    """SIGKILL every supervisor started for the daemon of ``home`` that is still alive, and its
    job's processes (each in a process group of its own, led by a child of the supervisor); what
    was killed, as "gpuq-sup-ID (pid P)".  A daemon stopped by SIGTERM leaves its jobs running by
    design, so a teardown that could not cancel them (its store already gone) ends them here."""
    mark = f"GPUQ_HOME={home}".encode()
    procs = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    killed = []
    for pid in procs:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not comm.startswith("gpuq-sup-") or mark not in env or not process_alive(pid):
            continue
        for child in (c for c in procs if _ppid(c) == pid):
            try:
                os.killpg(child, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{comm} (pid {pid})")
        except OSError:
            pass
    return killed


def _open_dir(prefix: str) -> Path:
    """A temp dir every user can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def open_tmp():
    d = _open_dir("gpuq-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_server():
    """A private redis-server on a Unix socket (never the shared one on 6379).  A test that also
    uses ``make_daemon`` names ``redis_server`` first: fixtures are torn down in reverse order, and
    the daemons' teardown must still reach the store to cancel what is left running."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (the tests need a real one)")
    d = Path(tempfile.mkdtemp(prefix="gpuq-redis-"))
    sock = d / "redis.sock"
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(d),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the test redis-server did not start")
        time.sleep(0.02)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)


# ---- CLI -----------------------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(home: Path, *args: str, user: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    e = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "GPUQ_HOME": str(home), "LANG": "C.UTF-8"}
    kwargs: dict[str, Any] = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        e.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    if env:
        e.update(env)
    p = subprocess.run([GPUQ, *args], capture_output=True, text=True, cwd=cwd or home.parent, env=e,
                       timeout=timeout, **kwargs)
    return Result(p.returncode, p.stdout, p.stderr)


# ---- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    home: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home.parent / f"daemon-{self.home.name}.log"

    def start(self, timeout: float = 30) -> "Daemon":
        env = {**os.environ, "GPUQ_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        env.pop("GPUQ_REDIS_URL", None)
        env.pop("GPUQ_SIMULATE_GPUS", None)
        self.proc = subprocess.Popen([GPUQ, "daemon", *self.args], env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gpuq daemon exited at start:\n{self.log.read_text()}")
            r = run_cli(self.home, "status", "--json")
            if r.rc == 0 and r.json()["nodes"]:
                return self
            time.sleep(0.1)
        pytest.fail(f"gpuq daemon did not come up:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc

    def cli(self, *args: str, **kw: Any) -> Result:
        return run_cli(self.home, *args, **kw)

    def wait_pid(self, job_id: int, timeout: float = 30) -> int:
        """The pid of a running job's process, once its supervisor has recorded it."""
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while not job.get("pid"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = self.job(job_id)
        return job["pid"]

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job still queued or running and wait until none runs.  A daemon stopped by
        SIGTERM leaves its jobs running (they outlive it by design), so a test's teardown must end
        them itself or they would outlive the test.  It runs from ``/``: the test's own directories
        may already be gone (fixtures are torn down in reverse order)."""
        r = self.cli("status", "--json", cwd=Path("/"))
        if r.rc != 0:
            return
        active = [str(j["id"]) for j in r.json()["jobs"] if j["state"] in ("pending", "held", "running")]
        if not active:
            return
        self.cli("cancel", *active, cwd=Path("/"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.cli("status", "--json", cwd=Path("/"))
            if r.rc != 0 or not any(j["state"] == "running" for j in r.json()["jobs"]):
                return
            time.sleep(0.2)

    def submit(self, *args: str, **kw: Any) -> int:
        r = self.cli("submit", "-q", *args, **kw)
        assert r.rc == 0, r.err
        return int(r.out.strip())

    def job(self, job_id: int, **kw: Any) -> dict[str, Any]:
        r = self.cli("status", str(job_id), "--json", **kw)
        assert r.rc == 0, r.err
        return r.json()

    def wait_state(self, job_id: int, states: set[str] | str, timeout: float = 60) -> dict[str, Any]:
        want = {states} if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["state"] not in want:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['state']}, expected {want}:\n{json.dumps(job, indent=1)}"
                                     f"\n--- daemon log ---\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
            job = self.job(job_id)
        return job


@pytest.fixture
def make_daemon(open_tmp):
    # Depends on open_tmp so that it is torn down first: a test may keep a daemon's home inside
    # open_tmp, and the daemon must still answer when its teardown cancels what is left running.
    started: list[Daemon] = []
    dirs: list[Path] = []

    def make(*args: str, home: Path | None = None, start: bool = True) -> Daemon:
        if home is None:
            base = _open_dir("gpuq-home-")
            dirs.append(base)
            home = base / "home"
        d = Daemon(home, list(args))
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.cancel_all()
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(60)
            except subprocess.TimeoutExpired:
                d.proc.kill()
    leftovers = [k for d in started for k in end_leftover_supervisors(d.home)]
    if leftovers:  # a job outlived its test: its store went first (see redis_server), or a bug
        warnings.warn(f"killed supervisors left running after the test: {', '.join(leftovers)}")
    for b in dirs:
        shutil.rmtree(b, ignore_errors=True)


@pytest.fixture
def daemon(make_daemon):
    """The real daemon with two SIMULATED 24 GiB GPUs and a 2 s grace."""
    return make_daemon("--simulate-gpus", "2x24GiB", "--grace", "2s", "--node", "testnode")


# ---- Linux users ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_users() -> tuple[str, str]:
    """Two real Linux users (created here; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("the multi-user tests must run as root, to create the test users and run jobs as them")
    for name in TEST_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    return TEST_USERS
