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
from gpuq.workers import jobexec, spare
from gpuq.workers.cgroup import CgroupV1
from gpuq.workers.launcher import WorkerContext

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


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
    return [p for p in _children(d.proc.pid) if _comm(p) == spare.SPARE_NAME and _alive(p)]


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
    _wait(lambda: not _alive(sp), 30, "the spare outlived its worker (killed with SIGKILL)")
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
        _wait(lambda p=p: not _alive(p), 30, "a spare outlived its stopped daemon")


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
    _wait(lambda: not _alive(pid), 30, "the spare did not end when its worker's end closed")
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
    _wait(lambda: not _alive(pid), 30, "the spare kept running a run that is not current")
    assert not (open_tmp / "marks.txt").exists(), "a run that is no longer current was started"
    after = d.job(j)
    assert after["state"] == "completed" and len(after["events"]) == len(done["events"])
    assert not (d.home / "supervisors" / f"{j}.json").exists()


def _prechild_of(sp: int) -> int | None:
    """The job's process-to-be an idle spare keeps (see gpuq.workers.jobexec.PreChild)."""
    kids = [p for p in _children(sp) if _comm(p) == jobexec.PRECHILD_NAME and _alive(p)]
    return kids[0] if kids else None


def _gpuq_cgroups(pid: int) -> list[str]:
    """The gpuq cgroup paths of ``pid``, one per hierarchy it is in under gpuq."""
    text = Path(f"/proc/{pid}/cgroup").read_text()
    return [line.split(":", 2)[2] for line in text.splitlines() if "/gpuq/" in line]


def _renaming(d) -> WorkerContext:
    """The context of the daemon's workers; the test is skipped where the containment cannot
    rename a cgroup (cgroup v2 refuses rename(2), process groups have none): jobs start the old
    way there, and every other test of this module covers that way."""
    ctx = _ctx_of_worker(_wait(lambda: _workers(d), 30, "no RQ worker")[0])
    if not isinstance(ctx.containment, CgroupV1):
        pytest.skip(f"jobs here are contained by {ctx.containment.name}, which cannot rename a cgroup")
    return ctx


def _spare_dirs(ctx: WorkerContext, spare_pid: int) -> list[Path]:
    return [Path(f).parent.parent / f"spare-{spare_pid}" for f in ctx.containment.join_files(0)]


def test_an_idle_spare_keeps_the_jobs_process_in_its_own_cgroup_which_becomes_the_jobs(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "prechild")
    ctx = _renaming(d)
    (open_tmp / "where.sh").write_text("#!/bin/sh\ncat /proc/self/cgroup > cg-$1.txt\n"
                                       "while [ ! -f go-$1 ]; do sleep 0.05; done\n")
    (open_tmp / "where.sh").chmod(0o755)
    for n in range(2):
        sp = _wait(lambda: _spare_of_each(d), 30, "a worker has no spare supervisor")
        pre = {s: _wait(lambda s=s: _prechild_of(s), 30, f"spare {s} keeps no job process") for s in sp}
        for s, p in pre.items():
            assert all(c.endswith(f"/spare-{s}") for c in _gpuq_cgroups(p)), _gpuq_cgroups(p)
            assert len(_gpuq_cgroups(p)) == len(ctx.containment.join_files(0))
        j = d.submit("--gpus", "1", "--", "./where.sh", str(n), cwd=open_tmp)
        pid = d.wait_pid(j)
        sup = json.loads((d.home / "supervisors" / f"{j}.json").read_text())["pid"]
        assert pre.get(sup) == pid, "the job is not the process its spare kept ready"
        _wait(lambda: (open_tmp / f"cg-{n}.txt").exists(), 30, "the job did not write its cgroups")
        mine = [line.split(":", 2)[2] for line in (open_tmp / f"cg-{n}.txt").read_text().splitlines()
                if "/gpuq/" in line]
        assert len(mine) == len(ctx.containment.join_files(0)) and all(c.endswith(f"/job-{j}") for c in mine), mine
        held = set(ctx.containment.pids(j))
        assert pid in held and not held & (set(pre.values()) - {pid}), (held, pre)
        assert not any(p.exists() for p in _spare_dirs(ctx, sup)), "the spare's cgroup was copied, not renamed"
        (open_tmp / f"go-{n}").touch()
        d.wait_state(j, "completed")
        _wait(lambda: j not in ctx.containment.jobs(), 30, "the job's cgroup was not removed at its end")


