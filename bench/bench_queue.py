#!/usr/bin/env python3
"""Queue benchmarks: gpuq against task-spooler (``tsp``), in the same run, on the same machine.

    .venv/bin/python bench/bench_queue.py                 # full run, a few minutes
    .venv/bin/python bench/bench_queue.py --json          # also print a JSON summary
    .venv/bin/python bench/bench_queue.py --jobs 20 --submits 10 --latency-reps 3   # a quick look

What it measures (results and the reasoning behind them: docs/benchmarks.md):

* CLI start-up: interpreter start, the import of the CLI, and a check that ``gpuq status``
  never imports redis, rq or tensorflow (``python -X importtime``).
* ``gpuq status`` wall time with an empty queue and with ``--jobs`` jobs pending, against ``tsp -l``.
* ``gpuq submit`` wall time (median, p90), interleaved with ``tsp`` submissions so both see the
  same machine load.  The submitted jobs queue behind a blocker job that holds the whole
  (simulated) GPU (task-spooler: the single slot), so nothing runs while submissions are timed.
* Dispatch, end to end: ``--jobs`` tiny jobs (``true``), each needing the whole GPU, submitted back
  to back; seconds per job from the first submit until the last job ended.  task-spooler: one
  slot, ``tsp true`` per job, ``tsp -w`` on the last.
* Dispatch, queue drain: the same jobs queued behind a blocker first; seconds per job from the
  blocker's end until the last job ended (pure dispatch, no submission cost inside the window).
* GPU free -> next start: job A holds the whole GPU for ``--hold-s`` seconds and records
  ``time.time()`` just before it exits; job B waits for the whole GPU and records ``time.time()``
  on its first line.  Latency = B's start - A's end.  Also a variant where A makes simulated GPU
  memory appear used (``python -m gpuq.workers.simgpu hold``), as a real training job would.

It starts its own gpuq daemon (SIMULATED GPUs, embedded Redis, private GPUQ_HOME in a temporary
directory) and its own task-spooler server (private TS_SOCKET, one slot), and stops both on exit,
Ctrl-C or error.  Standard library only; gpuq is driven through its CLI as subprocesses (and, for
polling job state cheaply, its documented HTTP API on the Unix socket).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

TERMINAL = {"completed", "failed", "cancelled", "timeout"}
FORBIDDEN_CLI_IMPORTS = ("redis", "rq", "tensorflow")

# Job bodies (run with ``python -I -S -c``, the same for gpuq and task-spooler).
STAMP_START = "import sys,time\nt=time.time()\nwith open(sys.argv[1],'w') as f: f.write(repr(t))\n"
HOLD_THEN_STAMP = ("import sys,time\ntime.sleep(float(sys.argv[2]))\n"
                   "with open(sys.argv[1],'w') as f: f.write(repr(time.time()))\n")
WAIT_FILE_THEN_STAMP = ("import os,sys,time\nlimit=time.time()+float(sys.argv[3])\n"
                        "while not os.path.exists(sys.argv[2]) and time.time()<limit: time.sleep(0.005)\n"
                        "with open(sys.argv[1],'w') as f: f.write(repr(time.time()))\n")
BLOCKER_MAX_S = 900  # a blocker never outlives the benchmark by much, whatever happens


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is alive."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- statistics ------------------------------------------------------------------------------------


def summary(xs: Sequence[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    p90 = statistics.quantiles(xs, n=10, method="inclusive")[-1] if len(xs) > 1 else xs[0]
    return {"n": len(xs), "median": statistics.median(xs), "p90": p90, "min": xs[0], "max": xs[-1],
            "mean": statistics.fmean(xs)}


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.0f}x" if a / b >= 10 else f"{a / b:.1f}x"


# ---- the machine -----------------------------------------------------------------------------------


def machine_info(tsp: str | None) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "kernel": platform.release(),
        "os": platform.platform(), "python": platform.python_version(), "python_exe": sys.executable,
    }
    try:
        from importlib.metadata import version
        info["gpuq"] = version("gpuq")
    except Exception:  # not installed as a distribution: leave it out
        info["gpuq"] = None
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "gpuq"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["gpuq_commit"] = f"{head}{' + uncommitted changes in gpuq/' if dirty else ''}" if head else None
    except (OSError, subprocess.SubprocessError):
        info["gpuq_commit"] = None
    for name, argv in (("redis_server", ["redis-server", "--version"]), ("task_spooler", [tsp or "tsp", "-V"])):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            info[name] = (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info[name] = None
    return info


# ---- running things --------------------------------------------------------------------------------


def timed(argv: Sequence[str], env: dict[str, str], cwd: str, check: bool = True) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return dt, p.stdout


def read_stamp(path: Path, timeout_s: float = 30.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            txt = path.read_text()
            if txt:
                return float(txt)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job did not write {path}")
        time.sleep(0.01)


def api_get(sock_path: Path, url: str) -> Any:
    """GET on the daemon's documented HTTP API (HTTP/1.1 over its Unix socket)."""
    return json.loads(api_get_raw(sock_path, url))


