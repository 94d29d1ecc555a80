"""Robust evaluation that a reviewer would trust, and robust-overfitting summaries.

:func:`evaluate_robustness` runs an AutoAttack-style ensemble (PGD, PGD with the
Carlini-Wagner margin, APGD-CE, targeted APGD-DLR and the gradient-free Square
attack) and reports, per attack, the accuracy under that attack alone and the
cumulative worst case, with sanity checks for the usual ways an evaluation lies
(gradient masking, saturated or zero gradients, a softmax output, a non-deterministic
model). :class:`RobustAccuracyTracker` records robust test accuracy during ``fit``
and :func:`summarize_history` turns the curve into best/final/gap numbers.

This module is the public entry point for evaluation: it re-exports the attacks.

Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> x = np.random.rand(16, 8, 8, 1).astype("float32"); y = np.arange(16) % 10
    >>> result = evaluate_robustness(model, (x, y), epsilon=0.1, attacks=("pgd", "square"),
    ...                              steps=5, n_queries=20, verbose=False)
    >>> result.robust_accuracy <= result.clean_accuracy
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings as warnings_module
from typing import Any, Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_advcal.apgd import (APGD, PGDRestarts, apgd_checkpoints, dlr_loss,
                               targeted_dlr_loss)
from keras_advcal.attacks import (FGSM, PGD, Attack, _per_example_norm, cross_entropy_loss,
                                  get as get_attack, margin_loss)
from keras_advcal.checks import (InputError, check_image_shape, check_images,
                                  labels_to_indices, model_input_shape,
                                  outputs_look_like_probabilities)
from keras_advcal.fab import FAB
from keras_advcal.square import Square, square_p_schedule

__all__ = [
    "APGD",
    "ATTACK_NAMES",
    "Attack",
    "FGSM",
    "HistorySummary",
    "PGD",
    "PGDRestarts",
    "RobustAccuracyTracker",
    "RobustnessResult",
    "Square",
    "apgd_checkpoints",
    "build_attack",
    "dlr_loss",
    "evaluate_robustness",
    "square_p_schedule",
    "summarize_history",
    "targeted_dlr_loss",
]

ATTACK_NAMES = ("pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "fgsm")
DEFAULT_ATTACKS = ("pgd", "cw", "apgd-ce", "apgd-t", "square")

# Sanity-check thresholds (fractions of the evaluated examples).
ZERO_GRADIENT_FRACTION = 0.1
SQUARE_MARGIN = 0.01
_ZERO_GRADIENT = 1e-12
_GRADIENT_CHECK_SIZE = 512


# -- building attacks --------------------------------------------------------------
def build_attack(name: str, epsilon: float, norm: str = "linf",
                 bounds: tuple[float, float] = (0.0, 1.0), steps: int = 100,
                 n_queries: int = 5000, restarts: int = 1, num_classes: int | None = None,
                 seed: int | None = 0) -> Attack:
    """Builds one of the named evaluation attacks.

    Names: ``"pgd"`` (PGD, cross-entropy, step ``2.5 * epsilon / steps``), ``"cw"``
    (the same with the Carlini-Wagner margin loss), ``"apgd-ce"``, ``"apgd-dlr"``,
    ``"apgd-t"`` (targeted APGD-DLR over ``min(9, num_classes - 1)`` targets),
    ``"fab-t"`` (targeted FAB over as many targets, with AutoAttack's step settings),
    ``"square"`` (``n_queries`` queries) and ``"fgsm"``.

    Args:
        name: one of :data:`ATTACK_NAMES`.
        epsilon: radius of the threat model.
        norm: ``"linf"`` or ``"l2"``.
        bounds: valid pixel range.
        steps: gradient steps (per restart and per target).
        n_queries: queries of the Square attack.
        restarts: random restarts of the gradient attacks.
        num_classes: number of classes (caps the targets of ``"apgd-t"``).
        seed: seed of the attack's random stream.

    Example:

        >>> build_attack("apgd-t", 0.1, steps=20, num_classes=10).n_target_classes
        9
        >>> build_attack("fab-t", 0.1, num_classes=4).n_target_classes
        3
    """
    key = name.lower()
    common = dict(epsilon=epsilon, norm=norm, bounds=bounds, seed=seed)
    if key in ("pgd", "cw"):
        return PGDRestarts(steps=steps, restarts=restarts, loss="ce" if key == "pgd" else "cw",
                           **common)
    if key in ("apgd-ce", "apgd-dlr"):
        return APGD(steps=steps, restarts=restarts, loss=key.split("-")[1], **common)
    targets = 9 if num_classes is None else max(1, min(9, num_classes - 1))
    if key == "apgd-t":
        return APGD(steps=steps, restarts=restarts, loss="dlr", targeted=True,
                    n_target_classes=targets, **common)
    if key == "fab-t":
        return FAB(steps=steps, restarts=restarts, targeted=True, n_target_classes=targets,
                   **common)
    if key == "square":
        return Square(n_queries=n_queries, **common)
    if key == "fgsm":
        return FGSM(**common)
    raise ValueError(f"Unknown attack {name!r}; choose from {ATTACK_NAMES} or pass an "
                     "Attack instance.")


def _named_attacks(attacks: Any, build: Callable[[str, int], Attack],
                   notes: list[str]) -> list[tuple[str, Attack]]:
    """Turns the ``attacks`` argument into ``(name, attack)`` pairs; names that
    cannot be built for this threat model are skipped with a note."""
    if isinstance(attacks, (str, Attack)):
        attacks = [attacks]
    items = list(attacks.items()) if isinstance(attacks, dict) else list(attacks)
    named: list[tuple[str, Attack]] = []
    for index, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, attack = item
            attack = get_attack(attack)
        elif isinstance(item, str):
            name = item.lower()
            try:
                attack = build(name, index)
            except NotImplementedError as error:
                notes.append(f"{name} skipped: {error}")
                continue
        else:
            attack = get_attack(item)
            name = type(attack).__name__.lower()
        if any(existing == name for existing, _ in named):
            name = f"{name}#{index}"
        named.append((name, attack))
    if not named:
        raise ValueError("No attack to run: pass at least one attack name or instance.")
    return named


# -- the result --------------------------------------------------------------------
@dataclasses.dataclass
class RobustnessResult:
    """What :func:`evaluate_robustness` measured.

    Accuracies are fractions of all evaluated examples. An example counts as robust
    to an attack when it is classified correctly both clean and under the attack.

    Attributes:
        clean_accuracy: accuracy on the clean inputs.
        robust_accuracy: worst-case accuracy over all attacks (the headline number).
        n_examples: number of evaluated examples.
        epsilon: radius of the threat model.
        norm: ``"linf"`` or ``"l2"``.
        attacks: attack names, in the order they ran.
        accuracy_alone: accuracy under each attack alone (``None`` with
            ``individual=False``).
        accuracy_cumulative: worst case over this attack and the ones before it.
        seconds: wall-clock seconds per attack (tracing included).
        warnings: the sanity-check findings (empty when nothing looks wrong).
        config: the settings of the run and each attack's config.
        robust_mask: per-example worst-case robustness (not serialised).
        clean_mask: per-example clean correctness (not serialised).
        cumulative_masks: per attack, the per-example robustness to it and every
            attack before it (not serialised): what a later reader needs to
            re-analyse a cascade example by example.

    Example:

        >>> r = RobustnessResult(0.9, 0.5, 10, 0.1, "linf", ["pgd"], {"pgd": 0.5},
        ...                      {"pgd": 0.5}, {"pgd": 1.0})
        >>> RobustnessResult.from_json(r.to_json()) == r
        True
    """

    clean_accuracy: float
    robust_accuracy: float
    n_examples: int
    epsilon: float
    norm: str
    attacks: list[str]
    accuracy_alone: dict[str, float | None]
    accuracy_cumulative: dict[str, float]
    seconds: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)
    config: dict = dataclasses.field(default_factory=dict)
    robust_mask: np.ndarray | None = dataclasses.field(default=None, repr=False,
                                                        compare=False)
    clean_mask: np.ndarray | None = dataclasses.field(default=None, repr=False,
                                                       compare=False)
    cumulative_masks: dict[str, np.ndarray] | None = dataclasses.field(
        default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of everything but the per-example masks."""
        fields = (f.name for f in dataclasses.fields(self) if f.name not in _MASKS)
        return {name: _plain(getattr(self, name)) for name in fields}

    def per_example(self) -> dict[str, np.ndarray]:
        """The per-example correctness as arrays (for ``np.savez``): ``clean``,
        ``robust`` (worst case) and ``after_<attack>`` (cumulative) booleans.

        Example:

            >>> r = RobustnessResult(1.0, 0.5, 2, 0.1, "linf", ["pgd"], {"pgd": 0.5},
            ...                      {"pgd": 0.5}, {"pgd": 1.0},
            ...                      robust_mask=np.array([True, False]),
            ...                      clean_mask=np.array([True, True]),
            ...                      cumulative_masks={"pgd": np.array([True, False])})
            >>> sorted(r.per_example())
            ['after_pgd', 'clean', 'robust']
        """
        if self.robust_mask is None or self.clean_mask is None:
            raise ValueError("This result has no per-example masks (it was read from JSON).")
        arrays = {"clean": np.asarray(self.clean_mask, bool),
                  "robust": np.asarray(self.robust_mask, bool)}
        for name, mask in (self.cumulative_masks or {}).items():
            arrays[f"after_{name}"] = np.asarray(mask, bool)
        return arrays

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON (no pandas needed)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "RobustnessResult":
        names = {f.name for f in dataclasses.fields(cls)} - set(_MASKS)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> "RobustnessResult":
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """A plain-text table: one row per attack, alone and cumulative."""
        header = (f"Robust evaluation: {self.n_examples} examples, {self.norm} "
                  f"epsilon={self.epsilon:.4g}")
        rows = [("attack", "alone", "cumulative", "seconds"),
                ("clean", _pct(self.clean_accuracy), _pct(self.clean_accuracy), "")]
        for name in self.attacks:
            rows.append((name, _pct(self.accuracy_alone.get(name)),
                         _pct(self.accuracy_cumulative[name]), f"{self.seconds[name]:.1f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [header]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells))
        lines.append(f"robust accuracy (worst case): {_pct(self.robust_accuracy)}")
        lines.extend(f"WARNING: {message}" for message in self.warnings)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


_MASKS = ("robust_mask", "clean_mask", "cumulative_masks")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def _plain(value: Any) -> Any:
    """Converts NumPy scalars/arrays and tuples to JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- data --------------------------------------------------------------------------
def _to_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays from a tuple of arrays or a ``tf.data`` of ``(x, y)`` batches;
    one-hot labels become indices."""
    if isinstance(data, tf.data.Dataset):
        xs, ys = [], []
        for element in data:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise InputError("The dataset must yield (x, y) batches.")
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
        if not xs:
            raise InputError("The dataset is empty.")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) >= 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise InputError("`data` must be an (x, y) tuple of arrays or a tf.data.Dataset of "
                         f"(x, y) batches, got {type(data).__name__}.")
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise InputError("`y` must hold integer class indices (or one-hot rows), got "
                         "non-integer values such as "
                         f"{float(y[~(np.isfinite(y) & (y == np.round(y)))][0])}.")
    elif y.dtype.kind not in "iufb":
        raise InputError(f"`y` must hold integer class indices, got dtype {y.dtype}.")
    if len(x) != len(y):
        raise InputError(f"x has {len(x)} examples but y has {len(y)}.")
    if len(x) == 0:
        raise InputError("No examples to evaluate.")
    return x.astype("float32"), y.astype("int32")


def _batches(indices: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def _specs(x: np.ndarray) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32)]


class _ProbabilitiesToLogits:
    """Wraps a softmax model so that attacks see log-probabilities (logits up to a
    constant)."""

    def __init__(self, model: Callable):
        self.model = model

    def __call__(self, x, training=False):
        probabilities = tf.cast(self.model(x, training=training), tf.float32)
        return tf.math.log(tf.maximum(probabilities, 1e-30))


# -- compiled pieces ---------------------------------------------------------------
def _compile_predict(model: Callable, x: np.ndarray) -> Callable:
    @tf.function(input_signature=_specs(x)[:1], autograph=False)
    def predict(inputs):
        return tf.cast(model(inputs, training=False), tf.float32)
    return predict


def _compile_attack(model: Callable, attack: Attack, x: np.ndarray) -> Callable:
    """A ``tf.function`` (traced once) returning predictions on the adversarial
    inputs and the per-example distance to the clean input."""
    norm = attack.norm

    @tf.function(input_signature=_specs(x), autograph=False)
    def run(inputs, labels):
        x_adv = attack(model, inputs, labels)
        logits = tf.cast(model(x_adv, training=False), tf.float32)
        distance = tf.reshape(_per_example_norm(x_adv - inputs, norm), [-1])
        axes = tf.range(1, tf.rank(x_adv))
        low = tf.reduce_min(x_adv, axis=axes)
        high = tf.reduce_max(x_adv, axis=axes)
        return tf.argmax(logits, axis=-1, output_type=tf.int32), distance, low, high
    return run


def _compile_gradient_norms(model: Callable, x: np.ndarray) -> Callable:
    @tf.function(input_signature=_specs(x), autograph=False)
    def norms(inputs, labels):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(inputs)
            logits = tf.cast(model(inputs, training=False), tf.float32)
            margin = tf.reduce_sum(margin_loss(logits, labels))
            ce = tf.reduce_sum(cross_entropy_loss(logits, labels))
        result = []
        for objective in (margin, ce):
            grad = tape.gradient(objective, inputs,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)
            result.append(tf.reshape(_per_example_norm(grad, "linf"), [-1]))
        del tape
        return tuple(result)
    return norms


# -- the evaluation ----------------------------------------------------------------
def _clean_pass(predict: Callable, x: np.ndarray, y: np.ndarray, batch_size: int
                ) -> tuple[np.ndarray, bool, int]:
    """Clean predictions, whether every output batch looks like probabilities, and
    the number of classes."""
    predictions, probability_like, num_classes = [], True, 0
    for index in _batches(np.arange(len(x)), batch_size):
        outputs = predict(x[index]).numpy()
        if outputs.ndim != 2:
            raise InputError(f"The model must output (batch, classes) logits, got shape "
                             f"{outputs.shape}.")
        num_classes = outputs.shape[1]
        probability_like &= outputs_look_like_probabilities(outputs)
        predictions.append(np.argmax(outputs, axis=1))
    return np.concatenate(predictions).astype("int32"), probability_like, num_classes


def _attack_pass(run: Callable, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                 batch_size: int, attack: Attack, epsilon: float
                 ) -> tuple[np.ndarray, bool]:
    """Runs the attack on ``x[indices]``; returns per-index correctness under the
    attack and whether every output stayed inside the ball and the bounds."""
    correct = np.zeros(len(indices), bool)
    valid = True
    tolerance = 1e-5 * max(1.0, epsilon) + 1e-6
    position = 0
    for index in _batches(indices, batch_size):
        predictions, distance, low, high = (t.numpy() for t in run(x[index], y[index]))
        correct[position:position + len(index)] = predictions == y[index]
        position += len(index)
        valid &= bool(np.all(distance <= epsilon + tolerance)
                      and np.all(low >= attack.bounds[0] - tolerance)
                      and np.all(high <= attack.bounds[1] + tolerance))
    return correct, valid


def _zero_gradient_fractions(model: Callable, x: np.ndarray, y: np.ndarray,
                             indices: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Fractions of examples whose margin-loss and cross-entropy gradients wrt the
    input vanish."""
    indices = indices[:_GRADIENT_CHECK_SIZE]
    if len(indices) == 0:
        return 0.0, 0.0
    norms_fn = _compile_gradient_norms(model, x)
    margin_norms, ce_norms = [], []
    for index in _batches(indices, batch_size):
        margin_norm, ce_norm = norms_fn(x[index], y[index])
        margin_norms.append(margin_norm.numpy())
        ce_norms.append(ce_norm.numpy())
    margin_norms, ce_norms = np.concatenate(margin_norms), np.concatenate(ce_norms)
    return (float(np.mean(margin_norms <= _ZERO_GRADIENT)),
            float(np.mean(ce_norms <= _ZERO_GRADIENT)))


def _check_threat_model(attack: Attack, name: str, epsilon: float, norm: str,
                        bounds: tuple[float, float]) -> None:
    if attack.epsilon > epsilon * (1 + 1e-9):
        raise ValueError(f"Attack {name!r} has epsilon={attack.epsilon}, larger than the "
                         f"evaluated epsilon={epsilon}.")
    if attack.norm != norm:
        raise ValueError(f"Attack {name!r} uses norm={attack.norm!r}, the evaluation "
                         f"norm={norm!r}.")
    if tuple(attack.bounds) != tuple(bounds):
        raise ValueError(f"Attack {name!r} has bounds={attack.bounds}, the evaluation "
                         f"bounds={tuple(bounds)}.")


def evaluate_robustness(
    model: Callable,
    data: Any,
    epsilon: float,
    norm: str = "linf",
    attacks: Sequence[str | Attack] | dict = DEFAULT_ATTACKS,
    batch_size: int = 256,
    steps: int = 100,
    n_queries: int = 5000,
    restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    individual: bool = True,
    from_logits: bool = True,
    verbose: bool = True,
) -> RobustnessResult:
    """Robust accuracy under an ensemble of attacks, with sanity checks.

    The attacks run in sequence. Only examples classified correctly on clean inputs
    are attacked. With ``individual=True`` (default) every attack runs on all of
    them, which gives the accuracy under each attack alone; the cumulative worst
    case after each attack is the intersection of the survivors (the same as an
    AutoAttack cascade, since examples are attacked independently). With
    ``individual=False`` each attack runs only on the examples that survived the
    previous ones (cheaper; ``accuracy_alone`` is ``None`` then).

    Sanity checks (in ``result.warnings`` and emitted with ``warnings.warn``):
    a robust accuracy above the clean one, predictions that change between two
    clean passes (a randomised model), attack outputs outside the threat model,
    outputs that look like probabilities (a softmax output: attacks need logits),
    vanishing input gradients on more than ``ZERO_GRADIENT_FRACTION`` of the
    examples, and Square (gradient-free) breaking more than ``SQUARE_MARGIN`` of the
    examples that every gradient attack missed (gradient masking).

    Args:
        model: a Keras model (or callable ``model(x, training=False)``) that outputs
            logits; with ``from_logits=False`` it may output probabilities.
        data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches; ``y``
            integer labels or one-hot.
        epsilon: radius of the threat model.
        norm: ``"linf"`` or ``"l2"`` (Square supports L-inf only and is skipped, with
            a warning, for L2).
        attacks: names from :data:`ATTACK_NAMES`, :class:`Attack` instances, or
            ``(name, attack)`` pairs / a ``{name: attack}`` dict.
        batch_size: examples per attack call.
        steps: gradient steps of the named gradient attacks.
        n_queries: queries of the named Square attack.
        restarts: random restarts of the named gradient attacks.
        bounds: valid pixel range.
        seed: base seed of the named attacks (attack ``i`` gets ``seed + i``).
        individual: also measure each attack alone (see above).
        from_logits: ``False`` when the model outputs probabilities.
        verbose: print progress and the final table.

    Returns:
        A :class:`RobustnessResult`.

    Example:

        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(3)])
        >>> x = np.random.rand(8, 4, 4, 1).astype("float32"); y = np.arange(8) % 3
        >>> r = evaluate_robustness(model, (x, y), 0.0, attacks=("pgd",), verbose=False)
        >>> r.robust_accuracy == r.clean_accuracy
        True
    """
    x, y = _to_arrays(data)
    check_image_shape(x.shape, model_input_shape(model), name="x")
    check_images(x, bounds, name="x")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
    attacked_model = model if from_logits else _ProbabilitiesToLogits(model)
    notes: list[str] = []

    predict = _compile_predict(attacked_model, x)
    clean_pred, probability_like, num_classes = _clean_pass(predict, x, y, batch_size)
    labels_to_indices(y, num_classes, name="y")  # a label out of range counts as an error
    second_pred, _, _ = _clean_pass(predict, x, y, batch_size)
    clean_correct = clean_pred == y
    if probability_like and from_logits:
        notes.append(
            "the model's outputs look like probabilities (every row in [0, 1] summing to "
            "1): attacks need logits, so remove the final softmax or pass "
            "from_logits=False; the gradient attacks may be badly weakened.")
    if np.any(second_pred != clean_pred):
        notes.append(
            f"predictions changed between two clean passes on "
            f"{int(np.sum(second_pred != clean_pred))} examples: the model is randomised in "
            "inference mode, so robust accuracy is unreliable (use an EOT attack).")

    def build(name: str, index: int) -> Attack:
        return build_attack(name, epsilon, norm=norm, bounds=bounds, steps=steps,
                            n_queries=n_queries, restarts=restarts,
                            num_classes=num_classes, seed=seed + index)

    named = _named_attacks(attacks, build, notes)
    for name, attack in named:
        _check_threat_model(attack, name, epsilon, norm, bounds)

    n = len(x)
    alone: dict[str, float | None] = {}
    cumulative: dict[str, float] = {}
    seconds: dict[str, float] = {}
    robust = clean_correct.copy()
    masks: dict[str, np.ndarray] = {}
    cumulative_masks: dict[str, np.ndarray] = {}
    correct_indices = np.flatnonzero(clean_correct)
    for name, attack in named:
        indices = correct_indices if individual else np.flatnonzero(robust)
        start = time.perf_counter()
        run = _compile_attack(attacked_model, attack, x)
        survived, valid = _attack_pass(run, x, y, indices, batch_size, attack, epsilon)
        seconds[name] = time.perf_counter() - start
        survivors = np.zeros(n, bool)
        survivors[indices] = survived
        masks[name] = survivors
        alone[name] = float(np.mean(survivors)) if individual else None
        robust &= survivors
        cumulative_masks[name] = robust.copy()
        cumulative[name] = float(np.mean(robust))
        if not valid:
            notes.append(f"{name} returned inputs outside the {norm} ball of radius "
                         f"{epsilon} or outside bounds {tuple(bounds)}: the attack is broken.")
        if verbose:
            print(f"[evaluate_robustness] {name}: "
                  f"{'alone ' + _pct(alone[name]) + ', ' if individual else ''}"
                  f"cumulative {_pct(cumulative[name])} ({seconds[name]:.1f} s)")

    zero_margin, zero_ce = _zero_gradient_fractions(attacked_model, x, y, correct_indices,
                                                    batch_size)
    notes.extend(_sanity_notes(named, masks, alone, cumulative, clean_correct,
                               zero_margin, zero_ce, individual))
    result = RobustnessResult(
        clean_accuracy=float(np.mean(clean_correct)),
        robust_accuracy=float(np.mean(robust)),
        n_examples=n, epsilon=float(epsilon), norm=norm,
        attacks=[name for name, _ in named], accuracy_alone=alone,
        accuracy_cumulative=cumulative, seconds=seconds, warnings=notes,
        config=_plain(dict(batch_size=batch_size, steps=steps, n_queries=n_queries,
                           restarts=restarts, bounds=list(bounds), seed=seed,
                           individual=individual, from_logits=from_logits,
                           attacks={name: {"class_name": type(a).__name__,
                                           "config": a.get_config()}
                                    for name, a in named})),
        robust_mask=robust, clean_mask=clean_correct, cumulative_masks=cumulative_masks)
    for message in notes:
        warnings_module.warn(message, RuntimeWarning, stacklevel=2)
    if verbose:
        print(result.table())
    return result


def _broken_only_without_gradients(named: list[tuple[str, Attack]],
                                   masks: dict[str, np.ndarray],
                                   clean_correct: np.ndarray) -> float | None:
    """Fraction of examples that the gradient-free attacks broke although every
    gradient attack missed them (``None`` without both kinds of attack).

    With a cascade (``individual=False``) an attack sees only the survivors of the
    attacks before it, so this counts the gradient attacks that ran before Square.
    """
    free = [masks[name] for name, attack in named if isinstance(attack, Square)]
    gradient = [masks[name] for name, attack in named if not isinstance(attack, Square)]
    if not free or not gradient:
        return None
    gradient_survivors = clean_correct & np.logical_and.reduce(gradient)
    free_survivors = np.logical_and.reduce(free)
    return float(np.mean(gradient_survivors & ~free_survivors))


def _sanity_notes(named: list[tuple[str, Attack]], masks: dict[str, np.ndarray],
                  alone: dict, cumulative: dict, clean_correct: np.ndarray,
                  zero_margin: float, zero_ce: float, individual: bool) -> list[str]:
    """The warnings of the sanity checks that need the attack results."""
    notes = []
    clean = float(np.mean(clean_correct))
    for name, value in list(alone.items()) + list(cumulative.items()):
        if value is not None and value > clean + 1e-12:
            notes.append(f"accuracy under {name} ({_pct(value)}) is above the clean "
                         f"accuracy ({_pct(clean)}): the evaluation is broken.")
    if zero_margin > ZERO_GRADIENT_FRACTION:
        notes.append(
            f"the input gradient of the margin loss is zero on {_pct(zero_margin)} of the "
            "correctly classified examples: gradients are masked (a non-differentiable "
            "step such as rounding or argmax?), so gradient attacks are blind; trust "
            "only the gradient-free attacks or use BPDA.")
    elif zero_ce > ZERO_GRADIENT_FRACTION:
        notes.append(
            f"the cross-entropy gradient vanishes on {_pct(zero_ce)} of the correctly "
            "classified examples (saturated softmax): cross-entropy attacks (pgd, "
            "apgd-ce) underestimate; rely on the margin/DLR attacks (cw, apgd-t).")
    only_free = _broken_only_without_gradients(named, masks, clean_correct)
    if only_free is not None:
        free = [name for name, attack in named if isinstance(attack, Square)]
        beats_alone = individual and (
            min(alone[name] for name in free) < min(
                alone[name] for name, attack in named if not isinstance(attack, Square))
            - SQUARE_MARGIN)
        if only_free > SQUARE_MARGIN or beats_alone:
            notes.append(
                f"the gradient-free attack ({', '.join(free)}) broke {_pct(only_free)} of "
                "the examples that every gradient attack missed: a sign of gradient "
                "masking; the gradient attacks' numbers are not trustworthy.")
    return notes


# -- robust accuracy during training -----------------------------------------------
class RobustAccuracyTracker(keras.callbacks.Callback):
    """Records robust (and clean) test accuracy at the end of epochs during ``fit``.

    At the end of every ``every``-th epoch (epochs ``every - 1, 2 * every - 1, ...``
    counting from 0) and of the last epoch of ``fit``, it attacks ``test_data`` with
    ``attack`` on ``self.model`` and writes the accuracy into ``logs[name]`` (and
    the clean accuracy into ``logs[clean_name]``), so ``History``, ``CSVLogger`` and
    ``TensorBoard`` placed after it see them. On epochs where it does not evaluate
    the keys are left out of ``logs``: ``History.history[name]`` is then shorter
    than the number of epochs (use :attr:`history_records` for the epochs), and
    ``CSVLogger``, which fixes its columns at the first epoch, records the key only
    if the first epoch is evaluated (``every=1``). Robust accuracy counts an example
    when it is classified correctly both clean and under the attack.

    The attack runs in a ``tf.function`` traced once, in batches of ``batch_size``.
    The model may be any Keras classifier whose ``call`` returns logits, including
    a wrapper model such as ``AdvCalTrainer``.

    Args:
        test_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        attack: an :class:`Attack` (or its serialized dict).
        every: evaluate every ``every`` epochs.
        name: logs key of the robust accuracy.
        clean_name: logs key of the clean accuracy (``None`` to leave it out).
        batch_size: examples per attack call.
        verbose: print the numbers when evaluating.

    Attributes:
        history_records: ``(epoch, robust_accuracy)`` pairs, epochs counted from 0.
        clean_records: ``(epoch, clean_accuracy)`` pairs.

    Example:

        >>> from keras_advcal.attacks import PGD
        >>> x = np.random.rand(8, 8, 8, 1).astype("float32"); y = np.arange(8) % 10
        >>> tracker = RobustAccuracyTracker((x, y), PGD(0.1, steps=3), every=2)
        >>> tracker.every
        2
    """

    def __init__(self, test_data: Any, attack: Attack | dict, every: int = 1,
                 name: str = "test_adv_accuracy", clean_name: str | None = "test_accuracy",
                 batch_size: int = 256, verbose: int = 0):
        super().__init__()
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
        self.x, self.y = _to_arrays(test_data)
        self.attack = get_attack(attack)
        self.every = int(every)
        self.name = name
        self.clean_name = clean_name
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self.history_records: list[tuple[int, float]] = []
        self.clean_records: list[tuple[int, float]] = []
        self._epochs: int | None = None
        self._compiled: tuple[Any, Callable] | None = None

    def on_train_begin(self, logs=None):
        self._epochs = (self.params or {}).get("epochs")

    def _due(self, epoch: int) -> bool:
        last = self._epochs is not None and epoch + 1 == self._epochs
        return (epoch + 1) % self.every == 0 or last

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        clean, robust = self.evaluate()
        self.history_records.append((int(epoch), robust))
        self.clean_records.append((int(epoch), clean))
        if logs is not None:
            logs[self.name] = robust
            if self.clean_name:
                logs[self.clean_name] = clean
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.name}={robust:.4f}"
                  + (f", {self.clean_name}={clean:.4f}" if self.clean_name else ""))

    def _counter(self, model: Any) -> Callable:
        if self._compiled is None or self._compiled[0] is not model:
            attack = self.attack

            @tf.function(input_signature=_specs(self.x), autograph=False)
            def count(inputs, labels):
                clean = tf.argmax(model(inputs, training=False), axis=-1, output_type=tf.int32)
                adv_inputs = attack(model, inputs, labels)
                adv = tf.argmax(model(adv_inputs, training=False), axis=-1,
                                output_type=tf.int32)
                clean_ok = tf.equal(clean, labels)
                robust_ok = tf.logical_and(clean_ok, tf.equal(adv, labels))
                return (tf.reduce_sum(tf.cast(clean_ok, tf.int32)),
                        tf.reduce_sum(tf.cast(robust_ok, tf.int32)))
            self._compiled = (model, count)
        return self._compiled[1]

    def evaluate(self, model: Any = None) -> tuple[float, float]:
        """Clean and robust accuracy of ``model`` (default: the model being fitted)."""
        model = model if model is not None else self.model
        count = self._counter(model)
        clean_total, robust_total = 0, 0
        for index in _batches(np.arange(len(self.x)), self.batch_size):
            clean, robust = count(self.x[index], self.y[index])
            clean_total += int(clean)
            robust_total += int(robust)
        return clean_total / len(self.x), robust_total / len(self.x)


# -- summaries of training curves --------------------------------------------------
@dataclasses.dataclass
class HistorySummary:
    """Best/final numbers of one curve (typically robust test accuracy).

    Attributes:
        key: the summarised key.
        best_epoch: epoch (from 0) of the best value (the first one on ties).
        best_value: the best (largest) value.
        final_epoch: epoch of the last evaluation.
        final_value: the last value.
        gap: ``best_value - final_value`` (robust overfitting when large).
        smoothed_best: best moving average over ``window`` consecutive evaluations.
        smoothed_final: mean of the last ``window`` evaluations.
        smoothed_gap: ``smoothed_best - smoothed_final``.
        n_evaluations: number of (non-NaN) evaluations.
        window: the window actually used (``min(window, n_evaluations)``).

    Example:

        >>> s = summarize_history({"acc": [0.1, 0.5, 0.3]}, key="acc", window=1)
        >>> (s.best_epoch, round(s.gap, 2))
        (1, 0.2)
    """

    key: str
    best_epoch: int
    best_value: float
    final_epoch: int
    final_value: float
    gap: float
    smoothed_best: float
    smoothed_final: float
    smoothed_gap: float
    n_evaluations: int
    window: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _records(history: Any, key: str) -> list[tuple[int, Any]]:
    """``(epoch, value)`` pairs from a History, a dict, a tracker or a list of pairs."""
    if isinstance(history, RobustAccuracyTracker):
        return list(history.clean_records if key == history.clean_name
                    else history.history_records)
    epochs = None
    if isinstance(history, keras.callbacks.History):
        epochs, history = list(history.epoch), history.history
    if isinstance(history, dict):
        if key not in history:
            raise KeyError(f"{key!r} is not in the history; keys: {sorted(history)}.")
        values = list(history[key])
        epochs = epochs if epochs is not None else history.get("epoch")
        if epochs is None or len(epochs) != len(values):
            # The key was not logged every epoch: epochs are unknown, use positions.
            epochs = range(len(values))
        return list(zip((int(e) for e in epochs), values))
    return [(int(epoch), value) for epoch, value in history]


def summarize_history(history: Any, key: str = "test_adv_accuracy",
                      window: int = 3) -> HistorySummary:
    """Best epoch, best and final values and the (smoothed) robust-overfitting gap.

    NaN and ``None`` values (epochs without an evaluation) are skipped.

    Args:
        history: a ``keras.callbacks.History``, its ``.history`` dict (optionally
            with an ``"epoch"`` list), a :class:`RobustAccuracyTracker`, or a list of
            ``(epoch, value)`` pairs. When the key's list is shorter than the epochs
            (the tracker with ``every > 1``), epochs are the positions in the list:
            pass the tracker or its ``history_records`` for the true epochs.
        key: the key to summarise.
        window: number of consecutive evaluations averaged for the smoothed numbers.

    Returns:
        A :class:`HistorySummary`.

    Example:

        >>> s = summarize_history([(0, 0.2), (2, 0.6), (4, 0.5), (6, float("nan"))],
        ...                       key="x", window=2)
        >>> (s.best_epoch, s.final_epoch, round(s.smoothed_gap, 3))
        (2, 4, 0.0)
    """
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}.")
    pairs = [(epoch, float(value)) for epoch, value in _records(history, key)
             if value is not None and not math.isnan(float(value))]
    if not pairs:
        raise ValueError(f"No evaluations of {key!r} to summarise.")
    epochs = [epoch for epoch, _ in pairs]
    values = np.array([value for _, value in pairs], dtype="float64")
    best = int(np.argmax(values))
    width = min(int(window), len(values))
    moving = np.convolve(values, np.ones(width) / width, mode="valid")
    return HistorySummary(
        key=key, best_epoch=epochs[best], best_value=float(values[best]),
        final_epoch=epochs[-1], final_value=float(values[-1]),
        gap=float(values[best] - values[-1]),
        smoothed_best=float(moving.max()), smoothed_final=float(moving[-1]),
        smoothed_gap=float(moving.max() - moving[-1]),
        n_evaluations=len(values), window=width)
