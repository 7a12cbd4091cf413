"""Exact resume for ``gq.fit`` (Sequential, functional, MirroredStrategy) and for a tf.data custom loop.

The same tolerance as test_tf_resume.py: zero.  An uninterrupted run and a run SIGTERMed once in
each of the four parts (at a random moment, so usually in the middle of an epoch), restarted until
it exits 0, must end with bit-identical weights and optimizer variables: slots, ``iterations``
(the decay position) and the EMA averages.  The dropout seed states are among the model's weights.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpuq.jobs.model import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "fit_job.py"
PARTS = ("sequential", "functional", "mirrored", "loop")
STEPS = 30  # 3 epochs of 10 steps
START = re.compile(r"gpuq: (?:no checkpoint in \S+/(\w+): starting|resumed at step (\d+) of \d+ from \S+/(\w+)/ckpt)")


def _start(env: dict[str, str], tmp: Path, name: str, log: Path, step_sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), "--checkpoint-dir", str(tmp / f"ckpt-{name}"),
                             "--out", str(tmp / name), "--step-sleep", str(step_sleep)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_part(log: Path, proc: subprocess.Popen, part: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in START.finditer(log.read_text()):
            if part in (m.group(1), m.group(3)):
                return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before training {part}:\n{log.read_text()}")
        time.sleep(0.02)
    raise AssertionError(f"{part} did not start within {timeout_s} s:\n{log.read_text()}")


def test_fit_and_tf_data_resume_exactly_after_sigterms(tf_env: dict[str, str], tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"random SIGTERM delays seeded with {seed}")
    ref = _start(tf_env, tmp_path, "ref", tmp_path / "ref.log", step_sleep=0.0)

    logs, resumed_at = [], {part: [] for part in PARTS}
    for attempt, part in enumerate([*PARTS, None, None]):
        log = tmp_path / f"int-{attempt}.log"
        logs.append(log)
        proc = _start(tf_env, tmp_path, "int", log, step_sleep=0.04)
        if part is not None:
            _wait_for_part(log, proc, part)
            time.sleep(rnd.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
        for m in START.finditer(log.read_text()):
            if m.group(2) is not None:
                resumed_at[m.group(3)].append(int(m.group(2)))
        if code == 0:
            break
        assert code == REQUEUE_EXIT_CODE, log.read_text()
        assert "gpuq: SIGTERM: checkpoint at step" in log.read_text()
    else:
        raise AssertionError("the interrupted run never finished")
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()

    # every part was interrupted in training and resumed from the middle; most in mid-epoch
    mid_training = {part: [s for s in steps if 0 < s < STEPS] for part, steps in resumed_at.items()}
    assert sum(1 for steps in mid_training.values() if steps) >= 3, (resumed_at, [lg.read_text() for lg in logs])
    assert any(s % 10 for steps in mid_training.values() for s in steps), resumed_at
    for part in PARTS:
        reference = np.load(tmp_path / f"ref-{part}.npz")
        resumed = np.load(tmp_path / f"int-{part}.npz")
        assert sorted(reference.files) == sorted(resumed.files) and len(reference.files) > 8
        for name in reference.files:
            np.testing.assert_array_equal(resumed[name], reference[name], err_msg=f"{part} {name}")
