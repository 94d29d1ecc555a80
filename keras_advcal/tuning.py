"""Hyperparameter search with KerasTuner: a ``HyperModel`` around ``AdvCalTrainer``.

:class:`AdvCalHyperModel` builds a classifier, wraps it in an
:class:`~keras_advcal.AdvCalTrainer` and compiles it with AdamW. It searches the
ordinary training knobs (model width, learning rate, weight decay, batch size); the
*training attack is fixed by you*, because the threat model is part of the problem,
not a hyperparameter. The calibrated trainer adds no knob of its own: ``T`` and ``rho``
are fitted on held-out data every epoch by the
:class:`~keras_advcal.CalibratedTeacher` callback, which the hypermodel adds to every
trial. For a fair comparison, ``search_baseline=True`` also searches the knob of the
baseline: the label smoothing of hard-label PGD training, or a fixed ``(T, rho)``
pair for the calibrated targets.

Search space (names of the hyperparameters):

| name | values | when |
| --- | --- | --- |
| `width` | 16, 32, 64 (filters of `small_cnn`) | default model builder |
| `learning_rate` | 1e-4 to 1e-2, log scale | always |
| `weight_decay` | 1e-5 to 1e-2, log scale (AdamW) | always |
| `batch_size` | `batch_sizes` (64, 128, 256) | unless `batch_sizes=None` |
| `label_smoothing` | 0 to 0.3 | `labels="hard"`, `search_baseline=True` |
| `temperature`, `rho` | 1 to 4, 0 to 1 (fixed `T`, `rho`) | `labels="calibrated"`, `search_baseline=True` |
| `objective` | `objectives` (e.g. pgd_at, trades, mart) | more than one in `objectives` |
| `beta` | `beta_range`, log scale (trades and mart only) | `beta_range` given |

Example:

    >>> import keras_tuner
    >>> from keras_advcal import PGD
    >>> from keras_advcal.tuning import AdvCalHyperModel, objective
    >>> hypermodel = AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=3), labels="hard")
    >>> hp = keras_tuner.HyperParameters()
    >>> trainer = hypermodel.build(hp)      # a compiled AdvCalTrainer
    >>> sorted(hp.values)
    ['batch_size', 'learning_rate', 'weight_decay', 'width']
    >>> objective().name, objective().direction
    ('val_adv_accuracy', 'max')

A search (see ``notebooks/03_keras_tuner.ipynb``):

    tuner = keras_tuner.RandomSearch(hypermodel, objective=objective(), max_trials=10,
                                     directory="tuning", project_name="digits")
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=20)
    best = tuner.get_best_models(1)[0]      # an AdvCalTrainer; best.model is the classifier

The loaded trainers carry their optimizer state (``build`` creates the optimizer's
variables, so the checkpoint's load into them).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from keras_advcal import attacks as attacks_lib
from keras_advcal import awp as awp_lib
from keras_advcal import models as models_lib
from keras_advcal import objectives as objectives_lib
from keras_advcal import targets as targets_lib
from keras_advcal.teacher import TEACHER_KINDS, CalibratedTeacher
from keras_advcal.trainer import LABEL_MODES, AdvCalTrainer

#: The metric the searches maximise: robust accuracy on the validation data.
OBJECTIVE_NAME = "val_adv_accuracy"
#: Default candidate batch sizes.
DEFAULT_BATCH_SIZES = (64, 128, 256)
#: Default candidate widths of the default model (``small_cnn``'s first convolution).
DEFAULT_WIDTHS = (16, 32, 64)
#: Largest training sample the calibration uses when ``train_sample`` is not given.
DEFAULT_TRAIN_SAMPLE = 1000

ModelBuilder = Callable[[keras_tuner.HyperParameters, tuple, int], keras.Model]


def objective() -> keras_tuner.Objective:
    """The objective of adversarial-training searches: maximise ``val_adv_accuracy``.

    Returns:
        ``keras_tuner.Objective("val_adv_accuracy", direction="max")``.

    Example:

        >>> objective().direction
        'max'
    """
    return keras_tuner.Objective(OBJECTIVE_NAME, direction="max")


def default_model_builder(hp: keras_tuner.HyperParameters, input_shape: Sequence[int],
                          num_classes: int) -> keras.Model:
    """The default classifier of :class:`AdvCalHyperModel`: a
    :func:`keras_advcal.models.small_cnn` whose width is the ``width`` hyperparameter.

    Args:
        hp: the trial's hyperparameters.
        input_shape: ``(height, width, channels)``.
        num_classes: number of output logits.

    Returns:
        An uncompiled classifier that outputs logits.

    Example:

        >>> model = default_model_builder(keras_tuner.HyperParameters(), (8, 8, 1), 10)
        >>> model.output_shape
        (None, 10)
    """
    width = hp.Choice("width", list(DEFAULT_WIDTHS))
    return models_lib.small_cnn(tuple(input_shape), num_classes, width=width)


def _is_dataset(value: Any) -> bool:
    return isinstance(value, tf.data.Dataset)


class AdvCalHyperModel(keras_tuner.HyperModel):
    """A KerasTuner ``HyperModel`` that builds, compiles and fits an ``AdvCalTrainer``.

    ``build(hp)`` makes the classifier (``model_builder``), wraps it in an
    :class:`~keras_advcal.AdvCalTrainer` with the fixed ``attack`` and compiles it with
    ``keras.optimizers.AdamW``. ``fit(hp, model, ...)`` sets the batch size and, for
    ``labels="calibrated"``, puts a fresh :class:`~keras_advcal.CalibratedTeacher`
    first in the callbacks of every trial.

    Args:
        input_shape: ``(height, width, channels)`` of the images (pixels in ``[0, 1]``).
        num_classes: number of classes.
        attack: the training attack (fixed, not searched), e.g.
            ``keras_advcal.PGD(epsilon=0.1, steps=10)``.
        eval_attack: the attack of ``val_adv_accuracy`` (default: the training attack).
        labels: ``"calibrated"`` (default) or ``"hard"`` (PGD adversarial training).
        model_builder: ``model_builder(hp, input_shape, num_classes) -> keras.Model``
            returning a classifier with logits out; it may declare hyperparameters of
            its own. Default: :func:`default_model_builder`.
        search_baseline: also search the baseline's knob: ``label_smoothing`` (0 to
            0.3) with ``labels="hard"``; a fixed ``temperature`` (1 to 4) and ``rho``
            (0 to 1) passed to ``CalibratedTeacher(rule="fixed")`` with
            ``labels="calibrated"``, to compare with the automatic calibration.
        calibration_data: held-out ``(x, y)`` on which ``T`` and ``rho`` are fitted
            (calibrated mode). Default: the ``validation_data`` given to ``search``.
        train_sample: ``(x, y)`` sample of the training data for the accuracy floor
            (calibrated mode). Default: up to 1,000 seeded random training examples
            (the first 1,000 a ``tf.data`` input yields).
        teacher_kind: the teacher of ``CalibratedTeacher`` (``"swa"``, the default,
            ``"best"`` or ``"ema"``).
        loss_form: ``"kd"`` or ``"soft"`` (see :class:`~keras_advcal.AdvCalTrainer`).
        acc_floor: accuracy floor of the published calibration rule.
        batch_sizes: candidate batch sizes; ``None`` leaves the batch size to
            ``search(batch_size=...)``.
        objectives: the training objective (:mod:`keras_advcal.objectives`), or
            several candidates (``"pgd_at"``, ``"trades"``, ``"mart"``) searched as
            the ``objective`` hyperparameter.
        beta_range: ``(low, high)`` of the ``beta`` of TRADES and MART, searched on a
            log scale (active only when the objective is one of them); ``None``:
            each objective's default.
        seed: seed of the trainers' attack streams and of the default train sample.
        weight_perturbation: every trial's weight perturbation, e.g.
            ``keras_advcal.AWP(0.01)`` (the trainer's default recipe has it); ``None``
            (default): none, so that the objectives and baselines are searched as
            published.
        name: name of the hypermodel.
        tunable: whether its hyperparameters join the search space (KerasTuner).

    Example:

        >>> from keras_advcal import PGD
        >>> hypermodel = AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=2),
        ...                               labels="hard", search_baseline=True)
        >>> trainer = hypermodel.build(keras_tuner.HyperParameters())
        >>> trainer.labels, round(trainer.label_smoothing, 2)
        ('hard', 0.0)
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, attack: Any,
                 eval_attack: Any = None, labels: str = "calibrated",
                 model_builder: ModelBuilder | None = None, search_baseline: bool = False,
                 calibration_data: Any = None, train_sample: Any = None,
                 teacher_kind: str = "swa", loss_form: str = "kd", acc_floor: float = 0.9,
                 batch_sizes: Sequence[int] | None = DEFAULT_BATCH_SIZES,
                 seed: int | None = None, name: str | None = None, tunable: bool = True,
                 objectives: str | Sequence[str] = "pgd_at",
                 beta_range: tuple[float, float] | None = None,
                 weight_perturbation: Any = None):
        super().__init__(name=name, tunable=tunable)
        self.weight_perturbation = awp_lib.get(weight_perturbation)
        self.objectives, self.beta_range = self._check_objectives(objectives, beta_range)
        if labels not in LABEL_MODES:
            raise ValueError(f"`labels` must be one of {LABEL_MODES}, got {labels!r}.")
        if loss_form not in targets_lib.LOSS_FORMS:
            raise ValueError(
                f"`loss_form` must be one of {targets_lib.LOSS_FORMS}, got {loss_form!r}.")
        if teacher_kind not in TEACHER_KINDS or teacher_kind == "fixed":
            raise ValueError("`teacher_kind` must be 'best', 'swa' or 'ema' (a search "
                             f"trains its own teacher), got {teacher_kind!r}.")
        if len(tuple(input_shape)) != 3:
            raise ValueError("`input_shape` must be (height, width, channels), got "
                             f"{tuple(input_shape)}.")
        if int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes!r}.")
        if batch_sizes is not None:
            batch_sizes = [int(b) for b in batch_sizes]
            if not batch_sizes or min(batch_sizes) < 1:
                raise ValueError(f"`batch_sizes` must be positive integers, got {batch_sizes}.")
        if model_builder is not None and not callable(model_builder):
            raise TypeError("`model_builder` must be a callable "
                            "model_builder(hp, input_shape, num_classes) -> keras.Model.")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.attack = attacks_lib.get(attack)
        self.eval_attack = attacks_lib.get(eval_attack) if eval_attack is not None else None
        self.labels = labels
        self.model_builder = model_builder or default_model_builder
        self.search_baseline = bool(search_baseline)
        self.calibration_data = calibration_data
        self.train_sample = train_sample
        self.teacher_kind = teacher_kind
        self.loss_form = loss_form
        self.acc_floor = float(acc_floor)
        self.batch_sizes = batch_sizes
        self.seed = seed

    # ------------------------------------------------------------ search space
    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the hypermodel's own hyperparameters (all but the model builder's).

        KerasTuner calls this when the tuner is created, so the whole space, batch
        size included, is known before the first trial.

        Example:

            >>> from keras_advcal import PGD
            >>> hp = keras_tuner.HyperParameters()
            >>> AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=2),
            ...                  search_baseline=True).declare_hyperparameters(hp)
            >>> sorted(hp.values)
            ['batch_size', 'learning_rate', 'rho', 'temperature', 'weight_decay']
        """
        self._optimizer_hyperparameters(hp)
        self._batch_size(hp)
        self._baseline_hyperparameters(hp)
        self._objective_hyperparameters(hp)

    @staticmethod
    def _check_objectives(objectives, beta_range):
        names = (objectives,) if isinstance(objectives, str) else tuple(objectives)
        allowed = ("pgd_at", "trades", "mart")
        if not names or any(name not in allowed for name in names):
            raise ValueError(f"`objectives` must name objectives among {allowed}, got "
                             f"{objectives!r}.")
        if beta_range is not None:
            low, high = (float(v) for v in beta_range)
            if not 0 < low <= high:
                raise ValueError(f"`beta_range` must be (low, high) with 0 < low <= high, "
                                 f"got {beta_range!r}.")
            beta_range = (low, high)
        return names, beta_range

    def _objective_hyperparameters(self, hp) -> objectives_lib.Objective:
        """The trial's objective (``objective`` and ``beta`` when searched)."""
        name = (hp.Choice("objective", list(self.objectives)) if len(self.objectives) > 1
                else self.objectives[0])
        with_beta = [n for n in self.objectives if n in ("trades", "mart")]
        beta = None
        if self.beta_range is not None and with_beta:
            # With several objectives, beta is active only for TRADES and MART.
            scope = (hp.conditional_scope("objective", with_beta)
                     if len(self.objectives) > 1 else contextlib.nullcontext())
            with scope:
                beta = hp.Float("beta", *self.beta_range, sampling="log")
        return objectives_lib.get(name, beta=beta if name in with_beta else None)

    @staticmethod
    def _optimizer_hyperparameters(hp) -> tuple[float, float]:
        learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
        weight_decay = hp.Float("weight_decay", 1e-5, 1e-2, sampling="log", default=1e-4)
        return learning_rate, weight_decay

    def _batch_size(self, hp) -> int | None:
        if self.batch_sizes is None:
            return None
        return hp.Choice("batch_size", self.batch_sizes)

    def _baseline_hyperparameters(self, hp) -> dict[str, float]:
        if not self.search_baseline:
            return {}
        if self.labels == "hard":
            return {"label_smoothing": hp.Float("label_smoothing", 0.0, 0.3, default=0.0)}
        return {"temperature": hp.Float("temperature", 1.0, 4.0, default=2.0),
                "rho": hp.Float("rho", 0.0, 1.0, default=0.5)}

    # ------------------------------------------------------------------ build
    def build(self, hp: keras_tuner.HyperParameters) -> AdvCalTrainer:
        """Builds and compiles the trainer of one trial.

        Args:
            hp: the trial's hyperparameters.

        Returns:
            A compiled :class:`~keras_advcal.AdvCalTrainer` (its ``.model`` is the
            classifier) whose optimizer is built, so that ``tuner.get_best_models``
            restores the optimizer state of a trial's checkpoint too.

        Example:

            >>> from keras_advcal import PGD
            >>> hypermodel = AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=2))
            >>> trainer = hypermodel.build(keras_tuner.HyperParameters())
            >>> type(trainer.optimizer).__name__
            'AdamW'
        """
        classifier = self.model_builder(hp, self.input_shape, self.num_classes)
        if not isinstance(classifier, keras.Model):
            raise TypeError("`model_builder` must return a keras.Model, got "
                            f"{type(classifier).__name__}.")
        learning_rate, weight_decay = self._optimizer_hyperparameters(hp)
        self._batch_size(hp)
        baseline = self._baseline_hyperparameters(hp)
        trainer = AdvCalTrainer(
            classifier, self.attack, eval_attack=self.eval_attack, labels=self.labels,
            loss_form=self.loss_form, label_smoothing=baseline.get("label_smoothing", 0.0),
            num_classes=self.num_classes, seed=self.seed,
            objective=self._objective_hyperparameters(hp),
            weight_perturbation=self.weight_perturbation)
        trainer.compile(optimizer=keras.optimizers.AdamW(learning_rate=learning_rate,
                                                         weight_decay=weight_decay))
        # Create the optimizer's slots now (training would at its first step): a trainer
        # that ``tuner.get_best_models`` rebuilds then takes the checkpoint's optimizer
        # state, instead of skipping it with a warning.
        trainer.optimizer.build(trainer.student.trainable_variables)
        return trainer

    # -------------------------------------------------------------------- fit
    def fit(self, hp: keras_tuner.HyperParameters, model: AdvCalTrainer, *args: Any,
            **kwargs: Any) -> keras.callbacks.History:
        """Fits one trial: sets the batch size and adds the ``CalibratedTeacher``.

        Args:
            hp: the trial's hyperparameters.
            model: the trainer from :meth:`build`.
            *args: the positional arguments of ``tuner.search`` (``x``, ``y``...).
            **kwargs: its keyword arguments (``validation_data``, ``epochs``...) and
                the tuner's ``callbacks``.

        Returns:
            The ``History`` of ``model.fit``.

        Raises:
            ValueError: in calibrated mode, without ``calibration_data`` nor
                ``validation_data``; or with a ``batch_size`` argument while the batch
                size is searched.

        Example:

            >>> import numpy as np
            >>> from keras_advcal import PGD
            >>> hypermodel = AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=1),
            ...                               labels="hard", batch_sizes=[32])
            >>> hp = keras_tuner.HyperParameters()
            >>> x = np.random.rand(64, 8, 8, 1).astype("float32"); y = np.arange(64) % 10
            >>> history = hypermodel.fit(hp, hypermodel.build(hp), x, y, epochs=1,
            ...                          validation_data=(x, y), verbose=0)
            >>> "val_adv_accuracy" in history.history
            True
        """
        args = list(args)
        batch_size = self._batch_size(hp)
        if batch_size is not None:
            self._set_batch_size(batch_size, args, kwargs)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self.labels == "calibrated":
            callbacks.insert(0, self._teacher_callback(hp, args, kwargs))
        return model.fit(*args, callbacks=callbacks, **kwargs)

    @staticmethod
    def _set_batch_size(batch_size: int, args: list, kwargs: dict) -> None:
        """Puts the trial's batch size into the ``fit`` arguments; a ``tf.data`` input
        is re-batched (a dataset refuses ``batch_size``)."""
        if kwargs.get("batch_size") is not None:
            raise ValueError(
                "The batch size is a searched hyperparameter (`batch_sizes`); leave "
                "`batch_size` out of tuner.search(...), or give "
                "AdvCalHyperModel(batch_sizes=None) to set it yourself.")
        if args and _is_dataset(args[0]):
            args[0] = args[0].unbatch().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        elif _is_dataset(kwargs.get("x")):
            kwargs["x"] = kwargs["x"].unbatch().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        else:
            kwargs["batch_size"] = batch_size

    def _teacher_callback(self, hp, args: list, kwargs: dict) -> CalibratedTeacher:
        calibration_data = self.calibration_data
        if calibration_data is None:
            calibration_data = kwargs.get("validation_data")
        if calibration_data is None:
            raise ValueError(
                "labels='calibrated' fits T and rho on held-out data: give "
                "AdvCalHyperModel(calibration_data=(x_val, y_val)) or "
                "tuner.search(..., validation_data=(x_val, y_val)).")
        train_sample = self.train_sample
        if train_sample is None:
            train_sample = self._default_train_sample(args, kwargs)
        baseline = self._baseline_hyperparameters(hp)
        options: dict[str, Any] = {}
        if baseline:
            options = {"rule": "fixed", "fixed_temperature": baseline["temperature"],
                       "fixed_rho": baseline["rho"]}
        return CalibratedTeacher(calibration_data, train_sample, kind=self.teacher_kind,
                                 acc_floor=self.acc_floor,
                                 seed=0 if self.seed is None else self.seed, **options)

    def _default_train_sample(self, args: list, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
        x = args[0] if args else kwargs.get("x")
        y = args[1] if len(args) > 1 else kwargs.get("y")
        if _is_dataset(x):
            # The first examples the dataset yields (a random sample when it shuffles).
            batches = x.unbatch().take(DEFAULT_TRAIN_SAMPLE).batch(DEFAULT_TRAIN_SAMPLE)
            for element in batches.take(1):
                return np.asarray(element[0]), np.asarray(element[1])
        if x is None or y is None or _is_dataset(x):
            raise ValueError(
                "labels='calibrated' needs a sample of the training data for the "
                "accuracy floor: give AdvCalHyperModel(train_sample=(x, y)).")
        x, y = np.asarray(x), np.asarray(y)
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        count = min(len(x), DEFAULT_TRAIN_SAMPLE)
        chosen = np.sort(rng.choice(len(x), size=count, replace=False))
        return x[chosen], y[chosen]


__all__ = ["AdvCalHyperModel", "DEFAULT_BATCH_SIZES", "OBJECTIVE_NAME",
           "default_model_builder", "objective"]
