"""The classic first TensorFlow network, in TensorFlow 2 / Keras 3, under gpuq.

A fully connected classifier with one hidden layer, trained with the classic recipe:
exponential learning-rate decay (base 0.8, times 0.99 once per epoch, staircase), L2
regularisation of the weights, and a moving average of the weights (used for evaluation).

Data: scikit-learn's 8x8 handwritten digits (shipped with the package, no download), or MNIST
if ``--mnist-dir`` points at the four classic ``*-ubyte.gz`` files.

    python examples/digits_classic.py
    gpuq submit --gpus 1 --gpu-mem 2GiB --checkpointable examples/digits_classic.py

It checkpoints into $GPUQ_CHECKPOINT_DIR (or --checkpoint-dir, or ./checkpoints) and resumes
exactly where it stopped; on SIGTERM it saves and exits 75 so gpuq requeues it.
``--step-sleep`` slows each step down, to watch a requeue happen.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import numpy as np

import gpuq.jobs.tf as gq

BASE_LEARNING_RATE = 0.8
LEARNING_RATE_DECAY = 0.99
REGULARIZATION_RATE = 1e-4
MOVING_AVERAGE_DECAY = 0.99


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, default=100, help="hidden units (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-dir", default=None, help="directory with the MNIST *-ubyte.gz files")
    p.add_argument("--checkpoint-dir", default=None,
                   help="default: $GPUQ_CHECKPOINT_DIR, else ./checkpoints")
    p.add_argument("--save-every-steps", type=int, default=500)
    p.add_argument("--save-every-s", type=float, default=120.0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--out", default=None, help="write final metrics as JSON here")
    return p.parse_args(argv)


def load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def load_mnist(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(os.path.join(directory, name), "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    x_train = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype("float32") / 255.0
    y_train = read("train-labels-idx1-ubyte.gz", 8).astype("int32")
    x_test = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype("float32") / 255.0
    y_test = read("t10k-labels-idx1-ubyte.gz", 8).astype("int32")
    return x_train, y_train, x_test, y_test


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gq.configure_gpu_memory()  # before TensorFlow builds anything

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    if args.mnist_dir:
        x_train, y_train, x_test, y_test = load_mnist(args.mnist_dir)
    else:
        x_train, y_train, x_test, y_test = load_digits(args.seed)
    batches = gq.ShuffledBatches((x_train, y_train), args.batch_size, seed=args.seed)

    l2 = keras.regularizers.L2(REGULARIZATION_RATE)
    model = keras.Sequential([
        keras.Input((x_train.shape[1],)),
        keras.layers.Dense(args.hidden, activation="relu", kernel_regularizer=l2),
        keras.layers.Dense(10, kernel_regularizer=l2),
    ])
    learning_rate = keras.optimizers.schedules.ExponentialDecay(
        BASE_LEARNING_RATE, decay_steps=batches.steps_per_epoch, decay_rate=LEARNING_RATE_DECAY,
        staircase=True)
    optimizer = keras.optimizers.SGD(learning_rate, use_ema=True, ema_momentum=MOVING_AVERAGE_DECAY)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = cross_entropy(y, model(x, training=True)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    run = gq.TrainingRun(total_steps=args.steps, model=model, optimizer=optimizer, seed=args.seed,
                         checkpoint_dir=args.checkpoint_dir, steps_per_epoch=batches.steps_per_epoch,
                         save_every_steps=args.save_every_steps, save_every_s=args.save_every_s)
    started_s = time.monotonic()
    for step in run.steps():
        loss = train_step(*batches.batch(step))
        run.report_loss(loss)
        if (step + 1) % args.log_every == 0:
            lr = float(learning_rate(optimizer.iterations))
            print(f"step {step + 1}/{args.steps} epoch {batches.epoch_of(step)} "
                  f"loss {float(loss):.4f} lr {lr:.4f}", flush=True)
        if args.step_sleep:
            time.sleep(args.step_sleep)
    run.finish()

    def accuracy() -> float:
        logits = model(x_test, training=False)
        return float(np.mean(np.argmax(logits, axis=1) == y_test))

    raw_accuracy = accuracy()
    optimizer.finalize_variable_values(model.trainable_variables)  # evaluate the moving average
    ema_accuracy = accuracy()
    print(f"done: {args.steps} steps in {time.monotonic() - started_s:.1f} s this run; "
          f"test accuracy {ema_accuracy:.4f} (moving average), {raw_accuracy:.4f} (raw weights) "
          f"on {len(y_test)} test images", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"test_accuracy": ema_accuracy, "test_accuracy_raw": raw_accuracy,
                       "steps": args.steps, "iterations": int(optimizer.iterations.numpy())}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
