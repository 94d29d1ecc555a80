"""Property tests (hypothesis): attacks stay in the threat model, PGD does not lower
the loss, the calibration returns a grid point and does not depend on the order of
the examples, and the soft targets are distributions, for random shapes, bounds,
radii, norms and logits (extreme ones included)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_advcal import FGSM, PGD, calibrate, targets
from keras_advcal.attacks import cross_entropy_loss
from keras_advcal.calibration import DEFAULT_RHOS, DEFAULT_TEMPERATURES

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def threat_models(draw, norms=("linf", "l2")):
    """An image batch inside random bounds, and an attack on it."""
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5)),
             draw(st.integers(1, 3)))
    # Bounds exactly representable in float32, like the images.
    low = float(np.float32(draw(st.floats(-2.0, 1.0))))
    width = float(np.float32(low + draw(st.floats(0.05, 3.0)))) - low
    norm = draw(st.sampled_from(norms))
    size = int(np.prod(shape[1:]))
    max_epsilon = width if norm == "linf" else width * np.sqrt(size)
    epsilon = draw(st.floats(0.0, 1.0)) * max_epsilon
    steps = draw(st.integers(1, 4))
    step_size = draw(st.floats(0.0, 1.5)) * epsilon
    random_start = draw(st.booleans())
    loss = draw(st.sampled_from(["ce", "cw"]))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).uniform(low, low + width, shape).astype("float32")
    x[0].flat[0] = low  # pixels on the bounds themselves
    x[-1].flat[-1] = low + width
    return dict(x=x, bounds=(low, low + width), norm=norm, epsilon=float(epsilon),
                steps=steps, step_size=float(step_size), random_start=random_start,
                loss=loss, seed=seed)


def _dense_model(shape, num_classes, seed):
    """A random linear classifier on the flattened image (logits out)."""
    keras.utils.set_random_seed(seed)
    layer = keras.layers.Dense(num_classes, kernel_initializer="random_normal")
    layer.build((None, int(np.prod(shape[1:]))))

    def model(z, training=False):
        return layer(tf.reshape(z, (tf.shape(z)[0], -1)))

    return model


def _check_inside(x, x_adv, epsilon, norm, bounds):
    x64, adv64 = x.astype("float64"), np.asarray(x_adv, dtype="float64")
    assert adv64.shape == x64.shape
    assert np.all(np.isfinite(adv64))
    assert adv64.min() >= bounds[0] and adv64.max() <= bounds[1]
    delta = (adv64 - x64).reshape(len(x), -1)
    # float32 rounding of x + delta: a few ulps of the largest magnitude involved.
    slack = 4 * np.finfo("float32").eps * max(1.0, abs(bounds[0]), abs(bounds[1]))
    if norm == "linf":
        assert np.abs(delta).max() <= epsilon + slack
    else:
        assert np.linalg.norm(delta, axis=1).max() <= epsilon * (1 + 1e-5) + slack * np.sqrt(
            delta.shape[1])


@settings(max_examples=40, **SETTINGS)
@given(case=threat_models(), num_classes=st.integers(2, 5))
def test_pgd_stays_in_the_ball_and_the_bounds(case, num_classes):
    x = case["x"]
    attack = PGD(case["epsilon"], case["step_size"], case["steps"], norm=case["norm"],
                 bounds=case["bounds"], random_start=case["random_start"], loss=case["loss"],
                 seed=case["seed"])
    y = np.arange(len(x)) % num_classes
    x_adv = attack(_dense_model(x.shape, num_classes, case["seed"]), x, y).numpy()
    _check_inside(x, x_adv, case["epsilon"], case["norm"], case["bounds"])
    if case["epsilon"] == 0.0:
        np.testing.assert_array_equal(x_adv, x)


@settings(max_examples=25, **SETTINGS)
@given(case=threat_models())
def test_fgsm_stays_in_the_ball_and_the_bounds(case):
    x = case["x"]
    attack = FGSM(case["epsilon"], norm=case["norm"], bounds=case["bounds"],
                  random_start=case["random_start"], seed=case["seed"])
    y = np.zeros(len(x), "int32")
    x_adv = attack(_dense_model(x.shape, 3, case["seed"]), x, y).numpy()
    _check_inside(x, x_adv, case["epsilon"], case["norm"], case["bounds"])


@settings(max_examples=30, **SETTINGS)
@given(case=threat_models(norms=("linf",)), num_classes=st.integers(2, 5),
       one_step_l2=st.booleans())
def test_pgd_ce_does_not_lower_the_loss(case, num_classes, one_step_l2):
    """With ``random_start=False`` each PGD-CE step on a linear model moves every pixel
    in the direction of the gradient's sign or not at all (the L-inf projection is a
    per-pixel clip between the current point and the step), and the cross-entropy is
    convex in the input, so the loss never falls below the clean loss. For L2 the
    projection can turn the step back, so only the first step (from x, with
    ``step_size <= epsilon``) has that guarantee, and only that is tested."""
    x = case["x"]
    model = _dense_model(x.shape, num_classes, case["seed"])
    y = (np.arange(len(x)) + case["seed"]) % num_classes
    if one_step_l2:
        attack = PGD(case["epsilon"], min(case["step_size"], case["epsilon"]), 1, norm="l2",
                     bounds=case["bounds"], random_start=False)
    else:
        attack = PGD(case["epsilon"], case["step_size"], case["steps"], norm="linf",
                     bounds=case["bounds"], random_start=False)
    x_adv = attack(model, x, y)
    clean = cross_entropy_loss(model(tf.constant(x)), tf.constant(y, "int32")).numpy()
    adversarial = cross_entropy_loss(model(x_adv), tf.constant(y, "int32")).numpy()
    assert np.all(adversarial >= clean - 1e-5 * np.maximum(1.0, clean))


# ------------------------------------------------------------------ calibration
@st.composite
def calibration_inputs(draw):
    classes = draw(st.integers(2, 6))
    n_val = draw(st.integers(1, 24))
    n_train = draw(st.integers(1, 24))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)

    def logits(n):
        # Mix of ordinary values, exact ties and extreme (+-scale) entries.
        values = rng.normal(size=(n, classes)) * scale
        values[rng.random((n, classes)) < 0.2] = scale * rng.choice([-1.0, 1.0])
        return values.astype("float32")

    return dict(teacher=logits(n_val), surrogate=logits(n_val),
                labels=rng.integers(0, classes, n_val), train=logits(n_train),
                train_labels=rng.integers(0, classes, n_train),
                acc_floor=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])), seed=seed)


@settings(max_examples=15, **SETTINGS)
@given(case=calibration_inputs())
def test_calibrate_returns_a_grid_point_and_ignores_example_order(case):
    """For any logits (tiny, ordinary, +-1e4, ties) and floor: T on the grid, rho in
    [0, 1] (0 when infeasible), and the same (T, rho) for any order of the examples."""
    result = calibrate(case["teacher"], case["surrogate"], case["labels"], case["train"],
                       case["train_labels"], acc_floor=case["acc_floor"])
    assert DEFAULT_TEMPERATURES[0] <= result.temperature <= DEFAULT_TEMPERATURES[-1]
    assert 0.0 <= result.rho <= 1.0
    if result.feasible:
        assert np.isclose(DEFAULT_TEMPERATURES, result.temperature, rtol=1e-12).any()
        assert np.isclose(DEFAULT_RHOS, result.rho, rtol=1e-12).any()
        assert np.isfinite(result.nll)
        assert result.train_agreement >= case["acc_floor"] - 1e-9
    else:
        assert result.rho == 0.0
    assert np.all(np.isfinite(result.nll_grid))

    rng = np.random.default_rng(case["seed"] + 1)
    val_order = rng.permutation(len(case["labels"]))
    train_order = rng.permutation(len(case["train_labels"]))
    permuted = calibrate(case["teacher"][val_order], case["surrogate"][val_order],
                         case["labels"][val_order], case["train"][train_order],
                         case["train_labels"][train_order], acc_floor=case["acc_floor"])
    assert (permuted.temperature, permuted.rho, permuted.feasible) == (
        result.temperature, result.rho, result.feasible)
    # The per-example NLL is float32 and its last bit depends on the example's position
    # (vectorised and scalar code paths of exp/log), hence float32 rounding here; the
    # choice itself is exact above.
    np.testing.assert_allclose(permuted.nll_grid, result.nll_grid, rtol=1e-6)
    np.testing.assert_array_equal(permuted.agreement_grid, result.agreement_grid)


@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 1e4]),
       temperature=st.floats(0.2, 16.0), rho=st.floats(0.0, 1.0),
       loss_form=st.sampled_from(["kd", "soft"]))
def test_soft_targets_are_distributions_and_losses_finite(seed, scale, temperature, rho,
                                                          loss_form):
    rng = np.random.default_rng(seed)
    student = (rng.normal(size=(8, 5)) * scale).astype("float32")
    teacher = (rng.normal(size=(8, 5)) * scale).astype("float32")
    labels = rng.integers(0, 5, 8)
    soft = targets.calibrated_targets(teacher, labels, temperature, rho).numpy()
    assert np.all(soft >= 0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    # The label keeps at least (1 - rho) of the mass.
    assert np.all(soft[np.arange(8), labels] >= (1 - rho) - 1e-6)
    values = targets.calibrated_loss(loss_form, labels, student, teacher, temperature,
                                     rho).numpy()
    assert np.all(np.isfinite(values)) and np.all(values >= -1e-4)


@pytest.mark.parametrize("form", ["kd", "soft"])
def test_losses_equal_cross_entropy_at_rho_zero(form):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 16, 4)).astype("float32") * 5
    labels = rng.integers(0, 4, 16)
    np.testing.assert_allclose(
        targets.calibrated_loss(form, labels, student, teacher, 3.0, 0.0).numpy(),
        targets.hard_loss(labels, student).numpy(), rtol=1e-6)
