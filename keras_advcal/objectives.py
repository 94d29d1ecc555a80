"""Training objectives: what the attack maximises and what the student minimises.

An objective turns one batch into one loss per example. Given the trainer's attack
(the threat model: radius, steps, step size), it makes the adversarial examples
``x'`` (:meth:`Objective.attack`), and from the student's logits on the clean and
adversarial inputs and the batch's :class:`~keras_advcal.targets.Target` it gives
the per-example loss (:meth:`Objective.per_example_loss`):

* ``"pgd_at"`` (:class:`PGDAT`, what :func:`get` returns for ``None``): Madry et al.
  2018. The attack maximises the cross-entropy (the trainer's attack as given); the
  loss is ``CE(f(x'), target)``. The published PGD-AT is
  ``AdvCalTrainer(net, attack, objective="pgd_at", weight_perturbation=None)``.
* ``"trades"`` (:class:`TRADES`, the trainer's default objective, beta 6; the default
  recipe, ``AdvCalTrainer(net, attack)``, adds adversarial weight perturbation,
  :mod:`keras_advcal.awp`): Zhang et al. 2019. The attack maximises
  ``KL(f(x) || f(x'))`` from a small Gaussian start (standard deviation 0.001, as
  in the published code); the loss is
  ``CE(f(x), target) + beta * KL(f(x) || f(x'))``.
* ``"mart"`` (:class:`MART`): Wang et al. 2020. The attack maximises the
  cross-entropy; the loss is the boosted cross-entropy on ``x'``,
  ``CE(f(x'), target) - log(1 - max_{k != y} p_k(x'))``, plus
  ``beta * KL(f(x) || f(x')) * (1 - p_y(x))``, the KL weighted by how badly the
  clean input is classified.
* ``"adr"`` (:class:`ADR`): the ADR-style baseline (Wu et al. 2023): PGD-AT whose
  calibrated target comes from the teacher on the clean input, with a per-example
  ratio that trusts the teacher less where it prefers another class.

With ``labels="calibrated"`` the calibrated target
``rho * softmax(g / T) + (1 - rho) * onehot(y)`` replaces the one-hot label in the
objective's supervised term (fitted in the trainer's ``loss_form``), with the same
teacher, callback and automatic ``T`` and ``rho``:

* ``pgd_at``: ``CE(f(x'), target)``; the teacher sees ``x'``.
* ``trades``: ``CE(f(x), target)``; the KL term is unchanged; the teacher sees the
  clean ``x``, the input of that term.
* ``mart``: the ``CE(f(x'), target)`` part of the boosted cross-entropy; the margin
  term and the KL's weight ``1 - p_y(x)`` keep the label; the teacher sees ``x'``.
* ``adr``: ``CE(f(x'), target)`` with ADR's per-example ratio; the teacher sees ``x``.

The teacher always sees the input of the term its target supervises, and
:class:`keras_advcal.CalibratedTeacher` fits ``T`` and ``rho`` on that same kind of
input (:attr:`Objective.teacher_input`): on PGD examples of the held-out data for
``pgd_at`` and ``mart``, on the clean held-out inputs for ``trades``, with the
accuracy floor measured on the same kind of input of the training data. (Earlier
versions fitted on PGD examples whatever the objective, so with TRADES the fit served
another input than the one its target supervises.)

Example:

    >>> import tensorflow as tf
    >>> from keras_advcal import objectives
    >>> trades = objectives.get("trades")
    >>> trades.beta
    6.0
    >>> clean = tf.constant([[2.0, 0.0]]); adv = tf.constant([[1.0, 0.0]])
    >>> round(float(trades.per_example_loss([0], clean, adv)[0]), 4)
    0.5297
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_advcal import attacks as attacks_lib
from keras_advcal import checks
from keras_advcal import targets as targets_lib

#: Standard deviation of the TRADES attack's Gaussian random start (published code).
TRADES_START_STD = 0.001
#: Where the teacher of a calibrated target is evaluated.
TEACHER_INPUTS = ("adversarial", "clean")


def _float32(t) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(t), "float32")


class Objective:
    """Base class of the training objectives.

    Subclasses set :attr:`name` and implement :meth:`per_example_loss`; they may
    change what the attack maximises (:meth:`training_attack`), which input the
    teacher of a calibrated target sees (:attr:`teacher_input`) and its ratio
    (:meth:`target_ratio`).

    Attributes:
        name: the objective's name (``AdvCalTrainer(objective=name)``).
        teacher_input: ``"adversarial"`` or ``"clean"``: the input the teacher of a
            calibrated target is evaluated on.
        uses_clean_logits: whether the loss needs the student's logits on the clean
            input (one more forward pass in training mode).
        requires_teacher: whether the objective only exists with calibrated targets.

    Example:

        A clean-input cross-entropy, written as an objective:

        >>> class CleanOnly(Objective):
        ...     name = "clean_only"
        ...     uses_clean_logits = True
        ...     def per_example_loss(self, target, clean_logits, adv_logits):
        ...         return targets_lib.as_target(target).cross_entropy(_float32(clean_logits))
        >>> round(float(CleanOnly().per_example_loss([1], [[0.0, 0.0]], None)[0]), 4)
        0.6931
    """

    name = "objective"
    teacher_input = "adversarial"
    uses_clean_logits = False
    requires_teacher = False

    def training_attack(self, attack: attacks_lib.Attack) -> attacks_lib.Attack:
        """The attack that makes the training examples, from the trainer's attack
        (its threat model and steps): the trainer's attack itself by default."""
        return attack

    def attack(self, attack: attacks_lib.Attack, model: Callable, x: Any, y: Any,
               seed: keras.random.SeedGenerator | None = None) -> tf.Tensor:
        """Adversarial examples of ``x`` for ``model``, maximising what this
        objective's attack maximises (see :meth:`training_attack`).

        Example:

            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
            >>> PGDAT().attack(attacks_lib.PGD(0.1, steps=2), net, tf.zeros((3, 2)),
            ...                [0, 1, 0]).shape
            TensorShape([3, 2])
        """
        return self.training_attack(attack)(model, x, y, seed=seed)

    def target_ratio(self, rho, teacher_logits, labels, temperature):
        """The ratio ``rho`` of the calibrated target (a scalar, or one per example)."""
        return rho

    def per_example_loss(self, target: Any, clean_logits: Any, adv_logits: Any) -> tf.Tensor:
        """The loss of each example.

        Args:
            target: a :class:`~keras_advcal.targets.Target`, or integer labels
                (one-hot targets).
            clean_logits: ``(batch, classes)`` student logits on ``x`` (``None``
                when :attr:`uses_clean_logits` is false).
            adv_logits: ``(batch, classes)`` student logits on ``x'``.

        Returns:
            ``(batch,)`` float32 losses.
        """
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Objective":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="keras_advcal")
class PGDAT(Objective):
    """PGD adversarial training (Madry et al. 2018): ``CE(f(x'), target)``.

    The attack is the trainer's attack as given. With calibrated targets the teacher
    sees ``x'`` and the loss is the trainer's ``loss_form`` (the library's calibrated
    trainer, unchanged); ``T`` and ``rho`` are fitted on PGD examples of the held-out
    data, made against the student.

    Example:

        >>> round(float(PGDAT().per_example_loss([1], None, [[0.0, 0.0]])[0]), 4)
        0.6931
    """

    name = "pgd_at"

    def per_example_loss(self, target, clean_logits, adv_logits):
        return targets_lib.as_target(target).cross_entropy(_float32(adv_logits))


