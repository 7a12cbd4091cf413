"""The door against hostile ordinary users (issue 7 and 8.4): real Linux users, the real root
daemon (SIMULATED GPUs), the real CLI, the real embedded Redis."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, GPUQ
from tests.integration.doorkit import api_as, redis_of, strict_json, user_dir, write_config

pytestmark = pytest.mark.integration


def _one_sentence(text: str) -> str:
    text = text.strip()
    assert text.startswith("gpuq: ") and len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


# ---- 7.1: submit-time checks with the caller's rights -----------------------------------------------


def test_submit_checks_do_not_reveal_what_the_caller_cannot_see(daemon, open_tmp, test_users):
    alice, bob = test_users
    a_dir = user_dir(open_tmp, alice)
    b_dir = user_dir(open_tmp, bob, mode=0o700)  # bob's private directory
    bob_pw = pwd.getpwnam(bob)
    (b_dir / "run.sh").write_text("#!/bin/sh\necho bob\n")
    (b_dir / "sub").mkdir()
    for p in (b_dir / "run.sh", b_dir / "sub"):
        os.chown(p, bob_pw.pw_uid, bob_pw.pw_gid)
    os.chmod(b_dir / "run.sh", 0o755)

    def refused(*args: str) -> str:
        r = daemon.cli("submit", "--gpus", "0", *args, user=alice, cwd=a_dir)
        assert r.rc != 0, r.out
        return _one_sentence(r.err)

    # an existing file in bob's 0700 directory reads exactly like a missing one
    exists, missing = refused("--", str(b_dir / "run.sh")), refused("--", str(b_dir / "nothere.sh"))
    assert exists.replace("run.sh", "X") == missing.replace("nothere.sh", "X"), (exists, missing)
    assert "does not exist" in exists and "not executable" not in exists
    exists, missing = refused(str(b_dir / "jobscript.py")), refused(str(b_dir / "nothere.py"))
    assert exists.replace("jobscript.py", "X") == missing.replace("nothere.py", "X"), (exists, missing)

    # so does a working directory inside it (sent by a client that claims that cwd)
    sock = daemon.home / "gpuq.sock"
    replies = {name: api_as(alice, sock, "POST", "/v1/jobs", {"argv": ["true"], "cwd": str(b_dir / name),
                                                               "gpus": 0})
               for name in ("sub", "nothere")}
    assert {r["status"] for r in replies.values()} == {400}, replies
    errs = {k: json.loads(v["body"])["error"].replace(k, "X") for k, v in replies.items()}
    assert errs["sub"] == errs["nothere"] and "may not enter" in errs["sub"], errs
    assert not [j for j in daemon.cli("status", "--all", "--json").json()["jobs"] if j["owner"]["user"] == alice]

    # the same requests from bob himself are accepted and run as bob, in his directory
    j = daemon.submit("--gpus", "0", "--", str(b_dir / "run.sh"), user=bob, cwd=b_dir)
    assert daemon.wait_state(j, {"completed", "failed"})["state"] == "completed"
    r = api_as(bob, sock, "POST", "/v1/jobs", {"argv": ["true"], "cwd": str(b_dir / "sub"), "gpus": 0})
    assert r["status"] == 201, r


# ---- 7.2: per-user limits, enforced atomically -------------------------------------------------------


def test_pending_limit_holds_under_many_concurrent_real_submits(open_tmp, make_daemon, test_users):
    alice, _ = test_users
    a_dir = user_dir(open_tmp, alice)
    home = open_tmp / "home"
    write_config(home, "[scheduler]\nmax_pending = 5\n")
    daemon = make_daemon("--simulate-gpus", "2x24GiB", "--grace", "1s", "--node", "testnode", home=home)
    blocker = daemon.submit("--gpus", "2", "--", "sleep", "120")  # root holds both GPUs: GPU jobs wait
    daemon.wait_state(blocker, "running")

    procs = []
    env = {"PATH": f"{BIN}:/usr/bin:/bin"}
    pw = pwd.getpwnam(alice)
    for _ in range(24):  # 24 real CLI processes at once
        procs.append(subprocess.Popen([GPUQ, "submit", "-q", "--gpus", "1", "--", "true"], cwd=a_dir,
                                      env={**env, "GPUQ_HOME": str(home), "LANG": "C.UTF-8"}, user=pw.pw_uid,
                                      group=pw.pw_gid, extra_groups=[], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    accepted = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(accepted) == 5, results
    for _, _, err in refused:
        assert "the limit is 5" in _one_sentence(err), err
    mine = [j for j in daemon.cli("status", "--json").json()["jobs"] if j["owner"]["user"] == alice]
    assert len(mine) == 5 and {j["state"] for j in mine} == {"pending"}

    # a slot comes back when one of them leaves the queue
    assert daemon.cli("cancel", str(mine[0]["id"]), user=alice).rc == 0
    assert daemon.cli("submit", "-q", "--gpus", "1", "--", "true", user=alice, cwd=a_dir).rc == 0
    assert daemon.cli("submit", "-q", "--gpus", "1", "--", "true", user=alice, cwd=a_dir).rc != 0

    # argv + environment are bounded per job (64 KiB by default)
    r = daemon.cli("submit", "--gpus", "0", "--", "true", user=alice, cwd=a_dir, env={"BIG": "x" * 70000})
    assert "64 KiB" in _one_sentence(r.err)
    r = daemon.cli("submit", "--gpus", "0", "--", "echo", "y" * 70000, user=alice, cwd=a_dir)
    assert "64 KiB" in _one_sentence(r.err)
    daemon.cli("cancel", str(blocker))


# ---- 7.3: bounded cost: retention -----------------------------------------------------------------------


def test_finished_jobs_are_deleted_after_retention_and_counted_in_aggregate(open_tmp, make_daemon, test_users):
    alice, _ = test_users
    a_dir = user_dir(open_tmp, alice)
    home = open_tmp / "home"
    write_config(home, '[daemon]\nretention = "20s"\n')
    daemon = make_daemon("--simulate-gpus", "1x8GiB", "--node", "testnode", home=home)
    ids = [daemon.submit("--gpus", "0", "--", "true", user=alice, cwd=a_dir) for _ in range(3)]
    ids.append(daemon.submit("--gpus", "0", "--", "false", user=alice, cwd=a_dir))
    for j in ids:  # each was seen finished (its record existed) ...
        daemon.wait_state(j, {"completed", "failed"})
    r = redis_of(daemon)  # ... and goes once its retention has passed
    deadline = time.monotonic() + 90
    while any(r.exists(f"gpuq:job:{j}", f"gpuq:job:{j}:events") for j in ids):
        assert time.monotonic() < deadline, "finished jobs were not deleted after their retention"
        time.sleep(0.5)
    assert r.zcard("gpuq:jobs:finished") == 0
    listed = {j["id"] for j in daemon.cli("status", "--all", "--json").json()["jobs"]}
    assert not listed & set(ids)
    assert "no job" in _one_sentence(daemon.cli("status", str(ids[0])).err)
    acct = daemon.cli("usage", "--json", user=alice).json()["accounting"][alice]
    assert acct["jobs"] == 4 and acct["jobs_completed"] == 3 and acct["jobs_failed"] == 1


# ---- 7.5: never a 0 MiB reservation ------------------------------------------------------------------


def test_tiny_gpu_memory_requests_reserve_the_stated_minimum(daemon, open_tmp, test_users):
    alice, _ = test_users
    a_dir = user_dir(open_tmp, alice)
    j1 = daemon.submit("--fraction", "1e-300", "--", "sleep", "30", user=alice, cwd=a_dir)
    r = daemon.cli("submit", "-q", "--gpu-mem", "1MiB", "--", "sleep", "30", user=alice, cwd=a_dir)
    assert r.rc == 0 and "rounded up to the smallest reservation, 256 MiB" in r.err, r.err
    j2 = int(r.out)
    for j in (j1, j2):
        job = daemon.wait_state(j, "running")
        assert job["placement"]["reserved_mib"] == [256], job
    assert daemon.job(j2)["spec"]["resources"]["mem_mib"] == 256
    gpus = daemon.cli("status", "--json").json()["nodes"][0]["gpus"]
    assert sum(g["reserved_mib"] for g in gpus) == 512
    daemon.cli("cancel", str(j1), str(j2), user=alice)


# ---- 7.6: other users' data displayed safely ---------------------------------------------------------

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil"


def _assert_terminal_safe(text: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "\u202e", "\x00"):
        assert bad not in text, repr(text)


def test_hostile_names_argv_progress_and_garbage_cannot_crash_status_or_reach_a_terminal(daemon, open_tmp,
                                                                                         test_users):
    alice, bob = test_users
    a_dir = user_dir(open_tmp, alice)
    alice_uid = pwd.getpwnam(alice).pw_uid
    # through the front door: control characters in argv are data; in a name they are refused
    j = daemon.submit("--gpus", "0", "--", "sh", "-c", "sleep 30", HOSTILE, user=alice, cwd=a_dir,
                      env={"EVIL": HOSTILE})
    r = daemon.cli("submit", "--name", "a\x1b[31mb", "--gpus", "0", "--", "true", user=alice, cwd=a_dir)
    assert "control characters" in _one_sentence(r.err)
    # a lone surrogate (raw API: the CLI cannot even send one) is refused with a sentence
    reply = api_as(alice, daemon.home / "gpuq.sock", "POST", "/v1/jobs",
                   raw='{"argv": ["echo", "\\ud800"], "cwd": "/tmp", "gpus": 0}')
    assert reply["status"] == 400 and "not valid UTF-8" in json.loads(reply["body"])["error"], reply
    # through the back door (an old gpuq, a bug, garbage): records the API would never accept
    r = redis_of(daemon)
    now = time.time()
    owner = {"uid": alice_uid, "gid": alice_uid, "user": alice, "groups": []}
    held = {"v": 1, "id": 9001, "state": "held", "submitted_at": now, "owner": owner,
            "spec": {"argv": ["/bin/echo", HOSTILE, "\ud800"], "cwd": "/tmp/\x1b[31mred", "name": HOSTILE,
                     "env": {"X": "\ud800"}, "resources": {"gpus": 0}}}
    running = {"v": 1, "id": 9002, "state": "running", "submitted_at": now, "owner": owner,
               "spec": {"argv": ["/bin/sleep", "1"], "cwd": "/tmp", "resources": {"gpus": 1}},
               "placement": {"node": "elsewhere", "gpu_uuids": ["GPU-x"], "gpu_indices": [0], "reserved_mib": [1],
                             "limit_mib": [None], "gpu_total_mib": [1024]},
               "placed_at": now, "started_at": now, "pid": 1}
    r.set("gpuq:job:9001", json.dumps(held))
    r.set("gpuq:job:9002", json.dumps(running)[:-1] + ', "progress": {"step": NaN, "loss": Infinity, '
                                                           '"eta_s": -Infinity, "total": 1e999}}')
    r.sadd("gpuq:jobs:active", 9001, 9002)
    r.hset("gpuq:reasons", "9001", HOSTILE)
    daemon.wait_state(j, "running")

    for user in (bob, alice, None):
        for args in (["status"], ["status", "--all"], ["status", str(j)], ["status", "9001"], ["status", "9002"]):
            out = daemon.cli(*args, user=user)
            assert out.rc == 0, (args, out.err)
            _assert_terminal_safe(out.out + out.err)
        for args in (["status", "--json"], ["status", "--all", "--json"], ["status", "9002", "--json"]):
            out = daemon.cli(*args, user=user)
            assert out.rc == 0, out.err
            strict_json(out.out)  # no NaN, no Infinity
            _assert_terminal_safe(out.out)
    shown = daemon.cli("status", user=bob).out
    assert "\\x1b[2J" in shown  # shown, as visible escapes
    as_bob = daemon.job(j, user=bob)
    assert "env" not in as_bob["spec"] and HOSTILE in as_bob["spec"]["argv"]  # data, escaped at display
    daemon.cli("cancel", str(j), user=alice)


def test_absurd_values_get_a_clear_error(daemon, open_tmp):
    for args, needle in ((["--time-limit", "9" * 400], "too long"), (["--gpu-mem", "9" * 400], "too long"),
                         (["--time-limit", "99999999d"], "longer than a year"),
                         (["--gpu-mem", "99999999TiB"], "larger than any"), (["--gpus", "9" * 30], "out of range"),
                         (["--fraction", "nan"], "out of range"), (["--fraction", "inf"], "out of range"),
                         (["--fraction", "1e-400"], "out of range"), (["--priority", "-" + "9" * 30], "out of range")):
        r = daemon.cli("submit", *args, "--", "true", cwd=open_tmp)
        assert needle in _one_sentence(r.err), (args, r.err)
    assert daemon.cli("status", "9" * 400).rc != 0 and "Traceback" not in daemon.cli("status", "9" * 400).err


def test_whether_users_see_each_others_commands_is_configurable(open_tmp, make_daemon, test_users):
    alice, bob = test_users
    a_dir = user_dir(open_tmp, alice)
    home = open_tmp / "home"
    write_config(home, "[daemon]\nshow_others_commands = false\n")
    daemon = make_daemon("--simulate-gpus", "1x8GiB", "--node", "testnode", home=home)
    j = daemon.submit("--gpus", "0", "--", "sh", "-c", "sleep 30", "x", "--secret-arg", user=alice, cwd=a_dir)
    daemon.wait_state(j, "running")
    for args in (["status"], ["status", "--json"], ["status", str(j)], ["status", str(j), "--json"]):
        out = daemon.cli(*args, user=bob).out
        assert "--secret-arg" not in out and str(a_dir) not in out, out
    assert "(hidden)" in daemon.cli("status", str(j), user=bob).out
    assert "--secret-arg" in daemon.cli("status", str(j), user=alice).out
    assert "--secret-arg" in daemon.cli("status", str(j)).out  # root sees everything
    daemon.cli("cancel", str(j))


# ---- 8.4: a record that cannot be read is set aside, never breaks the queue ------------------------


def test_unreadable_records_are_set_aside_and_the_queue_goes_on(daemon, open_tmp, test_users):
    alice, bob = test_users
    a_dir = user_dir(open_tmp, alice)
    r = redis_of(daemon)
    r.set("gpuq:job:9100", "{not json")
    r.set("gpuq:job:9101", json.dumps({"v": 1, "id": 9101, "state": "pending", "submitted_at": 1.0,
                                       "owner": {"uid": 0, "gid": 0, "user": "root"}, "spec": {"argv": []}}))
    r.set("gpuq:job:9102", json.dumps({"v": 1, "id": 9102, "state": "pending", "submitted_at": 1.0,
                                       "owner": {"uid": 0, "gid": 0, "user": "root"},
                                       "spec": {"argv": ["x"], "resources": {"gpus": "many"}}}))
    r.sadd("gpuq:jobs:active", 9100, 9101, 9102, "garbage")
    r.zadd("gpuq:jobs:finished", {"9100": 1.0})

    for user in (bob, None):
        out = daemon.cli("status", user=user)
        assert out.rc == 0, out.err
        assert "could not be read and were set aside" in out.out and "9101" in out.out
    aside = {a["id"]: a for a in daemon.cli("status", "--json").json()["set_aside"]}
    assert set(aside) == {"9100", "9101", "9102"}
    assert aside["9100"]["raw"] == "{not json" and "JSON" in aside["9100"]["error"]
    assert "raw" not in daemon.cli("status", "--json", user=bob).json()["set_aside"][0]
    assert not r.exists("gpuq:job:9101") and not r.sismember("gpuq:jobs:active", 9101)
    assert r.hexists("gpuq:quarantine", "9102")
    assert "no job 9101" in _one_sentence(daemon.cli("status", "9101").err)
    # the scheduler loop kept going: a new job runs to completion
    j = daemon.submit("--gpus", "0", "--", "true", user=alice, cwd=a_dir)
    assert daemon.wait_state(j, {"completed", "failed"})["state"] == "completed"
    # a record that goes bad while a job is queued is set aside when next read, with a clear sentence
    j2 = daemon.submit("--gpus", "0", "--", "true", user=alice, cwd=a_dir)
    daemon.wait_state(j2, "completed")
    r.set(f"gpuq:job:{j2}", json.dumps({"id": j2, "state": "completed"}))
    err = _one_sentence(daemon.cli("status", str(j2), user=alice).err)
    assert "set aside" in err, err
    assert daemon.cli("status", "--all", user=alice).rc == 0


# ---- 8.4: a nearly full state directory refuses new submissions, then recovers --------------------


def test_nearly_full_state_directory_refuses_submissions_then_recovers(open_tmp, make_daemon, test_users):
    alice, _ = test_users
    a_dir = user_dir(open_tmp, alice)
    home = open_tmp / "home"
    home.mkdir()
    st = os.statvfs(home)
    free_mib = st.f_bavail * st.f_frsize // (1024 * 1024)
    write_config(home, f'[daemon]\nmin_free_space = "{max(free_mib - 1024, 1)}MiB"\n')
    daemon = make_daemon("--simulate-gpus", "1x8GiB", "--node", "testnode", home=home)
    ok = daemon.submit("--gpus", "0", "--", "true", user=alice, cwd=a_dir)
    filler = home / "logs" / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, 2048 * 1024 * 1024)  # 2 GiB: the directory is now "nearly full"
    finally:
        os.close(fd)
    try:
        r = daemon.cli("submit", "--gpus", "0", "--", "true", user=alice, cwd=a_dir)
        err = _one_sentence(r.err)
        assert "new jobs are refused until space is freed" in err, err
        assert daemon.cli("status", user=alice).rc == 0  # the queue itself goes on
        assert daemon.wait_state(ok, {"completed", "failed"})["state"] == "completed"
    finally:
        filler.unlink()
    j = daemon.submit("--gpus", "0", "--", "true", user=alice, cwd=a_dir)  # recovered by itself
    assert daemon.wait_state(j, {"completed", "failed"})["state"] == "completed"

