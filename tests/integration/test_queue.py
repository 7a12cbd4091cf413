"""The queue end to end: real daemon (SIMULATED GPUs), real embedded Redis, real CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def _script(dir_: Path) -> Path:
    dst = dir_ / "jobscript.py"
    shutil.copy(HERE / "jobscript.py", dst)
    os.chmod(dst, 0o755)
    return dst


def _rec(dir_: Path, name: str) -> dict:
    return json.loads((dir_ / name).read_text())


def test_jobs_that_cannot_all_fit_run_in_order_on_the_right_gpus(daemon, open_tmp):
    _script(open_tmp)
    st = daemon.cli("status", "--json").json()
    uuids = [g["uuid"] for g in st["nodes"][0]["gpus"]]
    assert all("SIMULATED" in u for u in uuids)

    j1 = daemon.submit("--gpus", "2", "jobscript.py", "r1.json", "0.5", cwd=open_tmp, env={"JOB_GATE": "go"})
    j2 = daemon.submit("--gpu-mem", "16GiB", "jobscript.py", "r2.json", "1.5", cwd=open_tmp)
    j3 = daemon.submit("--gpu-mem", "16GiB", "jobscript.py", "r3.json", "1.5", cwd=open_tmp)
    j4 = daemon.submit("--gpu-mem", "10GiB", "jobscript.py", "r4.json", "0.5", cwd=open_tmp)

    daemon.wait_state(j1, "running")
    time.sleep(1.5)  # a few scheduling cycles
    for j in (j2, j3, j4):
        pending = daemon.job(j)
        assert pending["state"] == "pending", pending
        assert pending["reason"], pending
    (open_tmp / "go").touch()

    for j in (j1, j2, j3, j4):
        daemon.wait_state(j, "completed", timeout=60)
    r1, r2, r3, r4 = (_rec(open_tmp, f"r{i}.json") for i in (1, 2, 3, 4))

    # job 1 took both whole GPUs; the others waited for it
    assert sorted(r1["cvd"].split(",")) == sorted(uuids)
    assert r1["mem_mib"] is None and r1["allow_growth"] == "true" and r1["order"] == "PCI_BUS_ID"
    assert r2["start"] >= r1["end"] - 0.05 and r3["start"] >= r1["end"] - 0.05
    # two 16 GiB reservations cannot share a 24 GiB GPU, even before either allocates anything
    assert r2["cvd"] != r3["cvd"] and {r2["cvd"], r3["cvd"]} == set(uuids)
    assert r2["mem_mib"] == "16384" and r4["mem_mib"] == "10240"
    # 10 GiB fits next to neither 16 GiB job: job 4 waited for one of them to end
    assert r4["start"] >= min(r2["end"], r3["end"]) - 0.05
    # each job saw exactly the GPU the daemon recorded for it
    for j, r in ((j1, r1), (j2, r2), (j3, r3), (j4, r4)):
        events = " ".join(e["text"] for e in daemon.job(j)["events"])
        assert "placed on testnode GPUs" in events
        assert r["job"] == str(j)


def test_memory_used_outside_gpuq_is_respected(daemon, open_tmp):
    _script(open_tmp)
    st = daemon.cli("status", "--json").json()
    gpu0, gpu1 = (g["uuid"] for g in st["nodes"][0]["gpus"])
    usage_dir = daemon.home / "simulated-gpu-usage"
    from gpuq.workers.simgpu import Claim, write_claim

    claim = write_claim(str(usage_dir), Claim(uuid=gpu0, mem_mib=20 * 1024, label="someone's notebook"))
    time.sleep(1.5)  # one probe interval
    st = daemon.cli("status", "--json").json()
    g0 = st["nodes"][0]["gpus"][0]
    assert g0["outside_gpuq_mib"] == 20 * 1024
    out = daemon.cli("status").out
    assert "SIMULATED" in out and "20.0 GiB" in out

    j = daemon.submit("--gpu-mem", "10GiB", "jobscript.py", "r.json", "0.2", cwd=open_tmp)
    daemon.wait_state(j, "completed")
    assert _rec(open_tmp, "r.json")["cvd"] == gpu1  # GPU 0 has only 4 GiB free

    # a whole-GPU job may not take the GPU someone grabbed: it gets the other one
    j = daemon.submit("--gpus", "1", "jobscript.py", "w.json", "0.2", cwd=open_tmp)
    daemon.wait_state(j, "completed")
    assert _rec(open_tmp, "w.json")["cvd"] == gpu1
    claim.unlink()


def test_usage_by_a_running_job_shows_in_status(daemon, open_tmp):
    _script(open_tmp)
    j = daemon.submit("--gpu-mem", "8GiB", "jobscript.py", "r.json", "4", "3000", cwd=open_tmp)
    daemon.wait_state(j, "running")
    deadline = time.monotonic() + 10
    while True:
        gpus = daemon.cli("status", "--json").json()["nodes"][0]["gpus"]
        mine = [g for g in gpus if any(x["id"] == j for x in g["jobs"])]
        if mine and mine[0]["mem_used_mib"] == 3000:
            break
        assert time.monotonic() < deadline, gpus
        time.sleep(0.2)
    g = mine[0]
    assert g["reserved_mib"] == 8192 and g["outside_gpuq_mib"] == 0
    assert [p["job_id"] for p in g["processes"]] == [j]
    daemon.wait_state(j, "completed")


def test_cancel_running_job_leaves_nothing_of_its_process_group(daemon, open_tmp):
    script = open_tmp / "tree.sh"
    script.write_text(
        "#!/bin/sh\n"
        "trap '' TERM\n"  # ignores SIGTERM: only the SIGKILL after the grace stops it
        "sleep 300 &\n"
        "echo $! >> pids\n"
        "sh -c 'trap \"\" TERM; sleep 300' &\n"
        "echo $! >> pids\n"
        "echo $$ >> pids\n"
        "wait\n"
    )
    script.chmod(0o755)
    j = daemon.submit("--", "./tree.sh", cwd=open_tmp)
    daemon.wait_state(j, "running")
    deadline = time.monotonic() + 10
    while not (open_tmp / "pids").exists() or len((open_tmp / "pids").read_text().split()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [int(p) for p in (open_tmp / "pids").read_text().split()]
    r = daemon.cli("cancel", str(j))
    assert r.rc == 0 and "cancel" in r.out
    job = daemon.wait_state(j, "cancelled", timeout=30)
    assert job["exit_code"] is not None
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3], pid
    log = daemon.cli("logs", str(j)).out
    assert "SIGTERM" in log and "SIGKILL" in log


def test_cancel_pending_hold_release_and_after(daemon, open_tmp):
    _script(open_tmp)
    blocker = daemon.submit("--gpus", "2", "jobscript.py", "b.json", "0.1", cwd=open_tmp, env={"JOB_GATE": "go"})
    daemon.wait_state(blocker, "running")
    p1 = daemon.submit("jobscript.py", "p1.json", "0.1", cwd=open_tmp)
    p2 = daemon.submit("jobscript.py", "p2.json", "0.1", cwd=open_tmp)
    dep = daemon.submit("--after", str(p2), "jobscript.py", "d.json", "0.1", cwd=open_tmp)
    r = daemon.cli("cancel", str(p1))
    assert r.rc == 0, (r.err, daemon.job(p1), daemon.job(blocker))
    assert daemon.job(p1)["state"] == "cancelled"
    assert daemon.cli("hold", str(p2)).rc == 0
    time.sleep(1.2)
    assert daemon.job(p2)["reason"] == "held"
    assert daemon.job(dep)["reason"] == f"after job {p2}"
    assert daemon.cli("release", str(p2)).rc == 0
    (open_tmp / "go").touch()
    daemon.wait_state(blocker, "completed")
    daemon.wait_state(dep, "completed")
    assert _rec(open_tmp, "d.json")["start"] >= _rec(open_tmp, "p2.json")["end"]
    assert not (open_tmp / "p1.json").exists()
    # a dependency that failed: the dependant never starts; it is cancelled, saying why
    bad = daemon.submit("--gpus", "0", "--", "false", cwd=open_tmp)
    daemon.wait_state(bad, "failed")
    never = daemon.submit("--gpus", "0", "--after", str(bad), "--", "true", cwd=open_tmp)
    job = daemon.wait_state(never, "cancelled")
    assert "never" in job["end_reason"] and f"{bad}" in job["end_reason"], job["end_reason"]


def test_time_limit_and_exit_codes(daemon, open_tmp):
    slow = daemon.submit("--gpus", "0", "--time-limit", "1s", "--", "sleep", "30", cwd=open_tmp)
    bad = daemon.submit("--gpus", "0", "--", "sh", "-c", "exit 3", cwd=open_tmp)
    job = daemon.wait_state(slow, "timeout", timeout=30)
    assert job["exit_code"] is not None
    assert daemon.wait_state(bad, "failed")["exit_code"] == 3
    table = daemon.cli("status", "--all").out
    assert "timeout" in table and "exited 3" in table


def test_logs_follow_ends_with_the_job(daemon, open_tmp):
    script = open_tmp / "talk.sh"
    script.write_text("#!/bin/sh\nfor i in 1 2 3 4 5; do echo line $i; sleep 0.3; done\n")
    script.chmod(0o755)
    j = daemon.submit("--gpus", "0", "--", "./talk.sh", cwd=open_tmp)
    r = daemon.cli("logs", "-f", str(j), timeout=60)
    assert r.rc == 0
    assert [ln for ln in r.out.splitlines() if ln.startswith("line")] == [f"line {i}" for i in range(1, 6)]
    assert daemon.job(j)["state"] == "completed"


def test_queue_survives_daemon_restart_and_the_running_job_keeps_running(make_daemon, open_tmp):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "2s", "--node", "n1")
    _script(open_tmp)
    running = d.submit("jobscript.py", "r.json", "0.1", cwd=open_tmp, env={"JOB_GATE": "go"})
    pid = d.wait_pid(running)
    waiting = d.submit("--gpu-mem", "4GiB", "--name", "waits", "jobscript.py", "w.json", "0.1", cwd=open_tmp)
    held = d.submit("jobscript.py", "h.json", "0.1", cwd=open_tmp)
    assert d.cli("hold", str(held)).rc == 0
    before = {j["id"]: j for j in d.cli("status", "--json").json()["jobs"]}
    assert d.stop() == 0  # SIGTERM: the daemon goes, the job stays
    assert not (d.home / "gpuq.sock").exists()
    assert d.cli("status").rc != 0  # really down
    redis_pid_alive = any(
        "redis-server" in (Path(p) / "cmdline").read_bytes().decode(errors="replace")
        and str(d.home) in (Path(p) / "cmdline").read_bytes().decode(errors="replace")
        for p in Path("/proc").iterdir() if p.name.isdigit() and (Path(p) / "cmdline").exists()
    )
    assert not redis_pid_alive, "the embedded redis-server outlived the daemon"
    assert Path(f"/proc/{pid}").exists(), "the daemon's SIGTERM stopped a running job"

    d.args = ["--simulate-gpus", "1x24GiB", "--grace", "2s", "--node", "n1"]
    d.start()
    after = {j["id"]: j for j in d.cli("status", "--json").json()["jobs"]}
    assert set(after) == set(before)
    assert after[held]["state"] == "held"
    assert after[waiting]["spec"]["name"] == "waits"
    # the job that was running was adopted: same run, same pid
    assert after[running]["state"] == "running" and after[running]["pid"] == pid
    assert after[running]["requeues"] == 0
    assert any("adopted" in e["text"] for e in d.job(running)["events"])
    (open_tmp / "go").touch()
    job = d.wait_state(running, "completed", timeout=30)
    assert sum(1 for e in job["events"] if e["text"].startswith("started pid")) == 1
    ids_after = d.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    assert ids_after == max(before) + 1  # ids continue, nothing was reused



def test_exit_75_means_requeue_and_the_checkpoint_dir_survives(daemon, open_tmp):
    script = open_tmp / "ckpt.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "run $GPUQ_RESTART_COUNT in $GPUQ_CHECKPOINT_DIR"\n'
        'if [ -f "$GPUQ_CHECKPOINT_DIR/state" ]; then echo "resumed from $(cat "$GPUQ_CHECKPOINT_DIR/state")"; exit 0; fi\n'
        'echo step-42 > "$GPUQ_CHECKPOINT_DIR/state"\n'
        "exit 75\n"
    )
    script.chmod(0o755)
    j = daemon.submit("--gpu-mem", "1GiB", "--", "./ckpt.sh", cwd=open_tmp)
    job = daemon.wait_state(j, "completed", timeout=30)
    assert job["requeues"] == 1
    log = daemon.cli("logs", str(j)).out
    assert "run 0 in" in log and "run 1 in" in log and "resumed from step-42" in log


def test_daemon_killed_hard_then_restarted_adopts_its_jobs(make_daemon, open_tmp):
    import signal as _signal

    d = make_daemon("--simulate-gpus", "1x24GiB", "--grace", "2s", "--node", "crash")
    _script(open_tmp)
    j = d.submit("--checkpointable", "jobscript.py", "r.json", "0.2", cwd=open_tmp, env={"JOB_GATE": "go"})
    old_pid = d.wait_pid(j)
    d.proc.send_signal(_signal.SIGKILL)  # no clean shutdown: the store still says "running"
    d.proc.wait(10)
    d.start()
    job = d.job(j)
    events = [e["text"] for e in job["events"]]
    assert any("adopted by the new daemon" in e for e in events), events
    assert job["state"] == "running" and job["pid"] == old_pid
    (open_tmp / "go").touch()
    job = d.wait_state(j, "completed", timeout=60)
    assert job["requeues"] == 0
    assert sum(1 for e in job["events"] if e["text"].startswith("started pid")) == 1
    assert d.stop() == 0
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "cmdline").exists()
                and str(d.home) in (p / "cmdline").read_bytes().decode(errors="replace")]
    assert leftover == [], "a process of the daemon outlived it"


def test_embedded_redis_killed_is_restarted_with_the_queue_intact(daemon, open_tmp):
    import signal as _signal

    done = daemon.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    daemon.wait_state(done, "completed")
    blocker = daemon.submit("--gpus", "2", "--", "sleep", "30", cwd=open_tmp)
    daemon.wait_state(blocker, "running")
    waiting = daemon.submit("--gpus", "1", "--", "true", cwd=open_tmp)
    pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "cmdline").exists()
               and b"redis-server" in (p / "cmdline").read_bytes()
               and str(daemon.home).encode() in (p / "cmdline").read_bytes())
    os.kill(pid, _signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the daemon notices within a probe interval and starts it again
        r = daemon.cli("status", "--json")
        if r.rc == 0:
            ids = {j["id"] for j in r.json()["jobs"]}
            if {blocker, waiting} <= ids:
                break
        assert time.monotonic() < deadline, (r.err, daemon.log.read_text()[-2000:])
        time.sleep(0.3)
    assert daemon.job(done)["state"] == "completed"  # acknowledged before the crash: kept (AOF, fsync always)
    assert daemon.cli("cancel", str(blocker)).rc == 0
    daemon.wait_state(waiting, "completed", timeout=60)
    assert "starting it again on the same data" in daemon.log.read_text()
