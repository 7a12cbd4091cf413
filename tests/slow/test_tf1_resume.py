"""TF1 scripts (graph, Session, Saver / MonitoredTrainingSession) get the same requeue contract.

examples/digits_tf1.py, the classic network in TF1 style, is run uninterrupted and, under the
worker's environment, SIGTERMed at a random moment and rerun until it exits 0; at the same time
with ``gq.GraphRun`` (Session + Saver) and with ``MonitoredTrainingSession`` + ``gq.RequeueHook``.
Each interrupted run must exit 75 after saving, resume from that step, and end with every variable
(weights, EMA shadow variables, global step) bit-identical to the uninterrupted run's.  Both forms
train the same graph on the same batches, so one uninterrupted run is the reference for both.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gpuq.jobs.model import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "digits_tf1.py"
STEPS = 240


def _args(tmp: Path, name: str, mode: list[str]) -> list[str]:
    return [sys.executable, str(SCRIPT), *mode, "--steps", str(STEPS), "--save-every-steps", "100",
            "--checkpoint-dir", str(tmp / f"ckpt-{name}"), "--out", str(tmp / name)]


def _interrupted(env: dict[str, str], tmp: Path, name: str, mode: list[str], delay_s: float,
                 results: dict) -> None:
    texts = []
    for attempt in range(4):
        log = tmp / f"{name}-{attempt}.log"
        proc = subprocess.Popen([*_args(tmp, name, mode), "--step-sleep", "0.01"], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        if attempt == 0:
            deadline = time.monotonic() + 120
            while "gpuq: no checkpoint" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(delay_s)
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=180)
        texts.append(log.read_text())
        if code != REQUEUE_EXIT_CODE:
            results[name] = (code, texts)
            return
    results[name] = (None, texts)


def test_tf1_script_resumes_exactly_after_sigterm(job_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = job_env(workdir=tmp_path)
    results: dict = {}
    modes = {"session": [], "monitored": ["--monitored"]}
    workers = [threading.Thread(target=_interrupted, args=(env, tmp_path, name, mode, random.uniform(0.3, 1.2),
                                                           results)) for name, mode in modes.items()]
    for worker in workers:
        worker.start()
    ref = subprocess.run(_args(tmp_path, "ref", []), env=env, capture_output=True, text=True, timeout=300)
    for worker in workers:
        worker.join(timeout=400)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    reference = np.load(tmp_path / "ref.npz")
    assert any("ExponentialMovingAverage" in name for name in reference.files), reference.files
    ref_accuracy = json.loads((tmp_path / "ref.json").read_text())["test_accuracy"]
    assert ref_accuracy > 0.8
    for name in modes:
        code, texts = results[name]
        assert code == 0, "\n-----\n".join(texts)
        assert len(texts) == 2, "\n-----\n".join(texts)  # one SIGTERM, one rerun
        saved = int(re.search(r"gpuq: SIGTERM: checkpoint at step (\d+) saved", texts[0]).group(1))
        assert 0 < saved < STEPS, texts[0]
        assert f"gpuq: resumed at step {saved} of {STEPS}" in texts[1], texts[1]
        resumed = np.load(tmp_path / f"{name}.npz")
        assert sorted(reference.files) == sorted(resumed.files)
        for var in reference.files:
            np.testing.assert_array_equal(resumed[var], reference[var], err_msg=f"{name} {var}")
        assert int(resumed["global_step"]) == STEPS
        assert json.loads((tmp_path / f"{name}.json").read_text())["test_accuracy"] == ref_accuracy
