"""Measuring the label noise of adversarial training.

Adversarial training gives a PGD example ``x'`` the one-hot label ``y`` of its clean
input. The perturbation moves ``x'`` toward other classes, so its true label
distribution is no longer one-hot. This module estimates that distribution with the
temperature-scaled prediction of a robust *reference* model, its temperature fitted on
held-out data (plain temperature scaling on the same kind of inputs: adversarial
examples for the adversarial numbers, clean inputs for the clean ones), and reports how
far the assigned one-hot labels are from it:

* mean total-variation distance ``TV(onehot(y), p) = 1 - p_y``;
* mean ``KL(onehot(y) || p) = -log p_y``;
* the fraction of examples whose estimated true label ``argmax p`` differs from ``y``;

for the adversarial examples, and for the clean inputs as the reference point.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal.attacks import PGD
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((120, 4)).astype("float32"), np.arange(120) % 3
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
from keras_advcal.teacher import AdversarialLogits

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
    """Measures how noisy the one-hot labels of PGD examples are.

    PGD examples of ``data`` are made against ``model`` (the model whose training the
    labels feed; default ``reference``). The true label distribution of each example
    is estimated by ``softmax(reference(x') / T)``, with ``T`` fitted by temperature
    scaling on PGD examples of ``calibration_data`` made the same way (held out, never
    trained on). The clean numbers use a temperature fitted on the clean held-out
    inputs.

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


def _predict(model: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False),
                                      dtype="float32")
                           for i in range(0, len(x), batch_size)])


__all__ = ["LabelNoiseReport", "NoiseStatistics", "measure_label_noise", "noise_statistics"]
