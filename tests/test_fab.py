"""Tests of keras_advcal.fab: the boundary projection and FAB / FAB-T, checked on
linear models, where the smallest perturbation that changes the prediction is known
in closed form."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog, minimize

from keras_advcal.apgd import APGD
from keras_advcal.evaluation import evaluate_robustness
from keras_advcal.fab import FAB, boundary_step
from tests.conftest import accuracy as _accuracy
from tests.conftest import conv_dense_model

N_FEATURES, N_CLASSES = 16, 10


def _distance(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


# -- the projection onto a hyperplane inside the box --------------------------------
def _reference_step(t, w, c, norm, bounds):
    """The smallest step solved by a generic optimiser (scipy)."""
    n = len(t)
    low, high = bounds[0] - t, bounds[1] - t
    if norm == "linf":  # variables (d, r): minimise r with -r <= d_i <= r
        cost = np.r_[np.zeros(n), 1.0]
        upper = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        solution = linprog(cost, A_ub=upper, b_ub=np.zeros(2 * n),
                           A_eq=np.r_[w, 0.0][None], b_eq=[-c],
                           bounds=list(zip(low, high)) + [(0, None)])
        assert solution.success
        return solution.x[:n]
    solution = minimize(lambda d: d @ d, np.zeros(n), jac=lambda d: 2 * d,
                        constraints=[{"type": "eq", "fun": lambda d: w @ d + c,
                                      "jac": lambda d: w}],
                        bounds=list(zip(low, high)), method="SLSQP",
                        options={"ftol": 1e-12, "maxiter": 500})
    assert solution.success
    return solution.x


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_step_is_the_smallest_step_inside_the_box(norm):
    rng = np.random.default_rng(0)
    bounds = (0.0, 1.0)
    points = rng.uniform(0, 1, (12, 6))
    points[:, 0] = 1.0  # some coordinates start on the box
    weights = rng.normal(size=(12, 6))
    weights[:3, 1] = 0.0  # and some do not matter
    offsets = rng.uniform(-1.0, 1.0, 12)
    step = boundary_step(tf.constant(points, tf.float32), tf.constant(weights, tf.float32),
                         tf.constant(offsets, tf.float32), norm, bounds).numpy()
    for t, w, c, d in zip(points, weights, offsets, step):
        room = np.where(np.sign(c) * w > 0, t - bounds[0], bounds[1] - t)
        reachable = np.sum(np.abs(w) * room) >= abs(c)
        assert np.all(t + d >= bounds[0] - 1e-6) and np.all(t + d <= bounds[1] + 1e-6)
        if not reachable:
            continue
        assert abs(c + w @ d) < 1e-4
        best = _reference_step(t, w, c, norm, bounds)
        assert _distance(d[None], norm)[0] <= _distance(best[None], norm)[0] * (1 + 1e-4) + 1e-6


def test_boundary_step_goes_to_the_box_corner_when_the_plane_is_out_of_reach():
    points = tf.constant([[0.5, 0.2, 0.9]])
    weights = tf.constant([[1.0, -2.0, 0.0]])
    # c + <w, d> can fall by at most 1 * 0.5 + 2 * 0.8 = 2.1 < 5.
    step = boundary_step(points, weights, tf.constant([5.0]), "l2", (0.0, 1.0)).numpy()
    np.testing.assert_allclose(step, [[-0.5, 0.8, 0.0]], atol=1e-6)
    step = boundary_step(points, weights, tf.constant([0.0]), "linf", (0.0, 1.0)).numpy()
    np.testing.assert_array_equal(step, np.zeros((1, 3)))  # already on the plane


# -- FAB on a linear model ------------------------------------------------------------
def _linear_problem(n_examples=48, seed=0):
    """A linear classifier on 4x4x1 images and points well inside [0, 1]."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(N_FEATURES, N_CLASSES)).astype("float32")
    bias = rng.normal(size=N_CLASSES).astype("float32")
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(N_CLASSES)])
    model.layers[-1].set_weights([weights, bias])
    x = rng.uniform(0.4, 0.6, (n_examples, 4, 4, 1)).astype("float32")
    logits = x.reshape(n_examples, -1) @ weights + bias
    y = logits.argmax(axis=1).astype("int32")
    return model, x, y, weights, logits


