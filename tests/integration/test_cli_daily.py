"""The daily command line, tried as a new user would: strict options, scripts in the current
directory, sizes with units, messages that state the new state, elapsed time over every run,
job arrays (with their throttle), --from FILE, and Slurm-style dependencies.
Real daemon (SIMULATED GPUs), real embedded Redis, real CLI as subprocesses."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

# Records its array index and the time it ran, then sleeps: the throttle test reads the overlaps.
ARRAY_JOB = """import json, os, sys, time
idx = sys.argv[1]
rec = {"env": os.environ.get("GPUQ_ARRAY_INDEX"), "arg": idx, "array": os.environ.get("GPUQ_ARRAY_ID"),
       "start": time.time()}
time.sleep(float(sys.argv[2]))
rec["end"] = time.time()
with open(f"out-{idx}.json", "w") as f:
    json.dump(rec, f)
"""


@pytest.fixture
def daemon(make_daemon):
    """conftest's daemon, with a node name of its own: job cgroups are named by node and job id, and a
    test daemon elsewhere on this machine with the same node name reconciles (kills) what it finds."""
    return make_daemon("--simulate-gpus", "2x24GiB", "--grace", "2s", "--node", f"cli-{uuid.uuid4().hex[:8]}")


def _one_error(r, *needles: str) -> None:
    assert r.rc != 0, (r.out, r.err)
    err = r.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("gpuq: "), err
    for n in needles:
        assert n in err, err


def _reason(daemon, job_id: int, needle: str, timeout: float = 15) -> str:
    """The job's published pending reason, once it contains ``needle`` (the scheduler publishes each cycle)."""
    deadline = time.monotonic() + timeout
    while needle not in (reason := daemon.job(job_id).get("reason") or ""):
        assert time.monotonic() < deadline, daemon.job(job_id)
        time.sleep(0.1)
    return reason


def test_a_mistyped_option_is_an_error_naming_the_right_one(open_tmp):
    (open_tmp / "x.py").write_text("")
    r = run_cli(open_tmp / "nowhere", "submit", "--gpu", "2", "x.py", cwd=open_tmp)
    _one_error(r, "no such option --gpu", "did you mean --gpus?")
    assert r.rc == 2
    _one_error(run_cli(open_tmp / "nowhere", "status", "--al", cwd=open_tmp), "did you mean --all?")
    _one_error(run_cli(open_tmp / "nowhere", "submit", "--gpu-mem", "10", "x.py", cwd=open_tmp),
               "has no unit", "10GiB or 10MiB")
    v = run_cli(open_tmp / "nowhere", "--version")
    assert v.rc == 0 and v.out.startswith("gpuq ")
    # `gpuq` alone prints the help, as it is (not squeezed into an error line)
    r = run_cli(open_tmp / "nowhere", cwd=open_tmp)
    assert r.rc == 2 and r.err.startswith("Usage: gpuq [OPTIONS] COMMAND") and "\n  submit " in r.err, r.err
    # a mistyped command: the closest one, said once (click and typer each offer it)
    r = run_cli(open_tmp / "nowhere", "stauts", cwd=open_tmp)
    _one_error(r, "No such command 'stauts'", "Did you mean 'status'?")
    assert r.err.count("Did you mean") == 1 and not r.err.startswith("gpuq: gpuq:"), r.err


def test_a_bare_simulated_gpu_size_is_refused(open_tmp):
    r = run_cli(open_tmp / "h", "daemon", "--simulate-gpus", "2x24", timeout=60)
    _one_error(r, "--simulate-gpus", "4x24GiB")


def test_script_in_cwd_options_after_it_and_messages_with_the_new_state(daemon, open_tmp):
    (open_tmp / "run.sh").write_text("#!/bin/sh\necho ran with \"$@\"\n")
    os.chmod(open_tmp / "run.sh", 0o755)
    j = daemon.submit("--gpus", "0", "run.sh", "--gpu", "7", cwd=open_tmp)  # options after the script are its own
    daemon.wait_state(j, "completed")
    assert "ran with --gpu 7" in daemon.cli("logs", str(j)).out

    blocker = daemon.submit("--gpus", "2", "--", "sleep", "60", cwd=open_tmp)
    daemon.wait_state(blocker, "running")
    waiting = daemon.submit("--gpus", "1", "--", "true", cwd=open_tmp)
    assert daemon.cli("hold", str(waiting)).out.strip() == f"job {waiting}: held"
    assert daemon.cli("hold", str(waiting)).out.strip() == f"job {waiting}: already held"
    assert daemon.cli("release", str(waiting)).out.strip() == f"job {waiting}: pending (released)"
    assert daemon.cli("cancel", str(waiting)).out.strip() == f"job {waiting}: cancelled"
    out = daemon.cli("cancel", str(blocker)).out
    assert "stopping" in out and "will end cancelled" in out and "->" not in out
    daemon.wait_state(blocker, "cancelled")


