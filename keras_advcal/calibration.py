"""Fitting the temperature ``T`` and the ratio ``rho`` of the calibrated targets.

The published rule (Wu et al.'s calibrated adversarial training), given logits on held-out adversarial
examples of a teacher ``g`` and of a surrogate ``s`` (the overfitting student, which
stands in for the one-hot label on held-out data):

1. for every ``(T, rho)`` on a grid (T: 100 log-spaced values in [0.2, 16]; rho: 100
   values in [0.01, 1]) compute the validation NLL of the true label under
   ``rho * softmax(g / T) + (1 - rho) * softmax(s / T)``;
2. discard the points whose training targets ``rho * softmax(g_train / T) +
   (1 - rho) * onehot(y)`` disagree with ``y`` on more than ``1 - acc_floor`` of the
   training sample;
3. keep the feasible point with the lowest NLL (ties to the smaller rho).

Step 3 as published is the default (``selection="minimum"``). The alternative
``selection="one_standard_error"`` applies the one-standard-error rule: among feasible
points whose NLL exceeds the minimum by at most one standard error of the paired
per-example NLL difference (i.e. statistically indistinguishable on this validation
set), take the largest rho (the most weight on the teacher), then the lowest NLL over
T. It was the default until the calibration study on a development split (2 seeds,
the test split not read) measured the literal rule 0.9 point of robust accuracy better
with the online ``swa`` teacher.

Only the probability of the true label enters the NLL, and a target agrees with its
label iff ``1 - rho > rho * (max_{j != y} p_j - p_y)``, so each grid is one compiled
TensorFlow call that maps over the temperatures, computing a ``(rhos, N)`` block per
temperature: no Python loop over examples or grid points, and memory linear in ``N``.

Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(2000, 10)) * 3
    >>> y = np.array([rng.choice(10, p=np.exp(r / 2) / np.exp(r / 2).sum()) for r in z])
    >>> fit = calibrate(z, rng.normal(size=z.shape), y, z, z.argmax(1))
    >>> 1.7 < fit.temperature < 2.3, fit.rho > 0.9
    (True, True)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence, Union

import numpy as np
import tensorflow as tf

from keras_advcal.choices import RULES, SELECTIONS
DEFAULT_TEMPERATURES = np.geomspace(0.2, 16.0, 100)
DEFAULT_RHOS = np.linspace(0.01, 1.0, 100)
_LOG_FLOOR = 1e-12
# The grids are computed in float64: in float32 the last bit of an example's NLL depends
# on its position in the block (vectorised vs scalar exp/log), which was enough to change
# the chosen rho with the order of the examples where the NLL is flat.
_GRID_DTYPE = "float64"
#: What the logits and labels arguments take: NumPy arrays, tensors or nested lists.
Array = Union[np.ndarray, tf.Tensor, Sequence[Any]]


@dataclasses.dataclass
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes:
        temperature: the fitted ``T``.
        rho: the fitted ``rho`` (0 when no grid point met the accuracy floor).
        nll: validation NLL at the chosen point (``nan`` when infeasible).
        feasible: whether any grid point met the accuracy floor.
        rule: the rule that produced the result.
        message: a sentence on what happened (e.g. why rho is 0).
        train_agreement: fraction of training targets that agree with their label at
            the chosen point.
        temperatures, rhos: the grid axes (``None`` for rules without a grid).
        nll_grid: ``(len(temperatures), len(rhos))`` validation NLL (for plotting).
        agreement_grid: same shape, training agreement of the targets.

    Example:

        >>> result = calibrate(np.zeros((4, 3)), np.zeros((4, 3)), [0, 1, 2, 0],
        ...                    np.zeros((4, 3)), [0, 1, 2, 0], rule="fixed", fixed=(2.0, 0.3))
        >>> result.temperature, result.rho, result.feasible, result.rule
        (2.0, 0.3, True, 'fixed')
    """

    temperature: float
    rho: float
    nll: float
    feasible: bool
    rule: str
    message: str = ""
    train_agreement: float = float("nan")
    temperatures: np.ndarray | None = None
    rhos: np.ndarray | None = None
    nll_grid: np.ndarray | None = None
    agreement_grid: np.ndarray | None = None

    def to_dict(self, include_grids: bool = False) -> dict:
        """Plain-Python dict (grids as nested lists when ``include_grids``).

        Example:

            >>> CalibrationResult(1.0, 0.5, 0.3, True, "published").to_dict()["rho"]
            0.5
        """
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                if not include_grids:
                    continue
                value = value.tolist()
            elif isinstance(value, (np.floating, np.integer)):
                value = value.item()
            out[field.name] = value
        return out

    def to_json(self, include_grids: bool = False) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(include_grids), allow_nan=True)


