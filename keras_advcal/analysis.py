"""Measuring the label noise of adversarial training.

Adversarial training gives a PGD example ``x'`` the one-hot label ``y`` of its clean
input. The perturbation moves ``x'`` toward other classes, so its true label
distribution is no longer one-hot. Its true distribution is estimated with the
temperature-scaled prediction ``p`` of a *reference* model, and the noise is the
distance from the one-hot label to ``p``: the total variation ``TV = 1 - p_y``, the
``KL = -log p_y``, or the 0/1 disagreement ``argmax p != y``.

Two measurements, which differ in their reference:

* :func:`decompose_label_noise`, the measure to use: the reference is a model trained
  apart from the studied run (on other images, with its temperature fitted on yet
  other images: :mod:`keras_advcal.reference` builds one), and the examples are the
  ones the studied model trains on (made against it with its training attack). It
  splits the noise into an *adversarial* part (the reference's disagreement with the
  assigned label on ``x'`` minus the same on ``x``), an *injected* part (flipped
  training labels: the disagreement with the assigned label minus that with the
  true label, on ``x``) and a *base* (the reference's own disagreement with the true
  labels of the clean inputs), which add up to the total.
* :func:`measure_label_noise`, the earlier measure: whatever ``reference`` is given,
  typically the early-stopped checkpoint of the studied PGD-AT run itself, with the
  PGD examples made against that same model. It then measures **that model's own
  adversarial error** on its own training images (``1 - p_y`` on examples made to
  lower ``p_y``): it rises with the radius whatever the labels' true distribution
  does, and a flipped label counts as noise by construction. It is kept for
  comparison with the issue-7 results; it is not evidence for the label-noise view.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal.attacks import PGD
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((120, 4)).astype("float32"), np.arange(120) % 3
    >>> parts = decompose_label_noise(net, 1.0, net, (x, y), PGD(0.0, steps=1))
    >>> parts.total_variation.adversarial
    0.0
    >>> report = measure_label_noise(net, (x, y), (x, y), PGD(0.1, steps=2))
    >>> 0.0 <= report.clean.total_variation <= 1.0
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

from keras_advcal import attacks as attacks_lib
from keras_advcal import checks
from keras_advcal.calibration import check_calibration_size, fit_temperature
from keras_advcal.teacher import AdversarialLogits, BatchedLogits

_LOG_FLOOR = 1e-12


@dataclasses.dataclass
class NoiseStatistics:
    """How far one-hot labels are from estimated true label distributions.

    Attributes:
        total_variation: mean ``1 - p_y`` (total-variation distance to the one-hot label).
        kl: mean ``-log p_y`` (KL divergence from the one-hot label to ``p``).
        disagreement: fraction of examples with ``argmax p != y``.
        temperature: the reference's fitted temperature that produced ``p``.
        count: number of examples.
    """

    total_variation: float
    kl: float
    disagreement: float
    temperature: float
    count: int


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.asarray(logits, dtype="float64") / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    return probs / probs.sum(axis=1, keepdims=True)


def noise_statistics(logits: Any, labels: Any, temperature: float = 1.0
                     ) -> tuple[NoiseStatistics, np.ndarray]:
    """Label-noise statistics of ``labels`` against ``softmax(logits / temperature)``.

    Args:
        logits: ``(N, K)`` reference logits.
        labels: ``(N,)`` assigned integer labels.
        temperature: the reference's temperature.

    Returns:
        ``(statistics, per_example_total_variation)``.

    Example:

        >>> stats, tv = noise_statistics(np.array([[0.0, 0.0], [9.0, 0.0]]), [0, 1])
        >>> round(stats.total_variation, 3), stats.disagreement, tv.round(3).tolist()
        (0.75, 0.5, [0.5, 1.0])
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise checks.InputError(f"`logits` must be (examples, classes), got shape "
                                f"{logits.shape}.")
    if not np.all(np.isfinite(logits)):
        raise checks.InputError("`logits` contains NaN or Inf values.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
    y = checks.labels_to_indices(labels, logits.shape[1], "labels")
    if len(y) != len(logits) or not len(y):
        raise checks.InputError(f"`labels` has {len(y)} entries for {len(logits)} logits "
                                "rows (need the same, non-zero, number).")
    probs = _softmax(logits, temperature)
    p_true = probs[np.arange(len(y)), y]
    tv = 1.0 - p_true
    stats = NoiseStatistics(
        total_variation=float(tv.mean()),
        kl=float(np.mean(-np.log(np.maximum(p_true, _LOG_FLOOR)))),
        disagreement=float(np.mean(probs.argmax(axis=1) != y)),
        temperature=float(temperature), count=int(len(y)))
    return stats, tv


@dataclasses.dataclass
class LabelNoiseReport:
    """What :func:`measure_label_noise` found.

    Attributes:
        adversarial: statistics on the PGD examples.
        clean: statistics on the clean inputs (the reference point).
        adversarial_tv: per-example total variation on the PGD examples.
        clean_tv: per-example total variation on the clean inputs.
        epsilon: the attack's radius (``None`` when the attack has none).

    Example:

        >>> s = NoiseStatistics(0.1, 0.2, 0.05, 1.0, 10)
        >>> report = LabelNoiseReport(s, s, np.zeros(10), np.zeros(10), epsilon=0.1)
        >>> report.adversarial.total_variation, report.epsilon
        (0.1, 0.1)
    """

    adversarial: NoiseStatistics
    clean: NoiseStatistics
    adversarial_tv: np.ndarray
    clean_tv: np.ndarray
    epsilon: float | None = None

    def to_dict(self) -> dict:
        """Plain-Python summary (no per-example arrays).

        Example:

            >>> s = NoiseStatistics(0.1, 0.2, 0.05, 1.0, 10)
            >>> LabelNoiseReport(s, s, np.zeros(10), np.zeros(10), 0.1).to_dict()["epsilon"]
            0.1
        """
        return {"epsilon": self.epsilon, "adversarial": dataclasses.asdict(self.adversarial),
                "clean": dataclasses.asdict(self.clean)}

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A Markdown table of both rows.

        Example:

            >>> s = NoiseStatistics(0.1, 0.2, 0.05, 1.0, 10)
            >>> print(LabelNoiseReport(s, s, np.zeros(10), np.zeros(10)).table().splitlines()[0])
            | inputs | mean TV | mean KL | label != estimated true label | T | examples |
        """
        lines = ["| inputs | mean TV | mean KL | label != estimated true label | T | examples |",
                 "|---|---|---|---|---|---|"]
        for name, stats in (("clean", self.clean), ("PGD", self.adversarial)):
            lines.append(f"| {name} | {stats.total_variation:.3f} | {stats.kl:.3f} | "
                         f"{stats.disagreement:.1%} | {stats.temperature:.2f} | "
                         f"{stats.count} |")
        return "\n".join(lines)

    def plot_histogram(self, path: str | os.PathLike, title: str = "") -> None:
        """Writes a histogram of the per-example total variation (clean vs PGD)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.6))
        bins = np.linspace(0.0, 1.0, 41)
        axis.hist(self.clean_tv, bins=bins, alpha=0.6,
                  label=f"clean (mean {self.clean.total_variation:.3f})")
        axis.hist(self.adversarial_tv, bins=bins, alpha=0.6,
                  label=f"PGD (mean {self.adversarial.total_variation:.3f})")
        axis.set_xlabel("total variation between one-hot label and estimated distribution")
        axis.set_ylabel("examples")
        axis.set_title(title or "label noise")
        axis.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


