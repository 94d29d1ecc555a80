"""Tests of keras_advcal.analysis: the label-noise measurement."""

import keras
import numpy as np
import pytest

from keras_advcal.analysis import LabelNoiseReport, measure_label_noise, noise_statistics
from keras_advcal.attacks import PGD
from keras_advcal.checks import InputError


def test_statistics_are_the_closed_forms():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([0, 2, 1])
    stats, tv = noise_statistics(logits, labels, temperature=2.0)
    probs = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)
    p_true = probs[np.arange(3), labels]
    # TV(onehot(y), p) = 0.5 * (|1 - p_y| + sum_{j != y} p_j) = 1 - p_y.
    tv_direct = 0.5 * np.abs(np.eye(3)[labels] - probs).sum(axis=1)
    np.testing.assert_allclose(tv, tv_direct, atol=1e-12)
    assert stats.total_variation == pytest.approx(np.mean(1 - p_true))
    assert stats.kl == pytest.approx(np.mean(-np.log(p_true)))
    # Example 2: argmax is class 1, the label 2 -> disagreement; example 3 is a tie
    # (argmax 0) against label 1 -> disagreement.
    assert stats.disagreement == pytest.approx(2 / 3)
    assert stats.count == 3 and stats.temperature == 2.0


def test_statistics_refuse_bad_input():
    with pytest.raises(InputError, match="labels"):
        noise_statistics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(InputError, match="NaN"):
        noise_statistics(np.array([[np.nan, 0.0]]), [0])
    with pytest.raises(InputError, match="same"):
        noise_statistics(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match="temperature"):
        noise_statistics(np.zeros((2, 3)), [0, 1], temperature=0.0)


@pytest.fixture(scope="module")
def measured(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    x, y = x[:300], y[:300]
    return {eps: measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val),
                                     PGD(eps, steps=5))
            for eps in (0.0, 0.05, 0.2)}


def test_zero_radius_measures_the_clean_noise(measured):
    report = measured[0.0]
    assert report.adversarial.total_variation == pytest.approx(report.clean.total_variation,
                                                               abs=1e-6)
    assert report.adversarial.disagreement == report.clean.disagreement
    np.testing.assert_allclose(report.adversarial_tv, report.clean_tv, atol=1e-5)


def test_noise_grows_with_the_radius(measured):
    tv = [measured[eps].adversarial.total_variation for eps in (0.0, 0.05, 0.2)]
    kl = [measured[eps].adversarial.kl for eps in (0.0, 0.05, 0.2)]
    flips = [measured[eps].adversarial.disagreement for eps in (0.0, 0.05, 0.2)]
    assert tv[0] < tv[1] < tv[2]
    assert kl[0] < kl[1] < kl[2]
    assert flips[0] < flips[2]
    # An undefended model is broken at eps 0.2 on most training digits: the estimated
    # true label of most PGD examples is another class.
    assert flips[2] > 0.5
    assert measured[0.2].epsilon == 0.2


def test_flipped_labels_raise_the_clean_noise(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    x, y = x[:300], y[:300]
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.4
    noisy = np.where(flip, (y + rng.integers(1, 10, len(y))) % 10, y)
    attack = PGD(0.0, steps=1)
    clean = measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val), attack)
    flipped = measure_label_noise(undefended_digits_model, (x, noisy), (x_val, y_val), attack)
    added = flipped.clean.disagreement - clean.clean.disagreement
    assert 0.3 < added < 0.5  # about the 40% flipped, less the rare agreements
    assert flipped.clean.total_variation > clean.clean.total_variation + 0.3


def test_report_outputs(measured, tmp_path):
    report = measured[0.05]
    assert isinstance(report, LabelNoiseReport)
    assert report.to_dict()["adversarial"]["count"] == 300
    assert '"clean"' in report.to_json()
    table = report.table()
    assert "| PGD |" in table and "| clean |" in table
    report.plot_histogram(tmp_path / "noise.png", title="digits")
    assert (tmp_path / "noise.png").stat().st_size > 5000


def test_bad_inputs_get_clear_errors(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    attack = PGD(0.1, steps=1)
    softmax_net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(InputError, match="probabilities"):
        measure_label_noise(softmax_net, (x, y), (x_val, y_val), attack)
    with pytest.raises(InputError, match="labels must be in"):
        measure_label_noise(undefended_digits_model, (x, y + 5), (x_val, y_val), attack)
    with pytest.raises(InputError, match="outside"):
        measure_label_noise(undefended_digits_model, (x * 255, y), (x_val, y_val), attack)
    with pytest.raises(ValueError, match="at least 100"):
        measure_label_noise(undefended_digits_model, (x, y), (x_val[:50], y_val[:50]), attack)
    with pytest.raises(InputError, match=r"\(x, y\) pair"):
        measure_label_noise(undefended_digits_model, x, (x_val, y_val), attack)
    three_class = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                    keras.layers.Dense(3)])
    with pytest.raises(InputError, match="outputs"):
        measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val), attack,
                            model=three_class)
