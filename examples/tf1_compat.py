"""Legacy TF1-style code (graph, placeholders, ``tf.compat.v1.Session``) under gpuq.

A TF1 script gets its GPU memory share through the ``ConfigProto`` it gives its session: one
changed line, ``tf.compat.v1.Session(config=gq.session_config())``.  That proto carries
``gpu_options.allow_growth`` and, when the job was submitted with --gpu-mem or --fraction,
``gpu_options.per_process_gpu_memory_fraction``.

Checkpoints go through ``gq.GraphRun`` (a ``tf.compat.v1.train.Saver`` into $GPUQ_CHECKPOINT_DIR):
it restores the latest checkpoint, and on SIGTERM saves and exits with $GPUQ_REQUEUE_EXIT_CODE
(the data here is drawn per step from a seeded generator, so its position is the global step).
The model is the custom-loss regression; digits_tf1.py is the classic network in the same style.

    python examples/tf1_compat.py
    gpuq submit --gpus 1 --fraction 0.25 --checkpointable examples/tf1_compat.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import numpy as np

import gpuq.jobs.tf as gq


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None, help="default: $GPUQ_CHECKPOINT_DIR, else ./checkpoints")
    p.add_argument("--save-every-steps", type=int, default=1000)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    args = p.parse_args(argv)
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(args.seed)
        x = v1.placeholder(tf.float32, shape=(None, 2), name="x-input")
        y_ = v1.placeholder(tf.float32, shape=(None, 1), name="y-input")
        w1 = tf.Variable(v1.random_normal([2, 1], stddev=1, seed=args.seed))
        y = tf.matmul(x, w1)
        loss_less, loss_more = 10.0, 1.0  # under-prediction costs 10, over-prediction 1
        loss = tf.reduce_mean(tf.where(y > y_, (y - y_) * loss_more, (y_ - y) * loss_less))
        global_step = v1.train.get_or_create_global_step()
        train_op = v1.train.AdamOptimizer(0.001).minimize(loss, global_step=global_step)
        run = gq.GraphRun(total_steps=args.steps, global_step=global_step, checkpoint_dir=args.checkpoint_dir,
                          save_every_steps=args.save_every_steps)

    config = gq.session_config()
    options = config.gpu_options
    print(f"session config: allow_growth={options.allow_growth} "
          f"per_process_gpu_memory_fraction={options.per_process_gpu_memory_fraction or 'unset (whole GPU)'}",
          flush=True)
    with run.session(config=config) as sess:  # restores the latest checkpoint, or initialises
        for step in run.steps(sess):  # on SIGTERM: saves after this step and exits 75
            rng = np.random.default_rng([args.seed, step])  # the data for a step depends on the step only
            xb = rng.random((args.batch_size, 2)).astype("float32")
            yb = (xb.sum(axis=1, keepdims=True) + rng.random((args.batch_size, 1)) / 10.0 - 0.05).astype("float32")
            sess.run(train_op, feed_dict={x: xb, y_: yb})
            if args.step_sleep:
                time.sleep(args.step_sleep)
        run.finish(sess)
        step = int(sess.run(global_step))
        learned = ", ".join(f"{v:.4f}" for v in sess.run(w1).ravel())
        print(f"done: step {step}, w1 = [{learned}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
