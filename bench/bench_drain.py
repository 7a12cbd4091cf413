#!/usr/bin/env python3
"""Queue drain only, many rounds, and A/B between gpuq installations; where the CPU goes.

    python bench/bench_drain.py                                  # the gpuq next to this python
    python bench/bench_drain.py --rounds 6 --jobs 40 before=/opt/a/bin/gpuq after=/opt/b/bin/gpuq
    python bench/bench_drain.py --cpu --jobs 100                 # CPU time per process of one drain

Each variant gets its own daemon (SIMULATED 1x24GiB, embedded Redis, private GPUQ_HOME), started
once.  A round drains ``--jobs`` whole-GPU ``true`` jobs queued behind a blocker, exactly as the
queue drain of ``bench_queue.py``: from the blocker's end (it stamps ``time.time()`` as it exits)
to the last job's recorded end, divided by the number of jobs.  Rounds alternate the order of the
variants (A B, B A, ...) so that a drift of the machine's load falls on both.

``--cpu`` also reads ``/proc`` before and after each drain: the CPU time of every process that
lived through it (user + system, and what its reaped children used: the daemon is the subreaper
of every supervisor and job), and the whole machine's busy time, per drained job.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_queue", HERE / "bench_queue.py")
assert _spec is not None and _spec.loader is not None
bq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bq)
HZ = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[str, str, list[int]]]:
    """pid -> (comm, command line, [utime, stime, cutime, cstime] in clock ticks)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()
        out[int(p)] = (comm, cmd.strip()[:70], [int(x) for x in f[11:15]])
    return out


def machine_busy() -> tuple[int, int, int]:
    """Busy, user and system clock ticks of the whole machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], f[0] + f[1], f[2]


def cpu_rows(before: dict, after: dict, jobs: int) -> list[dict]:
    rows = []
    for pid, (comm, cmd, t) in after.items():
        old = before.get(pid)
        if old is None or old[0] != comm:
            continue
        d = [a - b for a, b in zip(t, old[2])]
        if sum(d):
            rows.append({"pid": pid, "comm": comm, "cmd": cmd, "ms_per_job": sum(d) / HZ / jobs * 1000,
                         "own_ms_per_job": (d[0] + d[1]) / HZ / jobs * 1000,
                         "reaped_children_ms_per_job": (d[2] + d[3]) / HZ / jobs * 1000,
                         "system_share": (d[1] + d[3]) / sum(d)})
    return sorted(rows, key=lambda r: -r["ms_per_job"])


class Variant:
    def __init__(self, name: str, exe: str):
        self.name = name
        self.exe = exe
        self.work = Path(tempfile.mkdtemp(prefix=f"gpuq-drain-{name}-"))
        env = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "USER": os.environ.get("USER", "root"),
               "LOGNAME": os.environ.get("LOGNAME", "root"), "PATH": f"{Path(exe).parent}:/usr/local/bin:/usr/bin:/bin"}
        self.g = bq.Gpuq(exe, self.work / "gpuq-home", env, str(self.work))
        self.n = 0

    def drain(self, jobs: int, cpu: bool) -> dict:
        self.n += 1
        go, stamp = self.work / f"go-{self.n}", self.work / f"blocker-end-{self.n}"
        blocker = self.g.submit("--gpus", "1", "--", sys.executable, "-I", "-S", "-c", bq.WAIT_FILE_THEN_STAMP,
                                str(stamp), str(go), str(bq.BLOCKER_MAX_S))[1]
        self.g.wait_started(blocker)
        ids = [self.g.submit("--gpus", "1", "--", "true")[1] for _ in range(jobs)]
        time.sleep(0.5)  # the submissions' own work is over before the window opens
        before, busy0 = (processes(), machine_busy()) if cpu else ({}, (0, 0, 0))
        go.touch()
        self.g.wait_ended(ids[-1], poll_s=0.1)
        after, busy1 = (processes(), machine_busy()) if cpu else ({}, (0, 0, 0))
        jobs_seen = [self.g.job(i) for i in ids]
        if any(j["state"] != "completed" for j in jobs_seen):
            raise RuntimeError(f"{self.name}: some jobs of the drain did not complete")
        total = max(j["ended_at"] for j in jobs_seen) - bq.read_stamp(stamp)
        res: dict = {"ms_per_job": total / jobs * 1000, "load": os.getloadavg()[0]}
        if cpu:
            res["machine_busy_ms_per_job"] = (busy1[0] - busy0[0]) / HZ / jobs * 1000
            res["machine_system_ms_per_job"] = (busy1[2] - busy0[2]) / HZ / jobs * 1000
            res["processes"] = cpu_rows(before, after, jobs)[:8]
        return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", help="NAME=PATH_TO_GPUQ (default: the gpuq next to this python)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--cpu", action="store_true", help="CPU time per process of each drain (reads /proc)")
    ap.add_argument("--json-file", help="write every round's figures here")
    a = ap.parse_args()
    specs = a.variants or [f"gpuq={Path(sys.executable).parent / 'gpuq'}"]
    variants = []
    for s in specs:
        name, sep, exe = s.partition("=")
        if not sep or not Path(exe).is_file():
            ap.error(f"{s!r} is not NAME=PATH_TO_GPUQ with an existing gpuq: give each variant as name=/path/to/bin/gpuq")
        variants.append(Variant(name, exe))
    results: dict[str, list[dict]] = {v.name: [] for v in variants}
    try:
        for v in variants:
            v.g.start()
        for r in range(a.rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                res = v.drain(a.jobs, a.cpu)
                results[v.name].append(res)
                bq.log(f"round {r + 1}/{a.rounds} {v.name}: {res['ms_per_job']:.1f} ms/job (load {res['load']:.2f})")
                if a.cpu:
                    bq.log(f"  machine busy {res['machine_busy_ms_per_job']:.1f} ms CPU/job "
                           f"(system {res['machine_system_ms_per_job']:.1f})")
                    for p in res["processes"]:
                        bq.log(f"  {p['ms_per_job']:6.2f} ms/job ({p['reaped_children_ms_per_job']:5.2f} by reaped children, "
                               f"{p['system_share']:.0%} system)  {p['comm']}: {p['cmd']}")
    finally:
        for v in variants:
            v.g.stop()
    print("| variant | rounds | drain ms/job, median | min | max |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in results.items():
        ms = [x["ms_per_job"] for x in rs]
        if ms:
            print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
    if a.json_file:
        Path(a.json_file).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
