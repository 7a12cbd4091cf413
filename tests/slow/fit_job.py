"""Training through ``gq.fit`` and ``TrainingRun(data=...)``, with every kind of state a restart must carry.

Used by test_tf_fit_resume.py.  One process trains four parts, one after the other, each in its own
checkpoint directory, so a SIGTERM can land in any of them and a restart skips the finished ones:

``sequential``  ``gq.fit`` on a Sequential model;
``functional``  ``gq.fit`` on a functional model with two inputs;
``mirrored``    ``gq.fit`` under ``MirroredStrategy`` over two logical CPU devices (the CPU split
                with ``tf.config.set_logical_device_configuration``, as a job's GPUs would be);
``loop``        a custom loop over ``run.batches()`` (the tf.data iterator in the checkpoint).

Each has dropout, L2, a staircase learning-rate decay, an EMA of the weights, and a shuffled,
mapped (in parallel), prefetched tf.data pipeline.  The final variables go to ``OUT-PART.npz``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np

import gpuq.jobs.tf as gq

PARTS = ("sequential", "functional", "mirrored", "loop")
EPOCHS = 3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--step-sleep", type=float, default=0.0)
    args = p.parse_args()
    gq.configure_gpu_memory(quiet=True)

    import keras
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]  # two logical devices for MirroredStrategy
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    rows = np.random.default_rng(123)
    x = rows.normal(size=(160, 6)).astype("float32")
    z = rows.normal(size=(160, 2)).astype("float32")
    y = (x @ rows.normal(size=(6, 1)) + z[:, :1] + 0.1 * rows.normal(size=(160, 1))).astype("float32")

    def dataset(two_inputs: bool) -> tf.data.Dataset:
        def scale(a: tf.Tensor, b: tf.Tensor, t: tf.Tensor) -> tuple:
            inputs = (a * 0.5, b) if two_inputs else tf.concat([a * 0.5, b], axis=-1)
            return inputs, t
        return (tf.data.Dataset.from_tensor_slices((x, z, y)).shuffle(64, seed=7)
                .map(scale, num_parallel_calls=2).batch(16, drop_remainder=True).prefetch(2))  # 10 steps/epoch

    def optimizer() -> keras.optimizers.Optimizer:
        schedule = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=10, decay_rate=0.9, staircase=True)
        return keras.optimizers.SGD(schedule, momentum=0.9, use_ema=True, ema_momentum=0.9)

    l2 = keras.regularizers.L2(1e-3)

    def sequential() -> keras.Model:
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", kernel_regularizer=l2),
                                 keras.layers.Dropout(0.2), keras.layers.Dense(1)])

    def functional() -> keras.Model:
        a, b = keras.Input((6,)), keras.Input((2,))
        h = keras.layers.Dense(12, activation="relu", kernel_regularizer=l2)(a)
        h = keras.layers.Dropout(0.3)(keras.layers.Concatenate()([h, b]))
        return keras.Model([a, b], keras.layers.Dense(1, kernel_regularizer=l2)(h))

    class Slow(keras.callbacks.Callback):  # gives the test time to interrupt mid-epoch
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            time.sleep(args.step_sleep)

    def save(part: str, model: keras.Model, opt: keras.optimizers.Optimizer) -> None:
        np.savez(f"{args.out}-{part}.npz", **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)},
                 **{f"opt{i}": v.numpy() for i, v in enumerate(opt.variables)})

    for part in PARTS:
        keras.utils.set_random_seed(1)
        directory = os.path.join(args.checkpoint_dir, part)
        if part == "loop":
            model, opt = sequential(), optimizer()
            run = gq.TrainingRun(epochs=EPOCHS, model=model, optimizer=opt, data=dataset(False), seed=3,
                                 checkpoint_dir=directory, save_every_steps=4, save_every_s=None)

            @tf.function
            def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
                xb = xb + run.rng.normal(tf.shape(xb), stddev=0.01)
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb)) + tf.add_n(model.losses)
                grads = tape.gradient(loss, model.trainable_variables)
                opt.apply_gradients(zip(grads, model.trainable_variables))
                return loss

            for _, (xb, yb) in run.batches():
                run.report_loss(train_step(xb, yb))
                time.sleep(args.step_sleep)
            run.finish()
            save(part, model, opt)
            continue
        strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if part == "mirrored"
                    else tf.distribute.get_strategy())
        with strategy.scope():
            model = functional() if part == "functional" else sequential()
            model.compile(optimizer=optimizer(), loss="mse")
        history = gq.fit(model, dataset(part == "functional"), epochs=EPOCHS, seed=3, checkpoint_dir=directory,
                         save_every_steps=4, save_every_s=None, callbacks=[Slow()], verbose=0)
        print(f"{part}: epochs {history.epoch} trained in this run", flush=True)
        save(part, model, model.optimizer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
