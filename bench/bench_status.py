#!/usr/bin/env python3
"""Another user's `gpuq status` when one user has queued many single jobs (issue 7.3).

    sudo /opt/gpuq/venv/bin/python bench/bench_status.py             # 1,000 jobs, about a minute
    sudo /opt/gpuq/venv/bin/python bench/bench_status.py --jobs 3000

It starts two daemons (SIMULATED GPU, embedded Redis, private homes): one with an empty queue, one
where ``--owner`` (default gpuqtest-alice) has ``--jobs`` single jobs waiting behind a blocker
(submitted through the API as that user, so they are ordinary jobs, not an array).  Then, as
``--as`` (default gpuqtest-bob), alternating in each round:

* ``python -c pass`` (the interpreter alone),
* ``gpuq status`` against the empty queue (the anchor),
* ``gpuq status`` against the long queue (the bounded default view),
* ``gpuq status --state pending,held,running`` against it (every job listed, as status did before),

and the API's part of the last two (``GET /v1/status?others=10`` and ``GET /v1/status``, timed in a
client that is already running).  Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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

BIN = Path(sys.executable).parent
FILL = r"""
import sys
from pathlib import Path
from gpuq.cli.client import Client
c = Client(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    c.call("POST", "/v1/jobs", {"argv": ["true"], "cwd": "/", "env": {"PATH": "/usr/bin:/bin"}, "gpus": 1,
                                "name": f"queued-{i}"})
"""
API = r"""
import json, statistics, sys, time
from pathlib import Path
from gpuq.cli.client import Client
c = Client(Path(sys.argv[1]))
for q in ("?others=10", ""):
    xs = []
    for _ in range(9):
        t = time.perf_counter(); st = c.call("GET", "/v1/status" + q); xs.append(time.perf_counter() - t)
    print(f"API GET /v1/status{q:<11} median {1000 * statistics.median(xs):6.1f} ms, reply {len(json.dumps(st)) // 1024} KiB")
"""


def as_user(user: str) -> dict:
    pw = pwd.getpwnam(user)
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])


def start(home: Path) -> subprocess.Popen:
    env = {**os.environ, "GPUQ_HOME": str(home)}
    env.pop("GPUQ_REDIS_URL", None)
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[scheduler]\nmax_pending = 100000\n")
    # --drain: its running blocker is stopped with it (a job outlives a plain SIGTERM by design)
    p = subprocess.Popen([str(BIN / "gpuq"), "daemon", "--simulate-gpus", "1x24GiB", "--grace", "1s", "--drain"], env=env,
                         stdout=open(home.parent / f"{home.name}.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while subprocess.run([str(BIN / "gpuq"), "status"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline or p.poll() is not None:
            raise SystemExit(f"the gpuq daemon in {home} did not start")
        time.sleep(0.2)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--owner", default="gpuqtest-alice")
    ap.add_argument("--as", dest="viewer", default="gpuqtest-bob")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the jobs and the views belong to two ordinary users")
    base = Path(tempfile.mkdtemp(prefix="gpuq-bench-status-"))
    os.chmod(base, 0o755)
    empty, full = base / "empty", base / "full"
    daemons = [start(empty), start(full)]
    env = {**os.environ, "GPUQ_HOME": str(full)}
    try:
        subprocess.run([str(BIN / "gpuq"), "submit", "-q", "--", "sleep", "3600"], env=env, cwd=base, check=True,
                       capture_output=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", FILL, str(full / "gpuq.sock"), str(args.jobs)], check=True, cwd="/",
                       **as_user(args.owner))
        print(f"{args.jobs} jobs of {args.owner} queued in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        gpuq = str(BIN / "gpuq")
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], empty),
            "gpuq status, empty queue": ([gpuq, "status"], empty),
            f"gpuq status, {args.jobs} jobs queued (default view)": ([gpuq, "status"], full),
            f"gpuq status, {args.jobs} jobs listed (--state ...)": ([gpuq, "status", "--state",
                                                                    "pending,held,running"], full),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        lines: dict[str, int] = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.reps):
            for k, (argv, home) in cases.items():
                t = time.perf_counter()
                p = subprocess.run(argv, env={**os.environ, "GPUQ_HOME": str(home)}, capture_output=True, text=True,
                                   cwd="/", **as_user(args.viewer))
                times[k].append(time.perf_counter() - t)
                if p.returncode != 0:
                    raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.strip()}")
                lines[k] = len(p.stdout.splitlines())
        for k, xs in times.items():
            print(f"{k:48s} median {1000 * statistics.median(xs):6.1f} ms  ({lines[k]} lines)")
        subprocess.run([sys.executable, "-c", API, str(full / "gpuq.sock")], check=True, cwd="/",
                       **as_user(args.viewer))
        print(f"load average (1 min) {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, "
              f"on {os.cpu_count()} CPUs")
    finally:
        for d in daemons:
            d.send_signal(signal.SIGTERM)
            d.wait(60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
