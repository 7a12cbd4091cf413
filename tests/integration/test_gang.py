"""Jobs across nodes: two real daemons on one private redis-server act as two nodes (each with
two SIMULATED GPUs, both advertising 127.0.0.1), real CLI, a real test user.  Every part starts
together or none does; a part that dies ends the whole job; cancel stops every part."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
GANG_START = "4s"  # [daemon] gang_start_timeout of both nodes
NODE_LOST = "5s"  # [daemon] node_lost_timeout of both nodes


@pytest.fixture
def two_nodes(redis_server, make_daemon):
    """node-a and node-b on one store; returns (a, b)."""
    out = []
    for name in ("node-a", "node-b"):
        d = make_daemon("--simulate-gpus", "2x16GiB", "--grace", "2s", "--node", name, "--address", "127.0.0.1",
                        "--redis-url", redis_server, start=False)
        d.home.mkdir(parents=True, exist_ok=True)
        (d.home / "config.toml").write_text(f'[daemon]\ngang_start_timeout = "{GANG_START}"\n'
                                            f'node_lost_timeout = "{NODE_LOST}"\n')
        out.append(d.start())
    a, b = out
    deadline = time.monotonic() + 20
    while {n["node"] for n in a.cli("status", "--json").json()["nodes"]} != {"node-a", "node-b"}:
        assert time.monotonic() < deadline, "both nodes should report"
        time.sleep(0.2)
    return a, b


@pytest.fixture
def work(open_tmp):
    shutil.copy(HERE / "gangscript.py", open_tmp / "gangscript.py")
    out = open_tmp / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    return open_tmp, out


def _wait(what, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _ranks(out: Path, n: int = 2) -> list[dict]:
    _wait(lambda: all((out / f"rank{r}.json").exists() for r in range(n)))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _daemon_of(job: dict, rank: int, a, b):
    node = job["placement"]["parts"][rank]["node"]
    return a if node == "node-a" else b


def _rq_workers(d) -> list[int]:
    """The RQ worker processes of daemon ``d``: its children running gpuq.workers.rqworker, less
    the supervisors re-parented to it (forked from a worker, they share its command line; their
    name is gpuq-sup-<id>)."""
    r = subprocess.run(["pgrep", "-P", str(d.proc.pid), "-f", "gpuq.workers.rqworker"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if not Path(f"/proc/{x}/comm").read_text().startswith("gpuq-sup")]


@contextmanager
def frozen_workers(d):
    """Daemon ``d``'s RQ workers stopped (SIGSTOP) inside the block, continued after it: a node
    whose daemon hangs mid-start.  Yields their pids."""
    frozen = _rq_workers(d)
    assert frozen, "the daemon should have RQ workers"
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield frozen
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _submit_two_part_job_and_wait_for_a_claim(a, cwd, out, user) -> int:
    """A 2-node job (1 GPU per node); returns once one part was claimed by its node's worker."""
    job_id = a.submit("--nodes", "2", "--gpus", "1", "gangscript.py", str(out), cwd=cwd, user=user)
    _wait(lambda: any("claimed part" in e["text"] for e in a.job(job_id)["events"]))
    return job_id


