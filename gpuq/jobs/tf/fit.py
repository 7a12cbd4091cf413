"""``model.fit`` with exact resume: ``gq.fit(model, dataset, epochs=...)``.

Keras's own ``fit`` owns its data iterator, creates a new one on every call, and its
``BackupAndRestore`` restarts an interrupted epoch from its first batch (docs/runtime.md).  So this
wrapper keeps Keras's loop, callbacks, metrics and progress bar, and changes three things:

* **The data comes from the run's iterator.**  :class:`~gpuq.jobs.tf.run.TrainingRun` iterates the
  dataset (``dataset.repeat()``) and checkpoints that iterator.  Keras's compiled train function is
  called on a :class:`_Feed` that reads the next batch from it; Keras itself iterates only a
  stand-in dataset of zeros with the same element spec (used to build the model's metrics), which
  trains nothing.  Under a ``tf.distribute`` strategy the feed splits each global batch across the
  replicas, because a ``tf.distribute`` iterator cannot be checkpointed (tensorflow#56372).
* **A callback counts steps**, saves every ``save_every_steps`` steps or ``save_every_s`` seconds,
  and on SIGTERM saves after the step in progress and exits 75.
* **A resume in the middle of an epoch** first calls ``fit`` for the rest of that epoch
  (``initial_epoch=e, epochs=e+1`` with the remaining steps), then for the later epochs.  The
  optimizer's ``iterations``, the RNG states and the data position all come from the checkpoint.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import tensorflow as tf

from gpuq.errors import InvalidInput
from gpuq.jobs.tf.run import TrainingRun


class _Feed:
    """What Keras's train function takes its one batch per call from, fed by the run's iterator.

    Keras's train function iterates any object that is not a ``tf.data`` iterator in Python
    (``zip(range(steps_per_execution), iterator)``), calling its compiled one-step function on each
    batch; so this is a plain Python iterator.
    """

    def __init__(self, iterator: Any, strategy: Any) -> None:
        self._iterator = iterator
        self._strategy = strategy

    def __iter__(self) -> "_Feed":
        return self

    def __next__(self) -> Any:
        batch = next(self._iterator)
        replicas = self._strategy.num_replicas_in_sync
        if replicas == 1:
            return batch
        pieces = [tf.split(t, replicas) for t in tf.nest.flatten(batch)]  # global batch -> per replica
        per_replica = [tf.nest.pack_sequence_as(batch, [p[r] for p in pieces]) for r in range(replicas)]
        return self._strategy.experimental_distribute_values_from_function(
            lambda ctx: per_replica[ctx.replica_id_in_sync_group])


def _stand_in(element_spec: Any, batch_size: int) -> Any:
    """An endless dataset of zero batches shaped like the real ones: Keras iterates it, nothing trains on it."""
    def zeros(spec: Any) -> Any:
        shape = [batch_size if d is None else d for d in spec.shape.as_list()[1:]]
        return tf.zeros(shape, spec.dtype)

    row = tf.nest.map_structure(zeros, element_spec)
    return tf.data.Dataset.from_tensors(row).repeat().batch(batch_size, drop_remainder=True)


class _StepCallback(keras.callbacks.Callback):
    """Routes Keras's train function to the feed, and counts, saves and stops at step granularity."""

    def __init__(self, run: TrainingRun, feed: _Feed) -> None:
        super().__init__()
        self.run = run
        self.feed = feed
        self._keras_train_function: Any = None
        self._raw_weights: list[Any] | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        keras_train_function = self.model.train_function
        self._keras_train_function = keras_train_function
        feed = self.feed

        def train_on_feed(_stand_in_iterator: Any) -> Any:
            return keras_train_function(feed)

        self.model.train_function = train_on_feed
        self.run.before_step()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if logs and "loss" in logs:
            self.run.report_loss(logs["loss"])
        self.run.after_step()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if getattr(self.model.optimizer, "use_ema", False):  # see on_train_end
            self._raw_weights = [v.numpy() for v in self.model.trainable_weights]

    def on_train_end(self, logs: Any = None) -> None:
        if self._keras_train_function is not None:  # a later plain model.fit uses its own data again
            self.model.train_function = self._keras_train_function
            self._keras_train_function = None
        if self._raw_weights is not None:
            # Keras's fit ends by copying the EMA into the weights (finalize_variable_values).  A
            # resumed run calls fit more than once, so undo that here; gq.fit finalizes once, at the end.
            for variable, value in zip(self.model.trainable_weights, self._raw_weights):
                variable.assign(value)
            self._raw_weights = None


