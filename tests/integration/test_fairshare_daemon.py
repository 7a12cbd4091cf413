"""The scheduling policy as the daemon applies it: preemption of checkpointable jobs for a user
below their share, `gpuq usage`, and per-user limits — with two real Linux users."""

from __future__ import annotations

import os
import pwd
import time

import pytest

pytestmark = pytest.mark.integration


def _user_dir(base, user):
    pw = pwd.getpwnam(user)
    d = base / user
    d.mkdir()
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def test_preemption_usage_and_limits(make_daemon, open_tmp, test_users):
    alice, bob = test_users
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "5s", "--node", "fs", start=False)
    d.home.mkdir(parents=True)
    (d.home / "config.toml").write_text(
        "[scheduler]\n"
        'policy = "default"\n'
        'preemption = "checkpointable"\n'
        'preempt_wait = "1s"\n'
        'min_run = "1s"\n'
        "max_pending = 2\n"
    )
    d.start()
    a_dir, b_dir = _user_dir(open_tmp, alice), _user_dir(open_tmp, bob)
    trainer = a_dir / "train.sh"
    trainer.write_text(
        "#!/bin/sh\n"
        "trap 'echo checkpointed; exit 75' TERM\n"
        'echo "run $GPUQ_RESTART_COUNT"\n'
        'if [ "$GPUQ_RESTART_COUNT" -gt 0 ]; then exit 0; fi\n'
        "sleep 120 &\n"
        "wait\n"
    )
    trainer.chmod(0o755)
    os.chown(trainer, pwd.getpwnam(alice).pw_uid, pwd.getpwnam(alice).pw_gid)

    ja = d.submit("--checkpointable", "--", "./train.sh", user=alice, cwd=a_dir)
    d.wait_state(ja, "running")
    time.sleep(1.5)  # alice's job has run past min_run and used GPU time
    jb = d.submit("--", "sh", "-c", "echo bob ran", user=bob, cwd=b_dir)

    # bob (no usage, below his share) waited past preempt_wait while only alice held the GPU:
    # alice's checkpointable job is preempted, bob runs, then alice's job resumes and completes
    d.wait_state(jb, "completed", timeout=60)
    job_a = d.wait_state(ja, "completed", timeout=60)
    events = [e["text"] for e in job_a["events"]]
    assert any(e.startswith("preempted") for e in events), events
    assert "pending: requeued (preempt)" in events, events
    assert job_a["requeues"] == 1
    log = d.cli("logs", str(ja), user=alice).out
    assert "run 0" in log and "checkpointed" in log and "run 1" in log
    b_start = [e["at"] for e in d.job(jb)["events"] if e["text"].startswith("started pid")][0]
    a_restart = [e["at"] for e in job_a["events"] if e["text"].startswith("started pid")][1]
    assert b_start <= a_restart

    # gpuq usage shows both users, alice with more decayed usage than bob
    rows = {r["user"]: r for r in d.cli("usage", "--json").json()["users"]}
    assert {alice, bob} <= set(rows)
    assert rows[alice]["usage_gpu_s"] > rows[bob]["usage_gpu_s"] >= 0
    assert rows[alice]["fairshare_factor"] < rows[bob]["fairshare_factor"]
    table = d.cli("usage").out
    assert alice in table and bob in table

    # per-user pending limit: a third pending job is refused at submit, with a clear sentence
    blocker = d.submit("--", "sleep", "30", user=bob, cwd=b_dir)
    d.wait_state(blocker, "running")
    p1 = d.submit("--", "true", user=alice, cwd=a_dir)
    p2 = d.submit("--", "true", user=alice, cwd=a_dir)
    r = d.cli("submit", "--", "true", user=alice, cwd=a_dir)
    assert r.rc != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "limit is 2" in r.err, r.err
    assert d.cli("cancel", str(blocker), str(p1), str(p2)).rc == 0

    # priority orders jobs across users, so only root may raise it; anyone may lower it
    r = d.cli("submit", "--priority", "5", "--", "true", user=alice, cwd=a_dir)
    assert r.rc != 0 and "only root" in r.err, r.err
    assert d.cli("submit", "-q", "--priority", "-5", "--", "true", user=alice, cwd=a_dir).rc == 0
