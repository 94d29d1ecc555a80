"""The ADR-style baseline (Wu et al., "Annealing Self-Distillation Rectification",
2023) as a composition of the library's parts:

* the objective ``"adr"`` (:class:`keras_advcal.objectives.ADR`): PGD-AT whose
  calibrated target comes from the teacher on the *clean* input, with a per-example
  ratio ``rho_i = clip(rho - (max_j p_j - p_y), 0, 1)``, ``p = softmax(teacher(x) / T)``,
  fitted with ``loss_form="soft"``: ``CE(f(x'), rho_i * p + (1 - rho_i) * onehot(y))``;
* an EMA teacher: a moving average of the student every step (decay ``ema_decay``),
  updated inside the compiled train step like the ``ema`` teacher kind;
* :class:`ADRSchedule`: the callback that starts that teacher and anneals ``T`` and
  ``rho`` with cosine schedules instead of fitting them.

:func:`adr_trainer` builds the trainer; fit it with an :class:`ADRSchedule`.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal import PGD
    >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                         keras.layers.Dense(10)])
    >>> trainer = adr_trainer(net, PGD(0.1, 0.05, 2))
    >>> trainer.compile("adam")
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32"); y = np.arange(32) % 10
    >>> h = trainer.fit(x, y, epochs=2, verbose=0,
    ...                 callbacks=[ADRSchedule((2.5, 2.0), (0.7, 0.95), ema_decay=0.995)])
    >>> [round(r, 2) for r in h.history["rho"]]
    [0.7, 0.95]
"""

from __future__ import annotations

import math
from typing import Any

import keras

from keras_advcal.trainer import AdvCalTrainer


def adr_trainer(model: keras.Model, attack: Any, **kwargs: Any) -> AdvCalTrainer:
    """An :class:`~keras_advcal.AdvCalTrainer` for the ADR-style baseline: calibrated
    labels, the ``"adr"`` objective and the soft loss form.

    Args:
        model: the classifier (logits out).
        attack: the training attack.
        **kwargs: further ``AdvCalTrainer`` arguments (``eval_attack``, ``seed``...).

    Example:

        >>> from keras_advcal import PGD
        >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> trainer = adr_trainer(net, PGD(0.1, steps=1))
        >>> trainer.objective.name, trainer.loss_form
        ('adr', 'soft')
    """
    kwargs.setdefault("weight_perturbation", None)  # the published baseline has none
    return AdvCalTrainer(model, attack, labels="calibrated", loss_form="soft",
                         objective="adr", **kwargs)


@keras.saving.register_keras_serializable(package="keras_advcal")
class ADRTrainer(AdvCalTrainer):
    """Loads trainers saved by the versions in which the ADR baseline was a subclass
    of ``AdvCalTrainer``: the same trainer with ``objective="adr"``. Build new ones
    with :func:`adr_trainer`.

    Example:

        >>> from keras_advcal import PGD
        >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> ADRTrainer(net, PGD(0.1, steps=1), labels="calibrated",
        ...            loss_form="soft").objective.name
        'adr'
    """

    SAVED_WITHOUT = {**AdvCalTrainer.SAVED_WITHOUT, "objective": "adr"}

    def __init__(self, *args: Any, objective: Any = "adr", **kwargs: Any):
        super().__init__(*args, objective=objective, **kwargs)


def cosine_schedule(start: float, end: float, epoch: int, epochs: int) -> float:
    """Cosine interpolation from ``start`` (epoch 0) to ``end`` (last epoch).

    Example:

        >>> cosine_schedule(0.7, 0.95, 0, 11), cosine_schedule(0.7, 0.95, 10, 11)
        (0.7, 0.95)
    """
    progress = epoch / max(epochs - 1, 1)
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class ADRSchedule(keras.callbacks.Callback):
    """Starts the EMA teacher of an ADR trainer (:func:`adr_trainer`) and anneals T
    and rho per epoch (cosine); logs ``temperature`` and ``rho`` at each epoch end.

    Args:
        temperature: ``(start, end)`` of the temperature schedule.
        rho: ``(start, end)`` of the rho schedule.
        ema_decay: decay of the EMA teacher, per step.

    Example:

        >>> ADRSchedule((2.5, 2.0), (0.7, 0.95), ema_decay=0.995).rho
        (0.7, 0.95)
    """

    def __init__(self, temperature: tuple[float, float], rho: tuple[float, float],
                 ema_decay: float):
        super().__init__()
        self.temperature = tuple(temperature)
        self.rho = tuple(rho)
        self.ema_decay = float(ema_decay)
        self._epochs = 1

    def on_train_begin(self, logs=None):
        trainer = self.model
        self._epochs = int((self.params or {}).get("epochs") or 1)
        if float(trainer.teacher_ready.numpy()) == 0.0:
            trainer.copy_student_to_teacher()
            trainer.teacher_ready.assign(1.0)
        trainer.ema_decay.assign(self.ema_decay)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.temperature.assign(cosine_schedule(*self.temperature, epoch, self._epochs))
        self.model.rho.assign(cosine_schedule(*self.rho, epoch, self._epochs))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["temperature"] = float(self.model.temperature.numpy())
            logs["rho"] = float(self.model.rho.numpy())

    def on_train_end(self, logs=None):
        self.model.ema_decay.assign(0.0)


__all__ = ["ADRSchedule", "ADRTrainer", "adr_trainer", "cosine_schedule"]
