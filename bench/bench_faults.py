#!/usr/bin/env python3
"""Fault injection: a mixed workload while the daemon, its embedded Redis, job supervisors and
RQ workers are killed at random; invariants are checked after every fault.

    sudo .venv/bin/python bench/bench_faults.py                  # long form: 1,000 faults
    sudo .venv/bin/python bench/bench_faults.py --faults 100 --seed 7 --json

The CI form is ``tests/integration/test_faults.py`` (the same engine, 100 faults).  Results and
how they compare with Slurm and pueue: docs/reliability.md.

Workload: CPU-only and SIMULATED-GPU jobs (shared and whole GPUs) from root and two ordinary
users, a third of them checkpointable (they exit 75 on SIGTERM), random cancels and requeues.
Each job takes an exclusive ``flock`` on a per-job file for as long as it runs, so a second copy
of a job running at the same time is caught by the kernel, not by timing.

Faults: ``gpuq daemon`` SIGKILL and SIGTERM (then started again), the embedded ``redis-server``
SIGKILL (the daemon restarts it), a job's supervisor SIGKILL, an RQ worker SIGKILL.

Invariants, checked after each fault once the daemon answers and one probe interval passed:

1. no acknowledged submission is lost;
2. no job is both cancelled and run again (no start after its cancel was acknowledged);
3. no ghost (a running job has a live supervisor and process) and no orphan (a process in the
   cgroup of a job that is not running, or a supervisor of a job that ended);
4. no job runs twice at once (the flock, and at most one supervisor per job);
5. every running job whose supervisor was alive before a daemon/Redis/worker fault is still
   running with the same pid (or ended on its own, not because of the fault).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = {"completed", "failed", "cancelled", "timeout"}
FAULTS = {"daemon_kill": 0.15, "daemon_term": 0.10, "redis_kill": 0.20, "supervisor_kill": 0.30, "worker_kill": 0.25}
FAULT_BLAME = ("supervisor", "stopped reporting", "interrupted", "restarted")
USERS = ("gpuqtest-alice", "gpuqtest-bob")
PROBE_INTERVAL_S = 0.5
SETTLE_S = 0.8  # one probe interval plus a margin
GHOST_AFTER_S = 20.0  # a claimed job must have a live supervisor by then (launch grace 15 s)

JOB = r"""
import fcntl, os, signal, sys, time
lockdir, dur, ckpt = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
jid = os.environ["GPUQ_JOB_ID"]
f = open(os.path.join(lockdir, jid + ".lock"), "a")
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    with open(os.path.join(lockdir, "VIOLATIONS"), "a") as v:
        v.write(f"job {jid} ran twice at once (pid {os.getpid()})\n")
    sys.exit(3)
if ckpt:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
time.sleep(dur)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_users() -> None:
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _procs() -> list[tuple[int, str, bytes]]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((int(p.name), (p / "comm").read_text().strip(), (p / "cmdline").read_bytes()))
            except OSError:
                pass
    return out


@dataclass
class Record:
    violations: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    submitted: dict[int, float] = field(default_factory=dict)  # acknowledged submissions
    cancelled: dict[int, float] = field(default_factory=dict)  # acknowledged cancels
    requeued: int = 0
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    supervisor_noticed_s: list[float] = field(default_factory=list)