def test_status_gpus_column_is_a_count_and_elapsed_counts_every_run(daemon, open_tmp):
    # exits 75 ("checkpointed, requeue me") after its first run, completes after its second
    (open_tmp / "twice.sh").write_text("#!/bin/sh\nsleep 1.5\n[ -e once ] && exit 0\ntouch once\nexit 75\n")
    os.chmod(open_tmp / "twice.sh", 0o755)
    j = daemon.submit("--gpus", "2", "--checkpointable", "twice.sh", cwd=open_tmp)
    daemon.wait_state(j, "running")
    st = daemon.cli("status").out.splitlines()
    row = next(ln.split() for ln in st if ln.startswith(f"{j} "))
    header = st[0].split()
    assert header[4:6] == ["GPUS", "ON"], header
    assert row[4] == "2" and row[5] in ("0,1", "1,0"), row  # a count, then where it runs
    job = daemon.wait_state(j, "completed", timeout=60)
    assert job["requeues"] == 1
    assert job["elapsed_s"] >= 2.5, job  # both runs (one is 1.5 s)
    hist = daemon.cli("history", "--json").json()
    assert next(r for r in hist if r["id"] == j)["run_s"] >= 2.5


def test_job_array_throttle_placeholder_and_one_line_in_status(daemon, open_tmp):
    (open_tmp / "arr.py").write_text(ARRAY_JOB)
    r = daemon.cli("submit", "--gpus", "0", "--array", "0-5%2", "arr.py", "{}", "0.6", cwd=open_tmp)
    assert r.rc == 0 and "Submitted array" in r.out and "6 jobs" in r.out, (r.out, r.err)
    aid = int(r.out.split()[2].rstrip(":"))
    lines = [ln for ln in daemon.cli("status").out.splitlines() if ln.startswith(f"{aid}_")]
    assert len(lines) == 1 and lines[0].startswith(f"{aid}_[") and "%2]" in lines[0], lines  # indices still queued
    assert len([ln for ln in daemon.cli("status", "--expand").out.splitlines() if f"({aid}_" in ln]) in range(1, 7)
    w = daemon.cli("wait", str(aid), timeout=120)
    assert w.rc == 0, (w.out, w.err)
    recs = [json.loads((open_tmp / f"out-{i}.json").read_text()) for i in range(6)]
    assert [(x["env"], x["arg"], x["array"]) for x in recs] == [(str(i), str(i), str(aid)) for i in range(6)]
    events = sorted([(x["start"], 1) for x in recs] + [(x["end"], -1) for x in recs])
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak <= 2, recs  # %2: never more than two at once
    assert daemon.job(aid + 5)["spec"]["array"] == {"array_id": aid, "index": 5, "size": 6, "limit": 2}