def _arrays(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if checks.has_no_labels(data) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise checks.InputError(f"`{name}` must be an (x, y) pair of arrays.")
    x, y = (np.asarray(part) for part in data)
    if len(x) != len(y):
        raise checks.InputError(f"`{name}` has {len(x)} images and {len(y)} labels.")
    return x.astype("float32"), y


def _check_reference(reference: Callable, x: np.ndarray, name: str) -> int:
    if checks.ends_in_softmax(reference):
        raise checks.softmax_error(name)
    outputs = np.asarray(reference(x[:8], training=False))
    if checks.outputs_look_like_probabilities(outputs):
        raise checks.softmax_error(name)
    return int(outputs.shape[-1])


def measure_label_noise(reference: Callable, data: Any, calibration_data: Any,
                        attack: attacks_lib.Attack, model: Callable | None = None,
                        batch_size: int = 256, seed: int = 0) -> LabelNoiseReport:
    """The earlier label-noise measure: ``1 - p_y`` of PGD examples under ``reference``.

    PGD examples of ``data`` are made against ``model`` (default ``reference``). The
    true label distribution of each example is estimated by
    ``softmax(reference(x') / T)``, with ``T`` fitted by temperature scaling on PGD
    examples of ``calibration_data`` made the same way. The clean numbers use a
    temperature fitted on the clean held-out inputs.

    What it measures depends on the reference. With the default (the attacked model
    is the reference), and in particular with a PGD-AT run's own early-stopped
    checkpoint on that run's training images, it is **the reference's own adversarial
    error** on those images, temperature-scaled: the examples were made to lower
    ``p_y`` under that very model, so the number rises with the radius whatever the
    true label distribution of the examples does, and flipped labels count as noise
    by construction. For a measure that the studied model cannot bend, use
    :func:`decompose_label_noise` with a reference trained on other images
    (:mod:`keras_advcal.reference`).

    Args:
        reference: a robust classifier (logits out), e.g. an early-stopped PGD-AT model.
        data: ``(x, y)`` whose labels are measured (e.g. the training set; ``y`` as
            assigned, noisy or not).
        calibration_data: held-out ``(x, y)`` with correct labels for the temperature
            (at least 100 examples).
        attack: the attack that makes the examples (e.g. the training PGD).
        model: the attacked model (default: ``reference``).
        batch_size: batch size of the attack passes.
        seed: seed of the attack's random starts.

    Returns:
        A :class:`LabelNoiseReport`.

    Raises:
        keras_advcal.checks.InputError: data without labels, pixels outside the
            attack's bounds, labels out of range, a model that outputs probabilities.

    Example:

        >>> import keras
        >>> from keras_advcal.attacks import PGD
        >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x, y = np.full((100, 4), 0.5, "float32"), np.arange(100) % 3
        >>> measure_label_noise(net, (x, y), (x, y), PGD(0.1, steps=1)).adversarial.count
        100
    """
    x, y = _arrays(data, "data")
    x_val, y_val = _arrays(calibration_data, "calibration_data")
    check_calibration_size(len(y_val), "calibration_data")
    bounds = getattr(attack, "bounds", (0.0, 1.0))
    checks.check_images(x, bounds, "data")
    checks.check_images(x_val, bounds, "calibration_data")
    num_classes = _check_reference(reference, x, "reference")
    attacked = reference if model is None else model
    if model is not None:
        attacked_classes = _check_reference(model, x, "model")
        if attacked_classes != num_classes:
            raise checks.InputError(f"`model` has {attacked_classes} outputs but "
                                    f"`reference` has {num_classes}.")
    y = checks.labels_to_indices(y, num_classes, "data labels")
    y_val = checks.labels_to_indices(y_val, num_classes, "calibration_data labels")

    passes = AdversarialLogits(attack, attacked, [reference], batch_size)
    adversarial_val, = passes(x_val, y_val, seed)
    adversarial, = passes(x, y, seed + 1)
    clean_val = _predict(reference, x_val, batch_size)
    clean = _predict(reference, x, batch_size)
    adversarial_stats, adversarial_tv = noise_statistics(
        adversarial, y, fit_temperature(adversarial_val, y_val))
    clean_stats, clean_tv = noise_statistics(clean, y, fit_temperature(clean_val, y_val))
    epsilon = getattr(attack, "epsilon", None)
    return LabelNoiseReport(adversarial_stats, clean_stats, adversarial_tv, clean_tv,
                            None if epsilon is None else float(epsilon))


# ------------------------------------------------- the measure a reference cannot bend
@dataclasses.dataclass
class NoiseParts:
    """One label-noise quantity in parts: ``total = adversarial + injected + base``.

    Means over the examples of a per-example quantity ``q(input, label)`` (``1 - p_label``
    or ``argmax p != label``) under the reference's estimate ``p``:

    Attributes:
        total: ``q(x', assigned label)``: the noise of what the model trains on.
        adversarial: ``q(x', assigned) - q(x, assigned)``: what the attack adds.
        injected: ``q(x, assigned) - q(x, true label)``: what flipped labels add.
        base: ``q(x, true label)``: the reference's own error on the clean inputs.

    Example:

        >>> parts = NoiseParts.from_arrays([0.5, 0.9], [0.1, 0.8], [0.1, 0.2])
        >>> round(parts.adversarial, 3), round(parts.injected, 3), round(parts.base, 3)
        (0.25, 0.3, 0.15)
    """

    total: float
    adversarial: float
    injected: float
    base: float

    @classmethod
    def from_arrays(cls, on_adversarial: Any, on_clean: Any, on_clean_true: Any
                    ) -> "NoiseParts":
        """The parts from per-example values on ``(x', assigned)``, ``(x, assigned)``
        and ``(x, true)``."""
        adversarial, clean, true = (np.asarray(a, dtype="float64")
                                    for a in (on_adversarial, on_clean, on_clean_true))
        return cls(total=float(adversarial.mean()),
                   adversarial=float((adversarial - clean).mean()),
                   injected=float((clean - true).mean()), base=float(true.mean()))


@dataclasses.dataclass
class NoiseDecomposition:
    """What :func:`decompose_label_noise` found.

    Attributes:
        total_variation: the parts of ``TV = 1 - p_label``.
        disagreement: the parts of the 0/1 disagreement ``argmax p != label``.
        temperature: the reference's temperature.
        epsilon: the attack's radius (``None`` when the attack has none).
        count: number of examples.
        flipped_fraction: fraction of assigned labels that differ from the true ones.
        per_example: per-example arrays: ``tv_adversarial``, ``tv_clean``,
            ``tv_clean_true`` and ``flipped``.
    """

    total_variation: NoiseParts
    disagreement: NoiseParts
    temperature: float
    epsilon: float | None
    count: int
    flipped_fraction: float
    per_example: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Plain-Python summary (no per-example arrays).

        Example:

            >>> parts = NoiseParts(0.5, 0.2, 0.1, 0.2)
            >>> NoiseDecomposition(parts, parts, 1.5, 0.1, 10, 0.0).to_dict()["temperature"]
            1.5
        """
        return {"total_variation": dataclasses.asdict(self.total_variation),
                "disagreement": dataclasses.asdict(self.disagreement),
                "temperature": self.temperature, "epsilon": self.epsilon,
                "count": self.count, "flipped_fraction": self.flipped_fraction}

    def table(self) -> str:
        """A Markdown table of both quantities' parts.

        Example:

            >>> parts = NoiseParts(0.5, 0.2, 0.1, 0.2)
            >>> table = NoiseDecomposition(parts, parts, 1.5, 0.1, 10, 0.0).table()
            >>> print(table.splitlines()[0])
            | quantity | total | adversarial | injected | base |
        """
        lines = ["| quantity | total | adversarial | injected | base |", "|---|---|---|---|---|"]
        for name, parts in (("mean TV (1 - p_label)", self.total_variation),
                            ("label != argmax p", self.disagreement)):
            lines.append(f"| {name} | {parts.total:.3f} | {parts.adversarial:+.3f} | "
                         f"{parts.injected:+.3f} | {parts.base:.3f} |")
        return "\n".join(lines)


def decompose_label_noise(reference: Callable, temperature: float, model: Callable,
                          data: Any, attack: attacks_lib.Attack, clean_labels: Any = None,
                          batch_size: int = 256, seed: int = 0) -> NoiseDecomposition:
    """Splits the label noise of the examples ``model`` trains on into its parts.

    The examples are those of adversarial training: ``x' = attack(model, x, y)`` with
    ``y`` the assigned (possibly flipped) labels, made against the studied ``model``
    with its training attack. Their true label distribution is estimated by
    ``p = softmax(reference(.) / temperature)``, where ``reference`` must be trained
    apart from the studied run (other images; :mod:`keras_advcal.reference`) so that
    the studied model cannot bend it. One temperature serves ``x`` and ``x'``, so with
    ``epsilon = 0`` the adversarial part is exactly 0.

    Args:
        reference: the reference classifier (logits out).
        temperature: its fitted temperature (> 0).
        model: the studied classifier (logits out): the examples are made against it.
        data: ``(x, y)`` with ``y`` the labels the model is trained on.
        attack: the studied run's training attack.
        clean_labels: the true labels (default ``y``: nothing injected).
        batch_size: batch size of the attack and reference passes.
        seed: seed of the attack's random starts.

    Returns:
        A :class:`NoiseDecomposition`.

    Raises:
        keras_advcal.checks.InputError: data without labels, pixels outside the
            attack's bounds, labels out of range, models that output probabilities
            or disagree on the number of classes.

    Example:

        >>> import keras
        >>> from keras_advcal.attacks import PGD
        >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x, y = np.full((30, 4), 0.5, "float32"), np.arange(30) % 3
        >>> parts = decompose_label_noise(net, 1.0, net, (x, (y + 1) % 3), PGD(0.1, steps=1),
        ...                               clean_labels=y)
        >>> parts.flipped_fraction, parts.count
        (1.0, 30)
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
    x, y = _arrays(data, "data")
    checks.check_images(x, getattr(attack, "bounds", (0.0, 1.0)), "data")
    num_classes = _check_reference(reference, x, "reference")
    model_classes = _check_reference(model, x, "model")
    if model_classes != num_classes:
        raise checks.InputError(f"`model` has {model_classes} outputs but `reference` has "
                                f"{num_classes}.")
    y = checks.labels_to_indices(y, num_classes, "data labels")
    true = y if clean_labels is None else checks.labels_to_indices(
        np.asarray(clean_labels), num_classes, "clean_labels")
    if len(true) != len(y):
        raise checks.InputError(f"`clean_labels` has {len(true)} entries for {len(y)} "
                                "examples.")
    adversarial_logits, = AdversarialLogits(attack, model, [reference], batch_size)(x, y, seed)
    clean_logits = BatchedLogits(reference, batch_size)(x)
    rows = np.arange(len(y))
    p_adversarial = _softmax(adversarial_logits, temperature)
    p_clean = _softmax(clean_logits, temperature)
    tv = {"tv_adversarial": 1.0 - p_adversarial[rows, y], "tv_clean": 1.0 - p_clean[rows, y],
          "tv_clean_true": 1.0 - p_clean[rows, true]}
    wrong = (p_adversarial.argmax(axis=1) != y, p_clean.argmax(axis=1) != y,
             p_clean.argmax(axis=1) != true)
    epsilon = getattr(attack, "epsilon", None)
    return NoiseDecomposition(
        total_variation=NoiseParts.from_arrays(*tv.values()),
        disagreement=NoiseParts.from_arrays(*wrong), temperature=float(temperature),
        epsilon=None if epsilon is None else float(epsilon), count=int(len(y)),
        flipped_fraction=float(np.mean(y != true)),
        per_example=dict(tv, flipped=y != true))


# ------------------------------------------------------------------- reading curves
@dataclasses.dataclass
class DoubleDescent:
    """A fall-rise-fall in a curve, as :func:`find_double_descent` measured it.

    Attributes:
        found: whether the rise and the second fall both reach the margin.
        rise: the peak minus the lowest value before it (``None``: curve too short).
        second_fall: the peak minus the lowest value after it.
        first_low_epoch, peak_epoch, second_low_epoch: where they are (centres of the
            moving averages).
        first_low, peak, second_low: the moving-average values there.
    """

    found: bool
    rise: float | None = None
    second_fall: float | None = None
    first_low_epoch: float | None = None
    peak_epoch: float | None = None
    second_low_epoch: float | None = None
    first_low: float | None = None
    peak: float | None = None
    second_low: float | None = None


def moving_average(values: Any, window: int) -> np.ndarray:
    """Means of ``window`` consecutive values (``len(values) - window + 1`` of them).

    Example:

        >>> moving_average([1, 2, 3, 4], 2).tolist()
        [1.5, 2.5, 3.5]
    """
    values = np.asarray(values, dtype="float64")
    if window < 1 or len(values) < window:
        return np.zeros(0)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def find_double_descent(epochs: Any, errors: Any, smooth: int = 5, side: int = 5,
                        margin: float = 0.03) -> DoubleDescent:
    """Looks for an epoch-wise double descent in an error curve.

    The curve (one value per evaluation) is smoothed by a moving average of ``smooth``
    evaluations. A double descent is a smoothed value at least ``margin`` above the
    lowest smoothed value ``side`` or more evaluations before it, *and* at least
    ``margin`` above the lowest one ``side`` or more evaluations after it: the error
    fell, rose, and fell again. The evaluation where the smaller of the two drops is
    largest is reported.

    Args:
        epochs: the evaluated epochs.
        errors: the error at each (e.g. robust test error, a fraction).
        smooth: moving-average window, in evaluations.
        side: least distance, in evaluations, from the peak to each low.
        margin: least rise and least second fall.

    Returns:
        A :class:`DoubleDescent` (``found=False`` with no numbers when the curve is
        too short to have a point with ``side`` evaluations on each side).

    Example:

        >>> e = np.arange(40)
        >>> curve = np.concatenate([np.linspace(0.6, 0.4, 10), np.linspace(0.4, 0.5, 15),
        ...                         np.linspace(0.5, 0.42, 15)])
        >>> result = find_double_descent(e, curve, smooth=3, side=3)
        >>> result.found, round(result.rise, 3) >= 0.03
        (True, True)
        >>> find_double_descent(e, np.linspace(0.6, 0.3, 40)).found
        False
    """
    epochs, errors = np.asarray(epochs, dtype="float64"), np.asarray(errors, dtype="float64")
    if len(epochs) != len(errors):
        raise ValueError(f"{len(epochs)} epochs for {len(errors)} errors.")
    smoothed = moving_average(errors, smooth)
    centres = moving_average(epochs, smooth)
    best: tuple[float, int, int, int] | None = None
    for peak in range(side, len(smoothed) - side):
        before = int(np.argmin(smoothed[:peak - side + 1]))
        after = peak + side + int(np.argmin(smoothed[peak + side:]))
        score = min(smoothed[peak] - smoothed[before], smoothed[peak] - smoothed[after])
        if best is None or score > best[0]:
            best = (score, before, peak, after)
    if best is None:
        return DoubleDescent(found=False)
    _, before, peak, after = best
    rise = float(smoothed[peak] - smoothed[before])
    fall = float(smoothed[peak] - smoothed[after])
    return DoubleDescent(found=bool(rise >= margin and fall >= margin), rise=rise,
                         second_fall=fall, first_low_epoch=float(centres[before]),
                         peak_epoch=float(centres[peak]), second_low_epoch=float(centres[after]),
                         first_low=float(smoothed[before]), peak=float(smoothed[peak]),
                         second_low=float(smoothed[after]))


def rank_correlation(x: Any, y: Any) -> float:
    """Spearman's rank correlation (average ranks for ties; 0 when a side is constant).

    Example:

        >>> rank_correlation([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4])
        0.8
    """
    def ranks(values):
        values = np.asarray(values, dtype="float64")
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values))
        for value in np.unique(values):  # ties share their mean rank
            same = values == value
            result[same] = result[same].mean()
        return result

    rx, ry = ranks(x), ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"{len(rx)} values against {len(ry)}.")
    if len(rx) < 2 or np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.round(np.corrcoef(rx, ry)[0, 1], 12))


def _predict(model: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False),
                                      dtype="float32")
                           for i in range(0, len(x), batch_size)])


__all__ = ["DoubleDescent", "LabelNoiseReport", "NoiseDecomposition", "NoiseParts",
           "NoiseStatistics", "decompose_label_noise", "find_double_descent",
           "measure_label_noise", "moving_average", "noise_statistics", "rank_correlation"]
