"""The classic first network with ``model.fit`` and ``tf.data``, under gpuq (``gq.fit``).

The network and recipe of digits_classic.py (64 -> 100 ReLU -> 10, learning rate 0.8 x 0.99 per
epoch, L2 1e-4, an EMA of the weights with decay 0.99, used for evaluation), trained the way most
Keras code is written: a ``tf.data`` pipeline (shuffled every epoch, mapped, batched, prefetched)
and ``fit``.  ``gq.fit`` restores the latest checkpoint, resumes in the middle of an epoch with
the same batch order, saves every N steps, and on SIGTERM saves and exits 75.

``--mirrored`` trains with ``tf.distribute.MirroredStrategy`` over all the job's GPUs (over two
logical CPU devices when there is no GPU, to try it on a laptop).

    python examples/digits_fit.py
    gpuq submit --gpus 2 --gpu-mem 2GiB --checkpointable examples/digits_fit.py --mirrored
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import gpuq.jobs.tf as gq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=200, help="epochs of 14 steps (default 200: 2800 steps)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mirrored", action="store_true", help="MirroredStrategy over the job's GPUs")
    p.add_argument("--checkpoint-dir", default=None, help="default: $GPUQ_CHECKPOINT_DIR, else ./checkpoints")
    p.add_argument("--save-every-steps", type=int, default=500)
    p.add_argument("--out", default=None, help="write final metrics as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gq.configure_gpu_memory()  # before TensorFlow builds anything (the share applies to every GPU)

    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    strategy = tf.distribute.get_strategy()
    if args.mirrored:
        if not tf.config.list_physical_devices("GPU"):  # no GPU: two logical CPU devices stand in
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        else:
            strategy = tf.distribute.MirroredStrategy()
    keras.utils.set_random_seed(args.seed)
    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=args.seed, stratify=y)
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(len(x_train), seed=args.seed)                       # a new order every epoch
             .map(lambda image, label: (tf.clip_by_value(image, 0.0, 1.0), label),
                  num_parallel_calls=tf.data.AUTOTUNE)
             .batch(args.batch_size, drop_remainder=True)                  # 14 steps per epoch
             .prefetch(tf.data.AUTOTUNE))
    steps_per_epoch = len(x_train) // args.batch_size

    with strategy.scope():
        l2 = keras.regularizers.L2(1e-4)
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(100, activation="relu", kernel_regularizer=l2),
                                  keras.layers.Dense(10, kernel_regularizer=l2)])
        schedule = keras.optimizers.schedules.ExponentialDecay(0.8, decay_steps=steps_per_epoch, decay_rate=0.99,
                                                               staircase=True)
        model.compile(optimizer=keras.optimizers.SGD(schedule, use_ema=True, ema_momentum=0.99),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = gq.fit(model, train, epochs=args.epochs, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                     save_every_steps=args.save_every_steps, verbose=0)
    # gq.fit, like fit, leaves the moving averages in the model
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    trained = len(history.epoch)
    print(f"done: {args.epochs} epochs ({trained} in this run) on {strategy.num_replicas_in_sync} replica(s); "
          f"test accuracy {accuracy:.4f} (moving average) on {len(y_test)} test images", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"test_accuracy": accuracy, "iterations": int(model.optimizer.iterations.numpy()),
                       "replicas": strategy.num_replicas_in_sync}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
