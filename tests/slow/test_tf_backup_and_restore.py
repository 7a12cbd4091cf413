"""Evidence for docs/runtime.md: Keras 3's BackupAndRestore does not resume exactly.

A characterisation test of Keras, not of gpuq: if a Keras release changes this behaviour, this
test fails and docs/runtime.md's comparison must be revisited.  One subprocess runs three
``model.fit`` calls with the same seed: uninterrupted; interrupted after 33 of 60 batches with
``BackupAndRestore(save_freq=5)``; and resumed from that backup.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXPERIMENT = r"""
import json, sys
import numpy as np, keras

backup_dir = sys.argv[1]

class Interrupt(Exception):
    pass

def fit(mode):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((200, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            if mode == "interrupted" and len(seen) == 33:  # epoch 1, batch 12; last backup after batch 9
                raise Interrupt()

    callbacks = [Count()]
    if mode != "reference":
        callbacks.insert(0, keras.callbacks.BackupAndRestore(backup_dir, save_freq=5))
    try:
        model.fit(x, x.sum(axis=1), batch_size=10, epochs=3, callbacks=callbacks, verbose=0)
    except Interrupt:
        pass
    return {"batches": len(seen), "iterations": int(model.optimizer.iterations.numpy()),
            "weights": [w.ravel().tolist() for w in model.get_weights()]}

print(json.dumps({mode: fit(mode) for mode in ("reference", "interrupted", "resumed")}))
"""


def test_backup_and_restore_replays_the_partial_epoch(tf_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", EXPERIMENT, str(tmp_path / "backup")], env=tf_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["reference"]["batches"] == 60
    assert runs["interrupted"]["batches"] == 33
    # The backup after batch 30 (epoch 1, batch 9) restores weights and the optimizer's step
    # counter, but training restarts at the *start* of epoch 1: its first 10 batches run twice.
    assert runs["resumed"]["batches"] == 40
    assert runs["resumed"]["iterations"] == 70  # not 60: a decay schedule would be 10 steps ahead
    assert runs["resumed"]["weights"] != runs["reference"]["weights"]