def _as_float_tensor(value: Any, name: str, num_classes: int | None = None) -> tf.Tensor:
    tensor = tf.convert_to_tensor(np.asarray(value, dtype="float32"))
    if tensor.shape.rank != 2:
        raise ValueError(f"`{name}` must be (examples, classes) logits, got shape "
                         f"{tuple(tensor.shape)}.")
    if num_classes is not None and tensor.shape[1] != num_classes:
        raise ValueError(f"`{name}` has {tensor.shape[1]} classes, expected {num_classes}.")
    if not bool(tf.reduce_all(tf.math.is_finite(tensor))):
        raise ValueError(f"`{name}` contains NaN or Inf logits.")
    return tensor


def _as_labels(value: Any, name: str, count: int, num_classes: int) -> tf.Tensor:
    labels = np.asarray(value)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"`{name}` must be {count} integer labels, got shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`{name}` must be in [0, {num_classes - 1}].")
    return tf.convert_to_tensor(labels.astype("int32"))


def _true_class_probabilities(logits: tf.Tensor, labels: tf.Tensor,
                              temperatures: tf.Tensor) -> tf.Tensor:
    """``softmax(logits / T)[y]`` for each temperature: ``(T, N)``."""
    scaled = logits[None, :, :] / temperatures[:, None, None]
    log_probs = tf.nn.log_softmax(scaled, axis=-1)
    onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)[None]
    return tf.exp(tf.reduce_sum(log_probs * onehot, axis=-1))


def _label_probability(logits: tf.Tensor, labels: tf.Tensor, temperature: tf.Tensor
                       ) -> tf.Tensor:
    """``softmax(logits / T)[y]`` for one temperature: ``(N,)``."""
    log_probs = tf.nn.log_softmax(logits / temperature, axis=-1)
    return tf.exp(tf.gather(log_probs, labels, axis=1, batch_dims=1))


def _label_margin(logits: tf.Tensor, labels: tf.Tensor, temperature: tf.Tensor) -> tf.Tensor:
    """``max_{j != y} p_j - p_y`` under ``softmax(logits / T)``: ``(N,)``."""
    probs = tf.nn.softmax(logits / temperature, axis=-1)
    onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
    true_prob = tf.reduce_sum(probs * onehot, axis=-1)
    return tf.reduce_max(probs - 2.0 * onehot, axis=-1) - true_prob


# The grids are one compiled call each: a graph that maps over the temperatures, each
# step a (rhos, examples) block, so memory grows with the number of examples only.
_LOGITS = tf.TensorSpec([None, None], _GRID_DTYPE)
_LABELS = tf.TensorSpec([None], tf.int32)
_AXIS = tf.TensorSpec([None], _GRID_DTYPE)
_SCALAR = tf.TensorSpec([], _GRID_DTYPE)
_ROW = tf.TensorSpec([None], _GRID_DTYPE)


def _mixture_nll(g, s, y, rhos, temperature, surrogate_temperature):
    """Per-example NLL of ``rho softmax(g/T) + (1 - rho) softmax(s/T')`` at one ``T``:
    ``(rhos, N)``; ``T' = T`` when ``surrogate_temperature <= 0``."""
    own = surrogate_temperature > 0.0
    surrogate_t = tf.where(own, surrogate_temperature, temperature)
    p_teacher = _label_probability(g, y, temperature)
    p_surrogate = _label_probability(s, y, surrogate_t)
    rho = rhos[:, None]
    mixed = rho * p_teacher[None, :] + (1.0 - rho) * p_surrogate[None, :]
    return -tf.math.log(tf.maximum(mixed, tf.constant(_LOG_FLOOR, _GRID_DTYPE)))


@tf.function(input_signature=[_LOGITS, _LOGITS, _LABELS, _AXIS, _AXIS, _SCALAR],
             autograph=False, reduce_retracing=True)