class Harness:
    def __init__(self, base: Path, seed: int, gpuq: str, node: str = ""):
        self.base = base
        self.home = base / "home"
        self.rng = random.Random(seed)
        self.gpuq = gpuq
        self.node = node or f"faults{os.getpid()}"  # unique: other runs may share the machine
        self.locks = base / "locks"
        self.locks.mkdir(mode=0o1777)
        os.chmod(self.locks, 0o1777)
        self.work = base / "work"
        self.work.mkdir()
        os.chmod(self.work, 0o755)
        (self.work / "job.py").write_text(JOB)
        self.log_path = base / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.rec = Record()
        self.last_fault = ""
        self.cancel_checked: set[int] = set()
        self.phase_s = {"workload": 0.0, "fault": 0.0, "check": 0.0}
        self.users = {u: pwd.getpwnam(u) for u in USERS}
        cfg = base / "config.toml"
        cfg.write_text(f'[daemon]\ncpu_slots = 4\nprobe_interval = "{PROBE_INTERVAL_S}s"\n'
                       '[scheduler]\nmax_cpu_jobs = 4\n')
        self.args = [self.gpuq, "daemon", "--simulate-gpus", "2x24GiB", "--grace", "1s", "--node", node,
                     "--config", str(cfg)]

    # ---- the daemon -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> float:
        t0 = time.monotonic()
        env = {**os.environ, "GPUQ_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        env.pop("GPUQ_REDIS_URL", None)
        self.proc = subprocess.Popen(self.args, env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpuq daemon exited at start:\n{self.log_path.read_text()[-3000:]}")
            st = self.api("GET", "/v1/status")
            if st is not None and st[0] == 200 and st[1]["nodes"]:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"gpuq daemon did not come up:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(120)

    def api(self, method: str, url: str, body: Any = None, user: str | None = None) -> tuple[int, Any] | None:
        """One request on the daemon's socket, as root or (in a forked child) as ``user``."""
        from gpuq.cli.client import Client
        from gpuq.errors import GpuqError

        def call() -> tuple[int, Any]:
            resp = Client(self.home / "gpuq.sock", timeout_s=30).request(method, url, body)
            return resp.status, (json.loads(resp.body) if resp.body else {})

        if user is None:
            try:
                return call()
            except (OSError, ValueError, GpuqError):
                return None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                pw = self.users[user]
                os.setgroups([])
                os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
                os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
                try:
                    out = call()
                except (OSError, ValueError, GpuqError):
                    out = None
                os.write(w, json.dumps(out).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        got = json.loads(data) if data else None
        return None if got is None else (got[0], got[1])

    # ---- the workload ---------------------------------------------------------------------------

    def submit_some(self, n: int) -> None:
        for _ in range(n):
            user = self.rng.choice((None,) + USERS)
            kind = self.rng.choice(("cpu", "cpu", "shared", "shared", "whole"))
            ckpt = self.rng.random() < 0.35
            dur = round(self.rng.uniform(0.5, 6.0), 2)
            body: dict[str, Any] = {"argv": ["python3", "-I", "-S", str(self.work / "job.py"), str(self.locks),
                                             str(dur), "1" if ckpt else "0"],
                                    "cwd": str(self.work), "env": {"PATH": "/usr/bin:/bin"}, "checkpointable": ckpt}
            if kind == "cpu":
                body["gpus"] = 0
            elif kind == "shared":
                body.update(gpus=1, gpu_mem="4GiB")
            else:
                body["gpus"] = 1
            got = self.api("POST", "/v1/jobs", body, user=user)
            if got is not None and 200 <= got[0] < 300:
                self.rec.submitted[int(got[1]["id"])] = time.time()

    def act_randomly(self, jobs: list[dict[str, Any]]) -> None:
        active = [j for j in jobs if j["state"] in ("pending", "running")]
        if not active:
            return
        j = self.rng.choice(active)
        owner = j["owner"]["user"]
        user = owner if owner in USERS else None
        roll = self.rng.random()
        if roll < 0.25:
            got = self.api("POST", "/v1/jobs/cancel", {"ids": [j["id"]]}, user=user)
            # acknowledged: the request succeeded and so did the cancel of the job (a store outage
            # answers 200 with {"ok": false} for the job: nothing was cancelled)
            if got is not None and 200 <= got[0] < 300 and all(r.get("ok") for r in got[1].get("results", [{}])):
                self.rec.cancelled.setdefault(j["id"], time.time())
        elif roll < 0.4 and j["state"] == "running" and j["spec"].get("checkpointable"):
            got = self.api("POST", "/v1/jobs/requeue", {"ids": [j["id"]]}, user=user)
            if got is not None and 200 <= got[0] < 300:
                self.rec.requeued += 1

    def jobs(self, ids: list[int] | None = None) -> list[dict[str, Any]] | None:
        if ids is None:
            got = self.api("GET", "/v1/status")
            return None if got is None or got[0] != 200 else got[1]["jobs"]
        out = []
        for i in range(0, len(ids), 500):
            got = self.api("POST", "/v1/jobs/lookup", {"ids": ids[i:i + 500]})
            if got is None or got[0] != 200:
                return None
            out += got[1]["jobs"]
        return out

    # ---- faults ---------------------------------------------------------------------------------

    def _our_supervisors(self) -> list[tuple[int, int]]:
        """(job id, pid) of the processes named gpuq-sup-ID that this run's daemon started (their
        environment, inherited from its RQ workers, names this run's GPUQ_HOME)."""
        mark = f"GPUQ_HOME={self.home}".encode()
        out = []
        for pid, c, _ in _procs():
            if c.startswith("gpuq-sup-") and c[9:].isdigit() and _alive(pid):
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if mark in env:
                    out.append((int(c[9:]), pid))
        return out

    def _supervisors(self) -> dict[int, int]:
        """job id -> supervisor pid."""
        return dict(self._our_supervisors())

    def _workers(self) -> list[int]:
        assert self.proc is not None
        # supervisors are forked from workers (same command line) and re-parented to the daemon
        return [pid for pid, comm, cmd in _procs() if b"gpuq.workers.rqworker" in cmd and _alive(pid)
                and not comm.startswith("gpuq-sup-") and self._ppid(pid) == self.proc.pid]

    @staticmethod
    def _ppid(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return int(f.read().rsplit(b")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            return -1

    def _redis_pid(self) -> int | None:
        for pid, _, cmd in _procs():
            if b"redis-server" in cmd and str(self.home).encode() in cmd and _alive(pid):
                return pid
        return None

    def wait_up(self, timeout_s: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            got = self.api("GET", "/v1/status")
            if got is not None and 200 <= got[0] < 300:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not answer for {timeout_s:g} s:\n{self.log_path.read_text()[-3000:]}")

    def inject(self, kind: str) -> int | None:
        """Inject one fault; returns the job whose supervisor was killed (for supervisor faults)."""
        t0 = time.monotonic()
        victim = None
        if kind in ("daemon_kill", "daemon_term"):
            self.stop(signal.SIGKILL if kind == "daemon_kill" else signal.SIGTERM)
            self.start()
        elif kind == "redis_kill":
            pid = self._redis_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            self.wait_up()
        elif kind == "supervisor_kill":
            sups = self._supervisors()
            if sups:
                victim = self.rng.choice(sorted(sups))
                os.kill(sups[victim], signal.SIGKILL)
        elif kind == "worker_kill":
            workers = self._workers()
            if workers:
                os.kill(self.rng.choice(workers), signal.SIGKILL)
        self.last_fault = f"{kind} at {time.time():.2f}" + (f" (job {victim})" if victim is not None else "")
        self.rec.faults[kind] = self.rec.faults.get(kind, 0) + 1
        self.rec.recovery_s.setdefault(kind, []).append(time.monotonic() - t0)
        return victim

    # ---- invariants -----------------------------------------------------------------------------

    def _fail(self, text: str, job_id: int | None = None) -> None:
        if job_id is not None and os.environ.get("GPUQ_FAULTS_VERBOSE"):
            got = self.api("GET", f"/v1/jobs/{job_id}")
            if got is not None and 200 <= got[0] < 300:
                text += "\n    events: " + "\n    ".join(f"{e['at']:.2f} {e['text']}" for e in got[1]["events"][-12:])
        log(f"VIOLATION: {text} (last fault: {self.last_fault})")
        self.rec.violations.append(text)

    def running_with_live_supervisor(self) -> dict[int, int]:
        sups = self._supervisors()
        jobs = self.jobs() or []
        return {j["id"]: j["pid"] for j in jobs if j["state"] == "running" and j.get("pid") and j["id"] in sups
                and not j.get("stop_request")}  # a stop already asked for may end it meanwhile

    def check(self, before: dict[int, int], victim: int | None) -> None:
        self.wait_up()
        time.sleep(SETTLE_S)
        now = time.time()
        ids = sorted(self.rec.submitted)
        jobs = self.jobs(ids)
        if jobs is None:
            self._fail("could not read the acknowledged jobs back")
            return
        by_id = {j["id"]: j for j in jobs}
        # 1. nothing acknowledged is lost
        for i in ids:
            if i not in by_id:
                self._fail(f"acknowledged submission {i} is lost")
        # 3. ghosts and orphans; 4. one supervisor per job
        sups = self._supervisors()
        for j in by_id.values():
            if j["state"] != "running" or not j.get("started_at"):
                continue
            if now - j["started_at"] > GHOST_AFTER_S and j["id"] not in sups:
                self._fail(f"ghost: job {j['id']} is running with no supervisor")
            if j.get("pid") and now - j["started_at"] > GHOST_AFTER_S and not _alive(j["pid"]):
                if j["id"] in sups:
                    continue  # its supervisor is recording the end right now
                self._fail(f"ghost: job {j['id']} is running but pid {j['pid']} is gone")
        running = {i for i, j in by_id.items() if j["state"] == "running"}
        for job_id, spid in sups.items():
            if job_id not in running and job_id in by_id:
                time.sleep(1.0)  # a supervisor may be recording its job's end this moment
                if _alive(spid) and (self.jobs([job_id]) or [{}])[0].get("state") != "running":
                    self._fail(f"orphan: supervisor {spid} of job {job_id}, which is not running")
        cgroups = (p for cg in Path("/sys/fs/cgroup/freezer/gpuq").glob(f"{self.node}.*") for p in cg.iterdir())
        for d in cgroups:
            if not (d.name.startswith("job-") and d.name[4:].isdigit()):
                continue
            jid = int(d.name[4:])
            try:
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            except OSError:
                continue
            if pids and jid not in running and jid not in sups and \
                    (self.jobs([jid]) or [{}])[0].get("state") != "running":  # placed since
                self._fail(f"orphan: processes {pids} left in the cgroup of job {jid}", jid)
        ours = self._our_supervisors()
        dup = [job_id for job_id, _ in ours]
        for job_id in set(dup):
            if dup.count(job_id) > 1:
                who = ", ".join(f"pid {pid} (parent {self._ppid(pid)})" for j, pid in ours if j == job_id)
                self._fail(f"two supervisors for job {job_id}: {who}", job_id)
        viol = self.locks / "VIOLATIONS"
        if viol.exists() and viol.read_text().strip():
            self._fail(viol.read_text().strip())
            viol.unlink()
        # 2. no start after an acknowledged cancel
        for job_id, at in self.rec.cancelled.items():
            if job_id in self.cancel_checked:
                continue
            got = self.api("GET", f"/v1/jobs/{job_id}")
            if got is None or got[0] != 200:
                continue
            if got[1]["state"] in TERMINAL:
                self.cancel_checked.add(job_id)  # ended for good: no later start can come
            # a new run is a new claim; a process of the run claimed before the cancel may still
            # start (and is stopped at the supervisor's next poll)
            starts = [e for e in got[1]["events"] if e["at"] > at + 0.001 and e["text"].startswith("worker on")]
            if starts:
                self._fail(f"job {job_id} started again after its cancel was acknowledged: {starts}")
        # 5. jobs whose supervisor was alive keep running with the same pid
        for job_id, pid in before.items():
            if job_id == victim:
                continue
            j = by_id.get(job_id)
            if j is None:
                continue
            if j["state"] == "running" and j.get("pid") and j["pid"] != pid:
                self._fail(f"job {job_id} was running as pid {pid} and now runs as pid {j['pid']}", job_id)
            reason = j.get("end_reason", "")
            if j["state"] != "running" and any(b in reason for b in FAULT_BLAME):
                self._fail(f"job {job_id}, whose supervisor was alive, was ended by the fault: {reason}", job_id)
        if victim is not None:  # its run must have ended (a checkpointable job may run again: a new pid)
            j = by_id.get(victim)
            if j is not None and j["state"] == "running" and j.get("pid") == before.get(victim):
                self._fail(f"job {victim}'s supervisor was killed but the job still runs as pid {j['pid']}", victim)

    def cleanup(self) -> None:
        """Stop what this run started, by pid: the daemon, its redis-server, its supervisors."""
        self.stop(signal.SIGKILL)
        pid = self._redis_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        for rec in (self.home / "supervisors").glob("*.json"):
            try:
                d = json.loads(rec.read_text())
                if _alive(int(d["pid"])):
                    os.kill(int(d["pid"]), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass

    # ---- the campaign ---------------------------------------------------------------------------

    def campaign(self, n_faults: int) -> Record:
        self.start()
        kinds = list(FAULTS)
        weights = [FAULTS[k] for k in kinds]
        for i in range(n_faults):
            t0 = time.monotonic()
            jobs = self.jobs() or []
            active = sum(1 for j in jobs if j["state"] in ("pending", "running"))
            self.submit_some(max(0, 8 - active))
            for _ in range(2):
                self.act_randomly(jobs)
            time.sleep(self.rng.uniform(0.05, 0.4))
            kind = self.rng.choices(kinds, weights)[0]
            t1 = time.monotonic()
            before = self.running_with_live_supervisor()
            victim = self.inject(kind)
            t2 = time.monotonic()
            self.check(before, victim)
            t3 = time.monotonic()
            self.phase_s["workload"] += t1 - t0
            self.phase_s["fault"] += t2 - t1
            self.phase_s["check"] += t3 - t2
            if (i + 1) % 10 == 0:
                log(f"{i + 1}/{n_faults} faults, {len(self.rec.submitted)} jobs, "
                    f"{len(self.rec.violations)} violations; seconds in " +
                    ", ".join(f"{k} {v:.0f}" for k, v in self.phase_s.items()))
        # drain the workload, then a last check with nothing running
        for job_id in sorted(self.rec.submitted):
            self.api("POST", "/v1/jobs/cancel", {"ids": [job_id]})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = self.jobs() or []
            if not any(j["state"] == "running" for j in jobs):
                break
            time.sleep(0.2)
        self.check({}, None)
        self.stop()
        left = self._our_supervisors()
        if left:
            self._fail(f"supervisors left after the daemon stopped with nothing running: {left}")
        return self.rec


def run(n_faults: int, seed: int, gpuq: str) -> dict[str, Any]:
    ensure_users()
    base = Path(tempfile.mkdtemp(prefix="gpuq-faults-", dir="/tmp"))
    os.chmod(base, 0o755)
    h = Harness(base, seed, gpuq)
    t0 = time.monotonic()
    try:
        rec = h.campaign(n_faults)
    finally:
        h.cleanup()
    wall = time.monotonic() - t0
    shutil.rmtree(base, ignore_errors=True)
    return {
        "faults": sum(rec.faults.values()), "by_kind": rec.faults, "jobs": len(rec.submitted),
        "cancels": len(rec.cancelled), "requeues": rec.requeued, "violations": rec.violations,
        "wall_s": round(wall, 1),
        "recovery_median_s": {k: round(sorted(v)[len(v) // 2], 3) for k, v in rec.recovery_s.items()},
        "seed": seed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_faults.py runs jobs as other users: run it as root.", file=sys.stderr)
        return 2
    gpuq = str(Path(sys.executable).parent / "gpuq")
    res = run(args.faults, args.seed, gpuq)
    print(json.dumps(res, indent=1) if args.json else
          f"{res['faults']} faults ({res['by_kind']}), {res['jobs']} jobs, {res['cancels']} cancels, "
          f"{res['requeues']} requeues in {res['wall_s']} s: {len(res['violations'])} violations")
    for v in res["violations"]:
        print("  " + v)
    return 1 if res["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
