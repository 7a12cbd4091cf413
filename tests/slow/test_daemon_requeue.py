"""Under the daemon (SIMULATED GPUs): a checkpointable TensorFlow job that is requeued goes back to
pending, starts again, resumes from its checkpoint and completes without redoing its steps."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def test_requeued_checkpointable_job_resumes_from_its_checkpoint(daemon, open_tmp):
    shutil.copytree(REPO / "examples", open_tmp / "examples")
    j = daemon.submit("--gpu-mem", "4GiB", "--checkpointable", "examples/digits_classic.py",
                      "--steps", "1500", "--step-sleep", "0.01", "--save-every-steps", "100000",
                      cwd=open_tmp, timeout=60)
    # wait until it really trains (its progress reaches gpuq), then requeue it
    deadline = time.monotonic() + 120
    while True:
        job = daemon.job(j)
        if job["state"] == "running" and (job.get("progress") or {}).get("step", 0) >= 100:
            break
        assert job["state"] in ("pending", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["progress"]["total"] == 1500
    r = daemon.cli("requeue", str(j))
    assert r.rc == 0, r.err
    # it goes back to pending (the scheduler may place it again at once: look at its events)
    job = daemon.wait_state(j, "completed", timeout=240)
    events = [e["text"] for e in job["events"]]
    assert "pending: requeued (requeue)" in events, events
    assert sum(1 for e in events if e.startswith("started pid")) == 2, events
    assert job["requeues"] == 1 and job["exit_code"] == 0

    log = daemon.cli("logs", str(j)).out
    resumed = re.findall(r"resumed at step (\d+) of 1500", log)
    assert len(resumed) == 1, log
    step = int(resumed[0])
    assert step >= 100  # it did not start again from zero
    assert log.count("starting at step 0") == 1
    assert "exiting with 75" in log
    # the checkpoint that survived the requeue is the job's own, in its per-job directory
    assert str(daemon.home / "checkpoints" / str(j)) in log
