"""Tests of keras_advcal.square: the score-based Square attack (L-inf)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal.square import Square, _window_mask, _window_side, square_p_schedule
from tests.conftest import accuracy as _accuracy
from tests.conftest import conv_dense_model


def _compiled(attack, model):
    return tf.function(lambda a, b: attack(model, a, b))


def test_p_schedule_halves_at_the_paper_iterations():
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05,
                1001: 0.025, 2001: 0.0125, 4001: 0.8 / 128, 6001: 0.8 / 256, 9999: 0.8 / 512}
    for iteration, p in expected.items():
        assert float(square_p_schedule(0.8, tf.constant(iteration), 10_000)) == pytest.approx(p)
    # A smaller budget is rescaled to the 10,000-query schedule.
    assert float(square_p_schedule(0.8, tf.constant(6), 1000)) == pytest.approx(0.2)


def test_window_is_one_square_of_the_right_side():
    side = _window_side(tf.constant(0.25), tf.constant(8), tf.constant(8))
    assert int(side) == 4
    assert int(_window_side(tf.constant(0.8), tf.constant(8), tf.constant(8))) == 7
    assert int(_window_side(tf.constant(1e-4), tf.constant(8), tf.constant(8))) == 1
    mask = _window_mask(tf.constant(50), tf.constant(8), tf.constant(8), side,
                        tf.constant([3, 4])).numpy()[..., 0]
    assert mask.shape == (50, 8, 8)
    assert np.all(mask.sum(axis=(1, 2)) == 16)
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    assert np.all(rows.sum(axis=1) == 4) and np.all(cols.sum(axis=1) == 4)
    # Positions vary across examples.
    assert len({tuple(np.argwhere(m)[0]) for m in mask}) > 5


@pytest.mark.parametrize("epsilon,bounds", [(0.1, (0.0, 1.0)), (0.3, (-1.0, 2.0)),
                                            (0.05, (-0.5, 0.5))])
def test_outputs_stay_in_ball_and_bounds(epsilon, bounds):
    model = conv_dense_model(seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(bounds[0], bounds[1], (16, 8, 8, 1)).astype("float32")
    x[:4] = bounds[0]
    x[4:8] = bounds[1]
    y = rng.integers(0, 10, 16)
    x_adv = Square(epsilon, n_queries=30, bounds=bounds, seed=0)(model, x, y).numpy()
    assert np.abs(x_adv - x).max() <= epsilon + 1e-6
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]


def test_l2_is_not_implemented():
    with pytest.raises(NotImplementedError, match="linf"):
        Square(0.5, norm="l2")


def test_rejects_non_image_inputs():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="NHWC"):
        Square(0.1, n_queries=5)(model, np.zeros((2, 5), "float32"), [0, 1])


def test_epsilon_zero_gives_clean_accuracy_and_accuracy_falls_with_epsilon(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    clean = _accuracy(undefended_digits_model, x, y)
    accuracies = []
    for epsilon in (0.0, 0.05, 0.15, 0.3):
        attack = Square(epsilon, n_queries=200, seed=0)
        accuracies.append(_accuracy(undefended_digits_model,
                                    _compiled(attack, undefended_digits_model)(x, y), y))
    assert accuracies[0] == clean
    assert all(b <= a for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] <= 0.1, accuracies


def test_only_correctly_classified_examples_are_queried(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:40], y[:40].copy()
    y[:20] = (y[:20] + 1) % 10  # wrong labels: misclassified before any query
    calls = []

    def counting_model(inputs, training=False):
        calls.append(int(tf.shape(inputs)[0]))
        return undefended_digits_model(inputs, training=training)

    Square(0.05, n_queries=25, seed=0)(counting_model, x, y)
    initial_correct = int(np.sum(np.argmax(undefended_digits_model(x), axis=1) == y))
    assert calls[0] == 40  # the initial stripes are scored on the whole batch
    assert len(calls) <= 25
    assert all(size <= initial_correct for size in calls[1:]), (calls, initial_correct)
    assert all(b <= a for a, b in zip(calls[1:], calls[2:]))  # the active set only shrinks


def test_same_seed_same_result(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:30], y[:30]
    first = Square(0.1, n_queries=40, seed=5)(undefended_digits_model, x, y).numpy()
    second = Square(0.1, n_queries=40, seed=5)(undefended_digits_model, x, y).numpy()
    np.testing.assert_array_equal(first, second)


def test_config_round_trip():
    attack = Square(0.2, n_queries=321, p_init=0.3, bounds=(-1.0, 1.0), seed=4)
    config = attack.get_config()
    assert Square.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert isinstance(restored, Square) and restored.get_config() == config


@pytest.mark.parametrize("kwargs,match", [(dict(n_queries=0), "n_queries"),
                                          (dict(p_init=0.0), "p_init")])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Square(0.1, **kwargs)
