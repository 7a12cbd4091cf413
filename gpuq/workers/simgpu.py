"""Memory "use" on SIMULATED GPUs, for tests and the demo.

A claim file in the simulated-usage directory says: this much memory (and utilisation)
is in use on this simulated GPU.  With a pid, the claim counts while that process lives;
without one, it stands for usage from outside gpuq until the file is removed.

Inside a job on simulated GPUs (``GPUQ_SIMULATED_GPU_DIR`` is set)::

    python -m gpuq.workers.simgpu hold --mib 2048 --seconds 5

holds 2 GiB on each of the job's GPUs for five seconds, as a training process would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gpuq.safefile import read_small


@dataclass(frozen=True)
class Claim:
    uuid: str
    mem_mib: int
    util_pct: int = 0
    pid: int | None = None
    label: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie holds no GPU memory
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def read_claims(usage_dir: str) -> list[Claim]:
    out = []
    try:
        names = os.listdir(usage_dir)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(usage_dir, name)
        raw = read_small(path)  # any user may write here: no FIFO, symlink or huge file
        if raw is None:
            continue
        try:
            d = json.loads(raw)
            pid = d.get("pid")
            claim = Claim(uuid=str(d["uuid"]), mem_mib=max(0, int(d["mem_mib"])),
                          util_pct=max(0, min(100, int(d.get("util_pct", 0)))),
                          pid=None if pid is None else int(pid), label=str(d.get("label", ""))[:64])
            if claim.pid is not None and not 0 < claim.pid < 2**22:
                continue
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            continue  # half-written or hostile file: ignore
        if claim.pid and not _alive(claim.pid):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        out.append(claim)
    return out


def write_claim(usage_dir: str, claim: Claim) -> Path:
    d = Path(usage_dir)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".claim-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"uuid": claim.uuid, "mem_mib": claim.mem_mib, "util_pct": claim.util_pct, "pid": claim.pid,
                   "label": claim.label}, f)
    os.chmod(tmp, 0o644)
    final = d / f"{claim.uuid}.{claim.pid or 'external'}.{os.getpid()}.{time.monotonic_ns()}.json"
    os.replace(tmp, final)
    return final


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpuq.workers.simgpu",
                                 description="Make memory appear in use on SIMULATED GPUs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="hold memory on this job's simulated GPUs while this process lives")
    h.add_argument("--mib", type=int, required=True)
    h.add_argument("--util", type=int, default=90)
    h.add_argument("--seconds", type=float, default=5.0)
    e = sub.add_parser("external", help="mark memory as used outside gpuq until the printed file is removed")
    e.add_argument("--uuid", required=True)
    e.add_argument("--mib", type=int, required=True)
    e.add_argument("--util", type=int, default=0)
    e.add_argument("--label", default="outside gpuq")
    e.add_argument("--dir", default=os.environ.get("GPUQ_SIMULATED_GPU_DIR"))
    args = ap.parse_args(argv)
    if args.cmd == "hold":
        usage_dir = os.environ.get("GPUQ_SIMULATED_GPU_DIR")
        uuids = [u for u in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if u]
        if not usage_dir or not uuids:
            print("hold needs a job on SIMULATED GPUs (GPUQ_SIMULATED_GPU_DIR and CUDA_VISIBLE_DEVICES unset).",
                  file=sys.stderr)
            return 2
        for u in uuids:
            write_claim(usage_dir, Claim(uuid=u, mem_mib=args.mib, util_pct=args.util, pid=os.getpid()))
        print(f"holding {args.mib} MiB on {','.join(uuids)} for {args.seconds:g} s", flush=True)
        time.sleep(args.seconds)
        return 0
    if not args.dir:
        print("external needs --dir (the daemon's simulated-gpu-usage directory).", file=sys.stderr)
        return 2
    print(write_claim(args.dir, Claim(uuid=args.uuid, mem_mib=args.mib, util_pct=args.util, label=args.label)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