def _nll_grid_graph(g, s, y, temperatures, rhos, surrogate_temperature):
    def one(t):
        return tf.reduce_mean(_mixture_nll(g, s, y, rhos, t, surrogate_temperature), axis=1)

    return tf.map_fn(one, temperatures, fn_output_signature=_ROW, parallel_iterations=1)


@tf.function(input_signature=[_LOGITS, _LOGITS, _LABELS, _AXIS, _AXIS, _SCALAR, _AXIS],
             autograph=False, reduce_retracing=True)
def _squared_difference_graph(g, s, y, temperatures, rhos, surrogate_temperature, reference):
    def one(t):
        nll = _mixture_nll(g, s, y, rhos, t, surrogate_temperature)
        return tf.reduce_mean(tf.square(nll - reference[None, :]), axis=1)

    return tf.map_fn(one, temperatures, fn_output_signature=_ROW, parallel_iterations=1)


@tf.function(input_signature=[_LOGITS, _LABELS, _AXIS, _AXIS], autograph=False,
             reduce_retracing=True)
def _agreement_graph(g, y, temperatures, rhos):
    def one(t):
        margin = _label_margin(g, y, t)[None, :]
        rho = rhos[:, None]
        return tf.reduce_mean(tf.cast((1.0 - rho) > rho * margin, _GRID_DTYPE), axis=1)

    return tf.map_fn(one, temperatures, fn_output_signature=_ROW, parallel_iterations=1)


def _check_grid_inputs(logits, labels, logits_name: str, labels_name: str,
                       empty_message: str) -> tuple[tf.Tensor, tf.Tensor]:
    z = tf.cast(_as_float_tensor(logits, logits_name), _GRID_DTYPE)
    y = _as_labels(labels, labels_name, z.shape[0], z.shape[1])
    if int(z.shape[0]) == 0:
        raise ValueError(empty_message)
    return z, y


class _MixtureNLL:
    """The validation NLL of ``rho softmax(g/T) + (1 - rho) softmax(s/T')`` (``T' = T``
    unless the surrogate has its own temperature) over a grid, and its paired
    per-example spread around one grid point."""

    def __init__(self, teacher_logits, surrogate_logits, labels, rhos,
                 surrogate_temperature: float | None):
        self.g, self.y = _check_grid_inputs(teacher_logits, labels, "teacher_logits", "labels",
                                            "Calibration needs at least one held-out example.")
        self.s = tf.cast(_as_float_tensor(surrogate_logits, "surrogate_logits",
                                          self.g.shape[1]), _GRID_DTYPE)
        if self.s.shape[0] != self.g.shape[0]:
            raise ValueError("`teacher_logits` and `surrogate_logits` must have the same "
                             f"number of examples, got {self.g.shape[0]} and "
                             f"{self.s.shape[0]}.")
        self.rhos = tf.constant(np.asarray(rhos, dtype=_GRID_DTYPE))
        self.surrogate_temperature = tf.constant(
            -1.0 if surrogate_temperature is None else float(surrogate_temperature),
            _GRID_DTYPE)
        self.count, self.num_classes = int(self.g.shape[0]), int(self.g.shape[1])

    def grid(self, temperatures: np.ndarray) -> np.ndarray:
        return _nll_grid_graph(self.g, self.s, self.y, tf.constant(temperatures, _GRID_DTYPE),
                               self.rhos, self.surrogate_temperature).numpy()

    def squared_difference_grid(self, temperatures: np.ndarray, t_index: int,
                                r_index: int) -> np.ndarray:
        """Mean over examples of ``(nll_i(T, rho) - nll_i(T*, rho*))**2``."""
        reference = _mixture_nll(self.g, self.s, self.y, self.rhos[r_index:r_index + 1],
                                 tf.constant(temperatures[t_index], _GRID_DTYPE),
                                 self.surrogate_temperature)[0]
        return _squared_difference_graph(
            self.g, self.s, self.y, tf.constant(temperatures, _GRID_DTYPE), self.rhos,
            self.surrogate_temperature, reference).numpy()