def test_every_part_starts_with_its_gpus_and_the_distributed_environment(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    user = test_users[0]
    job_id = a.submit("--nodes", "2", "--gpus", "2", "gangscript.py", str(out), cwd=cwd, user=user)
    job = a.wait_state(job_id, "running")
    ranks = _ranks(out)
    job = a.job(job_id)
    parts = job["placement"]["parts"]
    assert sorted(p["node"] for p in parts) == ["node-a", "node-b"]
    port = job["placement"]["port"]
    for r, rec in enumerate(ranks):
        node = parts[r]["node"]
        assert rec["CUDA_VISIBLE_DEVICES"] == f"GPU-SIMULATED-{node}-0,GPU-SIMULATED-{node}-1"
        assert json.loads(rec["TF_CONFIG"]) == {
            "cluster": {"worker": [f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"]},
            "task": {"type": "worker", "index": r}}
        assert (rec["MASTER_ADDR"], rec["MASTER_PORT"]) == ("127.0.0.1", str(port))
        assert (rec["WORLD_SIZE"], rec["RANK"], rec["LOCAL_RANK"]) == ("2", str(r), "0")
        assert rec["uid"] != 0 and rec["GPUQ_JOB_ID"] == str(job_id)
    # the job is shown once, with both nodes; both nodes' GPUs are taken
    st = b.cli("status").out
    line = [ln for ln in st.splitlines() if ln.split()[:1] == [str(job_id)]]
    assert len(line) == 1 and f"{parts[0]['node']}:0,1+{parts[1]['node']}:0,1" in line[0], st
    assert " 2x2 " in line[0], st
    detail = a.cli("status", str(job_id)).out
    assert "request:     2 GPU(s) on each of 2 nodes, memory whole" in detail and "2 nodes, one process each" in detail, detail
    # rank 1 finishes first: the job completes only with its last part
    (out / "exit1").write_text("0")
    os.kill(ranks[1]["pid"], 0)
    (out / "go").touch()
    done = a.wait_state(job_id, "completed", timeout=60)
    assert done["end_reason"] == "every part exited 0"
    # accounting counts the GPUs of both parts
    assert done["attained_gpu_s"] == pytest.approx(4 * done["total_run_s"], rel=0.01)
    # nothing of the job is left on either node
    assert all(_wait(lambda rec=rec: _gone(rec["pid"])) for rec in ranks)


def test_a_part_that_fails_ends_the_whole_job_once_every_part_is_gone(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    (out / "ignore_term").touch()  # rank 0 stops only when the 2 s grace is over and it is killed
    (out / "gate1").write_text("go1")
    (out / "exit1").write_text("3")
    job_id = a.submit("--nodes", "2", "--gpus", "1", "gangscript.py", str(out), cwd=cwd, user=test_users[0])
    ranks = _ranks(out)
    (out / "go1").touch()  # only rank 1 goes on, and exits 3: gpuq must stop rank 0
    job = a.wait_state(job_id, "failed", timeout=60)
    # the job ended as its failing part said, and only once no part was left: never half-running
    assert _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"])
    assert job["end_reason"].startswith("part 1 on node-") and job["end_reason"].endswith("exited 3"), job
    assert job["exit_code"] == 3
    events = [e["text"] for e in job["events"]]
    assert any("ended (part 1 on node-" in e and "waiting for the other parts to end" in e for e in events), events


def test_cancel_stops_every_part(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    (out / "ignore_term").touch()  # both parts take the whole 2 s grace to stop
    job_id = b.submit("--nodes", "2", "--gpus", "2", "gangscript.py", str(out), cwd=cwd, user=test_users[0])
    ranks = _ranks(out)
    r = a.cli("cancel", str(job_id), user=test_users[1])
    assert r.rc != 0 and a.job(job_id)["state"] == "running"  # not another user's to cancel
    r = a.cli("cancel", str(job_id), user=test_users[0])
    assert r.rc == 0, r.err
    job = a.wait_state(job_id, "cancelled", timeout=60)
    assert job["end_reason"] == f"cancelled by {test_users[0]}"
    assert _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"])  # cancelled only once every part is gone
    # both nodes' GPUs are free again
    again = a.submit("--nodes", "2", "--gpus", "2", "--", "true", cwd=cwd, user=test_users[1])
    a.wait_state(again, "completed", timeout=60)


def test_kill_9_of_one_parts_supervisor_ends_the_whole_job(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    job_id = a.submit("--nodes", "2", "--gpus", "1", "gangscript.py", str(out), cwd=cwd, user=test_users[0])
    ranks = _ranks(out)
    job = a.job(job_id)
    victim = _daemon_of(job, 1, a, b)
    rec = json.loads((victim.home / "supervisors" / f"{job_id}.json").read_text())
    os.kill(rec["pid"], signal.SIGKILL)
    job = a.wait_state(job_id, "failed", timeout=60)
    victim_node = "node-a" if victim is a else "node-b"
    assert job["end_reason"].startswith(f"part 1 on {victim_node}: its supervisor (pid {rec['pid']}) died"), job
    assert job.get("exit_code") is None
    # rank 1's process (its supervisor gone) and rank 0's (stopped by its own supervisor) are both gone
    _wait(lambda: _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"]))


def test_no_part_starts_unless_every_part_does(two_nodes, work, test_users):
    """node-b's workers are frozen (a node whose daemon hangs mid-start): node-a's part is claimed
    but never starts its process; after gang_start_timeout the job goes back to pending; once
    node-b works again the job runs on both."""
    a, b = two_nodes
    cwd, out = work
    with frozen_workers(b):
        job_id = _submit_two_part_job_and_wait_for_a_claim(a, cwd, out, test_users[0])
        # back to pending (and at once placed again by the leader, to wait again)
        gave_up = "not every part started within 4 s (no worker claimed the part on node-b); none was started"
        _wait(lambda: any(e["text"].startswith(gave_up) for e in a.job(job_id)["events"]), timeout=30)
        assert not list(out.glob("rank*.json")), "no part may start before every part was claimed"
        assert a.job(job_id).get("started_at") is None
    (out / "go").touch()
    a.wait_state(job_id, "completed", timeout=90)
    assert len(list(out.glob("rank*.json"))) == 2


def test_a_node_whose_daemon_dies_mid_start_sends_the_job_back_and_nothing_starts(two_nodes, work, test_users):
    """node-b's daemon is killed (-9, with its workers) after node-a claimed its part: when
    node-b's snapshot expires the job goes back to pending with nothing started; it runs on both
    nodes once node-b's daemon is back."""
    a, b = two_nodes
    cwd, out = work
    with frozen_workers(b) as workers:
        job_id = _submit_two_part_job_and_wait_for_a_claim(a, cwd, out, test_users[0])
        b.proc.kill()
        b.proc.wait()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    went = "its node node-b went away before it started: back to pending"
    _wait(lambda: any(e["text"] == went for e in a.job(job_id)["events"]), timeout=60, step=0.3)
    job = a.job(job_id)
    assert job["state"] == "pending" and "cannot run here" in job["reason"], job
    assert not list(out.glob("rank*.json"))
    b.start()
    (out / "go").touch()
    a.wait_state(job_id, "completed", timeout=90)
    assert len(list(out.glob("rank*.json"))) == 2


def test_kill_9_of_a_supervisor_waiting_at_the_start_barrier(two_nodes, work, test_users):
    """node-a's part waits for node-b's (frozen) workers; its supervisor is killed (-9) there:
    the job goes back to pending at once with nothing started, and runs once node-b works."""
    a, b = two_nodes
    cwd, out = work
    with frozen_workers(b):
        job_id = _submit_two_part_job_and_wait_for_a_claim(a, cwd, out, test_users[0])
        claimed = next(e["text"] for e in a.job(job_id)["events"] if "claimed part" in e["text"])
        waiting = a if "worker on node-a" in claimed else b
        rec = _wait(lambda: (waiting.home / "supervisors" / f"{job_id}.json").exists()
                    and json.loads((waiting.home / "supervisors" / f"{job_id}.json").read_text()))
        os.kill(rec["pid"], signal.SIGKILL)
        died = "its supervisor (pid %d) died before every part started; none was started: back to pending" % rec["pid"]
        _wait(lambda: any(e["text"].endswith(died) for e in a.job(job_id)["events"]), timeout=20)
        assert not list(out.glob("rank*.json"))
    (out / "go").touch()
    a.wait_state(job_id, "completed", timeout=90)
    assert len(list(out.glob("rank*.json"))) == 2


def test_cancel_during_the_start_barrier(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    with frozen_workers(b):
        job_id = _submit_two_part_job_and_wait_for_a_claim(a, cwd, out, test_users[0])
        r = a.cli("cancel", str(job_id), user=test_users[0])
        assert r.rc == 0, r.err
        a.wait_state(job_id, "cancelled")
    time.sleep(1.0)  # node-b's worker now sees the stale launch: it must start nothing
    assert a.job(job_id)["state"] == "cancelled"
    assert not list(out.glob("rank*.json"))
    # the waiting supervisor on node-a went away without leaving a record
    _wait(lambda: not any((d.home / "supervisors" / f"{job_id}.json").exists() for d in (a, b)))


def test_a_request_no_two_nodes_can_hold_is_refused(two_nodes, work):
    a, _ = two_nodes
    cwd, _out = work
    r = a.cli("submit", "--nodes", "3", "--gpus", "1", "--", "true", cwd=cwd)
    assert r.rc != 0
    assert "it asks for 1 GPU on each of 3 nodes, but only 2 nodes have 1 or more GPUs" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    r = a.cli("submit", "--nodes", "2", "--gpu-mem", "4GiB", "--", "true", cwd=cwd)
    assert r.rc != 0 and "--nodes takes whole GPUs" in r.err


def test_time_limit_and_requeue_stop_every_part(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    job_id = a.submit("--nodes", "2", "--gpus", "1", "--time-limit", "3s", "gangscript.py", str(out), cwd=cwd,
                      user=test_users[0])
    ranks = _ranks(out)
    job = a.wait_state(job_id, "timeout", timeout=60)
    assert "time limit of 3 s reached" in job["end_reason"], job
    assert _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"])

    for f in out.glob("rank*.json"):
        f.unlink()
    job_id = a.submit("--nodes", "2", "--gpus", "1", "--checkpointable", "gangscript.py", str(out), cwd=cwd,
                      user=test_users[0])
    first = _ranks(out)
    for f in out.glob("rank*.json"):
        f.unlink()
    r = a.cli("requeue", str(job_id), user=test_users[0])
    assert r.rc == 0, r.err
    second = _ranks(out)  # it went back to pending and started again, on both nodes
    assert _gone(first[0]["pid"]) and _gone(first[1]["pid"])
    assert {r["pid"] for r in second}.isdisjoint({r["pid"] for r in first})
    (out / "go").touch()
    job = a.wait_state(job_id, "completed", timeout=60)
    assert job["requeues"] == 1
    assert "pending: requeued (requeue)" in [e["text"] for e in job["events"]]


def test_a_restarted_daemon_adopts_its_part(two_nodes, work, test_users):
    a, b = two_nodes
    cwd, out = work
    job_id = a.submit("--nodes", "2", "--gpus", "1", "gangscript.py", str(out), cwd=cwd, user=test_users[0])
    ranks = _ranks(out)
    assert b.stop() == 0  # a plain stop: running jobs keep running under their supervisors
    b.start()
    _wait(lambda: any(e["text"].startswith("adopted by the new daemon") for e in a.job(job_id)["events"]))
    assert a.job(job_id)["state"] == "running"
    (out / "go").touch()
    a.wait_state(job_id, "completed", timeout=60)
    assert _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"])


def test_a_lost_node_ends_the_whole_job(two_nodes, work, test_users):
    """node-b's daemon dies (-9, with its workers) while the job runs: its supervisor lives on, but
    once node-b has been silent for node_lost_timeout the leader ends the job and every part stops."""
    a, b = two_nodes
    cwd, out = work
    job_id = a.submit("--nodes", "2", "--gpus", "1", "gangscript.py", str(out), cwd=cwd, user=test_users[0])
    ranks = _ranks(out)
    workers = _rq_workers(b)
    b.proc.kill()
    b.proc.wait()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    job = a.wait_state(job_id, "failed", timeout=90)
    assert "its node node-b stopped reporting" in job["end_reason"], job
    # node-b's supervisor outlived its daemon: it stops its part once it sees the job ended
    _wait(lambda: _gone(ranks[0]["pid"]) and _gone(ranks[1]["pid"]))
