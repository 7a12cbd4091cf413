"""The pure parts of gpuq.jobs.tf: none of these tests imports TensorFlow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuq.errors import ConfigError, InvalidInput, MemoryConfigTooLate
from gpuq.jobs.model import REQUEUE_EXIT_CODE, Job, JobSpec, JobState, Owner, Placement
from gpuq.jobs.tf.data import ShuffledBatches
from gpuq.jobs.tf.env import (MemoryPlan, checkpoint_dir_from_env, memory_plan_from_env,
                              progress_file_from_env, requeue_exit_code_from_env, restart_count_from_env)
from gpuq.jobs.tf.memory import apply_plan
from gpuq.jobs.tf.progress import ProgressReporter, write_progress_file
from gpuq.workers.env import build_job_env

REPO = Path(__file__).resolve().parents[2]


# ---- memory plan from the environment -------------------------------------------------------

def test_no_share_means_growth() -> None:
    plan = memory_plan_from_env({})
    assert plan == MemoryPlan(limit_mib=None, fraction=None)
    assert plan.growth


def test_share_gives_a_hard_limit_and_a_fraction() -> None:
    plan = memory_plan_from_env({"GPUQ_GPU_MEM_MIB": "10240", "GPUQ_GPU_MEM_FRACTION": "0.2500"})
    assert plan == MemoryPlan(limit_mib=10240, fraction=0.25)
    assert not plan.growth
    assert "10240 MiB" in plan.describe()


def test_fraction_alone_is_kept_for_tf1_but_gives_no_mib_limit() -> None:
    plan = memory_plan_from_env({"GPUQ_GPU_MEM_FRACTION": "0.5"})
    assert plan == MemoryPlan(limit_mib=None, fraction=0.5)


@pytest.mark.parametrize("env", [
    {"GPUQ_GPU_MEM_MIB": "ten"}, {"GPUQ_GPU_MEM_MIB": "0"}, {"GPUQ_GPU_MEM_MIB": "-5"},
    {"GPUQ_GPU_MEM_MIB": "1.5"}, {"GPUQ_GPU_MEM_FRACTION": "x"}, {"GPUQ_GPU_MEM_FRACTION": "0"},
    {"GPUQ_GPU_MEM_FRACTION": "1.5"}, {"GPUQ_GPU_MEM_FRACTION": "nan"},
])
def test_malformed_share_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        memory_plan_from_env(env)


def test_the_workers_environment_parses_back_into_the_share() -> None:
    job = Job(id=7, spec=JobSpec(argv=("python", "train.py"), cwd="/tmp"), owner=Owner(1000, 1000, "ada"),
              state=JobState.RUNNING, submitted_at=0.0, placed_at=1.0,
              placement=Placement(node="n1", gpu_uuids=("GPU-a", "GPU-b"), gpu_indices=(0, 1),
                                  reserved_mib=(4096, 4096), limit_mib=(4096, 4096),
                                  gpu_total_mib=(16384, 16384)))
    env = build_job_env(job, checkpoint_dir="/ckpt/7", progress_file="/run/7.json")
    assert memory_plan_from_env(env) == MemoryPlan(limit_mib=4096, fraction=0.25)
    assert checkpoint_dir_from_env(None, env) == "/ckpt/7"
    assert progress_file_from_env(env) == "/run/7.json"
    assert requeue_exit_code_from_env(env) == REQUEUE_EXIT_CODE == 75
    assert restart_count_from_env(env) == 0


def test_whole_gpu_job_gets_growth_from_the_workers_environment() -> None:
    job = Job(id=8, spec=JobSpec(argv=("python", "train.py"), cwd="/tmp"), owner=Owner(1000, 1000, "ada"),
              state=JobState.RUNNING, submitted_at=0.0, placed_at=1.0,
              placement=Placement(node="n1", gpu_uuids=("GPU-a",), gpu_indices=(0,), reserved_mib=(16384,),
                                  limit_mib=(None,), gpu_total_mib=(16384,)))
    assert memory_plan_from_env(build_job_env(job, "/c", "/p")).growth


# ---- the rest of the contract ---------------------------------------------------------------

def test_checkpoint_dir_precedence() -> None:
    assert checkpoint_dir_from_env("mine", {"GPUQ_CHECKPOINT_DIR": "/gpuq"}) == "mine"
    assert checkpoint_dir_from_env(None, {"GPUQ_CHECKPOINT_DIR": "/gpuq"}) == "/gpuq"
    assert checkpoint_dir_from_env(None, {}) == "checkpoints"


def test_requeue_exit_code_and_restart_count() -> None:
    assert requeue_exit_code_from_env({}) == 75
    assert requeue_exit_code_from_env({"GPUQ_REQUEUE_EXIT_CODE": "99"}) == 99
    for bad in ("0", "300", "x"):
        with pytest.raises(ConfigError):
            requeue_exit_code_from_env({"GPUQ_REQUEUE_EXIT_CODE": bad})
    assert restart_count_from_env({"GPUQ_RESTART_COUNT": "3"}) == 3
    assert progress_file_from_env({}) is None


# ---- applying the plan (tf.config stand-in: there is no GPU here) ---------------------------

@dataclass
class FakeGpuDevice:
    name: str


@dataclass
class RecordingTfConfigWithoutGpu:
    """Stands in for ``tf.config`` with simulated GPUs; records what the runtime asked for."""

    initialised: bool = False
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    @dataclass(frozen=True)
    class LogicalDeviceConfiguration:
        memory_limit: int | None = None

    def set_logical_device_configuration(self, device: FakeGpuDevice, configs: list[Any]) -> None:
        if self.initialised:
            raise RuntimeError("Virtual devices cannot be modified after being initialized")
        self.calls.append(("logical", device.name, configs))

    @property
    def experimental(self) -> "RecordingTfConfigWithoutGpu":
        return self

    def set_memory_growth(self, device: FakeGpuDevice, enable: bool) -> None:
        if self.initialised:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.calls.append(("growth", device.name, enable))


GPUS = [FakeGpuDevice("/physical_device:GPU:0"), FakeGpuDevice("/physical_device:GPU:1")]


def test_a_share_becomes_a_memory_limit_on_every_gpu() -> None:
    api = RecordingTfConfigWithoutGpu()
    apply_plan(api, GPUS, MemoryPlan(limit_mib=2048, fraction=0.125))
    limit = api.LogicalDeviceConfiguration(memory_limit=2048)
    assert api.calls == [("logical", g.name, [limit]) for g in GPUS]


def test_no_share_becomes_memory_growth_on_every_gpu() -> None:
    api = RecordingTfConfigWithoutGpu()
    apply_plan(api, GPUS, MemoryPlan())
    assert api.calls == [("growth", g.name, True) for g in GPUS]


def test_too_late_says_what_to_move() -> None:
    with pytest.raises(MemoryConfigTooLate, match="move `gpuq.jobs.tf.configure_gpu_memory\\(\\)` to the top"):
        apply_plan(RecordingTfConfigWithoutGpu(initialised=True), GPUS, MemoryPlan(limit_mib=1024))


# ---- data position and progress -------------------------------------------------------------

def test_batches_depend_only_on_seed_and_step() -> None:
    x = np.arange(50)
    a, b = ShuffledBatches((x,), 8, seed=3), ShuffledBatches((x,), 8, seed=3)
    assert a.steps_per_epoch == 6
    forward = [a.indices(k).tolist() for k in range(20)]
    backward = [b.indices(k).tolist() for k in reversed(range(20))][::-1]
    assert forward == backward
    epoch0 = np.concatenate([a.indices(k) for k in range(6)])
    assert len(set(epoch0.tolist())) == 48  # each row at most once per epoch
    assert a.order(0).tolist() != a.order(1).tolist()  # reshuffled every epoch
    assert ShuffledBatches((x,), 8, seed=4).indices(0).tolist() != forward[0]


def test_batches_reject_bad_input() -> None:
    with pytest.raises(InvalidInput):
        ShuffledBatches((np.zeros(3), np.zeros(4)), 1, seed=0)
    with pytest.raises(InvalidInput):
        ShuffledBatches((np.zeros(3),), 4, seed=0)


def test_progress_file_has_the_contract_keys(tmp_path: Path) -> None:
    path = tmp_path / "p" / "progress.json"
    write_progress_file(str(path), step=5, total=10, epoch=1, loss=float("nan"), eta_s=3.21, updated_at=100.0)
    assert json.loads(path.read_text()) == {"step": 5, "total": 10, "epoch": 1, "loss": None, "eta_s": 3.2,
                                            "updated_at": 100.0}
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]  # no temp file left behind


def test_progress_reporter_rate_limits_and_estimates_eta(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "progress.json"
    rep = ProgressReporter(str(path), total=100, start_step=40, min_interval_s=2.0,
                           clock=lambda: now[0], wall_clock=lambda: 1000.0 + now[0])
    now[0] = 1.0
    rep.report(50, loss=0.5, epoch=2)  # first report writes: 10 steps in 1 s -> 50 left = 5 s
    assert json.loads(path.read_text())["eta_s"] == 5.0
    now[0] = 1.5
    rep.report(55, loss=0.4)
    assert json.loads(path.read_text())["step"] == 50  # too soon
    rep.report(55, loss=0.4, force=True)
    record = json.loads(path.read_text())
    assert (record["step"], record["loss"], record["epoch"], record["updated_at"]) == (55, 0.4, 2, 1001.5)


def test_progress_reporter_without_a_file_is_a_no_op() -> None:
    rep = ProgressReporter(None, total=None)
    rep.report(3, loss=1.0, force=True)
    assert rep.eta_s() is None and not rep.due()


# ---- heavy imports stay lazy -----------------------------------------------------------------

def test_importing_the_runtime_does_not_import_tensorflow() -> None:
    code = ("import sys, gpuq.jobs.tf as gq, gpuq.jobs.tf.memory, gpuq.jobs.model, gpuq.workers.env; "
            "gq.memory_plan_from_env({}); print('tensorflow' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_gpu_contract_script_parses() -> None:
    ast.parse((REPO / "tests" / "gpu" / "tf_contract_torch.py").read_text())


# ---- SIGTERM phases (gpuq.jobs.tf.stop; pure Python, a real signal to a child process) ----------

STOP_SCRIPT = r"""
import os, signal, sys, time
from gpuq.jobs.tf.stop import GUARD, Phase
phase = sys.argv[1]
if phase != "import":
    GUARD.enter(Phase(phase))
if phase == "training":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    print("remembered", GUARD.stop_requested, flush=True)
    GUARD.enter(Phase.FINISHED)  # the final save is done: the pending SIGTERM exits now
else:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
print("not reached", flush=True)
"""


@pytest.mark.parametrize("phase, exit_code, says", [
    ("before-training", 75, "SIGTERM before training started"),
    ("training", 75, "remembered True"),
    ("finished", 75, "SIGTERM after training finished"),
    ("import", -15, ""),  # not under gpuq and nothing installed the guard: the default action
])
def test_sigterm_never_kills_a_guarded_script(phase: str, exit_code: int, says: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", STOP_SCRIPT, phase], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert says in done.stdout and "not reached" not in done.stdout
    if phase == "training":
        assert "SIGTERM after training finished" in done.stdout


def test_importing_the_runtime_under_gpuq_guards_sigterm() -> None:
    code = ("import os, signal, time, gpuq.jobs.tf; os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); "
            "print('not reached')")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "GPUQ_JOB_ID": "7", "GPUQ_REQUEUE_EXIT_CODE": "75"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 75 and "SIGTERM before training started" in done.stdout, done.stdout + done.stderr
