#!/usr/bin/env python3
"""The daily command line against task-spooler (``tsp``), in the same run, on the same machine.

    /opt/gpuq/venv/bin/python bench/bench_cli.py              # about a minute
    /opt/gpuq/venv/bin/python bench/bench_cli.py --reps 51 --json

* ``gpuq status`` and ``gpuq submit`` wall time (median, p90), interleaved with ``tsp -l`` and
  ``tsp true`` so both see the same load.  The submitted jobs queue behind a blocker that holds the
  (SIMULATED) GPU, and task-spooler's behind a blocker in its one slot, so nothing runs meanwhile.
* A 1,000-job array, ``gpuq submit --array 0-999%8``: the wall time of the one command, against
  1,000 ``tsp`` submissions (the way to queue a sweep with task-spooler) and against the measured
  median of one ``gpuq submit`` times 1,000 (a sweep without arrays).

It starts its own daemon (private GPUQ_HOME, embedded Redis) and its own task-spooler server
(private TS_SOCKET), and stops both at the end.  Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.strip()}")
    return dt


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": 1000 * statistics.median(xs),
            "p90_ms": 1000 * statistics.quantiles(xs, n=10, method="inclusive")[-1], "min_ms": 1000 * xs[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--array", type=int, default=1000)
    ap.add_argument("--tsp-loop", type=int, default=100, help="tsp submissions timed (scaled to --array)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gpuq = str(Path(sys.executable).parent / "gpuq")
    tsp = shutil.which("tsp") or shutil.which("ts")
    if tsp is None:
        raise SystemExit("task-spooler is not installed (apt-get install task-spooler): it is the anchor")
    base = Path(tempfile.mkdtemp(prefix="gpuq-bench-cli-"))
    os.chmod(base, 0o755)
    env = {**os.environ, "GPUQ_HOME": str(base / "home"), "TS_SOCKET": str(base / "ts.sock"), "TS_SLOTS": "1",
           "TS_MAXCONN": "5000", "TS_SAVELIST": str(base / "ts.list")}
    env.pop("GPUQ_REDIS_URL", None)
    # --drain: its running blocker is stopped with it (a job outlives a plain SIGTERM by design, and its
    # supervisor would go on retrying the removed Redis)
    daemon = subprocess.Popen([gpuq, "daemon", "--simulate-gpus", "1x24GiB", "--grace", "1s", "--drain"], env=env,
                              stdout=open(base / "daemon.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([gpuq, "status"], env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the gpuq daemon did not start:\n" + (base / "daemon.log").read_text())
            time.sleep(0.2)
        subprocess.run([gpuq, "submit", "-q", "--", "sleep", "3600"], env=env, cwd=base, check=True,
                       capture_output=True)
        # the first tsp call forks the task-spooler server, which keeps its stdout: no pipes here
        subprocess.run([tsp, "sleep", "3600"], env=env, cwd=base, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        log("daemon up; timing status and submit against tsp")
        status, submit, tsp_l, tsp_true = [], [], [], []
        for _ in range(args.reps):
            status.append(timed([gpuq, "status"], env, base))
            tsp_l.append(timed([tsp, "-l"], env, base))
            submit.append(timed([gpuq, "submit", "-q", "--", "true"], env, base))
            tsp_true.append(timed([tsp, "true"], env, base))
        subprocess.run([gpuq, "cancel", *[str(i) for i in range(2, 2 + args.reps)]], env=env, capture_output=True)
        log(f"a {args.array}-job array")
        arr = timed([gpuq, "submit", "-q", "--array", f"0-{args.array - 1}%8", "--", "echo", "{}"], env, base)
        log(f"{args.tsp_loop} tsp submissions, scaled to {args.array}")
        t = time.perf_counter()
        for i in range(args.tsp_loop):
            subprocess.run([tsp, "echo", str(i)], env=env, cwd=base, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        tsp_many = (time.perf_counter() - t) * args.array / args.tsp_loop
        res = {
            "gpuq_status": stats(status), "tsp_l": stats(tsp_l), "gpuq_submit": stats(submit), "tsp_submit": stats(tsp_true),
            "array_jobs": args.array, "gpuq_array_s": arr, "tsp_loop_s": tsp_many,
            "gpuq_single_submits_s_estimate": statistics.median(submit) * args.array,
            "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
        }
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        subprocess.run([tsp, "-K"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
    for name in ("gpuq_status", "tsp_l", "gpuq_submit", "tsp_submit"):
        s = res[name]
        print(f"{name:12s} median {s['median_ms']:6.1f} ms   p90 {s['p90_ms']:6.1f} ms   min {s['min_ms']:6.1f} ms  (n={s['n']})")
    print(f"{args.array}-job array: gpuq submit --array {res['gpuq_array_s']:.2f} s;  {args.array} x tsp "
          f"{res['tsp_loop_s']:.1f} s;  {args.array} x gpuq submit ~{res['gpuq_single_submits_s_estimate']:.0f} s")
    print(f"load average (1 min) at the end: {res['load_avg_1m']:.2f} on {res['cpus']} CPUs")
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
