"""TrainingRun's own behaviour: progress while running, time-based saves, a mismatched checkpoint.

One subprocess runs all the scenarios (TensorFlow takes seconds to import) and prints one JSON
line that the tests below read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = r"""
import json, os, signal, sys, time
import gpuq.jobs.tf as gq
from gpuq.errors import CheckpointError
gq.configure_gpu_memory(quiet=True)
import keras

root = sys.argv[1]
out = {}

def model_of(width):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width)])
    return model, keras.optimizers.SGD(0.1)

# Progress while running, under the job environment (GPUQ_PROGRESS_FILE is set).
model, opt = model_of(4)
run = gq.TrainingRun(total_steps=40, model=model, optimizer=opt, checkpoint_dir=os.path.join(root, "a"),
                     steps_per_epoch=10, save_every_steps=None, save_every_s=0.2)
latest_seen = set()
for step in run.steps():
    run.report_loss(float(step) / 10)
    time.sleep(0.03)
    if run.manager.latest_checkpoint:
        latest_seen.add(run.manager.latest_checkpoint)
    if step == 30:
        with open(os.environ["GPUQ_PROGRESS_FILE"]) as f:
            out["progress_mid_run"] = json.load(f)
run.finish()
with open(os.environ["GPUQ_PROGRESS_FILE"]) as f:
    out["progress_end"] = json.load(f)
out["time_based_saves"] = len(latest_seen)

# The same directory, a different model: refused with a domain error.
other, other_opt = model_of(7)
try:
    gq.TrainingRun(total_steps=40, model=other, optimizer=other_opt, checkpoint_dir=os.path.join(root, "a"))
    out["mismatch"] = None
except CheckpointError as e:
    out["mismatch"] = str(e)
out["sigterm_after_failed_start"] = [signal.getsignal(signal.SIGTERM) == gq.GUARD._on_sigterm, gq.GUARD.phase.value]

# No model at all: only the step counter and run.rng are checkpointed.
bare = gq.TrainingRun(total_steps=3, checkpoint_dir=os.path.join(root, "b"))
draws = [float(bare.rng.uniform(())) for _ in bare.steps()]
bare.finish()
again = gq.TrainingRun(total_steps=3, checkpoint_dir=os.path.join(root, "b"))
out["bare"] = {"draws": len(draws), "resumed_at": again.start_step, "left": len(list(again.steps()))}

# A tf.data pipeline that cannot resume exactly is named in a warning; run.batches() feeds its batches.
import io
import tensorflow as tf
log = io.StringIO()
parallel = tf.data.Dataset.range(12).map(lambda v: v * 2, num_parallel_calls=2, deterministic=False).batch(3)
run = gq.TrainingRun(epochs=2, data=parallel, checkpoint_dir=os.path.join(root, "c"), log=log)
out["pipeline_warning"] = log.getvalue()
out["pipeline"] = {"steps_per_epoch": run.steps_per_epoch, "total": run.total_steps,
                   "batches": [sorted(b.numpy().tolist()) for _, b in run.batches()]}
run.finish()
out["phase_after_finish"] = gq.GUARD.phase.value

# gq.fit refuses what it cannot resume exactly, in one sentence, before touching any checkpoint.
from gpuq.errors import InvalidInput
import numpy as np
refusals = []
compiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
compiled.compile(optimizer="sgd", loss="mse")
for args, kwargs in [((model_of(2)[0], tf.data.Dataset.range(3).batch(1)), {}),
                     ((compiled, np.zeros((4, 3))), {}),
                     ((compiled, tf.data.Dataset.from_tensor_slices((np.zeros((5, 3)), np.zeros(5))).batch(2)), {}),
                     ((compiled, tf.data.Dataset.range(3).batch(1)), {"shuffle": True})]:
    try:
        gq.fit(*args, epochs=1, checkpoint_dir=os.path.join(root, "never"), **kwargs)
        refusals.append(None)
    except InvalidInput as e:
        refusals.append(str(e))
