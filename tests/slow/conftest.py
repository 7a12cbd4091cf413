"""Shared fixtures for the TensorFlow tests (they need the `tf` extra: tensorflow-cpu, scikit-learn)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import pytest

from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement
from gpuq.workers.env import build_job_env

REPO = Path(__file__).resolve().parents[2]


def _require_tensorflow() -> None:
    if importlib.util.find_spec("tensorflow") is None:  # find, not import: the test process stays light
        pytest.fail("TensorFlow is not installed: pip install 'gpuq[tf]' (the slow tests need it; they do not skip)")


def _passthrough() -> dict[str, str]:
    return {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
            "HOME": os.environ.get("HOME", "/tmp"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


@pytest.fixture(scope="session")
def tf_env() -> dict[str, str]:
    """A plain environment for a training subprocess run by hand: no gpuq variables, no GPU."""
    _require_tensorflow()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env.update(_passthrough())
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.fixture(scope="session")
def job_env(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, str]]:
    """The environment gpuq's worker builds for a job (``gpuq.workers.env.build_job_env``).

    The placement names a simulated GPU (no GPU exists here): CUDA sees no device and
    TensorFlow runs on CPU, but every variable of the contract is set as in production.
    ``workdir`` gets ``ckpt/`` and ``progress.json`` (a fresh temp dir if not given).
    """
    _require_tensorflow()

    def make(limit_mib: int | None = None, total_mib: int = 8192, requeues: int = 0,
             workdir: Path | None = None) -> dict[str, str]:
        workdir = workdir if workdir is not None else tmp_path_factory.mktemp("job")
        job = Job(id=42, spec=JobSpec(argv=("python", "train.py"), cwd=str(workdir), env=_passthrough()),
                  owner=Owner(os.getuid(), os.getgid(), "tester"), state=JobState.RUNNING,
                  submitted_at=0.0, placed_at=1.0, requeues=requeues,
                  placement=Placement(node="sim", gpu_uuids=("GPU-00000000-0000-0000-0000-simulated0",),
                                      gpu_indices=(0,), reserved_mib=(limit_mib or total_mib,),
                                      limit_mib=(limit_mib,), gpu_total_mib=(total_mib,)))
        return build_job_env(job, checkpoint_dir=str(workdir / "ckpt"),
                             progress_file=str(workdir / "progress.json"))

    return make