def test_array_from_file_and_cancel_hold_release_by_array_id(daemon, open_tmp):
    (open_tmp / "cmds.txt").write_text("# one command per line\nsh -c 'echo first > f0'\n\nsh -c 'echo \"second one\" > f1'\n")
    r = daemon.cli("submit", "--gpus", "0", "--from", "cmds.txt", cwd=open_tmp)
    assert r.rc == 0 and "2 jobs" in r.out, (r.out, r.err)
    aid = int(r.out.split()[2].rstrip(":"))
    assert daemon.cli("wait", str(aid), timeout=60).rc == 0
    assert (open_tmp / "f0").read_text() == "first\n" and (open_tmp / "f1").read_text() == "second one\n"

    blocker = daemon.submit("--gpus", "2", "--", "sleep", "60", cwd=open_tmp)
    daemon.wait_state(blocker, "running")
    r = daemon.cli("submit", "-q", "--gpus", "1", "--array", "0-9", "--", "true", cwd=open_tmp)
    aid = int(r.out)
    assert daemon.cli("hold", str(aid)).out.strip() == f"jobs {aid}-{aid + 9}: held"
    assert {j["state"] for j in daemon.cli("status", str(aid), "--json").json()["jobs"]} == {"held"}
    assert daemon.cli("release", f"{aid}_3").out.strip() == f"job {aid + 3}: pending (released)"
    assert daemon.cli("hold", str(aid)).out.strip() == f"job {aid + 3}: held"  # only the pending one; no errors
    assert daemon.cli("cancel", str(aid)).out.strip() == f"jobs {aid}-{aid + 9}: cancelled"
    _one_error(daemon.cli("cancel", f"{aid}_42"), "no element 42")
    _one_error(daemon.cli("cancel", str(aid)), f"array {aid} has no pending or held or running jobs to cancel")
    daemon.cli("cancel", str(blocker))


def test_dependencies_as_slurm_users_know_them(daemon, open_tmp):
    bad = daemon.submit("--gpus", "0", "--", "sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; exit 3", cwd=open_tmp)
    on_ok = daemon.submit("--gpus", "0", "--after", str(bad), "--", "true", cwd=open_tmp)
    on_fail = daemon.submit("--gpus", "0", "--after-notok", str(bad), "--", "true", cwd=open_tmp)
    on_any = daemon.submit("--gpus", "0", "--after-any", str(bad), "--", "true", cwd=open_tmp)
    chained = daemon.submit("--gpus", "0", "--after", str(on_ok), "--", "true", cwd=open_tmp)
    assert _reason(daemon, on_ok, "after job") == f"after job {bad}"
    assert _reason(daemon, on_fail, "after-notok") == f"after-notok job {bad}"
    (open_tmp / "go").touch()
    assert daemon.wait_state(bad, "failed")["exit_code"] == 3
    daemon.wait_state(on_fail, "completed")
    daemon.wait_state(on_any, "completed")
    never = daemon.wait_state(on_ok, "cancelled")
    assert "dependency never satisfied" in never["end_reason"] and f"job {bad} ended failed" in never["end_reason"]
    assert "dependency never satisfied" in daemon.wait_state(chained, "cancelled")["end_reason"]
    w = daemon.cli("wait", str(bad), str(on_fail))
    assert w.rc == 3 and f"job {bad}: failed (exit 3)" in w.out  # the first unsuccessful job's status
    _one_error(daemon.cli("submit", "--after", "999999", "--", "true", cwd=open_tmp), "no job 999999")


def test_a_config_option_keeps_impossible_dependents(open_tmp, make_daemon):  # open_tmp outlives the daemon
    base = open_tmp / "keep"
    (base / "home").mkdir(parents=True)
    (base / "home" / "config.toml").write_text("[daemon]\nkeep_impossible_dependents = true\n")
    d = make_daemon("--simulate-gpus", "1x8GiB", "--grace", "1s", "--node", f"cli-{uuid.uuid4().hex[:8]}",
                    home=base / "home")
    ok = d.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    dep = d.submit("--gpus", "0", "--after-notok", str(ok), "--", "true", cwd=open_tmp)
    d.wait_state(ok, "completed")
    assert "it will never start" in _reason(d, dep, "never start")
    assert d.job(dep)["state"] == "pending"


def test_another_user_cannot_change_an_array(daemon, open_tmp, test_users):
    alice, bob = test_users
    home = Path(open_tmp)
    r = daemon.cli("submit", "-q", "--gpus", "1", "--array", "0-2", "--", "sleep", "30", cwd=home, user=alice)
    aid = int(r.out)
    r = daemon.cli("cancel", str(aid), user=bob)
    assert r.rc == 1 and r.err.count("only its owner or root") == 3, r.err
    assert {j["state"] for j in daemon.cli("status", str(aid), "--json").json()["jobs"]} <= {"pending", "running"}
    assert daemon.cli("cancel", str(aid), user=alice).rc == 0


NOTE = 'echo "$GPUQ_JOB_ID $GPUQ_JOB_STATE [$GPUQ_JOB_EXIT_STATUS] $(id -un)" >> notes.txt'


