"""Spare supervisors (gpuq.workers.spare): one per RQ worker, used once, never an orphan, never a
second run.  Real daemon (SIMULATED GPUs), real Redis, real processes; the worker's side of a
handover is played by this test where a fault must fall at an exact point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpuq.store import Store
from gpuq.workers import spare
from gpuq.workers.launcher import WorkerContext
from tests.conftest import process_alive

pytestmark = pytest.mark.integration


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pipes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("pipe:"):
                out.add(link)
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def _workers(d) -> list[int]:
    r = subprocess.run(["pgrep", "-P", str(d.proc.pid), "-f", "gpuq.workers.rqworker"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if not _comm(int(x)).startswith("gpuq-sup")]


def _spares(d) -> list[int]:
    return [p for p in _children(d.proc.pid) if _comm(p) == spare.SPARE_NAME and process_alive(p)]


def _spare_of(d, worker: int) -> int | None:
    """The spare holding the other end of one of ``worker``'s pipes."""
    mine = _pipes(worker)
    for s in _spares(d):
        if _pipes(s) & mine:
            return s
    return None


def _spare_of_each(d) -> set[int] | None:
    """The spares of the daemon's workers, once every worker has its own."""
    workers = _workers(d)
    spares = {s for w in workers if (s := _spare_of(d, w))}
    return spares if workers and len(spares) == len(workers) else None


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _ctx_of_worker(pid: int) -> WorkerContext:
    """The worker context a worker of the daemon runs with (read from its environment)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(x.decode().split("=", 1) for x in raw if b"=" in x)
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return WorkerContext.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_every_worker_keeps_one_spare_which_ends_with_it(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "spares")
    workers = _wait(lambda: _workers(d), 30, "no RQ worker started")
    worker = workers[0]
    sp = _wait(lambda: _spare_of(d, worker), 30, f"worker {worker} has no spare supervisor")
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: not process_alive(sp), 30, "the spare outlived its worker (killed with SIGKILL)")
    # the daemon restarts the worker, with a new spare; a job still runs exactly once
    (open_tmp / "once.sh").write_text("#!/bin/sh\necho run >> runs.txt\n")
    (open_tmp / "once.sh").chmod(0o755)
    j = d.submit("--gpus", "1", "--", "./once.sh", cwd=open_tmp)
    d.wait_state(j, "completed")
    assert (open_tmp / "runs.txt").read_text() == "run\n"
    assert sum(e["text"].startswith("started pid") for e in d.job(j)["events"]) == 1
    # a daemon that stops takes its workers along, and their spares end with them
    left = _wait(lambda: _spares(d), 30, "the restarted worker has no spare")
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(60)
    for p in left:
        _wait(lambda p=p: not process_alive(p), 30, "a spare outlived its stopped daemon")


def test_a_job_is_handed_to_a_waiting_spare_and_each_spare_is_used_once(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "handover")
    (open_tmp / "hold.sh").write_text("#!/bin/sh\necho $1 >> runs.txt\nwhile [ ! -f go-$1 ]; do sleep 0.05; done\n")
    (open_tmp / "hold.sh").chmod(0o755)
    used: set[int] = set()
    for n in range(3):
        waiting = _wait(lambda: _spare_of_each(d), 30, "a worker has no spare supervisor")
        j = d.submit("--gpus", "1", "--", "./hold.sh", str(n), cwd=open_tmp)
        d.wait_pid(j)
        sup = json.loads((d.home / "supervisors" / f"{j}.json").read_text())["pid"]
        assert sup in waiting, "the job's supervisor was not one of the spares waiting before it was placed"
        assert sup not in used, "a spare supervised a second job"
        assert _comm(sup) == f"gpuq-sup-{j}"
        used.add(sup)
        (open_tmp / f"go-{n}").touch()
        d.wait_state(j, "completed")
    assert (open_tmp / "runs.txt").read_text().split() == ["0", "1", "2"]


def test_a_killed_spare_is_replaced_and_the_job_still_starts_once(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "sparekill")
    (open_tmp / "once.sh").write_text("#!/bin/sh\necho run >> runs.txt\n")
    (open_tmp / "once.sh").chmod(0o755)
    killed = _wait(lambda: _spare_of_each(d), 30, "a worker has no spare supervisor")
    for s in killed:
        os.kill(s, signal.SIGKILL)
    j = d.submit("--gpus", "1", "--", "./once.sh", cwd=open_tmp)
    d.wait_state(j, "completed")  # started by a supervisor forked the old way
    assert (open_tmp / "runs.txt").read_text() == "run\n"
    assert sum(e["text"].startswith("started pid") for e in d.job(j)["events"]) == 1
    _wait(lambda: {s for s in _spares(d) if s not in killed}, 30, "no new spare after the handover failed")


def _forked_spare(ctx: WorkerContext) -> tuple[spare.Spare, int]:
    s = spare.fork_spare(ctx)
    lines = s._read_lines(time.monotonic() + 30, want=1)
    assert lines, "the spare never said idle"
    return s, int(lines[0])


@pytest.mark.parametrize("cut", ["nothing", "half"])
def test_a_worker_that_dies_before_or_while_handing_a_job_over_starts_nothing(make_daemon, open_tmp, cut):
    """This test plays the worker: it claims nothing, forks a spare, and ends the handover with
    no job or with half of one (what the spare sees when the worker is killed mid-write)."""
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", f"cut{cut}")
    (open_tmp / "mark.sh").write_text("#!/bin/sh\necho ran >> marks.txt\n")
    (open_tmp / "mark.sh").chmod(0o755)
    j = d.submit("--gpus", "1", "--", "./mark.sh", cwd=open_tmp)
    d.wait_state(j, "completed")
    (open_tmp / "marks.txt").unlink()
    ctx = _ctx_of_worker(_wait(lambda: _workers(d), 30, "no RQ worker")[0])
    store = Store.from_url(ctx.redis_url)
    job = store.get(j)
    s, pid = _forked_spare(ctx)
    if cut == "half":
        whole = json.dumps(job.to_dict()).encode() + b"\n"
        os.write(s._job_w, whole[: len(whole) // 2])
    s.close()  # the worker's end closes: as at its death
    _wait(lambda: not process_alive(pid), 30, "the spare did not end when its worker's end closed")
    assert not (open_tmp / "marks.txt").exists(), "the spare started a job it was not wholly handed"
    assert not (d.home / "supervisors" / f"{j}.json").exists()
    assert d.job(j)["state"] == "completed"


def test_a_spare_handed_a_run_that_is_no_longer_current_starts_nothing(make_daemon, open_tmp):
    """A claim undone before the supervisor starts the job (the run failed, ended or was
    reconciled meanwhile): the record's run no longer matches, and nothing is started or recorded."""
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "stale")
    (open_tmp / "mark.sh").write_text("#!/bin/sh\necho ran >> marks.txt\nwhile [ ! -f go ]; do sleep 0.05; done\n")
    (open_tmp / "mark.sh").chmod(0o755)
    j = d.submit("--gpus", "1", "--", "./mark.sh", cwd=open_tmp)
    d.wait_pid(j)
    ctx = _ctx_of_worker(_wait(lambda: _workers(d), 30, "no RQ worker")[0])
    store = Store.from_url(ctx.redis_url)
    stale = store.get(j)  # the run as its worker claimed it
    assert stale.started_at is not None
    (open_tmp / "go").touch()
    done = d.wait_state(j, "completed")
    (open_tmp / "marks.txt").unlink()
    (open_tmp / "go").unlink()
    s, pid = _forked_spare(ctx)
    assert s.hand(stale, 30.0) == pid
    _wait(lambda: not process_alive(pid), 30, "the spare kept running a run that is not current")
    assert not (open_tmp / "marks.txt").exists(), "a run that is no longer current was started"
    after = d.job(j)
    assert after["state"] == "completed" and len(after["events"]) == len(done["events"])
    assert not (d.home / "supervisors" / f"{j}.json").exists()
