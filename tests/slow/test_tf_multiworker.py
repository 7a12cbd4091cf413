"""A real two-worker TensorFlow MultiWorkerMirroredStrategy run on CPU, through gpuq: two real
daemons on one private redis-server act as two nodes (SIMULATED GPUs, both at 127.0.0.1), a real
user submits ``--nodes 2 --gpus 1``, and gpuq's TF_CONFIG is all the two workers have to find
each other.  Both did the collective: their final weights are identical although each started
from its own random weights and trained on its own data, and the loss went down."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
HERE = Path(__file__).parent


def test_two_worker_multiworkermirroredstrategy_through_gpuq(redis_server, make_daemon, open_tmp, test_users, tf_env):
    daemons = [make_daemon("--simulate-gpus", "1x16GiB", "--grace", "2s", "--node", name, "--address", "127.0.0.1",
                           "--redis-url", redis_server) for name in ("tf-a", "tf-b")]
    a = daemons[0]
    deadline = time.monotonic() + 20
    while {n["node"] for n in a.cli("status", "--json").json()["nodes"]} != {"tf-a", "tf-b"}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    shutil.copy(HERE / "mwms_job.py", open_tmp / "mwms_job.py")
    out = open_tmp / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    job_id = a.submit("--nodes", "2", "--gpus", "1", "mwms_job.py", str(out), cwd=open_tmp, user=test_users[0],
                      env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    job = a.wait_state(job_id, {"completed", "failed", "cancelled", "timeout"}, timeout=150)
    logs = "\n".join(f"--- {d.home} ---\n" + (d.home / "logs" / f"{job_id}.log").read_text(errors="replace")[-3000:]
                     for d in daemons if (d.home / "logs" / f"{job_id}.log").exists())
    assert job["state"] == "completed", f"{job['end_reason']}\n{logs}"
    results = [json.loads((out / f"tf_rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["replicas"] == 2, res
        assert res["loss"][-1] < 0.5 * res["loss"][0], res["loss"]  # it learned
    for w0, w1 in zip(results[0]["weights"], results[1]["weights"]):
        np.testing.assert_allclose(np.array(w0), np.array(w1), rtol=1e-5, atol=1e-6)
    events = [e["text"] for e in job["events"]]
    assert any("every part claimed" in e for e in events), events
    assert sum(1 for e in events if "started pid" in e) == 2, events