def _notes(path: Path, n: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().splitlines()) < n:
        assert time.monotonic() < deadline, path.read_text() if path.exists() else "no notes"
        time.sleep(0.1)
    return sorted(path.read_text().splitlines())


def test_notify_runs_as_the_owner_with_the_end_state_and_wait_exits_with_it(daemon, open_tmp, test_users):
    alice, _ = test_users
    work = open_tmp / "alice"
    work.mkdir()
    os.chown(work, *(lambda pw: (pw.pw_uid, pw.pw_gid))(__import__("pwd").getpwnam(alice)))
    ok = daemon.submit("--gpus", "0", "--notify", NOTE, "--", "true", cwd=work, user=alice)
    bad = daemon.submit("--gpus", "0", "--notify", NOTE, "--", "sh", "-c", "exit 4", cwd=work, user=alice)
    blocker = daemon.submit("--gpus", "2", "--", "sleep", "60", cwd=work, user=alice)
    daemon.wait_state(blocker, "running")
    waiting = daemon.submit("--gpus", "1", "--notify", NOTE + "; touch /root/gpuq-notify-was-root", "--", "true",
                            cwd=work, user=alice)
    assert daemon.cli("cancel", str(waiting), user=alice).rc == 0
    w = daemon.cli("wait", str(ok), str(bad), user=alice)
    assert w.rc == 4, (w.out, w.err)
    assert _notes(work / "notes.txt", 3) == sorted([f"{ok} completed [0] {alice}", f"{bad} failed [4] {alice}",
                                                    f"{waiting} cancelled [] {alice}"])
    assert (work / "notes.txt").stat().st_uid == __import__("pwd").getpwnam(alice).pw_uid
    assert not Path("/root/gpuq-notify-was-root").exists()  # it ran as alice, not as the root daemon
    daemon.cli("cancel", str(blocker), user=alice)


def test_a_per_user_default_notify_from_the_users_config(daemon, open_tmp, test_users):
    alice, _ = test_users
    pw = __import__("pwd").getpwnam(alice)
    cfg = Path(pw.pw_dir) / ".config" / "gpuq"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.toml").write_text(f"[submit]\nnotify = '{NOTE}'\n")
    try:
        work = open_tmp / "alice2"
        work.mkdir()
        os.chown(work, pw.pw_uid, pw.pw_gid)
        j = daemon.submit("--gpus", "0", "--", "true", cwd=work, user=alice)
        off = daemon.submit("--gpus", "0", "--notify", "", "--", "true", cwd=work, user=alice)
        assert daemon.cli("wait", str(j), str(off), user=alice).rc == 0
        assert _notes(work / "notes.txt", 1) == [f"{j} completed [0] {alice}"]
        time.sleep(1)
        assert len((work / "notes.txt").read_text().splitlines()) == 1  # --notify '' turned the default off
    finally:
        (cfg / "config.toml").unlink()


def test_an_array_is_stored_whole_or_not_at_all_when_the_daemon_is_killed(make_daemon, open_tmp):
    """kill -9 of the daemon while a 3,000-job array is being submitted: after a restart the array
    has all of its jobs or none (one transaction), never a part."""
    import subprocess

    from tests.conftest import GPUQ

    node = f"cli-{uuid.uuid4().hex[:8]}"
    d = make_daemon("--simulate-gpus", "1x8GiB", "--grace", "1s", "--node", node)
    d.submit("--gpus", "1", "--", "sleep", "120", cwd=open_tmp)  # keeps the array waiting
    env = {"PATH": os.environ["PATH"], "GPUQ_HOME": str(d.home)}
    sub = subprocess.Popen([GPUQ, "submit", "-q", "--array", "0-2999", "--", "true"], env=env, cwd=open_tmp,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.15)
    d.proc.kill()  # SIGKILL, at whatever point the submission reached
    d.proc.wait(30)
    out, err = sub.communicate(timeout=60)
    d2 = make_daemon("--simulate-gpus", "1x8GiB", "--grace", "1s", "--node", node, home=d.home)
    jobs = [j for j in d2.cli("status", "--json").json()["jobs"] if j["spec"].get("array")]
    assert len(jobs) in (0, 3000), (len(jobs), out, err)
    if sub.returncode == 0:  # acknowledged: then it must all be there
        assert len(jobs) == 3000