@keras.saving.register_keras_serializable(package="keras_advcal")
class TRADES(Objective):
    """TRADES (Zhang et al. 2019): ``CE(f(x), target) + beta * KL(f(x) || f(x'))``.

    The attack maximises ``KL(f(x) || f(x'))`` (``f(x)`` in inference mode, fixed
    during the attack) with the trainer's attack's radius, steps and step size, from
    a Gaussian start of standard deviation :data:`TRADES_START_STD` projected onto
    the ball (the published code's start). A trainer attack that already has
    ``loss="kl"`` and a random start is used as given. In the loss, gradients flow
    through both ``f(x)`` and ``f(x')``. With calibrated targets, the teacher sees
    the clean input ``x`` and its target replaces ``y`` in ``CE(f(x), .)``; ``T`` and
    ``rho`` are fitted on the teacher's and the student's logits on the clean held-out
    inputs, and the accuracy floor on the teacher's clean training logits.

    Args:
        beta: weight of the KL term (the published CIFAR-10 setting: 6).

    Example:

        >>> objective = TRADES(beta=1.0)
        >>> round(float(objective.per_example_loss([0], [[0.0, 0.0]], [[0.0, 1.0]])[0]), 4)
        0.8133
    """

    name = "trades"
    teacher_input = "clean"
    uses_clean_logits = True

    def __init__(self, beta: float = 6.0):
        self.beta = checks.non_negative_number(beta, "beta")

    def training_attack(self, attack):
        if not isinstance(attack, attacks_lib.PGD):
            raise TypeError(
                "TRADES makes its KL attack from the trainer's PGD or FGSM attack (radius, "
                f"steps, step size); got `attack`={attack!r}.")
        if attack.loss == "kl" and attack.random_start:
            return attack
        config = dict(attack.get_config(), loss="kl", random_start=True)
        config.setdefault("start_std", TRADES_START_STD)
        return type(attack).from_config(config)

    def per_example_loss(self, target, clean_logits, adv_logits):
        clean_logits, adv_logits = _float32(clean_logits), _float32(adv_logits)
        natural = targets_lib.as_target(target).cross_entropy(clean_logits)
        return natural + self.beta * attacks_lib.kl_divergence(clean_logits, adv_logits)

    def get_config(self) -> dict:
        return {"beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_advcal")
