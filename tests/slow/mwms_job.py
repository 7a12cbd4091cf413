"""One worker of a two-worker TensorFlow MultiWorkerMirroredStrategy run on CPU, started by gpuq
as one part of a job across nodes (TF_CONFIG comes from gpuq).  Each worker starts from its own
random weights and trains on its own data: only the strategy's collectives (the broadcast of the
initial weights and the all-reduce of the gradients) keep the two copies identical.  Writes
``OUT/tf_rank<i>.json``: the loss per epoch and the final weights."""

import json
import os
import sys

import numpy as np
import tensorflow as tf

out = sys.argv[1]
rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
print(f"worker {rank} of {strategy.num_replicas_in_sync}, TF_CONFIG={os.environ['TF_CONFIG']}", flush=True)

tf.random.set_seed(100 + rank)  # different initial weights on each worker (the strategy broadcasts rank 0's)
rng = np.random.default_rng(rank)  # different data on each worker (the gradients are all-reduced)
x = rng.normal(size=(512, 4)).astype("float32")
y = (x @ np.array([[1.5], [-2.0], [0.5], [3.0]], dtype="float32") + 0.7).astype("float32")
MEAN = tf.VariableAggregation.MEAN  # an update in replica context is averaged over the workers

with strategy.scope():
    params = [tf.Variable(tf.random.normal((4, 8)) * 0.5, aggregation=MEAN), tf.Variable(tf.zeros(8), aggregation=MEAN),
              tf.Variable(tf.random.normal((8, 1)) * 0.5, aggregation=MEAN), tf.Variable(tf.zeros(1), aggregation=MEAN)]


def replica_step(xb, yb):
    with tf.GradientTape() as tape:
        pred = tf.tanh(xb @ params[0] + params[1]) @ params[2] + params[3]
        loss = tf.reduce_mean(tf.square(pred - yb))
    for v, g in zip(params, tape.gradient(loss, params)):
        v.assign_sub(0.05 * g)
    return loss


@tf.function
def step(xb, yb):
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_step, args=(xb, yb)), axis=None)


losses = []
for epoch in range(6):
    total = 0.0
    for i in range(16):
        lo = (i * 32) % len(x)
        total += float(step(tf.constant(x[lo:lo + 32]), tf.constant(y[lo:lo + 32])))
    losses.append(total / 16)
    print(f"worker {rank} epoch {epoch} loss {losses[-1]:.4f}", flush=True)
weights = [v.numpy().tolist() for v in params]
with open(os.path.join(out, f".tf_rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "replicas": strategy.num_replicas_in_sync, "loss": losses, "weights": weights}, f)
os.rename(os.path.join(out, f".tf_rank{rank}.json"), os.path.join(out, f"tf_rank{rank}.json"))
print(f"worker {rank} done", flush=True)