def nll_grid(teacher_logits: Array, surrogate_logits: Array, labels: Array,
             temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
             rhos: Sequence[float] = DEFAULT_RHOS,
             surrogate_temperature: float | None = None) -> np.ndarray:
    """Validation NLL of ``rho * softmax(g/T) + (1 - rho) * softmax(s/T)`` on the grid.

    Args:
        teacher_logits: ``(N, K)`` teacher logits on held-out (adversarial) examples.
        surrogate_logits: ``(N, K)`` surrogate logits on the same examples.
        labels: ``(N,)`` integer labels.
        temperatures: the T axis.
        rhos: the rho axis.
        surrogate_temperature: a fixed temperature for the surrogate (its own
            temperature-scaling fit) instead of the shared grid ``T``.

    Returns:
        ``(len(temperatures), len(rhos))`` float64 array of mean NLL.

    Example:

        >>> g = np.array([[3.0, 0.0]]); s = np.array([[0.0, 3.0]])
        >>> grid = nll_grid(g, s, [0], temperatures=[1.0], rhos=[0.0, 1.0])
        >>> bool(grid[0, 1] < grid[0, 0])
        True
    """
    mixture = _MixtureNLL(teacher_logits, surrogate_logits, labels, rhos,
                          surrogate_temperature)
    return mixture.grid(np.asarray(temperatures, dtype=_GRID_DTYPE))


def agreement_grid(train_teacher_logits: Array, train_labels: Array,
                   temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                   rhos: Sequence[float] = DEFAULT_RHOS) -> np.ndarray:
    """Fraction of training targets ``rho softmax(g/T) + (1-rho) onehot(y)`` whose
    argmax is ``y``, on the grid: ``(len(temperatures), len(rhos))``.

    Example:

        >>> g = np.array([[0.0, 5.0]])
        >>> agreement_grid(g, [0], temperatures=[1.0], rhos=[0.1, 0.9]).tolist()
        [[1.0, 0.0]]
    """
    g, y = _check_grid_inputs(train_teacher_logits, train_labels, "train_teacher_logits",
                              "train_labels",
                              "The accuracy floor needs at least one training example.")
    return _agreement_graph(g, y, tf.constant(np.asarray(temperatures), _GRID_DTYPE),
                            tf.constant(np.asarray(rhos), _GRID_DTYPE)).numpy()


def _select(nll: np.ndarray, feasible: np.ndarray) -> tuple[int, int] | None:
    """Index of the lowest feasible NLL; ties go to the smaller rho, then smaller T."""
    if not feasible.any():
        return None
    masked = np.where(feasible, nll, np.inf)
    best = masked.min()
    # Values equal up to float rounding are ties (e.g. teacher == surrogate).
    ties = np.argwhere(masked <= best + 1e-7 * max(1.0, abs(best)))
    # Smallest rho index first, then smallest temperature index.
    order = np.lexsort((ties[:, 0], ties[:, 1]))
    t_index, r_index = ties[order[0]]
    return int(t_index), int(r_index)


def _select_within_one_standard_error(nll: np.ndarray, feasible: np.ndarray,
                                      standard_error: np.ndarray,
                                      best: tuple[int, int]) -> tuple[int, int]:
    """The largest-rho feasible point whose NLL exceeds the minimum by at most one
    standard error of the paired per-example difference (the one-standard-error
    rule, leaning toward the teacher); its lowest-NLL temperature."""
    excess = nll - nll[best]
    candidates = feasible & (excess <= standard_error + 1e-12)
    candidates[best] = True
    r_index = int(np.max(np.nonzero(candidates.any(axis=0))[0]))
    column = np.where(candidates[:, r_index], nll[:, r_index], np.inf)
    return int(np.argmin(column)), r_index


