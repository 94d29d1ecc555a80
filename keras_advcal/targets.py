"""Calibrated soft targets and the per-example losses that fit them.

The calibrated target of an adversarial example ``x'`` with label ``y`` is

    target(x') = rho * softmax(g(x') / T) + (1 - rho) * onehot(y)

with ``g`` the teacher's logits. Two loss forms fit it:

* ``"kd"``: ``(1 - rho) * CE(f(x'), y) + rho * T^2 * H(softmax(g/T), softmax(f/T))``
  (the published, distillation form);
* ``"soft"``: ``H(target(x'), softmax(f(x')))`` (cross-entropy with the soft target).

Both equal the plain cross-entropy when ``rho = 0``. All functions return one value
per example and compute in float32, so they stay finite for extreme logits and under
mixed precision.

A :class:`Target` carries one batch's supervision (the labels, and for calibrated
targets the teacher's logits, ``T``, ``rho`` and the loss form) to a training
objective (:mod:`keras_advcal.objectives`), which fits it with
:meth:`Target.cross_entropy` in its supervised term.

Example:

    >>> import tensorflow as tf
    >>> labels = tf.constant([0, 1])
    >>> teacher = tf.constant([[2.0, 0.0], [0.0, 1.0]])
    >>> t = calibrated_targets(teacher, labels, temperature=2.0, rho=0.5)
    >>> [round(float(s), 5) for s in tf.reduce_sum(t, axis=-1)]
    [1.0, 1.0]
"""

from __future__ import annotations

import tensorflow as tf

from keras_advcal.choices import LOSS_FORMS


def _float32(t) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(t), "float32")


def calibrated_targets(teacher_logits, labels, temperature, rho) -> tf.Tensor:
    """The calibrated soft target ``rho * softmax(g / T) + (1 - rho) * onehot(y)``.

    Args:
        teacher_logits: ``(batch, classes)`` teacher logits ``g``.
        labels: ``(batch,)`` integer labels.
        temperature: scalar ``T > 0``.
        rho: scalar in ``[0, 1]`` (or a ``(batch,)`` tensor of per-example ratios).

    Returns:
        ``(batch, classes)`` float32 rows that sum to one.

    Example:

        >>> calibrated_targets([[0.0, 0.0]], [1], 1.0, 0.0).numpy().tolist()
        [[0.0, 1.0]]
    """
    teacher_logits = _float32(teacher_logits)
    rho = _float32(rho)
    if rho.shape.rank == 1:
        rho = rho[:, None]
    onehot = tf.one_hot(tf.cast(labels, "int32"), tf.shape(teacher_logits)[-1])
    teacher_probs = tf.nn.softmax(teacher_logits / _float32(temperature), axis=-1)
    return rho * teacher_probs + (1.0 - rho) * onehot


def soft_cross_entropy(targets, logits) -> tf.Tensor:
    """Cross-entropy ``H(targets, softmax(logits))`` per example, stable for large logits.

    Example:

        >>> round(float(soft_cross_entropy([[0.5, 0.5]], [[0.0, 0.0]])[0]), 4)
        0.6931
    """
    return -tf.reduce_sum(_float32(targets) * tf.nn.log_softmax(_float32(logits), axis=-1),
                          axis=-1)


