"""A ``tf.data`` pipeline whose position is in the checkpoint, and what would break its exactness.

The runtime repeats the user's one-epoch dataset and iterates it with one ``tf.data`` iterator for
the whole run.  That iterator goes into the ``tf.train.Checkpoint`` (tf.data's own iterator
checkpointing): its state holds the shuffle buffer and its seed generator, the position in the
files or tensors, and the elements already prefetched.  So after a restore the next batch is the
one the interrupted run would have trained on next.

Exactness needs the pipeline itself to be deterministic.  :func:`exactness_problems` reads the
dataset's graph and names what is not: unordered parallel stages, a shuffle without a seed, random
ops whose state lives in the kernel (not in the checkpoint), and Python functions.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from gpuq.errors import InvalidInput

#: Random ops that keep their state inside the kernel: a restored iterator restarts their stream.
_STATEFUL_RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "RandomShuffle",
    "Multinomial", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "RandomCrop",
})
#: Python code inside the pipeline: its state is invisible to the checkpoint.
_PYTHON_OPS = frozenset({"PyFunc", "EagerPyFunc", "PyFuncStateless"})
_SHUFFLE_OPS = frozenset({"ShuffleDataset", "ShuffleDatasetV2", "ShuffleDatasetV3", "ShuffleAndRepeatDataset",
                          "ShuffleAndRepeatDatasetV2"})


def _graph_of(dataset: Any) -> Any:
    """The dataset's GraphDef (tf.data serialises it this way for its own checkpoints and service)."""
    serialized = dataset._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.WARN)
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(serialized.numpy())
    return graph


def _const_ints(graph: Any) -> dict[str, int]:
    values: dict[str, int] = {}
    for node in graph.node:
        if node.op == "Const" and node.attr["dtype"].type == tf.int64.as_datatype_enum:
            tensor = node.attr["value"].tensor
            if tensor.int64_val:
                values[node.name] = int(tensor.int64_val[0])
            elif not tensor.tensor_content and not tensor.tensor_shape.dim:
                values[node.name] = 0
    return values


def exactness_problems(dataset: Any) -> list[str]:
    """Sentences naming each feature of ``dataset`` that makes a resumed run differ."""
    problems: list[str] = []
    if dataset.options().deterministic is False:
        problems.append("tf.data.Options.deterministic is False, so parallel stages hand out elements in "
                        "the order they finish: leave it unset (True)")
    graph = _graph_of(dataset)
    consts = _const_ints(graph)
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    seen: set[str] = set()

    def add(key: str, text: str) -> None:
        if key not in seen:
            seen.add(key)
            problems.append(text)

    for node in nodes:
        if "deterministic" in node.attr and node.attr["deterministic"].s == b"false":
            add("order", f"{node.op} runs with deterministic=False, so its output order depends on thread "
                         "timing: drop deterministic=False from map/interleave/batch")
        if node.op in _SHUFFLE_OPS:
            seeds = [consts.get(name.split(":")[0].lstrip("^")) for name in node.input[2:4]]
            if seeds == [0, 0]:
                add("seed", "shuffle() has no seed and no global seed is set, so every run shuffles "
                            "differently: pass seed= or call keras.utils.set_random_seed first")
        if node.op in _STATEFUL_RANDOM_OPS:
            add("random", f"a map function uses {node.op}, whose random state is not in the checkpoint: "
                          "use tf.random.stateless_* ops seeded per element (Dataset.random or enumerate)")
        if node.op in _PYTHON_OPS:
            add("python", "a map function calls Python (py_function/numpy_function): any state it keeps is "
                          "not in the checkpoint")
    return problems


class DataPipeline:
    """One iterator over ``dataset.repeat()`` for the whole run; ``iterator`` goes into the checkpoint."""

    def __init__(self, dataset: Any, *, steps_per_epoch: int | None = None,
                 say: Callable[[str], None] = lambda text: None) -> None:
        if not isinstance(dataset, tf.data.Dataset):
            raise InvalidInput(f"data must be a tf.data.Dataset of batches, not {type(dataset).__name__}.")
        cardinality = int(dataset.cardinality())
        if steps_per_epoch is None:
            if cardinality <= 0:  # infinite, unknown or empty
                raise InvalidInput("the dataset's length is unknown or infinite: give steps_per_epoch=, "
                                   "or build it from a source of known length.")
            steps_per_epoch = cardinality
        if steps_per_epoch <= 0:
            raise InvalidInput(f"steps_per_epoch {steps_per_epoch} must be positive.")
        self.steps_per_epoch = steps_per_epoch
        self.element_spec = dataset.element_spec
        for problem in exactness_problems(dataset):
            say(f"warning: this tf.data pipeline will not resume exactly: {problem}.")
        with tf.device("/cpu:0"):  # the host feeds every replica
            self.iterator = iter(dataset.repeat())

    def next(self) -> Any:
        return next(self.iterator)
