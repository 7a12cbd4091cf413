"""The classic first TensorFlow network in its original TF1 style, under gpuq's requeue contract.

The same network and recipe as digits_classic.py (one hidden layer of 100 ReLU units, learning
rate 0.8 decayed by 0.99 once per epoch, L2 1e-4, a moving average of the weights with decay 0.99,
used for evaluation), written the way the classic tutorial wrote it: a graph with placeholders,
``tf.compat.v1.train.exponential_decay``, ``ExponentialMovingAverage``, a ``Saver`` and a
``Session``.  The gpuq changes are three lines: ``gq.GraphRun`` (restores the latest checkpoint,
saves every N steps, on SIGTERM saves and exits 75), ``run.steps(sess)`` and ``run.finish(sess)``.

``--monitored`` trains the same graph with ``tf.compat.v1.train.MonitoredTrainingSession``
instead, with ``gq.RequeueHook`` for SIGTERM.

    python examples/digits_tf1.py
    gpuq submit --gpus 1 --gpu-mem 2GiB --checkpointable examples/digits_tf1.py
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

INPUT_NODE, LAYER1_NODE, OUTPUT_NODE = 64, 100, 10
LEARNING_RATE_BASE = 0.8
LEARNING_RATE_DECAY = 0.99
REGULARIZATION_RATE = 1e-4
MOVING_AVERAGE_DECAY = 0.99


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="default: $GPUQ_CHECKPOINT_DIR, else ./checkpoints")
    p.add_argument("--save-every-steps", type=int, default=500)
    p.add_argument("--monitored", action="store_true", help="use MonitoredTrainingSession")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--out", default=None, help="write the final variables (.npz) and accuracy (.json) here")
    return p.parse_args(argv)


def inference(x, avg_class, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
    """The forward pass, with the raw weights or (avg_class given) their moving averages."""
    import tensorflow as tf

    if avg_class is None:
        return tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2) + b2
    hidden = tf.nn.relu(tf.matmul(x, avg_class.average(w1)) + avg_class.average(b1))
    return tf.matmul(hidden, avg_class.average(w2)) + avg_class.average(b2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    data = load_digits()
    x_all, y_all = (data.data / 16.0).astype("float32"), data.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x_all, y_all, test_size=0.2, random_state=args.seed,
                                                        stratify=y_all)
    batches = gq.ShuffledBatches((x_train, y_train), args.batch_size, seed=args.seed)

    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, INPUT_NODE], name="x-input")
        y_ = v1.placeholder(tf.int64, [None], name="y-input")
        init = v1.truncated_normal_initializer(stddev=0.1, seed=args.seed)  # used once, at step 0
        w1 = v1.get_variable("w1", [INPUT_NODE, LAYER1_NODE], initializer=init)
        b1 = v1.get_variable("b1", [LAYER1_NODE], initializer=v1.constant_initializer(0.1))
        w2 = v1.get_variable("w2", [LAYER1_NODE, OUTPUT_NODE], initializer=init)
        b2 = v1.get_variable("b2", [OUTPUT_NODE], initializer=v1.constant_initializer(0.1))
        global_step = v1.train.get_or_create_global_step()

        y = inference(x, None, w1, b1, w2, b2)
        cross_entropy = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_, logits=y))
        regularization = REGULARIZATION_RATE * (tf.nn.l2_loss(w1) + tf.nn.l2_loss(w2))  # l2_regularizer(rate)
        loss = cross_entropy + regularization
        learning_rate = v1.train.exponential_decay(LEARNING_RATE_BASE, global_step, batches.steps_per_epoch,
                                                   LEARNING_RATE_DECAY, staircase=True)
        train_step = v1.train.GradientDescentOptimizer(learning_rate).minimize(loss, global_step=global_step)
        # The classic script grouped the gradient step and the EMA update with no order between them,
        # so the EMA read the weights (and the global step) before or after the update, by chance.
        # Here the EMA update runs after the step: the same result on every run, and after a resume.
        ema = v1.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY, global_step)
        with tf.control_dependencies([train_step]):
            train_op = ema.apply(v1.trainable_variables())
        average_y = inference(x, ema, w1, b1, w2, b2)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(average_y, 1), y_), tf.float32))

        def feed(step: int) -> dict:
            xs, ys = batches.batch(step)
            return {x: xs, y_: ys}

        if args.monitored:
            hook = gq.RequeueHook(total_steps=args.steps, checkpoint_dir=args.checkpoint_dir,
                                  steps_per_epoch=batches.steps_per_epoch)
            with v1.train.MonitoredTrainingSession(
                    checkpoint_dir=hook.directory, save_checkpoint_steps=args.save_every_steps,
                    save_summaries_steps=None, log_step_count_steps=None, config=gq.session_config(),
                    hooks=[v1.train.StopAtStepHook(last_step=args.steps), hook]) as sess:
                while not sess.should_stop():
                    sess.run(train_op, feed_dict=feed(hook.step))
                    if args.step_sleep:
                        time.sleep(args.step_sleep)
            run = None
            finals = _final_values(graph, hook.directory)
        else:
            run = gq.GraphRun(total_steps=args.steps, global_step=global_step, checkpoint_dir=args.checkpoint_dir,
                              save_every_steps=args.save_every_steps, steps_per_epoch=batches.steps_per_epoch)
            with run.session(config=gq.session_config()) as sess:
                for step in run.steps(sess):
                    sess.run(train_op, feed_dict=feed(step))
                    if args.step_sleep:
                        time.sleep(args.step_sleep)
                run.finish(sess)
                finals = {v.op.name: sess.run(v) for v in v1.global_variables()}
                test_accuracy = float(sess.run(accuracy, feed_dict={x: x_test, y_: y_test}))

    if args.monitored:  # evaluate from the final checkpoint, as the classic eval script did
        with graph.as_default(), v1.Session(graph=graph) as sess:
            v1.train.Saver().restore(sess, tf.train.latest_checkpoint(hook.directory))
            test_accuracy = float(sess.run(accuracy, feed_dict={x: x_test, y_: y_test}))
    print(f"done: step {int(finals['global_step'])}, test accuracy {test_accuracy:.4f} (moving average) "
          f"on {len(y_test)} test images", flush=True)
    if args.out:
        np.savez(args.out + ".npz", **{name.replace("/", "__"): value for name, value in finals.items()})
        with open(args.out + ".json", "w") as f:
            json.dump({"test_accuracy": test_accuracy, "step": int(finals["global_step"])}, f)
    return 0


def _final_values(graph, directory: str) -> dict:  # type: ignore[no-untyped-def]
    """Every global variable as the final checkpoint holds it."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    with graph.as_default():
        names = [v.op.name for v in tf.compat.v1.global_variables()]
    return {name: reader.get_tensor(name) for name in names}


if __name__ == "__main__":
    sys.exit(main())
