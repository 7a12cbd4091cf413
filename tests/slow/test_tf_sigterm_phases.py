"""A SIGTERM at any moment ends in exit 75 with a consistent checkpoint, or in a normal completion.

One job (tests/slow/phases_job.py, 24 steps, under the worker's environment) is run again and
again on the same checkpoint directory, as gpuq would requeue it, and each run is stopped in a
different phase:

1. SIGTERM while TensorFlow imports               -> 75, nothing saved yet
2. SIGKILL in the middle of a checkpoint write   -> the half-written one is never used
3. SIGTERM during a training step                 -> 75 after saving that step
4. SIGTERM during the restore                     -> 75, checkpoint unchanged, no step trained
5. SIGTERM during finish()'s final save           -> 75 after the final save completes
6. SIGTERM in the epilogue after finish()         -> 75 at once
7. no signal                                      -> 0, zero steps trained: it finishes at once

Never 143, never 137 from a SIGTERM.  At every start the restored state (every variable, the
RNG state, and a 16 MiB ballast variable that records its step) must equal the uninterrupted
run's state after that step, which shows that no checkpoint was half-written or mixed.  The
final output must be bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gpuq.jobs.model import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "phases_job.py"
STEPS = 24


class Job:
    def __init__(self, env: dict[str, str], tmp: Path, name: str) -> None:
        self.env, self.tmp, self.name = env, tmp, name
        self.ckpt = tmp / f"ckpt-{name}"
        self.runs = 0

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        log = self.tmp / f"{self.name}-{self.runs}.log"
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--checkpoint-dir", str(self.ckpt),
                                 "--out", str(self.tmp / f"{self.name}.npz"),
                                 "--trace", str(self.tmp / f"{self.name}.jsonl"), *args],
                                env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        return proc, log

    def run(self, *args: str) -> tuple[int, str]:
        proc, log = self.start(*args)
        return proc.wait(timeout=180), log.read_text()

    def latest(self) -> str | None:
        state = self.ckpt / "checkpoint"
        if not state.exists():
            return None
        return re.search(r'^model_checkpoint_path: "([^"]+)"', state.read_text(), re.M).group(1)


def _wait_for(log: Path, proc: subprocess.Popen, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.005)


def _kill_mid_save(job: Job) -> tuple[str, int]:
    """Run saving every step; freeze it (SIGSTOP) while a checkpoint is being written, then SIGKILL it."""
    proc, log = job.start("--save-every-steps", "1", "--step-sleep", "0.05")
    _wait_for(log, proc, "STATE ")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # a write after some complete ones, so that there is an older checkpoint to fall back on
        temps = [n for n in os.listdir(job.ckpt) if re.fullmatch(r"ckpt-([3-9]|\d\d+)_temp", n)] \
            if job.ckpt.exists() else []
        if temps:
            proc.send_signal(signal.SIGSTOP)
            if any(os.path.exists(job.ckpt / n) for n in temps):  # still being written: kill it there
                proc.kill()
                proc.wait(timeout=30)
                return temps[0], proc.returncode
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError(f"never caught a checkpoint being written (exit {proc.poll()}):\n{log.read_text()}")


def _states(text: str) -> list[dict]:
    return [json.loads(line[len("STATE "):]) for line in text.splitlines() if line.startswith("STATE ")]


def test_sigterm_in_every_phase_ends_in_75_or_completion(job_env: Callable[..., dict[str, str]],
                                                         tmp_path: Path) -> None:
    env = job_env(workdir=tmp_path)
    reference = Job(env, tmp_path, "ref")
    ref_proc, ref_log = reference.start()  # runs alongside the chain

    job = Job(env, tmp_path, "job")
    # 1. during the TensorFlow import
    proc, log = job.start()
    _wait_for(log, proc, "IMPORTING")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == REQUEUE_EXIT_CODE, log.read_text()
    assert "SIGTERM before training started" in log.read_text()
    assert job.latest() is None

    # 2. SIGKILL while a checkpoint is half-written
    temp, code = _kill_mid_save(job)
    assert code == -signal.SIGKILL
    assert (job.ckpt / temp).exists(), "the kill should have left the unfinished write behind"
    being_written = int(re.fullmatch(r"ckpt-(\d+)_temp", temp).group(1))
    killed_at = job.latest()  # the last complete checkpoint, never the one being written
    last_complete = int(killed_at.rsplit("-", 1)[1]) if killed_at else 0
    assert 0 < last_complete < being_written

    # 3. during a training step: the step finishes, is saved, and the job exits 75
    code, text = job.run("--sigterm-in", "training")
    assert code == REQUEUE_EXIT_CODE, text
    restored = _states(text)[0]
    assert restored["step"] == last_complete
    saved = int(re.search(r"SIGTERM: checkpoint at step (\d+) saved", text).group(1))
    assert saved == restored["step"] + 2
    starts = [restored]

    # 4. during the restore: it completes, nothing is trained or written, exit 75
    before = job.latest()
    code, text = job.run("--sigterm-in", "restore")
    assert code == REQUEUE_EXIT_CODE, text
    assert f"SIGTERM: checkpoint at step {saved} saved" in text and job.latest() == before
    assert "trained" not in text
    starts += _states(text)

    # 5. during finish()'s final save: the save completes, then exit 75
    code, text = job.run("--sigterm-in", "finish")
    assert code == REQUEUE_EXIT_CODE, text
    assert "SIGTERM after training finished" in text and job.latest().endswith(f"ckpt-{STEPS}")
    starts += _states(text)

    # 6. in the epilogue: exit 75 at once (the script would sleep 600 s otherwise, beyond run()'s timeout)
    code, text = job.run("--sigterm-in", "epilogue")
    assert code == REQUEUE_EXIT_CODE, text
    assert "trained 0 steps in this run" in text and "SIGTERM after training finished" in text
    assert "EPILOGUE DONE" not in text
    starts += _states(text)

    # 7. the requeued run finishes at once
    code, text = job.run()
    assert code == 0, text
    assert "trained 0 steps in this run" in text and "EPILOGUE DONE" in text
    starts += _states(text)

    assert ref_proc.wait(timeout=180) == 0, ref_log.read_text()
    trace = {s["step"]: s for s in map(json.loads, (tmp_path / "ref.jsonl").read_text().splitlines())}
    for state in starts:  # each restored state is exactly the uninterrupted run's state after that step
        assert state == trace[state["step"]], f"restored state at step {state['step']} differs"
        assert state["ballast"] == state["step"] * 4 * 1024 * 1024
    assert [s["step"] for s in starts] == [last_complete, saved, saved, STEPS, STEPS]
    final_ref, final_job = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "job.npz")
    assert final_ref.files == final_job.files
    for name in final_ref.files:
        np.testing.assert_array_equal(final_job[name], final_ref[name], err_msg=name)