def calibrate(teacher_logits: Array, surrogate_logits: Array, labels: Array,
              train_teacher_logits: Array, train_labels: Array, acc_floor: float = 0.9,
              rule: str = "published",
              temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
              rhos: Sequence[float] = DEFAULT_RHOS,
              teacher_accuracy: float | None = None,
              fixed: tuple[float, float] = (2.0, 0.5),
              separate_surrogate_temperature: bool = False,
              selection: str = "minimum") -> CalibrationResult:
    """Fits ``T`` and ``rho`` of the calibrated targets.

    Args:
        teacher_logits: ``(N, K)`` teacher logits on held-out adversarial examples.
        surrogate_logits: ``(N, K)`` surrogate (current student) logits on them.
        labels: ``(N,)`` true labels of the held-out examples.
        train_teacher_logits: ``(M, K)`` teacher logits on adversarial examples of a
            training sample (for the accuracy floor / the confidence rule).
        train_labels: ``(M,)`` their labels.
        acc_floor: minimum fraction of training targets that must agree with their
            label (the published 0.9).
        rule: ``"published"`` (the grid rule above), ``"confidence"`` (T by plain
            temperature scaling of the teacher; rho such that the targets' mean
            probability of the label on the training sample equals the teacher's
            held-out robust accuracy), or ``"fixed"`` (returns ``fixed``).
        temperatures: the T grid.
        rhos: the rho grid.
        teacher_accuracy: the teacher's held-out robust accuracy for the
            confidence rule (default: computed from ``teacher_logits``).
        fixed: ``(T, rho)`` returned by ``rule="fixed"``.
        separate_surrogate_temperature: scale the surrogate with its own fitted
            temperature rather than the shared ``T`` (a candidate fix for the case
            where one shared T favours the overconfident surrogate, whose
            temperature-scaled NLL then beats the teacher's and drives rho to its
            minimum).
        selection: ``"minimum"`` (default: the literal published rule, the lowest
            NLL, ties to the smaller rho) or ``"one_standard_error"`` (the largest rho
            whose NLL is within one paired standard error of the minimum).

    Returns:
        A :class:`CalibrationResult`. If no grid point meets the floor, ``rho`` is 0
        (plain hard labels) and ``feasible`` is ``False``; no exception.

    Example:

        >>> g = np.eye(3)[[0, 1, 2, 0]] * 4; s = np.zeros((4, 3))
        >>> calibrate(g, s, [0, 1, 2, 0], g, [0, 1, 2, 0]).rho
        1.0
    """
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}, got {rule!r}.")
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
    if not 0.0 <= acc_floor <= 1.0:
        raise ValueError(f"`acc_floor` must be in [0, 1], got {acc_floor!r}.")
    if rule == "fixed":
        temperature, rho = (float(v) for v in fixed)
        return CalibrationResult(temperature, rho, float("nan"), True, rule,
                                 f"fixed T={temperature:g}, rho={rho:g}")
    if rule == "confidence":
        return _calibrate_confidence(teacher_logits, labels, train_teacher_logits,
                                     train_labels, teacher_accuracy)
    temps = np.asarray(temperatures, dtype="float64")
    rho_values = np.asarray(rhos, dtype="float64")
    if temps.ndim != 1 or not temps.size or np.any(temps <= 0):
        raise ValueError("`temperatures` must be a non-empty 1-D grid of positive values.")
    if rho_values.ndim != 1 or not rho_values.size or np.any((rho_values < 0) | (rho_values > 1)):
        raise ValueError("`rhos` must be a non-empty 1-D grid of values in [0, 1].")
    surrogate_temperature = (fit_temperature(surrogate_logits, labels)
                             if separate_surrogate_temperature else None)
    mixture = _MixtureNLL(teacher_logits, surrogate_logits, labels, rho_values,
                          surrogate_temperature)
    nll = mixture.grid(temps)
    agreement = agreement_grid(train_teacher_logits, train_labels, temps, rho_values)
    # A small tolerance so that an agreement of exactly the floor counts.
    feasible = agreement >= acc_floor - 1e-9
    choice = _select(nll, feasible)
    common = dict(rule=rule, temperatures=temps, rhos=rho_values, nll_grid=nll,
                  agreement_grid=agreement)
    if choice is None:
        return CalibrationResult(
            temperature=1.0, rho=0.0, nll=float("nan"), feasible=False,
            message=(f"no (T, rho) on the grid keeps {acc_floor:.0%} of the training targets "
                     "on their label: rho = 0 (hard labels)"),
            train_agreement=1.0, **common)
    message = "lowest validation NLL among grid points above the accuracy floor"
    if selection == "one_standard_error":
        variance = np.maximum(mixture.squared_difference_grid(temps, *choice)
                              - (nll - nll[choice]) ** 2, 0.0)
        standard_error = np.sqrt(variance / mixture.count)
        minimum = choice
        choice = _select_within_one_standard_error(nll, feasible, standard_error, minimum)
        if choice != minimum:
            message = (f"largest rho within one standard error "
                       f"({standard_error[choice]:.4f}) of the lowest feasible NLL "
                       f"{nll[minimum]:.4f} (T={temps[minimum[0]]:.3g}, "
                       f"rho={rho_values[minimum[1]]:.2f})")
    t_index, r_index = choice
    return CalibrationResult(
        temperature=float(temps[t_index]), rho=float(rho_values[r_index]),
        nll=float(nll[t_index, r_index]), feasible=True, message=message,
        train_agreement=float(agreement[t_index, r_index]), **common)