def test_a_spare_killed_while_idle_takes_the_jobs_process_along_and_its_cgroup_is_swept(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "prekill")
    ctx = _renaming(d)
    (open_tmp / "once.sh").write_text("#!/bin/sh\necho run >> runs.txt\n")
    (open_tmp / "once.sh").chmod(0o755)
    killed = _wait(lambda: _spare_of_each(d), 30, "a worker has no spare supervisor")
    pre = {s: _wait(lambda s=s: _prechild_of(s), 30, f"spare {s} keeps no job process") for s in killed}
    for s in killed:
        os.kill(s, signal.SIGKILL)
    for p in pre.values():
        _wait(lambda p=p: not _alive(p), 30, "the job's process-to-be outlived its spare (killed with SIGKILL)")
    j = d.submit("--gpus", "1", "--", "./once.sh", cwd=open_tmp)
    d.wait_state(j, "completed")
    assert (open_tmp / "runs.txt").read_text() == "run\n"
    assert sum(e["text"].startswith("started pid") for e in d.job(j)["events"]) == 1
    _wait(lambda: {s for s in _spares(d) if s not in killed}, 30, "no new spare after the handover failed")
    for s in killed:  # swept by the next spare (or the daemon's reconcile), once empty
        _wait(lambda s=s: not any(p.exists() for p in _spare_dirs(ctx, s)), 30, f"spare-{s} was never swept")


def test_a_spare_whose_cgroup_cannot_become_the_jobs_starts_it_the_old_way(make_daemon, open_tmp):
    """The spare's cgroup of the last hierarchy is moved away under it: the renames already done
    are undone, the kept process is let go, and the job starts in a fresh cgroup of its own."""
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "prenorename")
    ctx = _renaming(d)
    (open_tmp / "where.sh").write_text("#!/bin/sh\ncat /proc/self/cgroup > cg.txt\n")
    (open_tmp / "where.sh").chmod(0o755)
    sp = _wait(lambda: _spare_of_each(d), 30, "a worker has no spare supervisor")
    pre = {s: _wait(lambda s=s: _prechild_of(s), 30, f"spare {s} keeps no job process") for s in sp}
    sp = sorted(sp)
    moved = []
    for s in sp:
        last = _spare_dirs(ctx, s)[-1]
        last.rename(last.with_name(f"moved-{s}"))
        moved.append(last.with_name(f"moved-{s}"))
    j = d.submit("--gpus", "1", "--", "./where.sh", cwd=open_tmp)
    done = d.wait_state(j, "completed")
    started = [e["text"] for e in done["events"] if e["text"].startswith("started pid")]
    assert len(started) == 1 and int(started[0].split()[2]) not in pre.values(), started
    mine = [line.split(":", 2)[2] for line in (open_tmp / "cg.txt").read_text().splitlines() if "/gpuq/" in line]
    assert len(mine) == len(ctx.containment.join_files(j)) and all(c.endswith(f"/job-{j}") for c in mine), mine
    used = _wait(lambda: [s for s in sp if not _alive(s)], 30, "the spare that took the job did not end with it")
    assert len(used) == 1
    for s, m in zip(sp, moved):
        if s not in used:  # the other spare still keeps its process: give its cgroup back
            m.rename(_spare_dirs(ctx, s)[-1])
            continue
        _wait(lambda: not _alive(pre[s]), 30, "the kept process the job did not use is still there")
        _wait(lambda: not any(x.exists() for x in _spare_dirs(ctx, s)[:-1]), 30,
              "a rename was not undone, or the spare's cgroup not removed")
        assert not _pids_in(m), "a process was left in the moved cgroup"
        m.rmdir()


def _pids_in(d: Path) -> list[str]:
    try:
        return (d / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return []
