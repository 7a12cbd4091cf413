"""Several machines sharing one Redis: two daemons (nodes) on a real private redis-server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def test_two_nodes_share_one_queue(redis_server, make_daemon, open_tmp):
    a = make_daemon("--simulate-gpus", "1x16GiB", "--node", "node-a", "--redis-url", redis_server)
    b = make_daemon("--simulate-gpus", "1x16GiB", "--node", "node-b", "--redis-url", redis_server)
    import time

    deadline = time.monotonic() + 10
    st = a.cli("status", "--json").json()
    while {n["node"] for n in st["nodes"]} != {"node-a", "node-b"} and time.monotonic() < deadline:
        time.sleep(0.2)
        st = a.cli("status", "--json").json()
    assert {n["node"] for n in st["nodes"]} == {"node-a", "node-b"}
    assert st["leader"] in ("node-a", "node-b")
    assert "node-a:0" in a.cli("status").out  # the GPU table names the node when there are several

    shutil.copy(HERE / "jobscript.py", open_tmp / "jobscript.py")
    j1 = a.submit("jobscript.py", "r1.json", "0.2", cwd=open_tmp, env={"JOB_GATE": "go"})
    j2 = b.submit("jobscript.py", "r2.json", "0.2", cwd=open_tmp, env={"JOB_GATE": "go"})  # via the other node
    a.wait_state(j1, "running")
    a.wait_state(j2, "running")
    (open_tmp / "go").touch()
    for j in (j1, j2):
        a.wait_state(j, "completed", timeout=60)
    r1 = json.loads((open_tmp / "r1.json").read_text())
    r2 = json.loads((open_tmp / "r2.json").read_text())
    nodes = {a.job(j1)["events"][1]["text"], a.job(j2)["events"][1]["text"]}
    assert nodes == {"placed on node-a GPUs 0", "placed on node-b GPUs 0"}
    # each ran on its own node's GPU, at the same time
    assert {r1["cvd"], r2["cvd"]} == {"GPU-SIMULATED-node-a-0", "GPU-SIMULATED-node-b-0"}
    assert r1["start"] < r2["end"] and r2["start"] < r1["end"]

    # a request larger than any node's GPU is refused by whichever node is asked
    r = b.cli("submit", "--gpu-mem", "20GiB", "jobscript.py", cwd=open_tmp)
    assert r.rc != 0 and "could never run" in r.err

    # the leader goes away: the other node takes over scheduling
    leader = a if a.cli("status", "--json").json()["leader"] == "node-a" else b
    other = b if leader is a else a
    assert leader.stop() == 0
    j4 = other.submit("--gpus", "0", "--", "true", cwd=open_tmp)
    other.wait_state(j4, "completed", timeout=60)
    assert other.cli("status", "--json").json()["leader"] == ("node-b" if other is b else "node-a")
