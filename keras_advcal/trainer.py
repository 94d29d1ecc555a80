"""``AdvCalTrainer``: adversarial training with calibrated soft targets, as a
``keras.Model`` used through plain ``model.fit``.

One training step::

    batch (x, y) -> attack (per the objective) -> x'
                 -> teacher(x' or x) -> target (one-hot or calibrated)
                 -> objective loss(student(x), student(x'), target)
                 -> (weight perturbation: ascent on the weights, descent gradient, restore)
                 -> update

The objective (:mod:`keras_advcal.objectives`: ``"trades"``, the default,
``"pgd_at"``, ``"mart"``) says what the attack maximises and what the student
minimises. With ``labels="hard"`` (the default) the target is the one-hot label
(``"pgd_at"`` with ``weight_perturbation=None``: Madry et al. PGD adversarial
training). The default, ``AdvCalTrainer(model, attack)``, is TRADES (beta 6) with
one-hot labels and adversarial weight perturbation (``AWP(gamma=0.01)``): the recipe
the library's development study of recipes chose (``benchmarks/recipes.py``), where
calibrated targets did not add to it. With ``labels="calibrated"`` it is
``rho * softmax(teacher / T) + (1 - rho) * onehot(y)`` and replaces the label in the
objective's supervised term, where the teacher's weights, ``T`` and ``rho`` are
Keras variables of the trainer (saved with it, restored by ``BackupAndRestore``).
``rho`` is 0 until a teacher exists, so a calibrated trainer starts as its plain
objective; the :class:`keras_advcal.CalibratedTeacher` callback maintains the
teacher and fits ``T`` and ``rho`` every epoch. Adversarial weight perturbation
(:mod:`keras_advcal.awp`, on by default) composes with any of them;
``weight_perturbation=None`` turns it off.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal import AdvCalTrainer, PGD
    >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                         keras.layers.Dense(10)])
    >>> trainer = AdvCalTrainer(net, PGD(epsilon=0.1, step_size=0.05, steps=3))
    >>> trainer.compile(optimizer="adam")
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32"); y = np.arange(32) % 10
    >>> history = trainer.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'adv_accuracy', 'loss']
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_advcal import attacks as attacks_lib
from keras_advcal import awp as awp_lib
from keras_advcal import checks
from keras_advcal import objectives as objectives_lib
from keras_advcal import targets as targets_lib

LABEL_MODES = ("hard", "calibrated")
#: Teacher logits the training steps keep for the accuracy floor (per epoch, the latest).
FLOOR_SAMPLE_SIZE = 1024
#: Validation examples whose teacher and student logits the validation pass keeps for
#: the calibration (per pass, the first ones).
VALIDATION_SAMPLE_SIZE = 1024
#: Name prefixes of the trainer's recording buffers: trainers saved before a buffer
#: existed load with it at its initial value.
_BUFFER_PREFIXES = ("floor_", "validation_record")
_SERIALIZE = keras.saving.serialize_keras_object
_DESERIALIZE = keras.saving.deserialize_keras_object


def clone_architecture(model: keras.Model, name: str | None = None) -> keras.Model:
    """A new, built model with the architecture and the current weights of ``model``.

    Functional and Sequential models are cloned with ``keras.models.clone_model``;
    subclassed models through ``get_config``/``from_config``.

    Example:

        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> twin = clone_architecture(m)
        >>> all(np.array_equal(a, b) for a, b in zip(m.get_weights(), twin.get_weights()))
        True
    """
    try:
        twin = keras.models.clone_model(model)
    except (ValueError, TypeError, NotImplementedError):
        twin = model.__class__.from_config(model.get_config())
    if not twin.built:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError(
                "Cannot build a teacher copy of the model: build the model first (call it "
                "on a batch or give it an Input) so that its input shape is known.")
        twin.build(shape)
    twin.set_weights(model.get_weights())
    if name is not None:
        twin.name = name
    return twin


def _multi_worker(strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy that spans several workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode()) if in_multi_worker_mode is not None else True


def _scalar_weight(owner: keras.Model, name: str, value: float, dtype: str = "float32"):
    return owner.add_weight(shape=(), initializer=keras.initializers.Constant(value),
                            trainable=False, dtype=dtype, name=name)


#: The default recipe's weight perturbation (stateless: one instance serves every trainer).
DEFAULT_WEIGHT_PERTURBATION = awp_lib.AWP(awp_lib.DEFAULT_GAMMA)


@keras.saving.register_keras_serializable(package="keras_advcal")
class AdvCalTrainer(keras.Model):
    """Wraps a classifier for adversarial training with calibrated soft targets.

    Args:
        model: the classifier to train, a built ``keras.Model`` mapping images in the
            attack's ``bounds`` to logits ``(batch, classes)``.
        attack: the training attack, e.g. ``keras_advcal.PGD(epsilon=8/255,
            step_size=2/255, steps=10)``.
        eval_attack: the attack used by ``evaluate`` and for ``val_adv_accuracy``
            (default: the training attack).
        labels: ``"hard"`` (one-hot labels, the default) or ``"calibrated"`` (soft
            targets from a teacher, with ``T`` and ``rho`` fitted by the
            :class:`~keras_advcal.CalibratedTeacher` callback).
        loss_form: ``"kd"`` (distillation form, default) or ``"soft"`` (cross-entropy
            with the soft target). See :mod:`keras_advcal.targets`.
        teacher: a fixed, trained teacher model (the paper's two-stage recipe). By
            default the trainer builds a copy of ``model`` whose weights the
            :class:`~keras_advcal.CalibratedTeacher` callback maintains.
        temperature: initial temperature ``T``.
        rho: initial interpolation ratio ``rho`` (keep 0: the callback fits it).
        label_smoothing: label smoothing of the hard-label loss (baseline searches).
        track_clean_accuracy: compute clean ``accuracy`` in training (one extra
            forward pass per batch); ``False`` saves it.
        from_logits: ``False`` when ``model`` outputs probabilities; the trainer then
            works on their logarithm. Default ``True`` refuses a softmax output.
        num_classes: the number of classes, checked against the model's output.
        seed: seed of the trainer's random streams (attack random starts).
        average_weights: also keep a uniform average of the student's weights
            (``average_model``), maintained by the
            :class:`keras_advcal.averaging.WeightAverage` callback: SWA, the free
            baseline against robust overfitting. Saved with the trainer.
        objective: the training objective: ``"trades"`` (default, beta 6),
            ``"pgd_at"``, ``"mart"`` or an instance such as
            ``keras_advcal.TRADES(beta=6.0)``
            (see :mod:`keras_advcal.objectives`, which also says where the
            calibrated target enters each one).
        weight_perturbation: adversarial weight perturbation before every descent
            step: the default ``AWP(gamma=0.01)`` (:data:`keras_advcal.awp.DEFAULT_GAMMA`,
            part of the default recipe), another ``keras_advcal.AWP(gamma)``, or
            ``None`` for none (plain TRADES, plain PGD-AT).
        rectified_targets: give each calibrated target its own ratio
            ``rho_i = clip(rho - (max_j p_j - p_y), 0, 1)``, ``p = softmax(g / T)``
            (:func:`keras_advcal.targets.rectified_ratio`, the ADR baseline's
            rectification, with the fitted ``rho``): less teacher where the teacher
            prefers another class, so that every target keeps its label as its most
            likely class, whatever ``rho`` (calibrate it without an accuracy floor,
            ``acc_floor=0``). Needs ``labels="calibrated"``; not with the ``"adr"``
            objective, which rectifies already.
        **kwargs: passed to ``keras.Model`` (e.g. ``name``).

    Example:

        >>> from keras_advcal import PGD
        >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> trainer = AdvCalTrainer(net, attack=PGD(0.1, steps=2), labels="hard")
        >>> trainer.model is net
        True
    """

    #: Arguments whose default has changed since they were added, with the value they
    #: were added with: what a saved config that lacks them (written before they
    #: existed) trained. Before objectives it was PGD-AT, before weight perturbation
    #: there was none; today's default is TRADES with AWP.
    SAVED_WITHOUT = {"objective": "pgd_at", "weight_perturbation": None}

    def __init__(self, model: keras.Model, attack: Any, eval_attack: Any = None,
                 labels: str = "hard", loss_form: str = "kd",
                 teacher: keras.Model | None = None, temperature: float = 1.0,
                 rho: float = 0.0, label_smoothing: float = 0.0,
                 track_clean_accuracy: bool = True, from_logits: bool = True,
                 num_classes: int | None = None, seed: int | None = None,
                 average_weights: bool = False, objective: Any = "trades",
                 weight_perturbation: Any = DEFAULT_WEIGHT_PERTURBATION,
                 rectified_targets: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self._validate_arguments(model, labels, loss_form, teacher, temperature, rho,
                                 label_smoothing, from_logits)
        self.student = model
        self.attack = attacks_lib.get(attack)
        self.eval_attack = attacks_lib.get(eval_attack) if eval_attack is not None else None
        self.objective = objectives_lib.get(objective)
        if self.objective.requires_teacher and labels != "calibrated":
            raise ValueError(f"objective={self.objective.name!r} needs labels='calibrated'.")
        self.objective.training_attack(self.attack)  # refuses an attack it cannot use
        if rectified_targets and labels != "calibrated":
            raise ValueError("`rectified_targets` needs labels='calibrated'.")
        if rectified_targets and self.objective.name == "adr":
            raise ValueError("The 'adr' objective rectifies its targets already; leave "
                             "`rectified_targets` False.")
        self.rectified_targets = bool(rectified_targets)
        self.weight_perturbation = awp_lib.get(weight_perturbation)
        self.labels = labels
        self.loss_form = loss_form
        self.label_smoothing = float(label_smoothing)
        self.track_clean_accuracy = bool(track_clean_accuracy)
        self.from_logits = bool(from_logits)
        self.seed = seed
        self.num_classes = self._resolve_num_classes(model, num_classes)
        self.has_fixed_teacher = teacher is not None

        self.teacher = None
        if labels == "calibrated":
            self.teacher = teacher if teacher is not None else clone_architecture(
                model, name=f"{model.name}_teacher")
            self._check_teacher_matches(self.teacher)
            # The teacher is updated by assignment, never by the optimizer.
            self.teacher.trainable = False
        self.average = None
        if average_weights:
            self.average = clone_architecture(model, name=f"{model.name}_average")
            self.average.trainable = False

        # State that must survive save/load and BackupAndRestore lives in variables.
        self.temperature = _scalar_weight(self, "temperature", temperature)
        self.rho = _scalar_weight(self, "rho", rho)
        self.teacher_ready = _scalar_weight(self, "teacher_ready",
                                            1.0 if self.has_fixed_teacher else 0.0)
        self.teacher_score = _scalar_weight(self, "teacher_score", -np.inf)
        self.teacher_updates = _scalar_weight(self, "teacher_updates", 0.0)
        self.ema_decay = _scalar_weight(self, "ema_decay", 0.0)
        if average_weights:  # only then, so that trainers saved before still load
            self.average_updates = _scalar_weight(self, "average_updates", 0.0)
        if labels == "calibrated":
            # The teacher's logits on the training batches' examples and their labels
            # (the last FLOOR_SAMPLE_SIZE of the epoch): the accuracy floor's sample.
            # Every replica writes the same gathered rows (a mean over identical
            # values: the write is the same on every replica and every worker).
            shared = dict(trainable=False, aggregation="mean", initializer="zeros",
                          dtype="float32")
            self.floor_logits = self.add_weight(shape=(FLOOR_SAMPLE_SIZE, self.num_classes),
                                                name="floor_logits", **shared)
            self.floor_labels = self.add_weight(shape=(FLOOR_SAMPLE_SIZE,),
                                                name="floor_labels", **shared)
            self.floor_count = self.add_weight(shape=(), name="floor_count", **shared)
            # The teacher's and the student's logits on the validation pass's PGD
            # examples (made against the student) and their labels, the first
            # VALIDATION_SAMPLE_SIZE of the pass, while ``validation_recording`` is 1:
            # the CalibratedTeacher calibrates on them instead of attacking again.
            self.validation_recording = self.add_weight(
                shape=(), name="validation_recording", **shared)
            self.validation_record_teacher = self.add_weight(
                shape=(VALIDATION_SAMPLE_SIZE, self.num_classes),
                name="validation_record_teacher", **shared)
            self.validation_record_student = self.add_weight(
                shape=(VALIDATION_SAMPLE_SIZE, self.num_classes),
                name="validation_record_student", **shared)
            self.validation_record_labels = self.add_weight(
                shape=(VALIDATION_SAMPLE_SIZE,), name="validation_record_labels", **shared)
            self.validation_record_count = self.add_weight(
                shape=(), name="validation_record_count", **shared)
        self.seed_generator = keras.random.SeedGenerator(seed, name="attack_seed")
        eval_seed = None if seed is None else seed + 1
        self.eval_seed_generator = keras.random.SeedGenerator(eval_seed, name="eval_seed")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.adv_accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self._checked_inputs = False
        # Arrays the CalibratedTeacher keeps between epochs (the validation examples it
        # reuses); saved with the trainer so that BackupAndRestore resumes with them.
        self.calibration_cache: dict[str, np.ndarray] = {}
        if getattr(model, "built", False):
            self.built = True

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_arguments(model, labels, loss_form, teacher, temperature, rho,
                            label_smoothing, from_logits):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model returning logits, got "
                            f"{type(model).__name__}.")
        if labels not in LABEL_MODES:
            raise ValueError(f"`labels` must be one of {LABEL_MODES}, got {labels!r}.")
        if loss_form not in targets_lib.LOSS_FORMS:
            raise ValueError(
                f"`loss_form` must be one of {targets_lib.LOSS_FORMS}, got {loss_form!r}.")
        if teacher is not None and labels != "calibrated":
            raise ValueError("A `teacher` is only used with labels='calibrated'.")
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise TypeError(f"`teacher` must be a keras.Model, got {type(teacher).__name__}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"`rho` must be in [0, 1], got {rho!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        if label_smoothing and labels != "hard":
            raise ValueError("`label_smoothing` applies to labels='hard' only; the "
                             "calibrated trainer fits its own soft targets.")
        if from_logits and checks.ends_in_softmax(model):
            raise checks.softmax_error("model")

    @staticmethod
    def _resolve_num_classes(model, num_classes):
        outputs = checks.model_num_classes(model)
        if num_classes is not None and outputs is not None and outputs != num_classes:
            raise checks.InputError(
                f"The model outputs {outputs} logits but num_classes={num_classes}. Give "
                "the model a final Dense(num_classes) layer without activation.")
        resolved = num_classes if num_classes is not None else outputs
        if resolved is not None and resolved < 2:
            raise checks.InputError(
                f"The model outputs {resolved} value(s) per example; a classifier for "
                "adversarial training needs logits for at least 2 classes.")
        return resolved

    def _check_teacher_matches(self, teacher):
        if self.from_logits and checks.ends_in_softmax(teacher):
            raise checks.softmax_error("teacher")
        teacher_classes = checks.model_num_classes(teacher)
        if None not in (teacher_classes, self.num_classes) and teacher_classes != self.num_classes:
            raise checks.InputError(
                f"The teacher outputs {teacher_classes} logits but the model outputs "
                f"{self.num_classes}; both must classify the same classes.")

    # ------------------------------------------------------------------- forward
    @property
    def model(self) -> keras.Model:
        """The wrapped classifier (logits out), for export and deployment."""
        return self.student

    @property
    def average_model(self) -> keras.Model:
        """The uniform average of the student's weights (``average_weights=True``)."""
        if self.average is None:
            raise ValueError("This trainer keeps no weight average: build it with "
                             "average_weights=True and fit with the WeightAverage callback.")
        return self.average

    @property
    def validation_attack(self) -> attacks_lib.Attack:
        """The attack used on validation data: ``eval_attack`` or the training one."""
        return self.eval_attack if self.eval_attack is not None else self.attack

    @property
    def training_attack(self) -> attacks_lib.Attack:
        """The attack that makes the training examples: ``attack`` with what the
        objective maximises (TRADES: the KL from the clean prediction)."""
        return self.objective.training_attack(self.attack)

    def _as_logits(self, outputs):
        if self.from_logits:
            return outputs
        return tf.math.log(tf.clip_by_value(tf.cast(outputs, "float32"), 1e-12, 1.0))

    def student_logits(self, x, training: bool = False):
        """Logits of the student (log-probabilities when ``from_logits=False``)."""
        return self._as_logits(self.student(x, training=training))

    def teacher_logits(self, x, training: bool = False):
        """Logits of the teacher (calibrated trainers only)."""
        if self.teacher is None:
            raise ValueError("This trainer has labels='hard' and no teacher.")
        return self._as_logits(self.teacher(x, training=training))

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    # ---------------------------------------------------------------- the steps
    def _label_indices(self, y):
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 2 and y.shape[-1] == 1:
            y = tf.squeeze(y, axis=-1)
        elif y.shape.rank == 2:
            y = tf.argmax(y, axis=-1)
        return tf.cast(y, "int32")

    @staticmethod
    def _reduce(per_example, sample_weight):
        """Sum over the batch divided by the batch size (Keras' sum_over_batch_size)."""
        per_example = tf.cast(per_example, "float32")
        if sample_weight is not None:
            weight = tf.reshape(tf.cast(sample_weight, "float32"), tf.shape(per_example))
            per_example = per_example * weight
        count = tf.cast(tf.shape(per_example)[0], "float32")
        return tf.math.divide_no_nan(tf.reduce_sum(per_example), count)

    @staticmethod
    def _scale_for_replicas(loss):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / replicas if replicas > 1 else loss

    def _teacher_logits_when_used(self, inputs):
        """Teacher logits on ``inputs``; the forward pass is skipped (zeros returned)
        while ``rho == 0`` and the teacher does not exist yet (``teacher_ready``). Once
        it exists they are computed even while ``rho == 0``, when they do not enter the
        loss: they are recorded for the accuracy floor, so that the first calibration
        after the teacher appears needs no attack of its own."""
        shape = tf.stack([tf.shape(inputs)[0], self.num_classes])
        return tf.cond(
            self._teacher_evaluated(),
            lambda: tf.cast(self.teacher_logits(inputs, training=False), "float32"),
            lambda: tf.zeros(shape, "float32"))

    def _teacher_evaluated(self):
        """Whether the training steps evaluate the teacher: it is used (``rho > 0``)
        or it exists."""
        return tf.logical_or(self.rho > 0.0, self.teacher_ready > 0.0)

    def make_target(self, y, teacher_logits=None) -> targets_lib.Target:
        """The batch's target: the one-hot label (``labels="hard"`` or no teacher
        logits), or the calibrated target with the trainer's ``T``, ``rho`` (per the
        objective's ratio) and ``loss_form``.

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
            >>> trainer = AdvCalTrainer(net, PGD(0.1, steps=1), labels="calibrated")
            >>> trainer.make_target([1]).is_calibrated
            False
        """
        if self.labels == "hard" or teacher_logits is None:
            return targets_lib.Target(y, label_smoothing=self.label_smoothing)
        rho = self.objective.target_ratio(self.rho, teacher_logits, y, self.temperature)
        if self.rectified_targets:
            rho = targets_lib.rectified_ratio(teacher_logits, y, self.temperature, rho)
        return targets_lib.Target(y, teacher_logits, self.temperature, rho, self.loss_form)

    def _target(self, y, x, x_adv) -> targets_lib.Target:
        """The target of a training batch, from the teacher on the input the
        objective's supervised term sees (``x'``, or ``x`` for TRADES and ADR)."""
        if self.labels == "hard":
            return self.make_target(y)
        seen = x if self.objective.teacher_input == "clean" else x_adv
        teacher_logits = self._teacher_logits_when_used(seen)
        self._record_floor_sample(teacher_logits, y)
        return self.make_target(y, teacher_logits)

    def _record_floor_sample(self, teacher_logits, y):
        """Writes the batch's teacher logits and labels into the floor sample (a ring
        buffer over the epoch) while the teacher is evaluated.

        No ``tf.cond``: writing a variable shared by the replicas synchronises them,
        which a distribution strategy does not allow inside control flow; the write
        is masked instead."""
        logits, labels = tf.cast(teacher_logits, "float32"), tf.cast(y, "float32")
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            logits = context.all_gather(logits, axis=0)
            labels = context.all_gather(labels, axis=0)
        logits, labels = logits[-FLOOR_SAMPLE_SIZE:], labels[-FLOOR_SAMPLE_SIZE:]
        count = tf.shape(labels)[0]
        start = tf.cast(self.floor_count, "int32")
        positions = tf.math.floormod(start + tf.range(count), FLOOR_SAMPLE_SIZE)[:, None]
        used = self._teacher_evaluated()
        self.floor_logits.assign(tf.where(
            used, tf.tensor_scatter_nd_update(self.floor_logits, positions, logits),
            self.floor_logits))
        self.floor_labels.assign(tf.where(
            used, tf.tensor_scatter_nd_update(self.floor_labels, positions, labels),
            self.floor_labels))
        self.floor_count.assign(tf.cast(tf.where(used, start + count, start), "float32"))

    def _record_validation_sample(self, inputs, student_logits, y):
        """Writes the teacher's and the student's logits on a validation batch's
        calibration inputs (its PGD examples, or the clean batch for an objective whose
        teacher sees the clean input), and its labels, after those already recorded in
        this pass (the first ``VALIDATION_SAMPLE_SIZE`` are kept), while
        ``validation_recording`` is 1 and the teacher exists. Masked writes, as for the
        floor sample."""
        recording = tf.logical_and(self.validation_recording > 0.0, self.teacher_ready > 0.0)
        shape = tf.stack([tf.shape(inputs)[0], self.num_classes])
        teacher = tf.cond(
            recording,
            lambda: tf.cast(self.teacher_logits(inputs, training=False), "float32"),
            lambda: tf.zeros(shape, "float32"))
        student, labels = tf.cast(student_logits, "float32"), tf.cast(y, "float32")
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            teacher = context.all_gather(teacher, axis=0)
            student = context.all_gather(student, axis=0)
            labels = context.all_gather(labels, axis=0)
        start = tf.cast(self.validation_record_count, "int32")
        count = tf.shape(labels)[0]
        # Rows past the buffer's end land in a scratch extension that is cut off (no
        # boolean masks: the shapes stay static under XLA).
        rows = (tf.minimum(start, VALIDATION_SAMPLE_SIZE) + tf.range(count))[:, None]
        for buffer, values in ((self.validation_record_teacher, teacher),
                               (self.validation_record_student, student),
                               (self.validation_record_labels, labels)):
            extended = tf.concat([tf.convert_to_tensor(buffer), tf.zeros_like(values)], 0)
            written = tf.tensor_scatter_nd_update(extended, rows, values)
            buffer.assign(tf.where(recording, written[:VALIDATION_SAMPLE_SIZE], buffer))
        self.validation_record_count.assign(tf.cast(
            tf.where(recording, start + count, start), "float32"))

    def validation_sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's and the student's logits on the validation pass's
        calibration inputs (its PGD examples, made against the student; the clean
        inputs when the objective's teacher sees the clean input, as TRADES's does) and
        their labels, as recorded since
        ``validation_record_count`` was last reset (at most ``VALIDATION_SAMPLE_SIZE``,
        the first of the pass).

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
            >>> trainer = AdvCalTrainer(net, PGD(0.1, steps=1), labels="calibrated")
            >>> [a.shape for a in trainer.validation_sample()]
            [(0, 3), (0, 3), (0,)]
        """
        count = min(int(self.validation_record_count.numpy()), VALIDATION_SAMPLE_SIZE)
        return (np.asarray(self.validation_record_teacher.numpy()[:count]),
                np.asarray(self.validation_record_student.numpy()[:count]),
                np.asarray(self.validation_record_labels.numpy()[:count]).astype("int32"))

    def floor_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's logits and the labels recorded by the training steps since
        ``floor_count`` was last reset (at most ``FLOOR_SAMPLE_SIZE``, the latest).

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
            >>> trainer = AdvCalTrainer(net, PGD(0.1, steps=1), labels="calibrated")
            >>> [a.shape for a in trainer.floor_sample()]
            [(0, 3), (0,)]
        """
        count = min(int(self.floor_count.numpy()), FLOOR_SAMPLE_SIZE)
        return (np.asarray(self.floor_logits.numpy()[:count]),
                np.asarray(self.floor_labels.numpy()[:count]).astype("int32"))

    def per_example_loss(self, y, student_logits, teacher_logits=None, clean_logits=None):
        """The training loss of each example: the objective's, with the hard or
        calibrated target (per ``loss_form``).

        Args:
            y: integer labels.
            student_logits: the student's logits on the adversarial examples.
            teacher_logits: the teacher's logits (calibrated targets), or ``None``.
            clean_logits: the student's logits on the clean inputs (TRADES, MART).

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
            >>> t = AdvCalTrainer(net, PGD(0.1, steps=1), labels="hard", objective="pgd_at")
            >>> [round(float(v), 4) for v in t.per_example_loss([0], [[0.0, 0.0]])]
            [0.6931]
        """
        return self.objective.per_example_loss(self.make_target(y, teacher_logits),
                                               clean_logits, student_logits)

    def _objective_loss(self, x, x_adv, target, sample_weight):
        """The objective's loss on the batch (sum over the batch size) and the
        student's logits on ``x'``, both forward passes in training mode."""
        clean_logits = (self.student_logits(x, training=True)
                        if self.objective.uses_clean_logits else None)
        adv_logits = self.student_logits(x_adv, training=True)
        per_example = self.objective.per_example_loss(target, clean_logits, adv_logits)
        return self._reduce(per_example, sample_weight), adv_logits

    def _update_ema_teacher(self):
        if self.teacher is None or self.has_fixed_teacher:
            return

        def update():
            decay = tf.cast(self.ema_decay, "float32")
            for teacher_var, student_var in zip(self.teacher.weights, self.student.weights):
                if "float" not in str(teacher_var.dtype):
                    continue
                mixed = decay * tf.cast(teacher_var, "float32") + (1.0 - decay) * tf.cast(
                    student_var, "float32")
                teacher_var.assign(tf.cast(mixed, teacher_var.dtype))
            return tf.constant(True)

        tf.cond(self.ema_decay > 0.0, update, lambda: tf.constant(False))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._label_indices(y)
        # The attack maximises what the objective says (TRADES: the KL from f(x)).
        x_adv = self.objective.attack(self.attack, self.student_logits, x, y,
                                      seed=self.seed_generator)
        # The one-hot label, or the calibrated target from the teacher.
        target = self._target(y, x, x_adv)
        variables = self.student.trainable_variables
        saved_weights = None
        if self.weight_perturbation is not None:
            # AWP: one ascent step on the weights, on the objective's loss.
            saved_weights = self.weight_perturbation.perturb(
                self.student, lambda: self.optimizer.scale_loss(
                    self._objective_loss(x, x_adv, target, sample_weight)[0]))
        with tf.GradientTape() as tape:
            loss, adv_logits = self._objective_loss(x, x_adv, target, sample_weight)
            if self.student.losses:
                loss = loss + tf.cast(tf.add_n(self.student.losses), "float32")
            scaled = self.optimizer.scale_loss(self._scale_for_replicas(loss))
        gradients = tape.gradient(scaled, variables)
        if saved_weights is not None:
            # The gradient was taken at the perturbed weights; it updates the originals.
            self.weight_perturbation.restore(self.student, saved_weights)
        self.optimizer.apply(gradients, variables)
        if self.labels == "calibrated":
            self._update_ema_teacher()

        batch = tf.shape(y)[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.adv_accuracy_metric.update_state(y, adv_logits, sample_weight=sample_weight)
        if self.track_clean_accuracy:
            clean_logits = self.student_logits(x, training=False)
            self.accuracy_metric.update_state(y, clean_logits, sample_weight=sample_weight)
        return self._metric_results(training=True)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._label_indices(y)
        clean_logits = self.student_logits(x, training=False)
        x_adv = self.validation_attack(self.student_logits, x, y, seed=self.eval_seed_generator)
        adv_logits = self.student_logits(x_adv, training=False)
        if self.labels == "calibrated":
            # The calibration's inputs, when the CalibratedTeacher asks for them: those
            # the teacher sees in training (the clean input for TRADES, x' otherwise).
            if self.objective.teacher_input == "clean":
                self._record_validation_sample(x, clean_logits, y)
            else:
                self._record_validation_sample(x_adv, adv_logits, y)
        loss = self._reduce(targets_lib.hard_loss(y, adv_logits), sample_weight)
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(y)[0])
        self.accuracy_metric.update_state(y, clean_logits, sample_weight=sample_weight)
        self.adv_accuracy_metric.update_state(y, adv_logits, sample_weight=sample_weight)
        return self._metric_results(training=False)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_metric, self.adv_accuracy_metric]

    def _metric_results(self, training: bool):
        results = {"loss": self.loss_tracker.result()}
        if self.track_clean_accuracy or not training:
            results["accuracy"] = self.accuracy_metric.result()
        results["adv_accuracy"] = self.adv_accuracy_metric.result()
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3 (checked on 3.15) reduces step outputs across workers with
            # strategy.reduce("MEAN", value, axis=0), which needs an axis to reduce
            # (keras-team/keras#20585): a length-1 axis gives back the scalar.
            results = {key: tf.reshape(value, (1,)) for key, value in results.items()}
        return results

    # ------------------------------------------------------- compile / fit entry
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures the optimizer. The loss is the trainer's own (hard or calibrated);
        ``loss`` and ``metrics`` must be left out.

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
            >>> AdvCalTrainer(net, PGD(0.1, steps=1)).compile(optimizer="sgd")
        """
        if loss is not None:
            raise ValueError(
                "AdvCalTrainer computes its own loss (hard or calibrated targets on "
                "adversarial examples): call compile(optimizer=...) without `loss`.")
        if metrics:
            raise ValueError(
                "AdvCalTrainer reports loss, accuracy and adv_accuracy itself; for other "
                "measurements use a callback (e.g. keras_advcal.RobustAccuracyTracker).")
        for key in ("loss_weights", "weighted_metrics"):
            if kwargs.pop(key, None):
                raise ValueError(f"AdvCalTrainer does not use `{key}`.")
        super().compile(optimizer=optimizer, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the optimizer under the strategy's scope before the first step.

        Keras 3 (checked on 3.15) builds a model that has a strategy by reducing the
        first distributed batch with ``strategy.reduce``, which raises under a
        ``MultiWorkerMirroredStrategy`` with several workers (keras-team/keras#20585).
        The trainer's own variables exist from ``__init__`` and it takes no compiled
        loss or metrics, so once the student is built only the optimizer is left.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None or not getattr(self.student, "built", False):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config: dict) -> None:
        """Re-compiles a loaded trainer with its saved optimizer (used by ``load_model``)."""
        config = keras.saving.deserialize_keras_object(config)
        for key in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            config.pop(key, None)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.student.trainable_variables)

    def check_data(self, x: Any, y: Any = None, name: str = "x") -> None:
        """Checks a dataset (arrays: all of it; ``tf.data``: its first batch) and the
        model's outputs on it. Raises :class:`keras_advcal.checks.InputError`.

        Example:

            >>> from keras_advcal import PGD
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
            >>> AdvCalTrainer(net, PGD(0.1, steps=1)).check_data(np.zeros((3, 2)), [0, 1, 1])
        """
        if y is None and checks.has_no_labels(x):
            raise checks.InputError(
                f"`{name}` holds images without labels. Adversarial training needs the "
                "labels: pass y=integer class labels, or a tf.data.Dataset of (x, y) "
                "batches.")
        batch = (x, y) if y is not None else checks.first_batch(x)
        if batch is None or batch[1] is None:
            return
        images, labels = batch
        if isinstance(images, dict) or isinstance(images, (list, tuple)):
            raise checks.InputError(
                f"`{name}` must be a single image tensor; AdvCalTrainer wraps a classifier "
                "with one image input.")
        checks.check_image_shape(np.shape(images), checks.model_input_shape(self.student),
                                 name=name)
        input_shape = getattr(self.student, "input_shape", None)
        channels = input_shape[-1] if isinstance(input_shape, tuple) and len(
            input_shape) == 4 else None
        checks.check_images(images, self.attack.bounds, name=name, channels=channels)
        if self.validation_attack is not self.attack:
            checks.check_images(images, self.validation_attack.bounds, name=name)
        checks.check_attack_radius(self.attack, np.shape(images)[1:], name="attack")
        checks.check_attack_radius(self.validation_attack, np.shape(images)[1:],
                                   name="eval_attack")
        probe = tf.convert_to_tensor(np.asarray(images)[:16]
                                     if not isinstance(images, tf.Tensor) else images[:16])
        outputs = self.student(tf.cast(probe, "float32"), training=False)
        if len(outputs.shape) != 2:
            raise checks.InputError(
                f"The model returns shape {tuple(outputs.shape)}; expected (batch, classes) "
                "logits.")
        if self.num_classes is None:
            self.num_classes = int(outputs.shape[-1])
        if self.from_logits and checks.outputs_look_like_probabilities(outputs):
            raise checks.softmax_error("model")
        label_name = "y" if name == "x" else f"{name} labels"
        checks.labels_to_indices(labels, self.num_classes, name=label_name)

    def fit(self, x=None, y=None, *args, **kwargs):
        first, x = checks.peek_generator(x)
        self.check_data(first if first is not None else x, y, name="x")
        validation_data = kwargs.get("validation_data")
        if validation_data is not None:
            self.check_data(validation_data, name="validation_data")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        # fit() runs its validation through evaluate() every epoch, on data it has
        # already checked at its entry: check only what the user passes directly.
        if not kwargs.get("_use_cached_eval_dataset", False):
            self.check_data(x, y, name="x")
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------- teacher state
    def copy_student_to_teacher(self) -> None:
        """Sets the teacher's weights to the student's (the ``best`` snapshot)."""
        self._require_own_teacher()
        for teacher_var, student_var in zip(self.teacher.weights, self.student.weights):
            teacher_var.assign(student_var)

    def _require_own_teacher(self):
        if self.teacher is None:
            raise ValueError("labels='hard' trainers have no teacher.")
        if self.has_fixed_teacher:
            raise ValueError("This trainer's teacher is a fixed model; it is not updated.")

    # -------------------------------------------------------------- serialization
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": _SERIALIZE(self.student),
            "attack": _SERIALIZE(self.attack),
            "eval_attack": None if self.eval_attack is None else _SERIALIZE(self.eval_attack),
            "labels": self.labels,
            "loss_form": self.loss_form,
            "teacher": _SERIALIZE(self.teacher) if self.has_fixed_teacher else None,
            "label_smoothing": self.label_smoothing,
            "track_clean_accuracy": self.track_clean_accuracy,
            "from_logits": self.from_logits,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "average_weights": self.average is not None,
            "objective": _SERIALIZE(self.objective),
            "weight_perturbation": (None if self.weight_perturbation is None
                                    else _SERIALIZE(self.weight_perturbation)),
            "rectified_targets": self.rectified_targets,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "AdvCalTrainer":
        config = dict(config)
        config["model"] = _DESERIALIZE(config["model"], custom_objects=custom_objects)
        config["attack"] = _DESERIALIZE(config["attack"], custom_objects=custom_objects)
        if config.get("eval_attack") is not None:
            config["eval_attack"] = _DESERIALIZE(config["eval_attack"],
                                                 custom_objects=custom_objects)
        if config.get("teacher") is not None:
            config["teacher"] = _DESERIALIZE(config["teacher"], custom_objects=custom_objects)
        config = {**cls.SAVED_WITHOUT, **config}  # written before some arguments existed
        for key in ("objective", "weight_perturbation"):
            if isinstance(config.get(key), dict):
                config[key] = _DESERIALIZE(config[key], custom_objects=custom_objects)
        trainable = config.pop("trainable", True)
        config.pop("dtype", None)
        trainer = cls(**config)
        trainer.trainable = trainable
        return trainer

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["attack_seed_state"] = self.seed_generator.state
        store["eval_seed_state"] = self.eval_seed_generator.state
        for key, value in self.calibration_cache.items():
            store[f"calibration_cache_{key}"] = value

    def load_own_variables(self, store):
        own = {key: store[key] for key in store.keys() if key.isdigit()}
        # Trainers saved before a recording buffer existed lack its (last) variables:
        # they keep their initial values.
        variables = list(self._trainable_variables) + list(self._non_trainable_variables)
        for index in range(len(own), len(variables)):
            if variables[index].path.split("/")[-1].startswith(_BUFFER_PREFIXES):
                own[str(index)] = variables[index].numpy()
        super().load_own_variables(own)
        if "attack_seed_state" in store:
            self.seed_generator.state.assign(store["attack_seed_state"])
            self.eval_seed_generator.state.assign(store["eval_seed_state"])
        prefix = "calibration_cache_"
        self.calibration_cache = {key[len(prefix):]: np.array(store[key])
                                  for key in store.keys() if key.startswith(prefix)}