def _merge(histories: list[Any]) -> Any:
    if not histories:
        history = keras.callbacks.History()
        history.history, history.epoch = {}, []
        return history
    merged = histories[-1]
    merged.epoch = [e for h in histories for e in h.epoch]
    merged.history = {key: [v for h in histories for v in h.history.get(key, [])] for key in merged.history}
    return merged


def fit(model: Any, data: Any, *, epochs: int, steps_per_epoch: int | None = None, seed: int = 0,
        checkpoint_dir: str | None = None, save_every_steps: int | None = 500,
        save_every_s: float | None = 300.0, max_to_keep: int = 2, callbacks: list[Any] | None = None,
        verbose: Any = "auto", extra: Mapping[str, Any] | None = None, **fit_kwargs: Any) -> Any:
    """Train a compiled, built Keras model on ``data`` (a ``tf.data.Dataset`` of one epoch of batches)
    for ``epochs`` epochs, resuming exactly from the latest checkpoint; returns Keras's ``History``
    (the epochs trained in this process).

    Other keyword arguments (``validation_data``, ``validation_freq``, ...) go to ``model.fit``;
    batching, shuffling and sample weights belong in the dataset.  As after Keras's ``fit``, an optimizer with
    ``use_ema=True`` has copied its moving averages into the model at the end; the final
    checkpoint keeps the raw weights, so a longer run can continue from it.
    """
    for name in ("x", "y", "batch_size", "initial_epoch", "shuffle", "sample_weight", "class_weight",
                 "validation_split"):
        if name in fit_kwargs:
            raise InvalidInput(f"gq.fit decides {name}= itself: put batching, shuffling and weights into the "
                               "tf.data dataset.")
    if getattr(model, "optimizer", None) is None:
        raise InvalidInput("compile the model before gq.fit (model.compile(optimizer=..., loss=...)).")
    if getattr(model, "steps_per_execution", 1) != 1:
        raise InvalidInput("gq.fit checkpoints after every step: compile with steps_per_execution=1.")
    if epochs <= 0:
        raise InvalidInput(f"epochs {epochs} must be positive.")
    if not isinstance(data, tf.data.Dataset):
        raise InvalidInput(f"gq.fit needs a tf.data.Dataset of batches, not {type(data).__name__}: "
                           "tf.data.Dataset.from_tensor_slices((x, y)).shuffle(...).batch(...) makes one.")
    strategy = model.distribute_strategy
    batch_size = tf.nest.flatten(data.element_spec)[0].shape[0]
    if batch_size is None or batch_size % strategy.num_replicas_in_sync:
        raise InvalidInput(f"batch the dataset with drop_remainder=True and a batch size divisible by the "
                           f"{strategy.num_replicas_in_sync} replicas, so every step has the same shape.")
    run = TrainingRun(epochs=epochs, model=model, optimizer=model.optimizer, checkpoint_dir=checkpoint_dir,
                      seed=seed, save_every_steps=save_every_steps, save_every_s=save_every_s,
                      max_to_keep=max_to_keep, steps_per_epoch=steps_per_epoch, extra=extra, data=data)
    spe = run.steps_per_epoch
    feed = _Feed(run.data.iterator, strategy)
    step_callback = _StepCallback(run, feed)
    stand_in = _stand_in(run.data.element_spec, batch_size)
    histories = []
    first_epoch, within = divmod(run.start_step, spe)
    segments = []
    if within:
        segments.append((first_epoch, first_epoch + 1, spe - within))
        first_epoch += 1
    if first_epoch < epochs:
        segments.append((first_epoch, epochs, spe))
    for initial_epoch, end_epoch, steps in segments:
        histories.append(model.fit(stand_in, epochs=end_epoch, initial_epoch=initial_epoch,
                                   steps_per_epoch=steps, callbacks=[step_callback, *(callbacks or [])],
                                   verbose=verbose, **fit_kwargs))
        if model.stop_training:  # a callback (EarlyStopping) ended training
            break
    history = _merge(histories)
    history.run = run
    run.finish()
    model.optimizer.finalize_variable_values(model.trainable_weights)
    return history
