"""The runtime is optional: a TensorFlow script that never imports gpuq runs under gpuq's environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

PLAIN_SCRIPT = r"""
import numpy as np, keras
x = np.random.default_rng(0).random((64, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
history = model.fit(x, x.sum(axis=1), epochs=2, verbose=0)
print("plain script done, loss", history.history["loss"][-1])
"""


def test_script_without_the_runtime_runs_under_gpuq(job_env: Callable[..., dict[str, str]],
                                                    tmp_path: Path) -> None:
    env = job_env(limit_mib=1024, workdir=tmp_path)
    done = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plain script done" in done.stdout
    assert not (tmp_path / "progress.json").exists()  # no runtime, no progress: that is allowed
