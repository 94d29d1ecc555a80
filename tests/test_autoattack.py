"""Tests of keras_advcal.autoattack: the standard cascade and its settings, the
result, the callable module, progress output and bad input."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_advcal
from keras_advcal.apgd import APGD
from keras_advcal.autoattack import autoattack, standard_attacks
from keras_advcal.checks import InputError
from keras_advcal.evaluation import RobustnessResult, evaluate_robustness
from keras_advcal.fab import FAB
from keras_advcal.square import Square

EPSILON = 0.1


# -- the cascade's settings -----------------------------------------------------------
def test_standard_cascade_has_the_reference_settings():
    attacks = dict(standard_attacks(8 / 255, num_classes=10, seed=5))
    assert list(attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ce, targeted, fab, square = attacks.values()
    assert isinstance(ce, APGD) and (ce.loss, ce.targeted, ce.steps, ce.restarts,
                                     ce.rho) == ("ce", False, 100, 1, 0.75)
    assert isinstance(targeted, APGD) and (
        targeted.loss, targeted.targeted, targeted.steps, targeted.restarts,
        targeted.n_target_classes) == ("dlr", True, 100, 1, 9)
    assert isinstance(fab, FAB) and (
        fab.targeted, fab.steps, fab.restarts, fab.n_target_classes, fab.alpha_max,
        fab.eta, fab.beta) == (True, 100, 1, 9, 0.1, 1.05, 0.9)
    assert isinstance(square, Square) and (
        square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert [a.seed for a in attacks.values()] == [5, 6, 7, 8]
    assert all(a.epsilon == 8 / 255 and a.norm == "linf" for a in attacks.values())


def test_l2_fast_and_few_class_cascades():
    assert [n for n, _ in standard_attacks(0.5, norm="l2")] == ["apgd-ce", "apgd-t", "fab-t"]
    fast = dict(standard_attacks(0.1, version="fast"))
    assert list(fast) == ["pgd-20", "apgd-ce", "apgd-t", "square"]
    assert fast["pgd-20"].steps == 20 and fast["square"].rescale_schedule
    five = dict(standard_attacks(0.1, num_classes=5))
    assert five["apgd-t"].n_target_classes == five["fab-t"].n_target_classes == 4
    with pytest.raises(ValueError, match="at least 4 classes"):
        standard_attacks(0.1, num_classes=3)
    with pytest.raises(ValueError, match="version"):
        standard_attacks(0.1, version="plus")


def test_square_schedule_unscaled_as_in_autoattack():
    """AutoAttack's Square-5000 halves p at iterations 10, 50, 200...; rescaled to
    5,000 queries it would halve at 5, 25, 100, 250..."""
    x = tf.fill((4, 8, 8, 1), 0.5)
    seed = tf.constant([1, 2])
    sides = {}
    for rescale in (True, False):
        attack = Square(0.1, n_queries=5000, rescale_schedule=rescale)
        proposal = attack._propose(x, x, tf.constant(150), seed).numpy()
        sides[rescale] = np.count_nonzero((proposal - 0.5).reshape(4, -1), axis=1)
    assert np.all(sides[False] == round(np.sqrt(0.8 / 4 * 64)) ** 2)  # p = 0.2: side 4
    assert np.all(sides[True] == round(np.sqrt(0.8 / 8 * 64)) ** 2)   # p = 0.1: side 3
    config = Square(0.1, rescale_schedule=False).get_config()
    assert Square.from_config(config).rescale_schedule is False
    assert "rescale_schedule" not in Square(0.1).get_config()


# -- running it -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standard_result(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    return autoattack(undefended_digits_model, x[:60], y[:60], EPSILON, progress=False,
                      batch_size=32)


def test_standard_run_is_a_cascade(standard_result, digits_200, undefended_digits_model):
    result = standard_result
    assert isinstance(result, RobustnessResult)
    assert result.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(value is None for value in result.accuracy_alone.values())
    assert result.config["version"] == "standard" and result.n_examples == 60
    previous = result.clean_mask
    for name in result.attacks:  # each stage keeps a subset of the survivors before it
        mask = result.cumulative_masks[name]
        assert not np.any(mask & ~previous)
        assert result.accuracy_cumulative[name] == pytest.approx(mask.mean())
        previous = mask
    np.testing.assert_array_equal(result.robust_mask, previous)
    assert result.robust_accuracy < result.clean_accuracy
    # The first stage is the library's APGD-CE on the same examples and batches.
    _, (x, y) = digits_200
    ce = dict(standard_attacks(EPSILON, num_classes=10))["apgd-ce"]
    alone = evaluate_robustness(undefended_digits_model, (x[:60], y[:60]), EPSILON,
                                attacks=[("apgd-ce", ce)], batch_size=32,
                                individual=False, verbose=False)
    np.testing.assert_array_equal(alone.robust_mask, result.cumulative_masks["apgd-ce"])


def test_standard_is_at_least_as_strong_as_fast(standard_result, digits_200,
                                                undefended_digits_model):
    _, (x, y) = digits_200
    fast = autoattack(undefended_digits_model, x[:60], y[:60], EPSILON, version="fast",
                      progress=False, batch_size=32)
    assert fast.attacks == ["pgd-20", "apgd-ce", "apgd-t", "square"]
    assert fast.clean_accuracy == standard_result.clean_accuracy
    # Both cascades are strong on an undefended model: they agree within 2 examples.
    assert abs(fast.robust_accuracy - standard_result.robust_accuracy) <= 2 / 60


def test_epsilon_zero_keeps_clean_accuracy_and_l2_runs(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    zero = autoattack(undefended_digits_model, x[:20], y[:20], 0.0, progress=False)
    assert zero.robust_accuracy == zero.clean_accuracy and not zero.warnings
    l2 = autoattack(undefended_digits_model, x[:20], y[:20], 1.0, norm="l2",
                    progress=False)
    assert l2.attacks == ["apgd-ce", "apgd-t", "fab-t"]
    assert l2.robust_accuracy < l2.clean_accuracy


def test_module_is_callable_as_the_function(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    module = sys.modules["keras_advcal.autoattack"]
    assert keras_advcal.autoattack is module and module.autoattack is autoattack
    assert "autoattack" in keras_advcal.__all__ and keras_advcal.FAB is FAB
    by_module = keras_advcal.autoattack(undefended_digits_model, x[:10], y[:10], 0.0,
                                        progress=False)
    assert by_module.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_progress_bar_and_lines(capsys, digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    autoattack(undefended_digits_model, x[:12], y[:12], 0.0, version="fast", batch_size=8)
    out = capsys.readouterr().out
    assert "[autoattack] fast: 12 examples" in out
    assert "[autoattack] after pgd-20:" in out and "broken" in out
    assert "robust accuracy (worst case)" in out
    autoattack(undefended_digits_model, x[:12], y[:12], 0.0, version="fast", progress=False)
    assert capsys.readouterr().out == ""


def test_softmax_output_is_flagged(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    softmax = keras.Sequential([undefended_digits_model, keras.layers.Softmax()])
    with pytest.warns(RuntimeWarning, match="probabilities"):
        result = autoattack(softmax, x[:10], y[:10], 0.0, progress=False)
    assert any("probabilities" in note for note in result.warnings)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(version="plus"), ValueError, "version"),
    (dict(norm="l1"), ValueError, "norm"),
    (dict(epsilon=-0.1), ValueError, "epsilon"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_rejects_bad_arguments(kwargs, error, match, digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    arguments = dict(epsilon=0.1) | kwargs
    with pytest.raises(error, match=match):
        autoattack(undefended_digits_model, x[:4], y[:4], progress=False, **arguments)


def test_rejects_bad_data_and_too_few_classes(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    with pytest.raises(InputError):
        autoattack(undefended_digits_model, x[:4] + 2.0, y[:4], 0.1, progress=False)
    with pytest.raises(InputError):
        autoattack(undefended_digits_model, x[:4], y[:3], 0.1, progress=False)
    three = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="at least 4 classes"):
        autoattack(three, x[:4], y[:4] % 3, 0.1, progress=False)


def test_flattened_images_and_labels_out_of_range_are_named(digits_200,
                                                            undefended_digits_model):
    """Keras' layer error and a silently wrong accuracy become messages with the fix."""
    _, (x, y) = digits_200
    with pytest.raises(InputError, match=r"examples of shape \(64,\), but the model takes "
                                         r"examples of shape \(8, 8, 1\)\. Reshape them"):
        autoattack(undefended_digits_model, x[:4].reshape(4, -1), y[:4], 0.1, progress=False)
    with pytest.raises(InputError, match=r"`y` has labels in \[1, 10\] but the model has 10 "
                                         r"outputs, so labels must be in \[0, 9\]"):
        autoattack(undefended_digits_model, x[:4], np.array([1, 10, 3, 4]), 0.1,
                   progress=False)
