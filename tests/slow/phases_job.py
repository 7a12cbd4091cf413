"""A training script that receives a real SIGTERM in a chosen phase (test_tf_sigterm_phases.py).

``--sigterm-in`` picks where the script sends SIGTERM to itself, so that it lands exactly there:

``restore``   inside ``tf.train.Checkpoint.restore`` (TrainingRun's start);
``training``  after the second step of this run is computed, before the runtime counts it;
``finish``    inside the final save of ``run.finish()``;
``epilogue``  after ``run.finish()``, while the script evaluates and writes its output.

(``import`` is sent by the test from outside, while TensorFlow imports.)  The checkpoint has a
16 MiB extra variable, so that a save takes long enough to be caught in the middle by SIGKILL.
Each start prints ``STATE {...}`` with the restored step and a digest of every variable, and
each step appends the same to the trace, so the test can compare with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402

import gpuq.jobs.tf as gq  # noqa: E402  (under gpuq this installs the SIGTERM guard)

print("IMPORTING", flush=True)  # the test's cue for a SIGTERM while TensorFlow imports (configure_gpu_memory)

STEPS = 24


def sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--trace", required=True)
    p.add_argument("--sigterm-in", choices=("restore", "training", "finish", "epilogue"))
    p.add_argument("--save-every-steps", type=int, default=5)
    p.add_argument("--step-sleep", type=float, default=0.0)
    args = p.parse_args()
    gq.configure_gpu_memory(quiet=True)  # imports TensorFlow

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    rows = np.random.default_rng(5)
    x = rows.normal(size=(96, 4)).astype("float32")
    y = (x @ rows.normal(size=(4, 1))).astype("float32")
    batches = gq.ShuffledBatches((x, y), batch_size=16, seed=2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.25), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True)
    ballast = tf.Variable(tf.zeros([4 * 1024 * 1024]), trainable=False)  # 16 MiB in every checkpoint

    if args.sigterm_in == "restore":
        real_restore = tf.train.Checkpoint.restore

        def restore_with_sigterm(self: tf.train.Checkpoint, *a: object, **k: object) -> object:
            sigterm_self()
            return real_restore(self, *a, **k)

        tf.train.Checkpoint.restore = restore_with_sigterm
    run = gq.TrainingRun(total_steps=STEPS, model=model, optimizer=optimizer, seed=2, extra={"ballast": ballast},
                         checkpoint_dir=args.checkpoint_dir, save_every_steps=args.save_every_steps,
                         save_every_s=None, steps_per_epoch=batches.steps_per_epoch)

    def state(step: int) -> dict:
        digest = hashlib.sha256()
        for v in [*model.weights, *optimizer.variables, run.rng.state]:
            digest.update(np.ascontiguousarray(v.numpy()).tobytes())
        return {"step": step, "digest": digest.hexdigest(), "ballast": float(tf.reduce_sum(ballast))}

    print("STATE " + json.dumps(state(run.start_step)), flush=True)
    with open(args.trace, "a") as trace:
        trace.write(json.dumps(state(run.start_step)) + "\n")

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        xb = xb + run.rng.normal(tf.shape(xb), stddev=0.01)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    trained = 0
    with open(args.trace, "a") as trace:
        for step in run.steps():
            ballast.assign_add(tf.ones_like(ballast))  # every checkpoint's ballast says which step it is
            run.report_loss(train_step(*batches.batch(step)))
            trained += 1
            if args.sigterm_in == "training" and trained == 2:
                sigterm_self()
            trace.write(json.dumps(state(step + 1)) + "\n")
            trace.flush()
            time.sleep(args.step_sleep)
    if args.sigterm_in == "finish":
        real_save = run.manager.save

        def save_with_sigterm(*a: object, **k: object) -> str:
            sigterm_self()
            return real_save(*a, **k)

        run.manager.save = save_with_sigterm
        run.save_every_steps = None
    run.finish()
    print(f"trained {trained} steps in this run", flush=True)
    # the epilogue: evaluate and write the output (what a requeued run must redo, and only that)
    if args.sigterm_in == "epilogue":
        sigterm_self()
        time.sleep(600)  # never ends: the SIGTERM exits 75 at once (the test waits at most 180 s)
    optimizer.finalize_variable_values(model.trainable_variables)
    np.savez(args.out, *[v.numpy() for v in model.weights], ballast_sum=float(tf.reduce_sum(ballast)))
    print("EPILOGUE DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