out["fit_refusals"] = refusals

# Garbage in the checkpoint directory (a hostile user, a bad disk): one clear sentence, never a start over.
garbage = {"binary-list": {"checkpoint": b"junk \x00\xff{{"},
           "list-names-none": {"checkpoint": b"model_checkpoint_path: {{{ nonsense\n", "ckpt-5.index": b"x"},
           "truncated-index": {"checkpoint": b'model_checkpoint_path: "ckpt-5"\n', "ckpt-5.index": b"xx"}}
out["garbage"] = {}
for name, files in garbage.items():
    d = os.path.join(root, name)
    os.makedirs(d)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)
    try:
        gq.TrainingRun(total_steps=3, checkpoint_dir=d)
        out["garbage"][name] = None
    except CheckpointError as e:
        out["garbage"][name] = str(e)
out["fit_wrote_nothing"] = not os.path.exists(os.path.join(root, "never"))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result(job_env: Callable[..., dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("runtime")
    done = subprocess.run([sys.executable, "-c", SCENARIOS, str(workdir)], env=job_env(workdir=workdir),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_progress_is_reported_while_running(result: dict) -> None:
    mid = result["progress_mid_run"]
    assert 0 < mid["step"] <= 31 and mid["total"] == 40
    assert mid["epoch"] == mid["step"] // 10
    assert mid["loss"] is not None and mid["eta_s"] is not None and mid["eta_s"] > 0
    end = result["progress_end"]
    assert (end["step"], end["total"], end["epoch"], end["loss"]) == (40, 40, 4, 3.9)


def test_checkpoints_are_written_by_time_too(result: dict) -> None:
    assert result["time_based_saves"] >= 2  # save_every_steps=None: only the 0.2 s clock saved


def test_a_checkpoint_of_another_model_is_a_clear_error(result: dict) -> None:
    assert "does not match this model" in result["mismatch"]
    assert "delete the old checkpoints" in result["mismatch"]
    # the failed run does not leave SIGTERM swallowed: it exits 75 at once again, as before training
    assert result["sigterm_after_failed_start"] == [True, "before-training"]


def test_a_non_deterministic_pipeline_is_named_and_batches_come_from_the_dataset(result: dict) -> None:
    assert "warning: this tf.data pipeline will not resume exactly" in result["pipeline_warning"]
    assert "deterministic=False" in result["pipeline_warning"]
    pipeline = result["pipeline"]
    assert (pipeline["steps_per_epoch"], pipeline["total"]) == (4, 8)  # from the dataset's cardinality
    assert sorted(v for b in pipeline["batches"][:4] for v in b) == [2 * v for v in range(12)]
    assert len(pipeline["batches"]) == 8
    assert result["phase_after_finish"] == "finished"


def test_garbage_in_the_checkpoint_directory_is_one_clear_error(result: dict) -> None:
    garbage = result["garbage"]
    assert "checkpoint list" in garbage["binary-list"] and "is unreadable" in garbage["binary-list"]
    assert "names none of them" in garbage["list-names-none"]
    assert "does not match this model or is damaged" in garbage["truncated-index"]
    assert all("\n" not in text for text in garbage.values())


def test_gq_fit_refuses_what_it_cannot_resume_exactly(result: dict) -> None:
    uncompiled, arrays, ragged, shuffle = result["fit_refusals"]
    assert "compile the model before gq.fit" in uncompiled
    assert "needs a tf.data.Dataset of batches, not ndarray" in arrays
    assert "drop_remainder=True" in ragged
    assert "gq.fit decides shuffle= itself" in shuffle
    assert result["fit_wrote_nothing"]


def test_a_run_without_a_model_still_checkpoints_its_step(result: dict) -> None:
    assert result["bare"] == {"draws": 3, "resumed_at": 3, "left": 0}