class MART(Objective):
    """MART (Wang et al. 2020): boosted cross-entropy on ``x'`` plus the
    misclassification-weighted KL.

    Per example, with ``p = softmax(f(x'))``, ``q = softmax(f(x))`` and ``k`` the
    most likely class of ``x'`` other than ``y``::

        CE(f(x'), target) - log(1.0001 - p_k + 1e-12)
            + beta * KL(q || p) * (1.0000001 - q_y)

    (the constants of the published code). The attack is the trainer's attack as
    given (cross-entropy). Gradients flow through ``q`` in both the KL and its
    weight. With calibrated targets the teacher sees ``x'`` and its target replaces
    ``y`` in the ``CE(f(x'), .)`` part only; the margin term and the weight keep the
    label; ``T`` and ``rho`` are fitted on PGD examples of the held-out data.

    Args:
        beta: weight of the KL term.

    Example:

        >>> objective = MART(beta=1.0)
        >>> round(float(objective.per_example_loss([0], [[0.0, 0.0]], [[0.0, 0.0]])[0]), 4)
        1.3861
    """

    name = "mart"
    uses_clean_logits = True

    def __init__(self, beta: float = 5.0):
        self.beta = checks.non_negative_number(beta, "beta")

    def per_example_loss(self, target, clean_logits, adv_logits):
        target = targets_lib.as_target(target)
        clean_logits, adv_logits = _float32(clean_logits), _float32(adv_logits)
        adv_probs = tf.nn.softmax(adv_logits, axis=-1)
        onehot = tf.one_hot(target.labels, tf.shape(adv_logits)[-1])
        # The most likely wrong class: probabilities are at most 1, so subtracting 2
        # at the label takes it out of the max.
        wrong = tf.reduce_max(adv_probs - 2.0 * onehot, axis=-1)
        boosted = target.cross_entropy(adv_logits) - tf.math.log(1.0001 - wrong + 1e-12)
        clean_label_prob = tf.reduce_sum(tf.nn.softmax(clean_logits, axis=-1) * onehot,
                                         axis=-1)
        weighted_kl = (attacks_lib.kl_divergence(clean_logits, adv_logits)
                       * (1.0000001 - clean_label_prob))
        return boosted + self.beta * weighted_kl

    def get_config(self) -> dict:
        return {"beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_advcal")
class ADR(PGDAT):
    """The ADR-style baseline's objective (Wu et al., "Annealing Self-Distillation
    Rectification", 2023): PGD-AT whose calibrated target comes from the teacher on
    the *clean* input, with a per-example ratio
    ``rho_i = clip(rho - (max_j p_j - p_y), 0, 1)``, ``p = softmax(teacher(x) / T)``
    (:func:`keras_advcal.targets.rectified_ratio`).

    It needs ``labels="calibrated"``; the baseline is this objective with
    ``loss_form="soft"``, an EMA teacher and cosine schedules of ``T`` and ``rho``
    (:class:`keras_advcal.adr.ADRSchedule`).

    Example:

        >>> ADR().teacher_input
        'clean'
    """

    name = "adr"
    teacher_input = "clean"
    requires_teacher = True

    def target_ratio(self, rho, teacher_logits, labels, temperature):
        return targets_lib.rectified_ratio(teacher_logits, labels, temperature, rho)


#: The objectives by name.
OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (PGDAT, TRADES, MART, ADR)}
#: Their names.
NAMES = tuple(OBJECTIVES)


def get(identifier: Any = None, beta: float | None = None) -> Objective:
    """An objective from an instance, a name (``"pgd_at"``, ``"trades"``, ``"mart"``,
    ``"adr"``; ``None``: ``"pgd_at"``) or a serialized config.

    Args:
        identifier: the objective.
        beta: with a name, the ``beta`` of TRADES or MART (``None``: its default).

    Raises:
        ValueError: for an unknown name, a bad ``beta``, or a ``beta`` for an
            objective without one.

    Example:

        >>> get("mart", beta=3.0)
        MART(beta=3.0)
        >>> get(None)
        PGDAT()
    """
    if isinstance(identifier, Objective):
        if beta is not None:
            raise ValueError("`beta` goes with an objective's name; give it to the "
                             f"objective instead: {type(identifier).__name__}(beta=...).")
        return identifier
    if isinstance(identifier, dict):
        objective = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(objective, Objective):
            raise TypeError(f"`objective` config does not describe an Objective: {identifier!r}.")
        return objective
    name = "pgd_at" if identifier is None else identifier
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {NAMES} or an Objective instance, "
                         f"got {identifier!r}.")
    cls = OBJECTIVES[key]
    if beta is None:
        return cls()
    if "beta" not in cls().get_config():
        raise ValueError(f"`beta` applies to the trades and mart objectives, not {key!r}.")
    return cls(beta=beta)


__all__ = ["ADR", "MART", "NAMES", "OBJECTIVES", "Objective", "PGDAT", "TEACHER_INPUTS",
           "TRADES", "TRADES_START_STD", "get"]
