"""Tests of keras_advcal.targets: soft targets and the two loss forms."""

import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import targets


def test_targets_sum_to_one_and_mix():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(50, 7)) * 5
    labels = rng.integers(0, 7, 50)
    for rho in (0.0, 0.3, 1.0):
        t = targets.calibrated_targets(teacher, labels, 1.7, rho).numpy()
        np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
        assert np.all(t >= 0)
    np.testing.assert_allclose(targets.calibrated_targets(teacher, labels, 1.0, 0.0).numpy(),
                               np.eye(7)[labels])
    probs = tf.nn.softmax(teacher / 2.0).numpy()
    np.testing.assert_allclose(targets.calibrated_targets(teacher, labels, 2.0, 1.0).numpy(),
                               probs, atol=1e-6)


def test_per_example_rho():
    t = targets.calibrated_targets([[0.0, 0.0], [0.0, 0.0]], [0, 0], 1.0, [0.0, 1.0]).numpy()
    np.testing.assert_allclose(t, [[1.0, 0.0], [0.5, 0.5]])


@pytest.mark.parametrize("form", ["kd", "soft"])
def test_rho_zero_is_cross_entropy(form):
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 20, 5))
    labels = rng.integers(0, 5, 20)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, student).numpy()
    got = targets.calibrated_loss(form, labels, student, teacher, 3.0, 0.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kd_formula():
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(2, 10, 4))
    y = rng.integers(0, 4, 10)
    T, rho = 2.0, 0.6
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, f).numpy()
    p_g = tf.nn.softmax(g / T).numpy()
    log_p_f = tf.nn.log_softmax(f / T).numpy()
    expected = (1 - rho) * ce + rho * T * T * -(p_g * log_p_f).sum(axis=1)
    np.testing.assert_allclose(targets.kd_loss(y, f, g, T, rho).numpy(), expected, rtol=1e-5)


def test_soft_form_is_cross_entropy_with_target():
    f = np.array([[1.0, -1.0, 0.5]])
    g = np.array([[0.0, 2.0, 0.0]])
    target = targets.calibrated_targets(g, [0], 1.5, 0.4).numpy()
    expected = -(target * tf.nn.log_softmax(f).numpy()).sum()
    assert float(targets.soft_target_loss([0], f, g, 1.5, 0.4)[0]) == pytest.approx(expected)


@pytest.mark.parametrize("form", ["kd", "soft"])
@pytest.mark.parametrize("temperature", [0.2, 16.0])
def test_finite_for_extreme_logits(form, temperature):
    f = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], "float32")
    g = np.array([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]], "float32")
    loss = targets.calibrated_loss(form, [0, 1], f, g, temperature, 0.5).numpy()
    assert np.all(np.isfinite(loss))


def test_label_smoothing():
    loss = targets.hard_loss([0], [[0.0, 0.0]], label_smoothing=0.2)
    assert float(loss[0]) == pytest.approx(np.log(2.0))


def test_unknown_form():
    with pytest.raises(ValueError, match="loss_form"):
        targets.calibrated_loss("mse", [0], [[0.0]], [[0.0]], 1.0, 0.5)


def test_target_cross_entropy_is_the_hard_or_calibrated_loss():
    rng = np.random.default_rng(1)
    logits, teacher = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    np.testing.assert_allclose(targets.Target(labels).cross_entropy(logits).numpy(),
                               targets.hard_loss(labels, logits).numpy())
    np.testing.assert_allclose(
        targets.Target(labels, label_smoothing=0.2).cross_entropy(logits).numpy(),
        targets.hard_loss(labels, logits, 0.2).numpy())
    for form in ("kd", "soft"):
        target = targets.Target(labels, teacher, 1.5, 0.4, form)
        assert target.is_calibrated
        np.testing.assert_allclose(
            target.cross_entropy(logits).numpy(),
            targets.calibrated_loss(form, labels, logits, teacher, 1.5, 0.4).numpy())
    soft = targets.Target(labels, teacher, 1.5, 0.4, "soft")
    np.testing.assert_allclose(soft.cross_entropy(logits).numpy(), targets.soft_cross_entropy(
        soft.probabilities(4), logits).numpy(), rtol=1e-6)
    assert targets.as_target(labels).labels.numpy().tolist() == labels.tolist()
    with pytest.raises(ValueError, match="loss_form"):
        targets.Target(labels, teacher, loss_form="mse")


def test_rectified_ratio_trusts_the_teacher_less_where_it_disagrees():
    teacher = np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ratio = targets.rectified_ratio(teacher, [0, 1, 2], 1.0, 0.8).numpy()
    probs = tf.nn.softmax(teacher).numpy()
    np.testing.assert_allclose(ratio, [0.8, max(0.0, 0.8 - (probs[1, 0] - probs[1, 1])), 0.8],
                               rtol=1e-6)
    assert np.all((ratio >= 0) & (ratio <= 1))
