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
    >>> _ = trainer.fit(x, y, epochs=2, verbose=0, callbacks=[WeightAverage(x)])
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


def reestimate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> int:
    """Recomputes BatchNorm moving statistics of ``model`` as the exact average of the
    batch statistics over one pass of ``x`` (what SWA needs after averaging weights).
    Returns the number of BatchNorm layers updated (0: nothing to do).

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
    saved = [(layer, layer.momentum) for layer in layers]
    trainable = model.trainable
    model.trainable = True
    try:
        for layer in layers:
            layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
        for index, start in enumerate(range(0, len(x), batch_size)):
            for layer in layers:
                # moving = m * moving + (1 - m) * batch with m = k / (k + 1): the mean.
                layer.momentum = index / (index + 1.0)
            model(tf.constant(x[start:start + batch_size]), training=True)
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
        model.trainable = trainable
    return len(layers)


class WeightAverage(keras.callbacks.Callback):
    """Averages the student's weights into ``trainer.average_model`` once per epoch.

    From epoch ``start_epoch`` (0-based) on, every epoch end adds the student's
    weights to a uniform average (SWA with a constant learning rate); at the end of
    ``fit`` the average's BatchNorm statistics are re-estimated on ``train_x``. The
    trainer must be built with ``AdvCalTrainer(..., average_weights=True)``, which
    keeps the average in its variables (saved, and restored by ``BackupAndRestore``).

    Args:
        train_x: training images for the BatchNorm re-estimation (a sample is enough;
            ignored by models without BatchNorm).
        start_epoch: first epoch averaged.
        batch_size: batch size of the re-estimation pass.

    Example:

        >>> WeightAverage(np.zeros((4, 2), "float32"), start_epoch=10).start_epoch
        10
    """

    def __init__(self, train_x: Any, start_epoch: int = 0, batch_size: int = 256):
        super().__init__()
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be a non-negative integer, got {start_epoch!r}.")
        if isinstance(train_x, (tuple, list)) and len(train_x) == 2:
            train_x = train_x[0]
        self.train_x = np.asarray(train_x, dtype="float32")
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
            reestimate_batchnorm(self.model.average, self.train_x, self.batch_size)


__all__ = ["WeightAverage", "average_into", "batchnorm_layers", "reestimate_batchnorm"]
