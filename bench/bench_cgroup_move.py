#!/usr/bin/env python3
"""What one move of a process into a cgroup costs on this machine (every gpuq job start pays one).

    sudo python3 bench/bench_cgroup_move.py [--reps 15] [--gap-s 0.1]

Moving a process (writing its pid to ``cgroup.procs``) takes the write side of the kernel's
``cgroup_threadgroup_rwsem``.  Unless the kernel favours dynamic changes (the ``favordynmods``
mount option of cgroup v1 and v2, or the ``cgroup_favordynmods=`` boot parameter), that write
waits for an RCU grace period whenever no other move happened just before: milliseconds, on the
critical path of every job start.  This measures moves ``--gap-s`` apart (as job starts are) and
back to back, in a scratch cgroup of each writable hierarchy, and says whether ``favordynmods``
is shown among the mount options.  Since Linux 6.18 the option can be turned on at run time but
not off again (the kernel keeps the per-thread-group lock it switched to): a remount without it
changes the mount options shown, not the cost.  Standard library only; root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

SCRATCH = "gpuq-bench-move"


def hierarchies() -> list[tuple[str, Path, str]]:
    """(kind, mount point, options) of the cgroup hierarchies a move can be measured in."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        opts = fields[5] + "," + rfields[2]
        if rfields[0] == "cgroup" and not any(c in opts.split(",") for c in ("freezer", "pids", "memory")):
            continue
        out.append((rfields[0], Path(fields[4]), opts))
    return out


def own_cgroup(kind: str, opts: str) -> str:
    """This process's cgroup path in the hierarchy of that kind and those mount options."""
    mine = set(opts.split(","))
    for ln in Path("/proc/self/cgroup").read_text().splitlines():
        num, ctrls, path = ln.split(":", 2)
        if kind == "cgroup2" and num == "0" and not ctrls:
            return path
        if kind == "cgroup" and ctrls and set(ctrls.split(",")) <= mine:
            return path
    return "/"


def measure(kind: str, root: Path, opts: str, reps: int, gap_s: float) -> tuple[list[float], list[float]]:
    a, b = root / SCRATCH / "a", root / SCRATCH / "b"
    a.mkdir(parents=True, exist_ok=True)
    b.mkdir(exist_ok=True)
    back = root / own_cgroup(kind, opts).lstrip("/")

    def move(to: Path) -> float:
        t = time.perf_counter()
        (to / "cgroup.procs").write_text(str(os.getpid()))
        return (time.perf_counter() - t) * 1000

    spaced, b2b = [], []
    try:
        for i in range(reps):
            time.sleep(gap_s)
            spaced.append(move(a if i % 2 else b))
        for i in range(reps):
            b2b.append(move(a if i % 2 else b))
    finally:
        try:
            (back / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            (root / "cgroup.procs").write_text(str(os.getpid()))
        for d in (a, b, root / SCRATCH):
            try:
                d.rmdir()
            except OSError:
                pass
    return spaced, b2b


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--gap-s", type=float, default=0.1, help="pause before each spaced move")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cgroup_move: run it as root (it creates scratch cgroups).", file=sys.stderr)
        return 2
    print(f"kernel {os.uname().release}")
    print("| hierarchy | favordynmods shown | move after a pause (ms, median / max) | back to back (ms, median) |")
    print("|---|---|---:|---:|")
    found = False
    for kind, root, opts in hierarchies():
        try:
            spaced, b2b = measure(kind, root, opts, a.reps, a.gap_s)
        except OSError as e:
            print(f"| {kind} {root} | | not measurable here ({e.strerror}) | |")
            continue
        found = True
        shown = "yes" if "favordynmods" in opts.split(",") else "no"
        print(f"| {kind} {root} | {shown} | {statistics.median(spaced):.2f} / {max(spaced):.2f} | "
              f"{statistics.median(b2b):.2f} |")
    if not found:
        print("bench_cgroup_move: no writable cgroup hierarchy found.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
