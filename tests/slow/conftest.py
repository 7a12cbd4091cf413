"""Shared helpers for the TensorFlow tests (these need the `tf` extra: tensorflow-cpu, scikit-learn)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tf_env(tmp_path: Path) -> dict[str, str]:
    """A plain environment for a training subprocess: quiet TensorFlow, repo on the path, no gpuq vars."""
    if importlib.util.find_spec("tensorflow") is None:  # find, not import: the test process stays light
        pytest.skip("TensorFlow is not installed: pip install 'gpuq[tf]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env

