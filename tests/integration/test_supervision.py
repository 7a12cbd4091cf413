"""Jobs that outlive the daemon, and what happens when their supervisor does not: real daemon
(SIMULATED GPUs), real embedded Redis, real CLI, real Linux users, real cgroups."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import process_alive

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def _config(dir_: Path, daemon: str = "", scheduler: str = "") -> Path:
    p = dir_ / "config.toml"
    p.write_text(f"[daemon]\n{daemon}\n[scheduler]\n{scheduler}\n")
    return p



def _supervisor_of(d, job_id: int) -> int:
    rec = json.loads((d.home / "supervisors" / f"{job_id}.json").read_text())
    return rec["pid"]


def _wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


def _events(d, job_id: int) -> list[str]:
    return [e["text"] for e in d.job(job_id)["events"]]


ESCAPE = (  # a job that leaves its session and process group, then waits
    "#!/bin/sh\n"
    "setsid sh -c 'echo $$ > escaped.pid; exec sleep 600' &\n"
    "set -m; (sleep 600 & echo $! > bg.pid; wait) &\n"
    "echo $$ > main.pid\n"
    "sleep 600\n"
)


def _escape_script(dir_: Path) -> None:
    p = dir_ / "escape.sh"
    p.write_text(ESCAPE)
    p.chmod(0o755)


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_cancel_kills_processes_that_left_the_session(make_daemon, open_tmp, mode):
    cfg = _config(open_tmp, f'cgroups = "{mode}"')
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "1s", "--node", f"esc{mode}", "--config", str(cfg))
    assert f"cgroup {mode}" in d.cli("status", "--json").json()["nodes"][0]["containment"]
    _escape_script(open_tmp)
    j = d.submit("--gpus", "0", "--", "./escape.sh", cwd=open_tmp)
    escaped = int(_wait_file(open_tmp / "escaped.pid"))
    bg = int(_wait_file(open_tmp / "bg.pid"))
    assert process_alive(escaped) and process_alive(bg)
    assert d.cli("cancel", str(j)).rc == 0
    d.wait_state(j, "cancelled", timeout=30)
    assert not process_alive(escaped), "a process that called setsid survived the cancel"
    assert not process_alive(bg), "a process in its own process group survived the cancel"


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_a_daemon_stopped_with_nothing_running_leaves_no_cgroup_directory(make_daemon, open_tmp, mode):
    """Its scope (``gpuq/<node>.<store id>``) goes with it, unless a job still runs in it."""
    node = f"tidy{mode}{os.getpid()}"
    cfg = _config(open_tmp, f'cgroups = "{mode}"')
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "1s", "--node", node, "--config", str(cfg))
    j = d.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    d.wait_state(j, "completed", timeout=30)
    scopes = list(Path("/sys/fs/cgroup").glob(f"*/gpuq/{node}.*"))
    assert scopes, "the job ran without a cgroup scope"
    running = d.submit("--gpus", "0", "--", "sleep", "600", cwd=open_tmp)
    d.wait_pid(running)
    assert d.stop() == 0  # plain SIGTERM: the job keeps running, so its scope stays
    assert all(s.is_dir() for s in scopes)
    d.start()
    assert d.cli("cancel", str(running)).rc == 0
    d.wait_state(running, "cancelled", timeout=30)
    deadline = time.monotonic() + 10  # its supervisor removes the job's cgroup as it leaves
    while any(s.is_dir() and any(s.glob("job-*")) for s in scopes):
        assert time.monotonic() < deadline, [list(s.iterdir()) for s in scopes]
        time.sleep(0.1)
    assert d.stop() == 0
    assert not [s for s in scopes if s.exists()], "the stopped daemon left its cgroup directory behind"


def test_without_cgroups_the_log_and_status_say_so(make_daemon, open_tmp):
    cfg = _config(open_tmp, 'cgroups = "off"')
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "nocg", "--config", str(cfg))
    assert d.log.read_text().count("cgroups unavailable") == 1
    assert "cgroups unavailable" in d.cli("status").out
    j = d.submit("--gpus", "0", "--", "sleep", "600", cwd=open_tmp)
    pid = d.wait_pid(j)
    assert d.cli("cancel", str(j)).rc == 0  # the process-group fallback still stops the job
    d.wait_state(j, "cancelled", timeout=30)
    assert not process_alive(pid)


def test_killed_supervisor_is_noticed_and_its_job_stopped(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "2x24GiB", "--grace", "1s", "--node", "supkill")
    _escape_script(open_tmp)
    plain = d.submit("--gpus", "0", "--", "./escape.sh", cwd=open_tmp)
    escaped = int(_wait_file(open_tmp / "escaped.pid"))
    main = d.wait_pid(plain)
    sup = _supervisor_of(d, plain)
    os.kill(sup, signal.SIGKILL)
    t0 = time.monotonic()
    job = d.wait_state(plain, "failed", timeout=15)
    assert time.monotonic() - t0 < 5  # one probe interval (1 s) plus the machine's load
    assert "supervisor" in job["end_reason"] and "died" in job["end_reason"]
    assert any("supervisor" in e for e in _events(d, plain))
    assert not process_alive(escaped) and not process_alive(main)

    # a checkpointable job goes back to the queue instead, and runs again
    (open_tmp / "ck.sh").write_text("#!/bin/sh\n[ -f again ] && exit 0\ntouch again\nsleep 600\n")
    (open_tmp / "ck.sh").chmod(0o755)
    ck = d.submit("--checkpointable", "--gpus", "1", "--", "./ck.sh", cwd=open_tmp)
    d.wait_pid(ck)
    os.kill(_supervisor_of(d, ck), signal.SIGKILL)
    job = d.wait_state(ck, "completed", timeout=30)
    assert job["requeues"] == 1
    assert any("requeued (checkpointable)" in e for e in _events(d, ck))


def test_acknowledged_cancel_survives_a_daemon_crash(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "3s", "--node", "ack")
    (open_tmp / "stubborn.sh").write_text("#!/bin/sh\ntrap '' TERM\nwhile true; do sleep 0.1; done\n")
    (open_tmp / "stubborn.sh").chmod(0o755)
    j = d.submit("--checkpointable", "--", "./stubborn.sh", cwd=open_tmp)
    pid = d.wait_pid(j)
    assert d.cli("cancel", str(j)).rc == 0
    d.proc.send_signal(signal.SIGKILL)  # inside the grace period
    d.proc.wait(10)
    d.start()
    job = d.wait_state(j, "cancelled", timeout=30)
    assert not process_alive(pid)
    assert sum(1 for e in job["events"] if e["text"].startswith("started pid")) == 1, "the cancelled job ran again"


def test_drain_stops_and_requeues_while_plain_sigterm_leaves_jobs_running(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "1s", "--node", "drain", "--drain")
    j = d.submit("--checkpointable", "--", "sleep", "600", cwd=open_tmp)
    pid = d.wait_pid(j)
    assert d.stop() == 0
    assert not process_alive(pid)
    d.args = [a for a in d.args if a != "--drain"]
    d.start()
    job = d.job(j)
    assert job["requeues"] == 1 and any("drain" in e for e in _events(d, j)), job
    pid2 = d.wait_pid(j)
    assert pid2 != pid


def test_cwd_is_entered_only_as_the_user(daemon, open_tmp, test_users):
    alice, bob = test_users
    b = pwd.getpwnam(bob)
    private = open_tmp / "bob-private"
    private.mkdir()
    (private / "secret.txt").write_text("bob's secret\n")
    os.chown(private, b.pw_uid, b.pw_gid)
    os.chown(private / "secret.txt", b.pw_uid, b.pw_gid)
    blocker = daemon.submit("--gpus", "2", "--", "sleep", "600", cwd=open_tmp)
    daemon.wait_state(blocker, "running")
    # open at submit time, private when the job starts: only the start can refuse it
    j = daemon.submit("--gpus", "1", "--", "cat", "secret.txt", user=alice, cwd=private)
    private.chmod(0o700)
    assert daemon.cli("cancel", str(blocker)).rc == 0
    job = daemon.wait_state(j, "failed", timeout=30)
    assert "cannot enter the working directory" in job["end_reason"] and alice in job["end_reason"], job
    assert "bob's secret" not in daemon.cli("logs", str(j), user=alice).out


def test_nan_and_garbage_progress_never_crash_the_supervisor(daemon, open_tmp):
    (open_tmp / "prog.sh").write_text(
        "#!/bin/sh\n"
        "printf '{\"step\": NaN, \"total\": Infinity, \"loss\": -Infinity}' > \"$GPUQ_PROGRESS_FILE\"\n"
        "sleep 3\n"
        "printf '{\"step\": 1e400, \"epoch\": \"x\"}' > \"$GPUQ_PROGRESS_FILE\"\n"
        "sleep 3\n"
        "printf '{\"step\": 7, \"total\": 10}' > \"$GPUQ_PROGRESS_FILE\"\n"
        "sleep 600\n")
    (open_tmp / "prog.sh").chmod(0o755)
    j = daemon.submit("--gpus", "0", "--", "./prog.sh", cwd=open_tmp)
    daemon.wait_state(j, "running")
    deadline = time.monotonic() + 60
    while (daemon.job(j).get("progress") or {}).get("step") != 7:
        assert time.monotonic() < deadline, daemon.job(j)
        assert daemon.job(j)["state"] == "running"
        time.sleep(0.2)
    assert daemon.cli("cancel", str(j)).rc == 0
    daemon.wait_state(j, "cancelled", timeout=30)
    assert json.loads(daemon.cli("status", "--json").out)  # valid JSON throughout


def test_bad_start_ends_failed_with_the_reason(daemon, open_tmp):
    blocker = daemon.submit("--gpus", "2", "--", "sleep", "600", cwd=open_tmp)
    daemon.wait_state(blocker, "running")
    prog = open_tmp / "vanishing-program"
    prog.write_text("#!/bin/sh\ntrue\n")
    prog.chmod(0o755)
    j = daemon.submit("--gpus", "1", "--", "./vanishing-program", cwd=open_tmp)
    prog.unlink()  # there at submit time, gone when the job starts
    assert daemon.cli("cancel", str(blocker)).rc == 0
    job = daemon.wait_state(j, "failed", timeout=30)
    assert "could not start" in job["end_reason"] and "vanishing-program" in job["end_reason"], job


def test_job_starts_with_default_signals_in_its_own_session(daemon, open_tmp):
    """The supervisor ignores SIGINT, SIGHUP and SIGPIPE; the job must not inherit that (a job
    that ignores SIGINT or SIGPIPE behaves unlike the same command in a shell)."""
    j = daemon.submit("--gpus", "0", "--", "sh", "-c",
                      "echo $$ $(cut -d' ' -f5,6 /proc/$$/stat) > ids.txt; "
                      # grep reads its own status: what it inherited through exec (a shell's own
                      # mask is not stable to read from outside: it blocks signals around forks)
                      "exec grep -E '^(SigIgn|SigBlk)' /proc/self/status > sigs.txt", cwd=open_tmp)
    daemon.wait_state(j, "completed", timeout=30)
    sigs = dict(line.split(":") for line in (open_tmp / "sigs.txt").read_text().split("\n") if line)
    assert {k: v.strip() for k, v in sigs.items()} == {"SigIgn": "0" * 16, "SigBlk": "0" * 16}
    pid, pgid, sid = (open_tmp / "ids.txt").read_text().split()
    assert pid == pgid == sid  # its own session and process group: one signal reaches all of it


def test_job_log_is_capped_keeping_the_newest_part(make_daemon, open_tmp):
    cfg = _config(open_tmp, 'log_cap = "1MiB"')
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "logcap", "--config", str(cfg))
    j = d.submit("--gpus", "0", "--", "python3", "-c",
                 "import sys\nfor i in range(60000): print(f'line {i:06d} ' + 'x' * 40)\n", cwd=open_tmp)
    d.wait_state(j, "completed", timeout=60)
    log = (d.home / "logs" / f"{j}.log").read_bytes()
    assert len(log) <= 1024 * 1024 + 4096
    assert b"the oldest" in log and b"line 059999" in log and b"line 000001 " not in log


def test_cpu_slots_are_bounded_and_a_gpu_job_still_gets_a_worker_at_once(make_daemon, open_tmp):
    cfg = _config(open_tmp, "cpu_slots = 2", "max_cpu_jobs = 10")
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "slots", "--config", str(cfg))
    cpu = [d.submit("--gpus", "0", "--", "sleep", "600", cwd=open_tmp) for _ in range(5)]
    deadline = time.monotonic() + 30
    while sum(1 for j in cpu if d.job(j)["state"] == "running") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)
    states = [d.job(j) for j in cpu]
    assert sum(1 for j in states if j["state"] == "running") == 2
    assert any(j.get("reason") == "all 2 CPU slots busy" for j in states), states
    g = d.submit("--gpus", "1", "--", "true", cwd=open_tmp)
    job = d.wait_state(g, "completed", timeout=30)
    at = {e["text"].split(" ")[0]: e["at"] for e in job["events"]}
    assert at["worker"] - at["placed"] < 1.0, job["events"]  # a worker claimed it within 1 s
    for j in cpu:
        d.cli("cancel", str(j))


def test_gpu_memory_overuse_warns_then_kills(make_daemon, open_tmp):
    cfg = _config(open_tmp, 'overuse = "kill"\noveruse_grace = "10s"')  # time to look before the kill
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "1s", "--node", "over", "--config", str(cfg))
    j = d.submit("--gpu-mem", "2GiB", "--", "python3", "-m", "gpuq.workers.simgpu", "hold", "--mib", "6144",
                 "--seconds", "600", cwd=open_tmp, env={"PYTHONPATH": str(Path(__file__).parents[2])})
    deadline = time.monotonic() + 30
    while not any("over-use" in e for e in _events(d, j)):
        assert time.monotonic() < deadline, _events(d, j)
        time.sleep(0.2)
    assert "Warning: job" in d.cli("status").out
    st = d.cli("status", "--json").json()
    node = st["nodes"][0]
    assert any("uses 6.0 GiB" in w and "reserved 2.0 GiB" in w for w in node["warnings"]), node
    assert node["gpus"][0]["overuse_mib"] == 4096
    warned = next(x for x in st["jobs"] if x["id"] == j)
    assert "reserved 2.0 GiB" in warned.get("warning", ""), warned
    job = d.wait_state(j, "cancelled", timeout=30)
    assert "over-use of GPU memory" in job["end_reason"], job


def test_device_access_only_to_the_jobs_own_gpu(make_daemon, open_tmp):
    """cgroup v1 devices: GPU i of a SIMULATED node stands for /dev/nvidia<i> (char 195:i)."""
    devdir = open_tmp / "dev"
    devdir.mkdir()
    for i in (0, 1):
        os.mknod(devdir / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(195, i))
    cfg = _config(open_tmp, 'cgroups = "v1"')
    d = make_daemon("--simulate-gpus", "2x24GiB", "--node", "devs", "--config", str(cfg))
    probe = ("import errno,os,json,sys\nr={}\nfor i in (0,1):\n"
             "    try: os.open(f'dev/nvidia{i}', os.O_RDWR); r[i]='opened'\n"
             "    except OSError as e: r[i]=errno.errorcode[e.errno]\n"
             "print(json.dumps(r)); open('devs.json','w').write(json.dumps(r))\n")
    j = d.submit("--gpus", "1", "--", "python3", "-c", probe, cwd=open_tmp)
    job = d.wait_state(j, "completed", timeout=30)
    seen = json.loads((open_tmp / "devs.json").read_text())
    mine = int(next(e for e in _events(d, j) if e.startswith("placed on")).rsplit(" ", 1)[-1])
    other = 1 - mine
    assert seen[str(other)] == "EPERM", seen  # the cgroup refuses the other GPU
    assert seen[str(mine)] != "EPERM", seen  # its own is let through (no driver here: ENXIO)


def test_reused_embedded_redis_that_dies_is_restarted(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "reuse")
    j = d.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    d.wait_state(j, "completed")
    d.proc.send_signal(signal.SIGKILL)  # the embedded redis-server outlives it (own session)
    d.proc.wait(10)
    d.start()
    assert "restart" not in d.log.read_text().split("gpuq daemon up")[-1]
    pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "cmdline").exists()
               and b"redis-server" in (p / "cmdline").read_bytes()
               and str(d.home).encode() in (p / "cmdline").read_bytes())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "starting it again on the same data" not in d.log.read_text():
        assert time.monotonic() < deadline, d.log.read_text()[-2000:]
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while d.cli("status").rc != 0:
        assert time.monotonic() < deadline, d.log.read_text()[-3000:]
        time.sleep(0.2)
    j2 = d.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    d.wait_state(j2, "completed", timeout=30)
    assert d.job(j)["state"] == "completed"


def test_a_supervisor_whose_store_and_state_directory_are_gone_leaves(make_daemon, open_tmp):
    """A supervisor waits for ever for Redis to come back, except when the daemon's state
    directory is gone too (the install was purged): then nothing will ever read its record."""
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "purged")
    j = d.submit("--gpus", "0", "--", "sleep", "2", cwd=open_tmp)
    d.wait_state(j, "running")
    d.wait_pid(j)
    sup = _supervisor_of(d, j)
    redis_pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "cmdline").exists()
                     and b"redis-server" in (p / "cmdline").read_bytes()
                     and str(d.home).encode() in (p / "cmdline").read_bytes())
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    os.kill(redis_pid, signal.SIGKILL)
    shutil.rmtree(d.home)
    deadline = time.monotonic() + 30  # the job ends after 2 s; one failed write later, it leaves
    while process_alive(sup):
        assert time.monotonic() < deadline, "the supervisor is still retrying a store that is gone"
        time.sleep(0.2)


def test_a_lost_node_has_its_jobs_requeued_and_its_stale_processes_fenced(redis_server, make_daemon, open_tmp):
    cfg = _config(open_tmp, 'node_lost_timeout = "3s"\nnode_ttl = "2s"')
    a = make_daemon("--simulate-gpus", "1x16GiB", "--node", "keep", "--redis-url", redis_server, "--config", str(cfg))
    b = make_daemon("--simulate-gpus", "1x16GiB", "--node", "lose", "--redis-url", redis_server, "--config", str(cfg),
                    "--grace", "1s")
    shutil.copy(HERE / "jobscript.py", open_tmp / "jobscript.py")
    blocker = a.submit("--gpus", "1", "--", "sleep", "600", cwd=open_tmp)
    a.wait_state(blocker, "running")
    assert a.job(blocker)["placement"]["node"] == "keep"  # equal nodes: the first by name is chosen
    j = a.submit("--checkpointable", "--gpus", "1", "--", "sleep", "600", cwd=open_tmp)
    job = a.wait_state(j, "running")
    assert job["placement"]["node"] == "lose"
    old_pid = a.wait_pid(j)
    os.kill(b.proc.pid, signal.SIGSTOP)  # the node goes silent (its supervisor still runs)
    try:
        deadline = time.monotonic() + 40
        while a.job(j)["requeues"] < 1:
            assert time.monotonic() < deadline, a.job(j)
            time.sleep(0.2)
        assert any("stopped reporting" in e for e in _events(a, j))
        deadline = time.monotonic() + 15
        while process_alive(old_pid):  # the stale run's own supervisor sees it is no longer current
            assert time.monotonic() < deadline, "the stale process of the lost node kept running"
            time.sleep(0.1)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    a.cli("cancel", str(blocker))
    job = a.wait_state(j, "running", timeout=30)  # the requeued run starts again (on either node)
    assert job["requeues"] == 1 and a.wait_pid(j) != old_pid
    a.cli("cancel", str(j))