def _boundary_distances(weights, logits, y, norm):
    """(examples, classes): distance to the boundary between the label and each class,
    |f_y - f_k| / ||w_y - w_k||_dual (inf for the label)."""
    dual = 1 if norm == "linf" else 2
    gaps = np.take_along_axis(logits, y[:, None], 1) - logits
    normals = weights.T[y][:, None, :] - weights.T[None, :, :]
    lengths = np.linalg.norm(normals, ord=dual, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        distances = gaps / lengths
    distances[np.arange(len(y)), y] = np.inf
    return distances


def _compiled(attack, model):
    return tf.function(lambda a, b: attack(model, a, b), autograph=False)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_untargeted_fab_finds_the_minimal_perturbation_of_a_linear_model(norm):
    model, x, y, weights, logits = _linear_problem()
    minimal = _boundary_distances(weights, logits, y, norm).min(axis=1)
    attack = FAB(epsilon=1.0, norm=norm, targeted=False, steps=30)
    x_adv = _compiled(attack, model)(x, y).numpy()
    assert np.all(np.argmax(model(x_adv), axis=1) != y)
    ratio = _distance(x_adv - x, norm) / minimal
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.02, (ratio.min(), ratio.max())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_with_one_target_reaches_that_targets_boundary(norm):
    model, x, y, weights, logits = _linear_problem()
    distances = _boundary_distances(weights, logits, y, norm)
    second = np.argsort(logits, axis=1)[:, -2]  # FAB-T's first target
    to_target = distances[np.arange(len(y)), second]
    attack = FAB(epsilon=1.0, norm=norm, n_target_classes=1)
    x_adv = _compiled(attack, model)(x, y).numpy()
    found = _distance(x_adv - x, norm)
    assert np.all(np.argmax(model(x_adv), axis=1) != y)
    # Never below the true minimum; at most a few percent beyond the target's plane
    # (another class's plane, crossed on the way, may be closer still).
    assert np.all(found >= distances.min(axis=1) * (1 - 1e-4))
    assert np.all(found <= to_target * 1.02), np.max(found / to_target)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_breaks_the_examples_within_epsilon_and_no_others(norm):
    model, x, y, weights, logits = _linear_problem(n_examples=64, seed=1)
    minimal = _boundary_distances(weights, logits, y, norm).min(axis=1)
    epsilon = float(np.median(minimal))
    x_adv = _compiled(FAB(epsilon, norm=norm), model)(x, y).numpy()
    broken = np.argmax(model(x_adv), axis=1) != y
    assert np.all(_distance(x_adv - x, norm) <= epsilon * (1 + 1e-5))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # With 9 targets FAB-T tries every boundary: what lies within epsilon is found...
    assert np.all(broken[minimal < epsilon / 1.02])
    # ...and nothing can be found beyond the minimal distance.
    assert not np.any(broken[minimal > epsilon])
    np.testing.assert_array_equal(x_adv[~broken], x[~broken])  # unbroken: the clean input


# -- FAB on a network -----------------------------------------------------------------
@pytest.mark.parametrize("norm,epsilon,bounds", [
    ("linf", 0.1, (0.0, 1.0)), ("linf", 0.3, (-1.0, 2.0)), ("l2", 1.0, (-0.5, 0.5))])
def test_outputs_stay_in_ball_and_bounds(norm, epsilon, bounds):
    model = conv_dense_model(seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(bounds[0], bounds[1], (12, 8, 8, 1)).astype("float32")
    x[:3] = bounds[0]
    y = rng.integers(0, 10, 12)
    for targeted in (True, False):
        attack = FAB(epsilon, steps=5, norm=norm, targeted=targeted, n_target_classes=2,
                     restarts=2, bounds=bounds, seed=1)
        x_adv = attack(model, x, y).numpy()
        assert np.all(_distance(x_adv - x, norm) <= epsilon * (1 + 1e-5) + 1e-6)
        assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]


def test_fab_t_on_an_undefended_network_is_as_strong_as_apgd(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:100], y[:100]
    model = undefended_digits_model
    clean = _accuracy(model, x, y)
    accuracies = [_accuracy(model, _compiled(FAB(eps, steps=20, n_target_classes=3),
                                             model)(x, y), y)
                  for eps in (0.0, 0.03, 0.1, 0.2)]
    assert accuracies[0] == clean
    assert all(b < a for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] <= 0.05, accuracies
    apgd = _accuracy(model, _compiled(APGD(0.1, steps=20), model)(x, y), y)
    assert accuracies[2] <= apgd + 0.05, (accuracies, apgd)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_lies_at_half_epsilon_inside_the_box(norm):
    attack = FAB(0.4, norm=norm, seed=0)
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (50, 30)), tf.float32)
    start = attack._start(x, attack.seed_generator).numpy()
    distance = _distance(start - x.numpy(), norm)
    assert np.all(distance <= 0.2 + 1e-6) and np.mean(distance) > 0.1
    assert start.min() >= 0.0 and start.max() <= 1.0


def test_config_round_trip_and_keras_serialization():
    attack = FAB(0.5, steps=7, norm="l2", targeted=False, n_target_classes=3, restarts=2,
                 alpha_max=0.2, eta=1.1, beta=0.8, bounds=(-1.0, 1.0), seed=3)
    config = attack.get_config()
    assert FAB.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert isinstance(restored, FAB) and restored.get_config() == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(n_target_classes=0), "n_target_classes"),
    (dict(restarts=1.5), "restarts"), (dict(alpha_max=1.5), "alpha_max"),
    (dict(eta=0.9), "eta"), (dict(beta=0.0), "beta"), (dict(norm="l1"), "norm"),
    (dict(epsilon=-1.0), "epsilon")])
def test_rejects_bad_arguments(kwargs, match):
    arguments = dict(epsilon=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        FAB(**arguments)


def test_rejects_a_single_class_model():
    model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="at least 2 classes"):
        FAB(0.1, steps=2)(model, np.zeros((2, 2, 2, 1), "float32"), [0, 0])


def test_fab_runs_inside_evaluate_robustness(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    result = evaluate_robustness(undefended_digits_model, (x[:40], y[:40]), 0.1,
                                 attacks=[("fab-t", FAB(0.1, steps=10, n_target_classes=2))],
                                 batch_size=16, verbose=False)
    assert result.robust_accuracy < result.clean_accuracy
    assert not any("outside" in note for note in result.warnings), result.warnings


def test_zero_gradients_leave_the_input_unchanged():
    """A model whose input gradient is zero (rounded inputs): FAB cannot move, and
    returns the clean input, without NaNs."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)),
                              keras.layers.Lambda(lambda t: tf.round(t * 4) / 4),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    x = np.random.default_rng(0).uniform(0, 1, (6, 4, 4, 1)).astype("float32")
    y = np.argmax(model(x), axis=1)
    for norm in ("linf", "l2"):
        x_adv = FAB(0.3, steps=3, norm=norm, n_target_classes=2)(model, x, y).numpy()
        np.testing.assert_array_equal(x_adv, x)
