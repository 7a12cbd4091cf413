"""Two real Linux users against a root daemon: ownership, authorisation, privacy."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def _user_dir(base: Path, user: str) -> Path:
    pw = pwd.getpwnam(user)
    d = base / user
    d.mkdir()
    shutil.copy(HERE / "jobscript.py", d / "jobscript.py")
    for p in (d, d / "jobscript.py"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


def test_each_job_runs_as_its_owner_and_only_the_owner_may_change_it(daemon, open_tmp, test_users):
    alice, bob = test_users
    a_dir, b_dir = _user_dir(open_tmp, alice), _user_dir(open_tmp, bob)
    a_uid, b_uid = pwd.getpwnam(alice).pw_uid, pwd.getpwnam(bob).pw_uid

    ja = daemon.submit("jobscript.py", "r.json", "30", user=alice, cwd=a_dir,
                       env={"SECRET_TOKEN": "alice-only"})
    jb = daemon.submit("--gpu-mem", "1GiB", "jobscript.py", "r.json", "0.2", user=bob, cwd=b_dir)
    daemon.wait_state(ja, "running")

    # bob cannot cancel, hold or requeue alice's job; it keeps running
    for verb in ("cancel", "hold", "requeue"):
        r = daemon.cli(verb, str(ja), user=bob)
        assert r.rc != 0
        assert f"job {ja} belongs to {alice}" in r.err and "Traceback" not in r.err
        assert len(r.err.strip().splitlines()) == 1
    assert daemon.job(ja)["state"] == "running"

    # anyone sees the queue, nobody sees another user's environment or log
    seen_by_bob = daemon.job(ja, user=bob)
    assert seen_by_bob["owner"]["user"] == alice
    assert "env" not in seen_by_bob["spec"]
    assert daemon.job(ja, user=alice)["spec"]["env"]["SECRET_TOKEN"] == "alice-only"
    assert "alice-only" not in daemon.cli("status", "--json", user=bob).out
    r = daemon.cli("logs", str(ja), user=bob)
    assert r.rc != 0 and "only its owner or root" in r.err

    # each job ran as its owner, in its owner's directory; its log belongs to its owner
    daemon.wait_state(jb, "completed")
    rb = json.loads((b_dir / "r.json").read_text())
    assert rb["uid"] == b_uid and rb["cwd"] == str(b_dir)
    log = daemon.home / "logs" / f"{jb}.log"
    assert log.stat().st_uid == b_uid
    ckpt = Path(rb["ckpt"])
    assert ckpt.stat().st_uid == b_uid and (ckpt.stat().st_mode & 0o777) == 0o700

    # the owner may cancel; root may cancel anyone's job
    r = daemon.cli("cancel", str(ja), user=alice)
    assert r.rc == 0, r.err
    daemon.wait_state(ja, "cancelled", timeout=30)
    ja2 = daemon.submit("--gpus", "0", "--", "sleep", "30", user=alice, cwd=a_dir)
    daemon.wait_state(ja2, "running")
    assert daemon.cli("cancel", str(ja2)).rc == 0  # as root
    daemon.wait_state(ja2, "cancelled", timeout=30)
    assert (daemon.home / "logs" / f"{ja}.log").stat().st_uid == a_uid


def test_ordinary_users_cannot_reach_redis(daemon, test_users):
    alice, _ = test_users
    redis_dir = daemon.home / "redis"
    assert (redis_dir.stat().st_mode & 0o777) == 0o700
    pw = pwd.getpwnam(alice)
    import subprocess
    import sys

    probe = ("import redis,sys\n"
             f"r = redis.Redis(unix_socket_path={str(redis_dir / 'redis.sock')!r})\n"
             "try:\n    r.ping(); print('REACHED')\nexcept Exception as e:\n    print('REFUSED', type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", probe], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                         capture_output=True, text=True, cwd="/tmp").stdout
    assert out.startswith("REFUSED"), out


def test_single_user_daemon_refuses_other_users(make_daemon, open_tmp, test_users):
    """A daemon run by an ordinary user serves only that user."""
    alice, bob = test_users
    import subprocess

    pw = pwd.getpwnam(alice)
    home = open_tmp / "alice-home"
    home.mkdir()
    os.chown(home, pw.pw_uid, pw.pw_gid)
    from tests.conftest import GPUQ, run_cli

    env = {"PATH": f"{Path(GPUQ).parent}:/usr/bin:/bin", "GPUQ_HOME": str(home / "state"), "HOME": pw.pw_dir}
    proc = subprocess.Popen([GPUQ, "daemon", "--simulate-gpus", "1x8GiB", "--node", "solo"], env=env,
                            user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while run_cli(home / "state", "status", user=alice).rc != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.chmod(home / "state", 0o755)
        r = run_cli(home / "state", "submit", "--gpus", "0", "--", "true", user=bob, cwd=Path("/tmp"))
        assert r.rc != 0 and "single-user install" in r.err and "Traceback" not in r.err
        r = run_cli(home / "state", "submit", "-q", "--gpus", "0", "--", "true", user=alice, cwd=Path("/tmp"))
        assert r.rc == 0, r.err
    finally:
        proc.terminate()
        proc.wait(30)
