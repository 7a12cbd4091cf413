"""Views: status filters, status --watch (redrawn in place, never cleared), logs --tail, and
gpuq history with its filters, --json and --csv.  Real daemon (SIMULATED GPUs), real CLI."""

from __future__ import annotations

import csv
import io
import os
import pty
import select
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import GPUQ

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(make_daemon):
    return make_daemon("--simulate-gpus", "2x24GiB", "--grace", "1s", "--node", f"views-{uuid.uuid4().hex[:8]}")


def test_status_filters_logs_tail_and_history(daemon, open_tmp, test_users):
    alice, bob = test_users
    work = open_tmp
    a_ok = daemon.submit("--gpus", "0", "--name", "a-ok", "--", "sh", "-c", "seq 1 1000", cwd=work, user=alice)
    a_bad = daemon.submit("--gpus", "0", "--name", "a-bad", "--", "sh", "-c", "exit 2", cwd=work, user=alice)
    b_run = daemon.submit("--gpus", "1", "--name", "b-run", "--", "sleep", "60", cwd=work, user=bob)
    daemon.wait_state(a_ok, "completed")
    daemon.wait_state(a_bad, "failed")
    daemon.wait_state(b_run, "running")

    mine = daemon.cli("status", "--me", "--all", user=alice).out
    assert "a-ok" in mine and "a-bad" in mine and "b-run" not in mine
    by_user = daemon.cli("status", "--user", bob).out
    assert "b-run" in by_user and "a-ok" not in by_user
    failed = daemon.cli("status", "--state", "failed").out
    assert "a-bad" in failed and "a-ok" not in failed and "b-run" not in failed
    r = daemon.cli("status", "--state", "runing")
    assert r.rc != 0 and "not a job state" in r.err

    tail = daemon.cli("logs", "--tail", "3", str(a_ok), user=alice)
    assert tail.out.splitlines() == ["998", "999", "1000"], tail.out
    assert daemon.cli("logs", "-n", "0", str(a_ok), user=alice).out == ""

    rows = daemon.cli("history", "--json", "--user", alice).json()
    assert {r["id"] for r in rows} == {a_ok, a_bad}
    bad = next(r for r in rows if r["id"] == a_bad)
    assert bad["state"] == "failed" and bad["exit_code"] == 2 and bad["wait_s"] >= 0 and bad["run_s"] >= 0
    assert [r["id"] for r in daemon.cli("history", "--json", "--state", "failed").json()] == [a_bad]
    assert daemon.cli("history", "--json", "--since", "1h").json() != []
    assert daemon.cli("history", "--json", "--until", "2000-01-01").json() == []
    got = list(csv.DictReader(io.StringIO(daemon.cli("history", "--csv", "--me", user=alice).out)))
    assert {int(r["id"]) for r in got} == {a_ok, a_bad} and {"wait_s", "run_s", "gpu_hours", "exit_code"} <= set(got[0])
    table = daemon.cli("history").out
    assert "GPU-H" in table and "a-bad" in table
    r = daemon.cli("history", "--since", "yesterday-ish")
    assert r.rc != 0 and "--since" in r.err
    daemon.cli("cancel", str(b_run), user=bob)


def test_status_watch_redraws_in_place(daemon, open_tmp):
    j = daemon.submit("--gpus", "0", "--name", "watched", "--", "sleep", "30", cwd=open_tmp)
    daemon.wait_state(j, "running")
    pid, fd = pty.fork()
    if pid == 0:  # the child: gpuq status --watch on a terminal
        os.environ["GPUQ_HOME"] = str(daemon.home)
        os.execv(GPUQ, [GPUQ, "status", "--watch", "-n", "0.3"])
    out = b""
    deadline = time.monotonic() + 30
    try:
        while out.count(b"\x1b[H") < 3 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGINT)
        while select.select([fd], [], [], 2)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    assert out.count(b"\x1b[H") >= 3, out[-2000:]  # several frames, each from the top
    assert b"\x1b[2J" not in out and b"\x1bc" not in out  # never a clear screen: no flicker
    assert b"watched" in out and b"\x1b[K" in out
    assert out.startswith(b"\x1b[?1049h") and b"\x1b[?1049l" in out  # alternate screen, restored on Ctrl-C
    assert os.WEXITSTATUS(status) == 0
    daemon.cli("cancel", str(j))


def test_status_stays_short_when_another_user_queues_many_jobs(daemon, open_tmp, test_users):
    """Issue 7.3: another user's 1,000 waiting jobs are one line of my `gpuq status`, not 1,000;
    `--user`, `--all` and `--json` still list every one (here 30 jobs; the cut is at 10)."""
    alice, bob = test_users
    for _ in range(2):  # both GPUs busy: alice's jobs below wait
        daemon.wait_pid(daemon.submit("--gpus", "1", "--name", "a-run", "--", "sleep", "600", cwd=open_tmp,
                                      user=alice))
    waiting = [daemon.submit("--gpus", "1", "--name", f"a-wait-{i}", "--", "true", cwd=open_tmp, user=alice)
               for i in range(30)]
    assert daemon.cli("hold", str(waiting[-1]), user=alice).rc == 0
    mine = daemon.submit("--gpus", "1", "--name", "b-mine", "--", "true", cwd=open_tmp, user=bob)

    out = daemon.cli("status", user=bob).out
    table = out.split("\n\n")[0].splitlines()
    assert sum("a-run" in ln for ln in table) == 2  # running jobs are always listed
    assert sum("b-mine" in ln for ln in table) == 1  # and all of mine
    assert not any("a-wait-" in ln for ln in table), out  # alice's waiting jobs: one line instead
    (summary,) = [ln for ln in table if "not listed" in ln]
    assert f"{waiting[0]}-{waiting[-1]}" in summary and "29 pending, 1 held" in summary and alice in summary
    assert len(table) == 1 + 2 + 1 + 1, out  # header, running, mine, the summary

    assert daemon.cli("status", "--user", alice, user=bob).out.count("a-wait-") == 30
    assert daemon.cli("status", "--all", user=bob).out.count("a-wait-") == 30
    listed = daemon.cli("status", "--json", user=bob).json()["jobs"]
    assert sum(j["spec"]["name"].startswith("a-wait-") for j in listed) == 30
    assert daemon.cli("status", user=alice).out.count("a-wait-") == 30  # her own: every one
    assert daemon.cli("status", str(mine), "--json", user=bob).json()["state"] == "pending"
