"""Exact resume: a run SIGTERMed at random points and restarted ends with the same weights.

Tolerance: zero.  The final weights and moving averages must be bit-for-bit equal to the
uninterrupted run's.  That is achievable, and anything looser would hide real bugs, because
(1) a checkpoint stores float32 variables byte for byte, (2) the batch of step k is a pure
function of (seed, k), (3) the random state (``tf.random.Generator``, Keras seed generators) is
in the checkpoint, and (4) the same CPU build runs the same kernels on the same shapes in the
same order, so each step computes the same bits whether or not the process restarted before it.
If a future kernel change makes CPU ops non-deterministic, the fix is
``tf.config.experimental.enable_op_determinism()`` in the script, not a tolerance.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpuq.jobs.model import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "slow" / "resume_job.py"
STEPS = 300


def _start(env: dict[str, str], tmp: Path, name: str, log: Path, step_sleep: float) -> subprocess.Popen:
    args = [PYTHON, str(SCRIPT), "--steps", str(STEPS), "--checkpoint-dir", str(tmp / f"ckpt-{name}"),
            "--trace", str(tmp / f"trace-{name}.jsonl"), "--out", str(tmp / f"final-{name}.npz"),
            "--step-sleep", str(step_sleep)]
    return subprocess.Popen(args, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def _wait_for_training(log: Path, proc: subprocess.Popen, starts: int, timeout_s: float = 60) -> None:
    """Wait until the ``starts``-th run printed that it restored (or found no) checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if text.count("gpuq: resumed at step") + text.count("gpuq: no checkpoint") >= starts:
            return
        if proc.poll() is not None:
            raise AssertionError(f"script exited {proc.returncode} before training:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"script did not start training within {timeout_s} s:\n{log.read_text()}")


def _trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_after_several_sigterms_is_exact(tf_env: dict[str, str], tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"random SIGTERM delays seeded with {seed}")

    ref_log = tmp_path / "ref.log"
    ref = _start(tf_env, tmp_path, "ref", ref_log, step_sleep=0.0)  # runs alongside the first start

    log = tmp_path / "int.log"
    interruptions, starts = 0, 0
    while True:
        starts += 1
        assert starts <= 12, "the interrupted run never finished"
        proc = _start(tf_env, tmp_path, "int", log, step_sleep=0.01)
        _wait_for_training(log, proc, starts)
        if interruptions < 3:
            time.sleep(rnd.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        if code == REQUEUE_EXIT_CODE:
            interruptions += 1
            continue
        assert code == 0, log.read_text()
        break
    assert ref.wait(timeout=120) == 0, ref_log.read_text()
    text = log.read_text()
    assert interruptions >= 3, text
    assert text.count("gpuq: SIGTERM: checkpoint at step") == interruptions

    # The restored state at each restart equals the uninterrupted run's state after that step:
    # decay position (optimizer iterations and learning rate), EMA, weights, RNG states.
    reference = {r["step"]: r for r in _trace(tmp_path / "trace-ref.jsonl") if r["kind"] == "after"}
    restarts = [r for r in _trace(tmp_path / "trace-int.jsonl") if r["kind"] == "start"][1:]
    assert len(restarts) == interruptions
    resumed_steps = [r["step"] for r in restarts]
    assert any(0 < s < STEPS for s in resumed_steps), resumed_steps
    for r in restarts:
        if r["step"] == 0:
            continue
        expected = dict(reference[r["step"]], kind="start")
        assert r == expected, f"state restored at step {r['step']} differs from the uninterrupted run"
        assert r["iterations"] == r["step"]

    # Every step after a restart also matches (the data position and RNG continue, not restart).
    for r in _trace(tmp_path / "trace-int.jsonl"):
        if r["kind"] == "after":
            assert r == reference[r["step"]], f"step {r['step']} differs from the uninterrupted run"

    final_ref = np.load(tmp_path / "final-ref.npz")
    final_int = np.load(tmp_path / "final-int.npz")
    assert sorted(final_ref.files) == sorted(final_int.files)
    assert any(name.startswith("ema") for name in final_ref.files)
    for name in final_ref.files:
        np.testing.assert_array_equal(final_int[name], final_ref[name], err_msg=name)
    assert int(final_int["iterations"]) == STEPS
