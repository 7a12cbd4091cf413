#!/usr/bin/env python3
"""Does a submit cost more as more jobs are active?  Does another user's status?  (issue 7.3)

    sudo /opt/gpuq/venv/bin/python bench/bench_submit.py                  # 3,000 active jobs, ~5 min
    sudo /opt/gpuq/venv/bin/python bench/bench_submit.py --jobs 500       # a quick look

It starts its own gpuq daemon (SIMULATED GPU, embedded Redis, private GPUQ_HOME, a per-user
pending limit raised for the run), parks a blocker job on the GPU, then submits ``--jobs`` jobs
that wait behind it.  Measured, in windows of ``--window`` active jobs:

* the API submit time (the daemon's part: one HTTP request on the socket, no CLI start-up);
* the real ``gpuq submit`` CLI, ``--cli-reps`` times per window;
* ``gpuq status`` (the table) run by another user (``--as``, default the test user
  gpuqtest-bob when it exists), ``--cli-reps`` times per window.

Anchor: task-spooler in the same run: ``tsp true`` submit time and ``tsp -l`` with the same number
of queued jobs behind a blocker (one slot), up to ``TSP_MAX_QUEUED``: each queued tsp job keeps a
waiting client process connected to its server, and the server takes about 1,000 connections, so
task-spooler cannot hold more (a submit then blocks).  Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuq.cli.client import Client

BIN = Path(sys.executable).parent
TSP_MAX_QUEUED = 900


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.1f}"


class GpuqUnderTest:
    def __init__(self, root: Path):
        self.home = root / "home"
        self.home.mkdir(parents=True)
        os.chmod(root, 0o755)
        (self.home / "config.toml").write_text("[scheduler]\nmax_pending = 1000000\n")
        env = {**os.environ, "GPUQ_HOME": str(self.home)}
        self.log = open(root / "daemon.log", "wb")
        self.proc = subprocess.Popen([str(BIN / "gpuq"), "daemon", "--simulate-gpus", "1x24GiB", "--node", "bench",
                                      "--drain"],  # its running jobs stop with it (they outlive a plain SIGTERM)
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.client = Client(self.home / "gpuq.sock")
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.call("GET", "/v1/status")["nodes"]:
                    break
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the gpuq daemon did not start; see {root / 'daemon.log'}")
            time.sleep(0.2)

    def submit_api(self, argv: list[str], gpus: int = 1) -> float:
        body = {"argv": argv, "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"}, "gpus": gpus}
        t0 = time.perf_counter()
        self.client.call("POST", "/v1/jobs", body)
        return time.perf_counter() - t0

    def status_api(self) -> float:
        t0 = time.perf_counter()
        self.client.call("GET", "/v1/status")
        return time.perf_counter() - t0

    def cli(self, args: list[str], user: str | None) -> float:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "GPUQ_HOME": str(self.home), "LANG": "C.UTF-8"}
        kw = {}
        if user:
            pw = pwd.getpwnam(user)
            kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        t0 = time.perf_counter()
        p = subprocess.run([str(BIN / "gpuq"), *args], env=env, cwd="/tmp", capture_output=True, **kw)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"gpuq {' '.join(args)} failed: {p.stderr.decode()}")
        return dt

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class TspUnderTest:
    def __init__(self, root: Path):
        exe = shutil.which("tsp")
        if exe is None:
            raise SystemExit("task-spooler is not installed (apt-get install task-spooler): it is the anchor")
        self.exe = exe
        d = root / "tsp"
        d.mkdir()
        self.env = {"PATH": "/usr/bin:/bin", "TS_SOCKET": str(d / "sock"), "TMPDIR": str(d), "TS_MAXFINISHED": "10"}
        self.run(["-S", "1"])
        self.run(["sleep", "3600"])
        self.queued = 0

    def submit(self) -> float | None:
        if self.queued >= TSP_MAX_QUEUED:
            return None
        self.queued += 1
        return self.run(["true"])

    def run(self, args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([self.exe, *args], env=self.env, check=True, capture_output=True)
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Stop the server, then the waiting clients it leaves behind (only ours: by TS_SOCKET)."""
        subprocess.run([self.exe, "-K"], env=self.env, capture_output=True)
        mine = f"TS_SOCKET={self.env['TS_SOCKET']}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if mine in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGTERM)
            except OSError:
                continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--cli-reps", type=int, default=5)
    ap.add_argument("--as", dest="other", default=None, help="the other user who runs gpuq status")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    other = args.other
    if other is None:
        try:
            pwd.getpwnam("gpuqtest-bob")
            other = "gpuqtest-bob"
        except KeyError:
            other = None
    root = Path(tempfile.mkdtemp(prefix="gpuq-bench-submit-", dir="/tmp"))
    gpuq = GpuqUnderTest(root)
    tsp = TspUnderTest(root)
    rows = []
    try:
        gpuq.submit_api(["sleep", "3600"])  # the blocker takes the GPU; the rest wait behind it
        active = 1
        t_all = time.perf_counter()
        while True:
            status = [gpuq.cli(["status"], other) for _ in range(args.cli_reps)]
            api_status = [gpuq.status_api() for _ in range(args.cli_reps)]
            cli_submit = [gpuq.cli(["submit", "-q", "--", "true"], None) for _ in range(args.cli_reps)]
            tsp_l = [tsp.run(["-l"]) for _ in range(args.cli_reps)]
            tsp_submit = [t for t in (tsp.submit() for _ in range(args.cli_reps)) if t is not None]
            active += args.cli_reps
            api = []
            if active < args.jobs:
                n = min(args.window, args.jobs - active)
                api = [gpuq.submit_api(["true"]) for _ in range(n)]
                for _ in range(n):
                    tsp.submit()
            rows.append({"active": active, "api_submit_ms": statistics.median(api) * 1000 if api else None,
                         "cli_submit_ms": statistics.median(cli_submit) * 1000,
                         "status_other_ms": statistics.median(status) * 1000,
                         "api_status_ms": statistics.median(api_status) * 1000,
                         "tsp_queued": tsp.queued,
                         "tsp_submit_ms": statistics.median(tsp_submit) * 1000 if tsp_submit else None,
                         "tsp_list_ms": statistics.median(tsp_l) * 1000})
            print(f"active {active:6d}  api submit {_ms(api) if api else '      -'} ms  cli submit "
                  f"{_ms(cli_submit)} ms  status ({other or 'root'}) {_ms(status)} ms (API {_ms(api_status)} ms)  |  tsp ({tsp.queued} queued) submit "
                  f"{_ms(tsp_submit) if tsp_submit else '      -'} ms  tsp -l {_ms(tsp_l)} ms", flush=True)
            active += len(api)
            if not api:
                break
        total_s = time.perf_counter() - t_all
        print(f"{active} jobs active; whole run {total_s:.1f} s")
    finally:
        gpuq.stop()
        tsp.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
