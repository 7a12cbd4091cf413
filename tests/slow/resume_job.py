"""A small training script that uses every kind of state the runtime must carry across a restart.

Used by test_tf_resume.py.  Besides weights it has: a staircase learning-rate decay (optimizer
``iterations``), L2 regularisation, an EMA of the weights (``use_ema``), dropout (a Keras
``SeedGenerator``), input noise from ``run.rng`` (a ``tf.random.Generator``) and a shuffled data
order that depends on the step.  With ``--trace`` it appends one JSON line per step with that
state, and one line at start-up with the state it restored, so a test can compare both with an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np

import gpuq.jobs.tf as gq


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--save-every-steps", type=int, default=50)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--trace", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    gq.configure_gpu_memory(quiet=True)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    rows = np.random.default_rng(123)
    x = rows.normal(size=(256, 8)).astype("float32")
    y = (x @ rows.normal(size=(8, 1)) + 0.1 * rows.normal(size=(256, 1))).astype("float32")
    batches = gq.ShuffledBatches((x, y), batch_size=32, seed=args.seed)

    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(1),
    ])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=batches.steps_per_epoch,
                                                           decay_rate=0.9, staircase=True)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, use_ema=True, ema_momentum=0.95)
    run = gq.TrainingRun(total_steps=args.steps, model=model, optimizer=optimizer, seed=args.seed,
                         checkpoint_dir=args.checkpoint_dir, save_every_steps=args.save_every_steps,
                         save_every_s=None, steps_per_epoch=batches.steps_per_epoch)
    averages = [v for v in optimizer.variables if v.path.endswith("_average")]  # the EMA (built by now)
    if not averages:
        raise SystemExit("use_ema=True should give the optimizer moving-average variables")

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        xb = xb + run.rng.normal(tf.shape(xb), stddev=0.01)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def state(kind: str, step: int) -> dict:
        seed_states = [v.numpy().tolist() for v in model.non_trainable_variables]
        return {
            "kind": kind, "step": step, "iterations": int(optimizer.iterations.numpy()),
            "lr": float(schedule(optimizer.iterations)),
            "ema_sum": float(sum(np.sum(v.numpy(), dtype=np.float64) for v in averages)),
            "weights_sum": float(sum(np.sum(v.numpy(), dtype=np.float64) for v in model.trainable_variables)),
            "rng_state": run.rng.state.numpy().tolist(), "seed_states": seed_states,
        }

    with open(args.trace, "a") as trace:
        trace.write(json.dumps(state("start", run.start_step)) + "\n")
        trace.flush()
        for step in run.steps():
            run.report_loss(train_step(*batches.batch(step)))
            if args.step_sleep:
                time.sleep(args.step_sleep)
            trace.write(json.dumps(state("after", step + 1)) + "\n")
            trace.flush()
        run.finish()
    np.savez(args.out,
             **{f"w{i}": v.numpy() for i, v in enumerate(model.trainable_variables)},
             **{f"ema{i}": v.numpy() for i, v in enumerate(averages)},
             iterations=optimizer.iterations.numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
