"""The GPU memory share is really applied to TensorFlow.

What can be checked here, without a GPU: the share read from the worker's environment, the TF1
``ConfigProto`` a ``tf.compat.v1.Session`` really receives, idempotence, and the too-late error
against TensorFlow's real device initialisation.  That ``tf.config`` receives
``set_logical_device_configuration(gpu, [LogicalDeviceConfiguration(memory_limit=MiB)])`` per GPU
is checked in tests/unit/test_tf_env.py with a stand-in for ``tf.config``.  On a machine with a
GPU, the same test also reads the limit back from TensorFlow (``get_logical_device_configuration``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

APPLY = r"""
import json
import gpuq.jobs.tf as gq
from gpuq.errors import MemoryConfigTooLate
plan = gq.configure_gpu_memory()
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
out = {"plan": [plan.limit_mib, plan.fraction], "gpus": len(gpus)}
out["limits_mib"] = [[c.memory_limit for c in tf.config.get_logical_device_configuration(g) or []] for g in gpus]
out["growth"] = [tf.config.experimental.get_memory_growth(g) for g in gpus]
tf.constant(1.0)  # TensorFlow initialises its devices here
out["logical_gpus"] = len(tf.config.list_logical_devices("GPU"))
out["same_plan_again"] = gq.configure_gpu_memory() == plan
try:
    gq.configure_gpu_memory(gq.MemoryPlan(limit_mib=1))
    out["changed"] = None
except MemoryConfigTooLate as e:
    out["changed"] = str(e)
sess = tf.compat.v1.Session(config=gq.session_config())
options = sess._config.gpu_options  # what the session was really built with
out["session"] = {"allow_growth": options.allow_growth, "fraction": options.per_process_gpu_memory_fraction}
print("RESULT " + json.dumps(out))
"""

LATE = r"""
import gpuq.jobs.tf as gq
from gpuq.errors import MemoryConfigTooLate
import keras
keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # builds weights: TensorFlow has started
try:
    gq.configure_gpu_memory()
except MemoryConfigTooLate as e:
    print("TOO LATE: " + str(e))
"""


@pytest.fixture(scope="module")
def outputs(job_env: Callable[..., dict[str, str]], tf_env: dict[str, str]) -> dict[str, str]:
    """Run the three subprocesses at once: each spends most of its time importing TensorFlow."""
    runs = {"share": (APPLY, job_env(limit_mib=2048, total_mib=8192)),
            "whole": (APPLY, job_env(limit_mib=None)),
            "late": (LATE, tf_env)}
    procs = {name: subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (code, env) in runs.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name}: {stdout}{stderr}"
        results[name] = stdout
    return results


def _result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_share_from_the_worker_is_applied(outputs: dict[str, str]) -> None:
    out = _result(outputs["share"])
    assert out["plan"] == [2048, 0.25]
    assert out["session"] == {"allow_growth": True, "fraction": 0.25}
    assert out["same_plan_again"] is True
    assert "cannot change it" in out["changed"]
    if out["gpus"]:  # a GPU machine: TensorFlow itself reports the limit
        assert out["limits_mib"] == [[2048]] * out["gpus"]
        assert out["logical_gpus"] == out["gpus"]
    else:
        assert out["limits_mib"] == [] and out["logical_gpus"] == 0


def test_whole_gpu_job_gets_growth_and_no_fraction(outputs: dict[str, str]) -> None:
    out = _result(outputs["whole"])
    assert out["plan"] == [None, None]
    assert out["session"] == {"allow_growth": True, "fraction": 0.0}  # 0 = unset: the whole GPU
    if out["gpus"]:
        assert out["growth"] == [True] * out["gpus"]


def test_too_late_gives_a_clear_error(outputs: dict[str, str]) -> None:
    assert "TOO LATE: configure_gpu_memory() was called after TensorFlow started: move " \
           "`gpuq.jobs.tf.configure_gpu_memory()` to the top of the script" in outputs["late"]