def api_get_raw(sock_path: Path, url: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(str(sock_path))
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: gpuq\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status >= 400:
        raise RuntimeError(f"GET {url}: HTTP {status}: {body[:300]!r}")
    return body


class Gpuq:
    def __init__(self, exe: str, home: Path, env: dict[str, str], cwd: str):
        self.exe = exe
        self.home = home
        self.env = {**env, "GPUQ_HOME": str(home)}
        self.cwd = cwd
        self.sock = home / "gpuq.sock"
        self.proc: subprocess.Popen | None = None
        self.log_path = home.parent / "daemon.log"

    def start(self, timeout_s: float = 60) -> None:
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [self.exe, "daemon", "--simulate-gpus", "1x24GiB", "--node", "bench", "--grace", "2s"],
            env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpuq daemon exited at start:\n{self.log_path.read_text()[-2000:]}")
            try:
                if api_get(self.sock, "/v1/status")["nodes"]:
                    return
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gpuq daemon did not come up:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                log("gpuq daemon did not stop in 60 s: SIGKILL to its process group")
        if self.proc.poll() is None or group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> tuple[float, str]:
        return timed([self.exe, *args], self.env, self.cwd, check=check)

    def submit(self, *args: str) -> tuple[float, int]:
        dt, out = self.cli("submit", "-q", *args)
        return dt, int(out.strip())

    def job(self, job_id: int) -> dict[str, Any]:
        return api_get(self.sock, f"/v1/jobs/{job_id}")

    def wait(self, job_id: int, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 120,
             poll_s: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            j = self.job(job_id)
            if pred(j):
                return j
            if time.monotonic() > deadline:
                raise RuntimeError(f"gpuq job {job_id} is {j['state']} after {timeout_s:g} s; "
                                   f"daemon log: {self.log_path}")
            time.sleep(poll_s)

    def wait_ended(self, job_id: int, timeout_s: float = 600, poll_s: float = 0.05) -> dict[str, Any]:
        j = self.wait(job_id, lambda j: j["state"] in TERMINAL, timeout_s, poll_s)
        if j["state"] != "completed":
            raise RuntimeError(f"gpuq job {job_id} ended {j['state']}: {j.get('end_reason')}")
        return j

    def wait_started(self, job_id: int, timeout_s: float = 60) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["state"] == "running" and j.get("pid"), timeout_s, 0.02)


class Tsp:
    def __init__(self, exe: str, workdir: Path, env: dict[str, str], cwd: str):
        self.exe = exe
        out_dir = workdir / "tsp-out"
        out_dir.mkdir()
        # a private server: its own socket, its own output directory, one slot
        self.env = {**env, "TS_SOCKET": str(workdir / "tsp.sock"), "TMPDIR": str(out_dir), "TS_SLOTS": "1",
                    "TS_MAXFINISHED": "100000"}
        self.cwd = cwd
        self.started = False

    def start(self) -> None:
        self.started = True
        self.cli("-S", "1")

    def stop(self) -> None:
        if self.started:
            subprocess.run([self.exe, "-K"], env=self.env, cwd=self.cwd, capture_output=True, timeout=30)
            self.started = False

    def cli(self, *args: str, check: bool = True) -> tuple[float, str]:
        return timed([self.exe, *args], self.env, self.cwd, check=check)

    def submit(self, *args: str) -> tuple[float, int]:
        dt, out = self.cli(*args)
        return dt, int(out.strip())

    def wait(self, job_id: int) -> None:
        self.cli("-w", str(job_id), check=False)  # exits with the job's status

    def clear(self) -> None:
        self.cli("-C")


# ---- the benchmark ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, gpuq_exe: str, tsp_exe: str | None):
        self.a = args
        self.work = workdir
        self.py = sys.executable
        self.jobpy = [self.py, "-I", "-S", "-c"]
        base_env = dict(os.environ) if args.full_env else {
            "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
            "USER": os.environ.get("USER", "root"), "LOGNAME": os.environ.get("LOGNAME", "root"),
        }
        for k in ("GPUQ_HOME", "GPUQ_REDIS_URL", "GPUQ_SIMULATE_GPUS", "GPUQ_NODE", "TS_SOCKET", "TMPDIR"):
            base_env.pop(k, None)  # never reach a daemon or queue this benchmark did not start
        base_env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        cwd = str(workdir)
        self.g = Gpuq(gpuq_exe, workdir / "gpuq-home", base_env, cwd)
        self.t = Tsp(tsp_exe, workdir, base_env, cwd) if tsp_exe else None
        self.stamps = workdir / "stamps"
        self.stamps.mkdir()
        self.res: dict[str, Any] = {}
        self._n = 0
        self.go_files: list[Path] = []

    def stamp(self, what: str) -> Path:
        self._n += 1
        return self.stamps / f"{self._n:05d}-{what}"

    def go_file(self) -> Path:
        p = self.stamp("go")
        self.go_files.append(p)
        return p

    def release_blockers(self) -> None:
        for p in self.go_files:
            p.touch()

    # ---- phases ---------------------------------------------------------------------------------

    def startup(self) -> None:
        """Interpreter start, CLI import, and what `gpuq status` imports."""
        reps = self.a.startup_reps
        env = self.g.env
        bare, base, imp, stat = [], [], [], []
        for _ in range(reps):
            bare.append(timed([self.py, "-I", "-S", "-c", "pass"], env, self.g.cwd)[0])
            base.append(timed([self.py, "-c", "pass"], env, self.g.cwd)[0])
            imp.append(timed([self.py, "-c", "import gpuq.cli.app"], env, self.g.cwd)[0])
            stat.append(self.g.cli("status")[0])
        p = subprocess.run([self.py, "-X", "importtime", self.g.exe, "status"], env=env, cwd=self.g.cwd,
                           capture_output=True, text=True)
        tops: dict[str, int] = {}
        total_us = 0
        names = set()
        for line in p.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = line[len("import time:"):].split("|")
            try:
                self_us, cum_us = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            raw = parts[2]
            name = raw.strip()
            names.add(name.split(".")[0])
            total_us += self_us
            depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2 + 1
            if depth <= 2:  # the top two levels of the import tree
                tops[name] = tops.get(name, 0) + cum_us
        forbidden = sorted(n for n in FORBIDDEN_CLI_IMPORTS if n in names)
        heaviest = sorted(tops.items(), key=lambda kv: -kv[1])[:8]
        self.res["startup"] = {
            "python_bare_s": summary(bare), "python_pass_s": summary(base), "python_import_cli_s": summary(imp),
            "gpuq_status_s": summary(stat),
            "importtime_total_ms": total_us / 1000, "importtime_heaviest_ms": {k: v / 1000 for k, v in heaviest},
            "forbidden_imported": forbidden, "modules_imported": len(names),
        }
        log(f"startup: python {ms(statistics.median(base))} ms, +import CLI {ms(statistics.median(imp))} ms, "
            f"gpuq status {ms(statistics.median(stat))} ms; forbidden imported: {forbidden or 'none'}")

    def status_times(self, label: str) -> None:
        reps = self.a.status_reps
        g_tab, g_json, t_list, api, size = [], [], [], [], 0
        for _ in range(reps):
            t0 = time.perf_counter()
            size = len(api_get_raw(self.g.sock, "/v1/status"))
            api.append(time.perf_counter() - t0)
            g_tab.append(self.g.cli("status")[0])
            g_json.append(self.g.cli("status", "--json")[0])
            if self.t:
                t_list.append(self.t.cli("-l")[0])
        self.res.setdefault("status", {})[label] = {
            "gpuq_status_s": summary(g_tab), "gpuq_status_json_s": summary(g_json), "tsp_list_s": summary(t_list),
            "daemon_round_trip_s": summary(api), "response_bytes": size}
        log(f"status ({label}): gpuq {ms(statistics.median(g_tab))} ms, --json {ms(statistics.median(g_json))} ms"
            + (f", tsp -l {ms(statistics.median(t_list))} ms" if t_list else ""))

    def submit_times(self) -> None:
        n = self.a.submits
        go = self.go_file()
        blocker_g = self.g.submit("--gpus", "1", "--", *self.jobpy, WAIT_FILE_THEN_STAMP, str(self.stamp("gend")),
                                  str(go), str(BLOCKER_MAX_S))[1]
        self.g.wait_started(blocker_g)
        if self.t:
            self.t.submit(*self.jobpy, WAIT_FILE_THEN_STAMP, str(self.stamp("tend")), str(go),
                                      str(BLOCKER_MAX_S))[1]
        g_times, t_times, g_ids, t_ids = [], [], [], []
        for _ in range(n):  # interleaved, so both see the same load
            dt, jid = self.g.submit("--gpus", "1", "--", "true")
            g_times.append(dt)
            g_ids.append(jid)
            if self.t:
                dt, jid = self.t.submit("true")
                t_times.append(dt)
                t_ids.append(jid)
        self.res["submit"] = {"gpuq_s": summary(g_times), "tsp_s": summary(t_times)}
        log(f"submit: gpuq {ms(statistics.median(g_times))} ms"
            + (f", tsp {ms(statistics.median(t_times))} ms" if t_times else ""))
        # clean up: the queued gpuq jobs are cancelled; task-spooler's just run (true)
        self.g.cli("cancel", *map(str, g_ids))
        go.touch()
        self.g.wait(blocker_g, lambda j: j["state"] in TERMINAL)
        if self.t:
            self.t.wait(t_ids[-1])
            self.t.clear()

    def latency(self) -> None:
        reps, hold = self.a.latency_reps, str(self.a.hold_s)
        out: dict[str, list[float]] = {"gpuq": [], "gpuq_simmem": [], "tsp": []}
        parts: dict[str, list[float]] = {"end_to_recorded": [], "recorded_to_placed": [], "placed_to_claimed": [],
                                          "claimed_to_popen": [], "popen_to_first_line": []}
        simmem_cmd = (f"{self.py} -m gpuq.workers.simgpu hold --mib 20480 --seconds {hold} >/dev/null && "
                      f"exec {self.py} -I -S -c \"$0\" \"$1\"")
        for i in range(reps):
            for variant in ("gpuq", "gpuq_simmem", "tsp"):
                if variant == "tsp" and not self.t:
                    continue
                a_end, b_start = self.stamp(f"{variant}-a-end"), self.stamp(f"{variant}-b-start")
                if variant == "tsp":
                    self.t.submit(*self.jobpy, HOLD_THEN_STAMP, str(a_end), hold)
                    b = self.t.submit(*self.jobpy, STAMP_START, str(b_start))[1]
                    self.t.wait(b)
                else:
                    if variant == "gpuq":
                        a = self.g.submit("--gpus", "1", "--", *self.jobpy, HOLD_THEN_STAMP, str(a_end), hold)[1]
                    else:
                        a = self.g.submit("--gpus", "1", "--", "sh", "-c", simmem_cmd, STAMP_START,
                                         str(a_end))[1]
                    self.g.wait_started(a)
                    b = self.g.submit("--gpus", "1", "--", *self.jobpy, STAMP_START, str(b_start))[1]
                    jb = self.g.wait_ended(b)
                    ja = self.g.wait_ended(a)
                lat = read_stamp(b_start) - read_stamp(a_end)
                out[variant].append(lat)
                if variant == "gpuq":
                    self._latency_parts(ja, jb, read_stamp(a_end), read_stamp(b_start), parts)
            log(f"latency rep {i + 1}/{reps}: " + ", ".join(f"{k} {ms(v[-1])} ms" for k, v in out.items() if v))
        if self.t:
            self.t.clear()
        self.res["latency"] = {k: summary(v) for k, v in out.items()}
        self.res["latency_parts_gpuq"] = {k: summary(v) for k, v in parts.items()}

    @staticmethod
    def _latency_parts(ja: dict, jb: dict, a_end: float, b_start: float, parts: dict[str, list[float]]) -> None:
        def at(job: dict, prefix: str) -> float | None:
            found = [e["at"] for e in job.get("events", []) if e["text"].startswith(prefix)]
            return found[-1] if found else None

        recorded = ja.get("ended_at")
        placed, claimed, popen = at(jb, "placed on"), at(jb, "worker on"), at(jb, "started pid")
        if None in (recorded, placed, claimed, popen):
            return
        parts["end_to_recorded"].append(recorded - a_end)
        parts["recorded_to_placed"].append(placed - recorded)
        parts["placed_to_claimed"].append(claimed - placed)
        parts["claimed_to_popen"].append(popen - claimed)
        parts["popen_to_first_line"].append(b_start - popen)

    def dispatch_e2e(self) -> None:
        n = self.a.jobs
        t0 = time.time()
        ids, sub = [], []
        for _ in range(n):
            dt, jid = self.g.submit("--gpus", "1", "--", "true")
            ids.append(jid)
            sub.append(dt)
        self.g.wait_ended(ids[-1], poll_s=0.1)
        jobs = [self.g.job(i) for i in ids]
        bad = [j["id"] for j in jobs if j["state"] != "completed"]
        if bad:
            raise RuntimeError(f"gpuq jobs {bad[:5]} did not complete")
        g_end = max(j["ended_at"] for j in jobs)
        g_total = g_end - t0
        submit_total = sum(sub)
        res = {"jobs": n, "gpuq_total_s": g_total, "gpuq_s_per_job": g_total / n,
               "gpuq_submit_s_per_job": submit_total / n, "gpuq_job_phases_s": self._phases(jobs)}
        log(f"dispatch e2e: gpuq {g_total:.1f} s for {n} jobs ({g_total / n * 1000:.0f} ms/job)")
        if self.t:
            t0 = time.time()
            last = 0
            for _ in range(n):
                last = self.t.submit("true")[1]
            self.t.wait(last)
            t_total = time.time() - t0
            self.t.clear()
            res.update(tsp_total_s=t_total, tsp_s_per_job=t_total / n)
            log(f"dispatch e2e: tsp {t_total:.2f} s ({t_total / n * 1000:.1f} ms/job)")
        self.res["dispatch_e2e"] = res

    @staticmethod
    def _phases(jobs: list[dict]) -> dict[str, dict[str, float]]:
        ph: dict[str, list[float]] = {"submitted_to_placed": [], "placed_to_claimed": [], "claimed_to_popen": [],
                                      "popen_to_recorded_end": [], "recorded_end_to_next_placed": []}
        prev_end = None
        for j in jobs:
            ev = {}
            for e in j.get("events", []):
                for key, prefix in (("sub", "submitted"), ("placed", "placed on"), ("claimed", "worker on"),
                                    ("popen", "started pid")):
                    if e["text"].startswith(prefix):
                        ev[key] = e["at"]
            if len(ev) == 4:
                ph["submitted_to_placed"].append(ev["placed"] - ev["sub"])
                ph["placed_to_claimed"].append(ev["claimed"] - ev["placed"])
                ph["claimed_to_popen"].append(ev["popen"] - ev["claimed"])
                ph["popen_to_recorded_end"].append(j["ended_at"] - ev["popen"])
                if prev_end is not None and ev["sub"] < prev_end:  # it was waiting: the GPU was the limit
                    ph["recorded_end_to_next_placed"].append(ev["placed"] - prev_end)
            prev_end = j.get("ended_at")
        return {k: summary(v) for k, v in ph.items()}

    def dispatch_drain(self) -> None:
        n = self.a.jobs
        go, go_t = self.go_file(), self.go_file()
        g_end_stamp, t_end_stamp = self.stamp("drain-g-blocker-end"), self.stamp("drain-t-blocker-end")
        blocker = self.g.submit("--gpus", "1", "--", *self.jobpy, WAIT_FILE_THEN_STAMP, str(g_end_stamp), str(go),
                                str(BLOCKER_MAX_S))[1]
        self.g.wait_started(blocker)
        if self.t:
            self.t.submit(*self.jobpy, WAIT_FILE_THEN_STAMP, str(t_end_stamp), str(go_t), str(BLOCKER_MAX_S))
        ids, sub, last_t = [], [], 0
        for _ in range(n):
            dt, jid = self.g.submit("--gpus", "1", "--", "true")
            ids.append(jid)
            sub.append(dt)
            if self.t:
                last_t = self.t.submit("true")[1]
        k = max(1, min(20, n // 5))
        self.res["submit_vs_queue_length"] = {"first_pending": 1, "last_pending": n, "k": k,
                                              "first_k_s": summary(sub[:k]), "last_k_s": summary(sub[-k:])}
        log(f"submit with 1..{k} pending: {ms(statistics.median(sub[:k]))} ms; "
            f"with {n - k}..{n} pending: {ms(statistics.median(sub[-k:]))} ms")
        self.status_times(f"{n} pending")
        go.touch()
        self.g.wait_ended(ids[-1], poll_s=0.1)
        jobs = [self.g.job(i) for i in ids]
        if any(j["state"] != "completed" for j in jobs):
            raise RuntimeError("some gpuq jobs of the drain did not complete")
        g_total = max(j["ended_at"] for j in jobs) - read_stamp(g_end_stamp)
        res = {"jobs": n, "gpuq_total_s": g_total, "gpuq_s_per_job": g_total / n,
               "gpuq_job_phases_s": self._phases(jobs)}
        log(f"dispatch drain: gpuq {g_total:.1f} s for {n} jobs ({g_total / n * 1000:.0f} ms/job)")
        if self.t:  # task-spooler drains after gpuq, so the two never compete for the CPU
            go_t.touch()
            self.t.wait(last_t)
            t_total = time.time() - read_stamp(t_end_stamp)
            self.t.clear()
            res.update(tsp_total_s=t_total, tsp_s_per_job=t_total / n)
            log(f"dispatch drain: tsp {t_total:.2f} s ({t_total / n * 1000:.1f} ms/job)")
        self.res["dispatch_drain"] = res

    def run(self) -> dict[str, Any]:
        self.res["machine"] = machine_info(self.t.exe if self.t else None)
        self.res["load_before"] = os.getloadavg()
        self.res["settings"] = {k: v for k, v in vars(self.a).items() if k != "json"}
        t0 = time.time()
        log(f"workdir {self.work}; starting the gpuq daemon (SIMULATED 1x24GiB, embedded Redis)")
        self.g.start()
        if self.t:
            self.t.start()
        self.startup()
        self.status_times("empty queue")
        self.submit_times()
        self.latency()
        self.dispatch_e2e()
        self.dispatch_drain()
        self.res["load_after"] = os.getloadavg()
        self.res["bench_wall_s"] = time.time() - t0
        return self.res

    def close(self) -> None:
        self.release_blockers()
        if self.t:
            self.t.stop()
        self.g.stop()


# ---- the report ------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    L: list[str] = []
    L.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; {m['os']}; Python {m['python']}; "
             f"gpuq {m.get('gpuq')} (commit {m.get('gpuq_commit')}); {m.get('task_spooler')}; {m.get('redis_server')}.")
    lb, la = r["load_before"], r["load_after"]
    L.append(f"Load average (1 min) before/after: {lb[0]:.2f} / {la[0]:.2f}; benchmark wall time "
             f"{r['bench_wall_s']:.0f} s.")
    L.append("")

    def row(name: str, g: dict | None, t: dict | None, key: str = "median") -> str:
        gv, tv = (g or {}).get(key), (t or {}).get(key)
        gp, tp = (g or {}).get("p90"), (t or {}).get("p90")
        return f"| {name} | {ms(gv)} | {ms(gp)} | {ms(tv)} | {ms(tp)} | {ratio(gv, tv)} |"

    L.append("| command (wall time, ms) | gpuq median | gpuq p90 | task-spooler median | task-spooler p90 | "
             "gpuq / tsp |")
    L.append("|---|---:|---:|---:|---:|---:|")
    s = r["submit"]
    L.append(row(f"submit (`gpuq submit -q --gpus 1 -- true` / `tsp true`, n={s['gpuq_s']['n']})",
                 s["gpuq_s"], s["tsp_s"]))
    for label, st in r["status"].items():
        L.append(row(f"`gpuq status` / `tsp -l`, {label}", st["gpuq_status_s"], st["tsp_list_s"]))
        L.append(row(f"`gpuq status --json` / `tsp -l`, {label}", st["gpuq_status_json_s"], st["tsp_list_s"]))
        L.append(row(f"of which the daemon round trip (`GET /v1/status`, {st['response_bytes'] / 1024:.0f} KiB), "
                     f"{label}", st["daemon_round_trip_s"], None))
    sq = r.get("submit_vs_queue_length")
    if sq:
        L.append(row(f"submit with 1-{sq['k']} jobs pending (gpuq alone)", sq["first_k_s"], None))
        L.append(row(f"submit with {sq['last_pending'] - sq['k'] + 1}-{sq['last_pending']} jobs pending (gpuq alone)",
                     sq["last_k_s"], None))
    L.append("")

    su = r["startup"]
    L.append("| CLI start-up (wall time, ms) | median | p90 |")
    L.append("|---|---:|---:|")
    L.append(f"| `python -I -S -c pass` (no site-packages) | {ms(su['python_bare_s']['median'])} | "
             f"{ms(su['python_bare_s']['p90'])} |")
    L.append(f"| `python -c pass` (the venv's interpreter) | {ms(su['python_pass_s']['median'])} | "
             f"{ms(su['python_pass_s']['p90'])} |")
    L.append(f"| `python -c 'import gpuq.cli.app'` | {ms(su['python_import_cli_s']['median'])} | "
             f"{ms(su['python_import_cli_s']['p90'])} |")
    L.append(f"| `gpuq status` (empty queue) | {ms(su['gpuq_status_s']['median'])} | "
             f"{ms(su['gpuq_status_s']['p90'])} |")
    heavy = ", ".join(f"{k} {v:.0f} ms" for k, v in su["importtime_heaviest_ms"].items())
    L.append("")
    L.append(f"`python -X importtime gpuq status` (one run): {su['modules_imported']} top-level packages, "
             f"{su['importtime_total_ms']:.0f} ms of imports; heaviest (top two levels, cumulative): {heavy}. "
             f"redis / rq / tensorflow imported by the CLI: "
             f"{', '.join(su['forbidden_imported']) if su['forbidden_imported'] else 'none'}.")
    L.append("")

    L.append("| dispatch (whole-GPU `true` jobs, one at a time) | jobs | gpuq s/job | task-spooler s/job | gpuq / tsp |")
    L.append("|---|---:|---:|---:|---:|")
    for key, name in (("dispatch_e2e", "end to end: first submit -> last job ended"),
                      ("dispatch_drain", "queue drain: blocker ended -> last job ended")):
        d = r[key]
        L.append(f"| {name} | {d['jobs']} | {d['gpuq_s_per_job']:.3f} | "
                 f"{d['tsp_s_per_job']:.4f} | {ratio(d['gpuq_s_per_job'], d.get('tsp_s_per_job'))} |"
                 if "tsp_s_per_job" in d else
                 f"| {name} | {d['jobs']} | {d['gpuq_s_per_job']:.3f} | - | - |")
    L.append("")

    lat = r["latency"]
    L.append("| GPU free -> next job's first line (ms) | n | median | p90 | max |")
    L.append("|---|---:|---:|---:|---:|")
    for key, name in (("gpuq", "gpuq (A holds the GPU by reservation only)"),
                      ("gpuq_simmem", "gpuq (A also shows simulated memory in use)"),
                      ("tsp", "task-spooler, one slot")):
        v = lat.get(key) or {}
        if v.get("n"):
            L.append(f"| {name} | {v['n']} | {ms(v['median'])} | {ms(v['p90'])} | {ms(v['max'])} |")
    g, t = lat.get("gpuq", {}).get("median"), lat.get("tsp", {}).get("median")
    L.append("")
    L.append(f"Ratios gpuq / task-spooler (medians): latency {ratio(g, t)}.")
    L.append("")

    L.append("| where gpuq's time goes (ms, median) | GPU-free latency | drain, per job | end to end, per job |")
    L.append("|---|---:|---:|---:|")
    lp = r["latency_parts_gpuq"]
    dp, ep = r["dispatch_drain"]["gpuq_job_phases_s"], r["dispatch_e2e"]["gpuq_job_phases_s"]

    def med(d: dict, k: str) -> float | None:
        return (d.get(k) or {}).get("median")

    L.append(f"| A's last line -> A's end recorded (supervisor notices the exit) | {ms(med(lp, 'end_to_recorded'))} "
             f"| - | {ms(med(ep, 'popen_to_recorded_end'))} (popen -> end) |")
    L.append(f"| end recorded -> next job placed (scheduler wakes, cycles) | {ms(med(lp, 'recorded_to_placed'))} | "
             f"{ms(med(dp, 'recorded_end_to_next_placed'))} | {ms(med(ep, 'submitted_to_placed'))} (submit -> placed) |")
    L.append(f"| placed -> claimed (RQ dequeue, work-horse fork) | {ms(med(lp, 'placed_to_claimed'))} | "
             f"{ms(med(dp, 'placed_to_claimed'))} | {ms(med(ep, 'placed_to_claimed'))} |")
    L.append(f"| claimed -> process started (files, env, Popen, store) | {ms(med(lp, 'claimed_to_popen'))} | "
             f"{ms(med(dp, 'claimed_to_popen'))} | {ms(med(ep, 'claimed_to_popen'))} |")
    L.append(f"| process started -> its first line (interpreter start) | {ms(med(lp, 'popen_to_first_line'))} | - | - |")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs in each dispatch run (and pending for `status`)")
    ap.add_argument("--submits", type=int, default=50, help="timed submissions of each queue")
    ap.add_argument("--latency-reps", type=int, default=10)
    ap.add_argument("--hold-s", type=float, default=1.0, help="how long job A holds the GPU")
    ap.add_argument("--status-reps", type=int, default=15)
    ap.add_argument("--startup-reps", type=int, default=15)
    ap.add_argument("--no-tsp", action="store_true", help="gpuq alone (task-spooler missing)")
    ap.add_argument("--full-env", action="store_true",
                    help="run the CLIs with this shell's whole environment (gpuq stores it with each job); "
                         "default: a minimal one (HOME, LANG, USER, LOGNAME, PATH)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon log, stamps)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary after the Markdown")
    ap.add_argument("--json-file", type=Path, help="write the JSON summary to this file")
    a = ap.parse_args(argv)

    gpuq_exe = str(Path(sys.executable).parent / "gpuq")
    if not os.access(gpuq_exe, os.X_OK):
        gpuq_exe = shutil.which("gpuq") or ""
    if not gpuq_exe:
        print("bench_queue: no gpuq next to this Python or on PATH: run it with the venv's python.", file=sys.stderr)
        return 2
    tsp_exe = None
    if not a.no_tsp:
        tsp_exe = shutil.which("tsp")
        if tsp_exe is None:
            print("bench_queue: task-spooler is not installed (apt-get install task-spooler), or pass --no-tsp.",
                  file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="gpuq-bench-"))
    os.chmod(workdir, 0o755)
    bench = Bench(a, workdir, gpuq_exe, tsp_exe)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell started us with it ignored
    try:
        res = bench.run()
    except KeyboardInterrupt:
        log("interrupted: stopping what this benchmark started")
        return 130
    except Exception:
        a.keep = True  # keep the evidence
        rc = bench.g.proc.poll() if bench.g.proc is not None else None
        if rc is not None:
            log(f"the gpuq daemon exited with status {rc}; the end of its log:")
        try:
            print(bench.g.log_path.read_text()[-3000:], file=sys.stderr)
        except OSError:
            pass
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        try:
            bench.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)
            if a.keep:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(res))
    if a.json:
        print()
        print(json.dumps(res, indent=2, sort_keys=True, default=str))
    if a.json_file:
        a.json_file.write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
