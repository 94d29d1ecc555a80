"""Uniform weight averaging (SWA) of a model during ``fit``, and BatchNorm re-estimation.

Averaging the weights a run passes through is the free baseline against robust
overfitting that a careful user already has: it costs one assignment per weight per
epoch. The same arithmetic maintains the ``swa`` teacher of
:class:`keras_advcal.CalibratedTeacher`.

:class:`WeightAverage` keeps the average of an :class:`keras_advcal.AdvCalTrainer`
built with ``average_weights=True``: the average lives in the trainer's variables, so
it is saved with the trainer and restored by ``keras.callbacks.BackupAndRestore``.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal import PGD, AdvCalTrainer
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> trainer = AdvCalTrainer(net, PGD(0.1, steps=1), labels="hard",
    ...                         average_weights=True)
    >>> trainer.compile(optimizer="adam")
    >>> x = np.random.rand(16, 4).astype("float32"); y = np.arange(16) % 3
    >>> _ = trainer.fit(x, y, epochs=2, verbose=0, callbacks=[WeightAverage((x, y))])
    >>> int(trainer.average_updates.numpy())
    2
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


def _float_pairs(target: keras.Model, source: keras.Model):
    for target_var, source_var in zip(target.weights, source.weights):
        if "float" in str(target_var.dtype):
            yield target_var, source_var


def average_into(target: keras.Model, source: keras.Model, counter: Any) -> int:
    """One uniform-average update: ``target <- (n * target + source) / (n + 1)``.

    ``counter`` is a scalar Keras variable holding ``n`` (the number of models
    averaged so far); it is incremented. With ``n == 0`` the target becomes a copy
    of the source (integer weights included).

    Args:
        target: the model holding the average (same architecture as ``source``).
        source: the model whose current weights join the average.
        counter: scalar variable with the number of updates so far.

    Returns:
        The new number of averaged models.

    Example:

        >>> a = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        >>> b = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        >>> n = keras.Variable(0.0)
        >>> b.set_weights([np.array([[1.0]])]); average_into(a, b, n)
        1
        >>> b.set_weights([np.array([[3.0]])]); average_into(a, b, n)
        2
        >>> float(a.get_weights()[0][0, 0])
        2.0
    """
    count = int(counter.numpy())
    if count == 0:
        for target_var, source_var in zip(target.weights, source.weights):
            target_var.assign(source_var)
    else:
        for target_var, source_var in _float_pairs(target, source):
            target_var.assign(target_var + (source_var - target_var) / (count + 1.0))
    counter.assign(count + 1.0)
    return count + 1


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """All BatchNormalization layers of ``model``, nested models included.

    Example:

        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
        >>> len(batchnorm_layers(m))
        1
    """
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batchnorm_layers(layer))
    return found


def _batch_statistics_pass(model: keras.Model, layers: list, batches) -> None:
    """Sets the moving statistics of ``layers`` to the exact average of the batch
    statistics over ``batches`` (a forward pass in training mode per batch)."""
    for layer in layers:
        layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
    for index, batch in enumerate(batches):
        for layer in layers:
            # moving = m * moving + (1 - m) * batch with m = k / (k + 1): the mean.
            layer.momentum = index / (index + 1.0)
        model(batch, training=True)


def reestimate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int = 256,
                         attack: Any = None, y: np.ndarray | None = None) -> int:
    """Recomputes BatchNorm moving statistics of ``model`` as the exact average of the
    batch statistics over one pass of ``x`` (what SWA needs after averaging weights).
    Returns the number of BatchNorm layers updated (0: nothing to do).

    An adversarially trained model's statistics come from the adversarial examples it
    trained on, not from clean images. With ``attack`` (and the labels ``y``), the
    statistics are recomputed on ``attack``'s examples of ``x`` made against ``model``
    itself (in inference mode, with the statistics of a first, clean pass), as in
    training; the attack's random start is seeded by the batch's position, so the
    result does not depend on what ran before.

    Args:
        model: the model (logits out) whose BatchNorm statistics are recomputed.
        x: images of the training distribution (a sample is enough).
        batch_size: batch size of the passes.
        attack: a :class:`keras_advcal.Attack` (the training attack), or ``None``
            for clean statistics.
        y: integer labels of ``x``, needed with ``attack``.

    Example:

        >>> m = keras.Sequential([keras.Input((1,)), keras.layers.BatchNormalization()])
        >>> reestimate_batchnorm(m, np.full((8, 1), 3.0, "float32"))
        1
        >>> float(m.layers[0].moving_mean.numpy()[0])
        3.0
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if attack is not None and y is None:
        raise ValueError("reestimate_batchnorm with an `attack` needs the labels `y`.")
    starts = range(0, len(x), batch_size)
    saved = [(layer, layer.momentum) for layer in layers]
    trainable = model.trainable
    model.trainable = True
    try:
        _batch_statistics_pass(model, layers, (tf.constant(x[i:i + batch_size]) for i in starts))
        if attack is not None:
            adversarial = [attack(model, x[i:i + batch_size], y[i:i + batch_size],
                                  seed=keras.random.SeedGenerator(index))
                           for index, i in enumerate(starts)]
            _batch_statistics_pass(model, layers, adversarial)
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
        model.trainable = trainable
    return len(layers)


class WeightAverage(keras.callbacks.Callback):
    """Averages the student's weights into ``trainer.average_model`` once per epoch.

    From epoch ``start_epoch`` (0-based) on, every epoch end adds the student's
    weights to a uniform average (SWA with a constant learning rate); at the end of
    ``fit`` the average's BatchNorm statistics are re-estimated on the trainer's
    training-attack examples of ``train_data`` made against the average (see
    :func:`reestimate_batchnorm`; clean images only when no labels are given). The
    trainer must be built with ``AdvCalTrainer(..., average_weights=True)``, which
    keeps the average in its variables (saved, and restored by ``BackupAndRestore``).

    Args:
        train_data: ``(images, labels)`` of the training set for the BatchNorm
            re-estimation (a sample is enough; ignored by models without BatchNorm),
            or images alone for clean statistics.
        start_epoch: first epoch averaged.
        batch_size: batch size of the re-estimation pass.

    Example:

        >>> WeightAverage((np.zeros((4, 2), "float32"), np.zeros(4)), start_epoch=10).start_epoch
        10
    """

    def __init__(self, train_data: Any, start_epoch: int = 0, batch_size: int = 256):
        super().__init__()
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be a non-negative integer, got {start_epoch!r}.")
        train_y = None
        if isinstance(train_data, (tuple, list)) and len(train_data) == 2:
            train_data, train_y = train_data
            train_y = np.asarray(train_y)
        self.train_x = np.asarray(train_data, dtype="float32")
        self.train_y = train_y
        self.start_epoch = int(start_epoch)
        self.batch_size = int(batch_size)

    def on_train_begin(self, logs=None):
        if getattr(self.model, "average", None) is None:
            raise ValueError("WeightAverage needs an AdvCalTrainer built with "
                             "average_weights=True.")

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.start_epoch:
            average_into(self.model.average, self.model.student, self.model.average_updates)

    def on_train_end(self, logs=None):
        if float(self.model.average_updates.numpy()) > 0:
            attack = (None if self.train_y is None
                      else self.model.objective.training_attack(self.model.attack))
            reestimate_batchnorm(self.model.average, self.train_x, self.batch_size,
                                 attack=attack, y=self.train_y)


__all__ = ["WeightAverage", "average_into", "batchnorm_layers", "reestimate_batchnorm"]