def hard_loss(labels, logits, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy with integer labels (optionally label-smoothed), per example.

    Example:

        >>> round(float(hard_loss([0], [[0.0, 0.0]])[0]), 4)
        0.6931
    """
    logits = _float32(logits)
    labels = tf.cast(labels, "int32")
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(labels, num_classes)
    smooth = onehot * (1.0 - label_smoothing) + label_smoothing / tf.cast(num_classes, "float32")
    return soft_cross_entropy(smooth, logits)


def kd_loss(labels, student_logits, teacher_logits, temperature, rho) -> tf.Tensor:
    """The distillation form ``(1 - rho) CE(f, y) + rho T^2 H(softmax(g/T), softmax(f/T))``.

    Example:

        >>> round(float(kd_loss([0], [[1.0, 0.0]], [[5.0, 0.0]], 1.0, 0.0)[0]), 4)
        0.3133
    """
    temperature = _float32(temperature)
    rho = _float32(rho)
    student_logits = _float32(student_logits)
    hard = hard_loss(labels, student_logits)
    teacher_probs = tf.nn.softmax(_float32(teacher_logits) / temperature, axis=-1)
    distill = soft_cross_entropy(teacher_probs, student_logits / temperature)
    return (1.0 - rho) * hard + rho * tf.square(temperature) * distill


def soft_target_loss(labels, student_logits, teacher_logits, temperature, rho) -> tf.Tensor:
    """The plain form ``H(target, softmax(f))`` with the calibrated target.

    Example:

        >>> round(float(soft_target_loss([0], [[1.0, 0.0]], [[5.0, 0.0]], 1.0, 0.0)[0]), 4)
        0.3133
    """
    targets = calibrated_targets(teacher_logits, labels, temperature, rho)
    return soft_cross_entropy(targets, student_logits)


def calibrated_loss(loss_form: str, labels, student_logits, teacher_logits, temperature,
                    rho) -> tf.Tensor:
    """Dispatches to :func:`kd_loss` (``"kd"``) or :func:`soft_target_loss` (``"soft"``).

    Example:

        >>> float(calibrated_loss("kd", [0], [[0.0, 0.0]], [[0.0, 0.0]], 1.0, 0.5)[0]) > 0
        True
    """
    if loss_form == "kd":
        return kd_loss(labels, student_logits, teacher_logits, temperature, rho)
    if loss_form == "soft":
        return soft_target_loss(labels, student_logits, teacher_logits, temperature, rho)
    raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {loss_form!r}.")


def rectified_ratio(teacher_logits, labels, temperature, rho) -> tf.Tensor:
    """ADR's per-example ratio ``clip(rho - (max_j p_j - p_y), 0, 1)`` with
    ``p = softmax(g / T)``: less teacher where the teacher prefers another class.

    Args:
        teacher_logits: ``(batch, classes)`` teacher logits ``g``.
        labels: ``(batch,)`` integer labels.
        temperature: scalar ``T > 0``.
        rho: scalar ratio in ``[0, 1]``.

    Returns:
        ``(batch,)`` float32 ratios in ``[0, 1]``.

    Example:

        >>> [round(float(r), 4) for r in rectified_ratio([[2.0, 0.0], [2.0, 0.0]], [0, 1],
        ...                                              1.0, 0.9)]
        [0.9, 0.1384]
    """
    teacher_logits = _float32(teacher_logits)
    probs = tf.nn.softmax(teacher_logits / _float32(temperature), axis=-1)
    p_label = tf.gather(probs, tf.cast(labels, "int32"), axis=-1, batch_dims=1)
    return tf.clip_by_value(_float32(rho) - (tf.reduce_max(probs, axis=-1) - p_label),
                            0.0, 1.0)


class Target:
    """The supervision of one batch: integer labels, and for calibrated targets the
    teacher's logits with ``T``, ``rho`` and the loss form.

    :meth:`cross_entropy` is the loss that fits the target on given logits: the
    (optionally label-smoothed) cross-entropy with the labels, or the calibrated loss
    of ``loss_form`` (:func:`calibrated_loss`). The training objectives use it in
    place of ``CE(logits, y)`` in their supervised term, so that calibration composes
    with each of them.

    Args:
        labels: ``(batch,)`` integer labels.
        teacher_logits: ``(batch, classes)`` teacher logits, or ``None`` for one-hot
            targets.
        temperature: ``T`` of the calibrated target.
        rho: ``rho`` of the calibrated target (a scalar or a ``(batch,)`` tensor).
        loss_form: ``"kd"`` or ``"soft"``.
        label_smoothing: label smoothing of the one-hot target.

    Example:

        >>> hard = Target([0])
        >>> round(float(hard.cross_entropy([[0.0, 0.0]])[0]), 4)
        0.6931
        >>> soft = Target([0], teacher_logits=[[0.0, 0.0]], rho=1.0, loss_form="soft")
        >>> soft.probabilities(2).numpy().tolist()
        [[0.5, 0.5]]
    """

    def __init__(self, labels, teacher_logits=None, temperature=1.0, rho=0.0,
                 loss_form: str = "kd", label_smoothing: float = 0.0):
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {loss_form!r}.")
        self.labels = tf.cast(tf.convert_to_tensor(labels), "int32")
        self.teacher_logits = None if teacher_logits is None else _float32(teacher_logits)
        self.temperature = temperature
        self.rho = rho
        self.loss_form = loss_form
        self.label_smoothing = float(label_smoothing)

    @property
    def is_calibrated(self) -> bool:
        """Whether the target comes from a teacher (else the one-hot label)."""
        return self.teacher_logits is not None

    def cross_entropy(self, logits) -> tf.Tensor:
        """The per-example loss that fits this target on ``logits`` (float32).

        Example:

            >>> round(float(Target([1]).cross_entropy([[0.0, 0.0]])[0]), 4)
            0.6931
        """
        if self.teacher_logits is None:
            return hard_loss(self.labels, logits, self.label_smoothing)
        return calibrated_loss(self.loss_form, self.labels, logits, self.teacher_logits,
                               self.temperature, self.rho)

    def probabilities(self, num_classes: int) -> tf.Tensor:
        """The target distribution ``(batch, num_classes)``.

        Example:

            >>> [round(float(p), 2) for p in Target([1], label_smoothing=0.2).probabilities(2)[0]]
            [0.1, 0.9]
        """
        onehot = tf.one_hot(self.labels, num_classes)
        if self.teacher_logits is None:
            return onehot * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        return calibrated_targets(self.teacher_logits, self.labels, self.temperature,
                                  self.rho)


def as_target(target) -> Target:
    """A :class:`Target` from a ``Target`` or from integer labels (one-hot targets).

    Example:

        >>> as_target([2, 0]).labels.numpy().tolist()
        [2, 0]
    """
    return target if isinstance(target, Target) else Target(target)
