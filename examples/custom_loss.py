"""A regression whose loss charges more for under-prediction than for over-prediction.

The classic example: a product's sales ``y_`` are ``x1 + x2`` plus a little noise.  Predicting
too few (``y < y_``) costs ``b`` per unit (lost profit), predicting too many costs ``a`` per unit
(unsold stock), with ``b > a``::

    loss = mean(tf.where(y > y_, (y - y_) * a, (y_ - y) * b))

The model learns to predict on the high side: weights a little above 1, and about
``b / (a + b)`` of its predictions above the label.  Synthetic data, a few seconds on CPU.

    python examples/custom_loss.py
    gpuq submit --gpus 0 --checkpointable examples/custom_loss.py --steps 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import numpy as np

import gpuq.jobs.tf as gq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--examples", type=int, default=128, help="size of the synthetic data set")
    p.add_argument("--a", type=float, default=1.0, help="cost per unit of over-prediction")
    p.add_argument("--b", type=float, default=10.0, help="cost per unit of under-prediction")
    p.add_argument("--learning-rate", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None, help="default: $GPUQ_CHECKPOINT_DIR, else ./checkpoints")
    p.add_argument("--save-every-steps", type=int, default=1000)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--out", default=None, help="write the learned weights as JSON here")
    return p.parse_args(argv)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.4f}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gq.configure_gpu_memory()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.examples, 2)).astype("float32")
    labels = (x.sum(axis=1, keepdims=True) + rng.random((args.examples, 1)) / 10.0 - 0.05).astype("float32")
    batches = gq.ShuffledBatches((x, labels), args.batch_size, seed=args.seed)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = keras.optimizers.Adam(args.learning_rate)
    a, b = args.a, args.b

    def asymmetric_loss(y_: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.where(y > y_, (y - y_) * a, (y_ - y) * b))

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = asymmetric_loss(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    run = gq.TrainingRun(total_steps=args.steps, model=model, optimizer=optimizer, seed=args.seed,
                         checkpoint_dir=args.checkpoint_dir, steps_per_epoch=batches.steps_per_epoch,
                         save_every_steps=args.save_every_steps)
    started_s = time.monotonic()
    for step in run.steps():
        loss = train_step(*batches.batch(step))
        run.report_loss(loss)
        if (step + 1) % 1000 == 0:
            print(f"step {step + 1}/{args.steps} loss {float(loss):.5f} "
                  f"w {_fmt(model.trainable_variables[0].numpy().ravel())}", flush=True)
        if args.step_sleep:
            time.sleep(args.step_sleep)
    run.finish()

    weights = model.trainable_variables[0].numpy().ravel().tolist()
    over = float(np.mean(model(x, training=False).numpy() > labels))
    print(f"done in {time.monotonic() - started_s:.1f} s this run: w = {_fmt(weights)} "
          f"(the noise-free answer is [1, 1]); {over:.0%} of predictions are above the label "
          f"(b/(a+b) = {b / (a + b):.0%})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"weights": weights, "over_prediction_share": over, "steps": args.steps}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
