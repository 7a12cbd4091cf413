"""The examples run to completion under gpuq's job environment (on CPU), and learn what they should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_digits_classic_reaches_a_sane_accuracy(job_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = job_env(limit_mib=1024, workdir=tmp_path)
    out = tmp_path / "metrics.json"
    stdout = _run("digits_classic.py", ["--out", str(out)], env, tmp_path)
    metrics = json.loads(out.read_text())
    assert metrics["test_accuracy"] >= 0.94, stdout
    assert metrics["iterations"] == 3000
    assert "lr 0.0931" in stdout  # 0.8 * 0.99 ** (2999 // 14): the decay ran once per epoch
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["step"] == progress["total"] == 3000
    assert set(progress) == {"step", "total", "epoch", "loss", "eta_s", "updated_at"}
    assert (tmp_path / "ckpt" / "checkpoint").exists()


def test_digits_fit_trains_with_mirrored_strategy(job_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    """model.fit + tf.data through gq.fit, under MirroredStrategy over two logical CPU devices."""
    env = job_env(limit_mib=1024, workdir=tmp_path)
    out = tmp_path / "metrics.json"
    stdout = _run("digits_fit.py", ["--epochs", "20", "--mirrored", "--out", str(out)], env, tmp_path)
    metrics = json.loads(out.read_text())
    assert metrics["replicas"] == 2 and metrics["iterations"] == 20 * 14, stdout
    assert metrics["test_accuracy"] >= 0.9, stdout
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["step"] == progress["total"] == 280 and progress["epoch"] == 20
    assert (tmp_path / "ckpt" / "ckpt-280.index").exists()


def test_custom_loss_predicts_on_the_expensive_side(job_env: Callable[..., dict[str, str]],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "weights.json"
    _run("custom_loss.py", ["--out", str(out)], job_env(workdir=tmp_path), tmp_path)
    result = json.loads(out.read_text())
    assert all(1.0 < w < 1.1 for w in result["weights"]), result
    assert result["over_prediction_share"] > 0.75, result  # under-prediction costs 10x more


def test_tf1_compat_session_gets_the_share(job_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    stdout = _run("tf1_compat.py", [], job_env(limit_mib=2048, total_mib=8192, workdir=tmp_path), tmp_path)
    assert "allow_growth=True per_process_gpu_memory_fraction=0.25" in stdout
    assert "done: step 3000" in stdout


def test_mnist_files_are_read_in_the_classic_format(tmp_path: Path) -> None:
    """--mnist-dir reads the four idx files (tiny fakes here; the real ones are not shipped)."""
    import gzip
    import importlib.util
    import struct

    import numpy as np

    def write(name: str, header: bytes, payload: np.ndarray) -> None:
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + payload.astype(np.uint8).tobytes())

    images = np.arange(3 * 784).reshape(3, 784) % 256
    for prefix in ("train", "t10k"):
        write(f"{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, 3, 28, 28), images)
        write(f"{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 0x801, 3), np.array([7, 2, 1]))
    spec = importlib.util.spec_from_file_location("digits_classic", EXAMPLES / "digits_classic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports numpy and gpuq.jobs.tf only; TensorFlow loads in main()
    x_train, y_train, x_test, y_test = module.load_mnist(str(tmp_path))
    assert x_train.shape == x_test.shape == (3, 784) and x_train.dtype == np.float32
    assert float(x_train.max()) == 1.0 and y_train.tolist() == y_test.tolist() == [7, 2, 1]
