"""Tests of keras_advcal.apgd: APGD (CE, DLR, targeted DLR) and PGD with restarts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal.apgd import (APGD, PGDRestarts, apgd_checkpoints, dlr_loss,
                               targeted_dlr_loss)
from keras_advcal.attacks import PGD
from tests.conftest import accuracy as _accuracy
from tests.conftest import conv_dense_model


def _assert_inside(x_adv, x, epsilon, norm, bounds):
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= epsilon * (1 + 1e-5) + 1e-6), size.max()
    assert x_adv.min() >= bounds[0] - 1e-6 and x_adv.max() <= bounds[1] + 1e-6


# -- pure functions ----------------------------------------------------------------
def test_checkpoints_follow_the_paper_schedule():
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    expected = sorted({int(np.ceil(round(v * 100, 9))) for v in p[1:] if v * 100 < 100})
    assert apgd_checkpoints(100) == expected == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (1, 5, 10, 37, 1000):
        points = apgd_checkpoints(steps)
        assert points == sorted(set(points))
        assert all(0 < w < steps for w in points)


def test_dlr_losses_match_hand_computation():
    logits = tf.constant([[5.0, 3.0, 1.0, 0.0], [0.0, 4.0, 2.0, 1.0]])
    labels = tf.constant([0, 0])
    # Example 0: -(5 - 3) / (5 - 1); example 1 (misclassified): -(0 - 4) / (4 - 1).
    np.testing.assert_allclose(dlr_loss(logits, labels).numpy(), [-0.5, 4 / 3], rtol=1e-6)
    targets = tf.constant([2, 1])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
    np.testing.assert_allclose(targeted_dlr_loss(logits, labels, targets).numpy(),
                               [-(5 - 1) / (5 - 0.5), -(0 - 4) / (4 - 0.5)], rtol=1e-6)


def test_dlr_loss_is_shift_and_scale_invariant():
    logits = tf.random.normal((6, 10), seed=1)
    labels = tf.constant([0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(dlr_loss(3.0 * logits + 7.0, labels).numpy(),
                               dlr_loss(logits, labels).numpy(), rtol=1e-4, atol=1e-5)


def test_dlr_losses_reject_too_few_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(tf.zeros((1, 2)), tf.constant([0]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        targeted_dlr_loss(tf.zeros((1, 3)), tf.constant([0]), tf.constant([1]))


# -- threat model ------------------------------------------------------------------
ATTACKS = {
    "apgd-ce": lambda eps, norm, bounds: APGD(eps, steps=6, norm=norm, bounds=bounds, seed=1),
    "apgd-dlr": lambda eps, norm, bounds: APGD(eps, steps=6, norm=norm, loss="dlr",
                                               bounds=bounds, seed=1),
    "apgd-t": lambda eps, norm, bounds: APGD(eps, steps=4, norm=norm, loss="dlr",
                                             targeted=True, n_target_classes=2,
                                             bounds=bounds, seed=1),
    "pgd-restarts": lambda eps, norm, bounds: PGDRestarts(eps, steps=4, restarts=2, norm=norm,
                                                          loss="cw", bounds=bounds, seed=1),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm,epsilon,bounds", [
    ("linf", 0.1, (0.0, 1.0)), ("linf", 0.3, (-1.0, 2.0)), ("l2", 1.0, (-0.5, 0.5))])
def test_outputs_stay_in_ball_and_bounds(name, norm, epsilon, bounds):
    model = conv_dense_model(seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(bounds[0], bounds[1], (12, 8, 8, 1)).astype("float32")
    x[:3] = bounds[0]  # points on the box boundary
    x[3:6] = bounds[1]
    y = rng.integers(0, 10, 12)
    x_adv = ATTACKS[name](epsilon, norm, bounds)(model, x, y)
    _assert_inside(x_adv, x, epsilon, norm, bounds)


# -- strength ----------------------------------------------------------------------
def test_epsilon_zero_gives_clean_accuracy_and_accuracy_falls_with_epsilon(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:100], y[:100]
    clean = _accuracy(undefended_digits_model, x, y)
    for name, make in ATTACKS.items():
        accuracies = [_accuracy(undefended_digits_model,
                                make(eps, "linf", (0.0, 1.0))(undefended_digits_model, x, y), y)
                      for eps in (0.0, 0.05, 0.15)]
        assert accuracies[0] == clean, name
        assert all(b <= a for a, b in zip(accuracies, accuracies[1:])), (name, accuracies)
        assert accuracies[-1] < clean, name


def test_apgd_ce_at_least_as_strong_as_pgd10_on_undefended_model(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    assert _accuracy(undefended_digits_model, x, y) > 0.85
    for epsilon, ceiling in ((0.1, 1.0), (0.3, 0.05)):
        pgd = _accuracy(undefended_digits_model,
                        PGD(epsilon, steps=10, seed=0)(undefended_digits_model, x, y), y)
        apgd = _accuracy(undefended_digits_model,
                         APGD(epsilon, steps=10, seed=0)(undefended_digits_model, x, y), y)
        assert apgd <= pgd + 1.0 / len(y), (epsilon, apgd, pgd)
        assert apgd <= ceiling and pgd <= ceiling, (epsilon, apgd, pgd)


def test_targeted_apgd_reaches_a_chosen_target(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:50], y[:50]
    attack = APGD(0.3, steps=10, loss="dlr", targeted=True, n_target_classes=9, seed=0)
    assert _accuracy(undefended_digits_model, attack(undefended_digits_model, x, y), y) <= 0.05


def test_restarts_keep_the_worst_case(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    one = PGDRestarts(0.05, steps=5, restarts=1, seed=0)(undefended_digits_model, x, y)
    many = PGDRestarts(0.05, steps=5, restarts=4, seed=0)(undefended_digits_model, x, y)
    # The first restart of both draws the same start, so more restarts never help the model.
    assert (_accuracy(undefended_digits_model, many, y)
            <= _accuracy(undefended_digits_model, one, y))


@keras.saving.register_keras_serializable(package="keras_advcal_tests")
class RoundInputs(keras.layers.Layer):
    """Quantises its input with tf.round, whose gradient is undefined."""

    def call(self, inputs):
        return tf.round(inputs * 2.0) / 2.0


def test_undefined_gradients_do_not_crash():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), RoundInputs(), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    x = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 1)).astype("float32")
    y = np.arange(6)
    for attack in (APGD(0.1, steps=3, seed=0), PGDRestarts(0.1, steps=3, restarts=2, seed=0)):
        _assert_inside(attack(model, x, y), x, 0.1, "linf", (0.0, 1.0))


# -- configuration -----------------------------------------------------------------
@pytest.mark.parametrize("attack", [
    APGD(0.1, steps=20, norm="l2", loss="dlr", targeted=True, n_target_classes=3,
         restarts=2, rho=0.5, alpha=0.5, bounds=(-1.0, 1.0), seed=7),
    PGDRestarts(0.2, step_size=0.05, steps=7, restarts=3, loss="cw", seed=3),
])
def test_config_round_trip(attack):
    config = attack.get_config()
    assert type(attack).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(restored) is type(attack) and restored.get_config() == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(loss="cw"), "loss"), (dict(rho=1.5), "rho"),
    (dict(n_target_classes=0), "n_target_classes"), (dict(restarts=0), "restarts"),
    (dict(norm="l1"), "norm")])
def test_apgd_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APGD(0.1, **kwargs)
