"""Checkpoints of the bare classifier that an ``AdvCalTrainer`` trains.

``keras.callbacks.ModelCheckpoint`` passed to ``trainer.fit`` saves the model being
fitted, that is the whole trainer: the classifier, the teacher, ``T``, ``rho``, the
attack and the optimizer. That is what resuming needs (``keras.models.load_model``
gives a trainer back), but a model to deploy or to evaluate elsewhere is the
classifier alone. :class:`ClassifierCheckpoint` is ``ModelCheckpoint`` with every
option (``monitor``, ``mode``, ``save_best_only``, ``save_freq``,
``initial_value_threshold``...) that saves ``trainer.model`` instead: a plain Keras
model that loads without keras-advcal.

Example:

    >>> checkpoint = ClassifierCheckpoint("best_classifier.keras",
    ...                                   monitor="val_adv_accuracy", mode="max",
    ...                                   save_best_only=True)
    >>> checkpoint.monitor
    'val_adv_accuracy'
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_advcal.trainer import AdvCalTrainer


class ClassifierCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that saves the classifier of an
    :class:`~keras_advcal.AdvCalTrainer` (``trainer.model``), not the trainer.

    Monitor ``val_adv_accuracy`` (``mode="max"``) for the best robust model: the
    trainer's ``loss`` mixes in soft targets whose weight ``rho`` is refitted every
    epoch, so it does not compare from one epoch to the next.

    Args:
        filepath: where to save, as for ``ModelCheckpoint`` (a ``.keras`` file, or
            ``.weights.h5`` with ``save_weights_only=True``; ``{epoch}`` and logged
            keys may be formatted in).
        **kwargs: any other ``ModelCheckpoint`` argument.

    Example:

        >>> import numpy as np
        >>> from keras_advcal import PGD
        >>> net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(3)])
        >>> trainer = AdvCalTrainer(net, PGD(0.1, steps=1), labels="hard")
        >>> trainer.compile(optimizer="adam")
        >>> x = np.random.rand(32, 4, 4, 1).astype("float32"); y = np.arange(32) % 3
        >>> path = "/tmp/advcal_doctest_classifier.keras"
        >>> _ = trainer.fit(x, y, epochs=1, verbose=0,
        ...                 callbacks=[ClassifierCheckpoint(path)])
        >>> type(keras.models.load_model(path)).__name__
        'Sequential'
    """

    def __init__(self, filepath: str | os.PathLike, **kwargs: Any):
        super().__init__(filepath, **kwargs)

    def set_model(self, model: keras.Model) -> None:
        """Keeps the trainer's classifier (any other model as it is) as the model to
        save."""
        super().set_model(model.model if isinstance(model, AdvCalTrainer) else model)


__all__ = ["ClassifierCheckpoint"]