def fit_temperature(logits: Array, labels: Array,
                    temperatures: Sequence[float] | None = None) -> float:
    """Plain temperature scaling: the ``T`` minimising the NLL of ``softmax(logits / T)``.

    A dense log-spaced search (0.05 to 50) refined once around the best value; no
    optimiser state, deterministic.

    Args:
        logits: ``(N, K)`` logits on held-out data.
        labels: ``(N,)`` integer labels.
        temperatures: optional explicit grid (no refinement then).

    Returns:
        The fitted temperature.

    Example:

        >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
        >>> 1.0 < fit_temperature(z, [0, 0, 1, 1]) < 40
        True
    """
    z = _as_float_tensor(logits, "logits")
    y = _as_labels(labels, "labels", z.shape[0], z.shape[1])

    def best_of(grid: np.ndarray) -> tuple[float, int]:
        probs = _true_class_probabilities(z, y, tf.constant(grid, "float32"))
        nll = -tf.reduce_mean(tf.math.log(tf.maximum(probs, _LOG_FLOOR)), axis=-1).numpy()
        index = int(np.argmin(nll))
        return float(grid[index]), index

    if temperatures is not None:
        return best_of(np.asarray(temperatures, dtype="float32"))[0]
    coarse = np.geomspace(0.05, 50.0, 200).astype("float32")
    value, index = best_of(coarse)
    low, high = coarse[max(index - 1, 0)], coarse[min(index + 1, len(coarse) - 1)]
    return best_of(np.linspace(low, high, 101).astype("float32"))[0]


def _calibrate_confidence(teacher_logits, labels, train_teacher_logits, train_labels,
                          teacher_accuracy) -> CalibrationResult:
    g = _as_float_tensor(teacher_logits, "teacher_logits")
    y = np.asarray(labels).reshape(-1)
    temperature = fit_temperature(teacher_logits, labels)
    if teacher_accuracy is None:
        teacher_accuracy = float(np.mean(g.numpy().argmax(axis=1) == y))
    g_train = _as_float_tensor(train_teacher_logits, "train_teacher_logits")
    y_train = _as_labels(train_labels, "train_labels", g_train.shape[0], g_train.shape[1])
    p_label = float(tf.reduce_mean(_true_class_probabilities(
        g_train, y_train, tf.constant([temperature], "float32"))))
    if p_label >= 1.0 - 1e-9:
        rho = 0.0 if teacher_accuracy >= 1.0 else 1.0
    else:
        rho = float(np.clip((1.0 - teacher_accuracy) / (1.0 - p_label), 0.0, 1.0))
    return CalibrationResult(
        temperature=temperature, rho=rho, nll=float("nan"), feasible=True, rule="confidence",
        message=(f"teacher held-out robust accuracy {teacher_accuracy:.3f}, mean training "
                 f"p(y) {p_label:.3f}"))


def minimum_examples(acc_floor: float = 0.9) -> int:
    """The fewest held-out examples the library accepts for a calibration.

    With fewer than ``ceil(10 / (1 - acc_floor))`` training examples the floor can
    only be met by agreeing on all of them, and fewer than 100 held-out examples
    give an NLL too noisy to compare 10,000 grid points.

    Example:

        >>> minimum_examples(0.9)
        100
    """
    # Round before the ceiling: 10 / (1 - 0.9) is 100.00000000000001 in floating point.
    return max(100, int(np.ceil(round(10.0 / max(1.0 - acc_floor, 1e-3), 6))))


def check_calibration_size(count: int, name: str, acc_floor: float = 0.9) -> None:
    """Raises a ``ValueError`` naming ``name`` when ``count`` is below
    :func:`minimum_examples`, saying how many are needed."""
    needed = minimum_examples(acc_floor)
    if count < needed:
        raise ValueError(
            f"`{name}` has {count} examples; calibrating T and rho needs at least {needed} "
            "(the NLL over the grid is too noisy below that). Hold out more data.")


__all__ = ["SELECTIONS", "CalibrationResult", "agreement_grid", "calibrate", "fit_temperature",
           "minimum_examples", "nll_grid", "check_calibration_size"]
