"""keras_advcal.awp: the ascent step on the weights, its exact restore, the update it
changes (against a hand-written AWP step), composition with every objective."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import AWP, AdvCalTrainer, PGD, awp
from keras_advcal.trainer import clone_architecture
from tests.conftest import tiny_cnn


def _batch(digits, n=64):
    return digits[0][:n], digits[1][:n]


def _kernels(model):
    return [w for w in model.trainable_variables if len(w.shape) >= 2]


def test_perturb_moves_each_kernel_by_gamma_times_its_norm_along_the_gradient():
    model = tiny_cnn(0)
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 10

    def loss():
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            y, model(x, training=True)))

    before = [w.numpy().copy() for w in model.trainable_variables]
    with tf.GradientTape() as tape:
        value = loss()
    gradients = tape.gradient(value, _kernels(model))
    perturbation = AWP(gamma=0.01)
    saved = perturbation.perturb(model, loss)
    assert [w.name for w in AWP.perturbed_weights(model)] == ["kernel", "kernel", "kernel"]
    for w, old, gradient in zip(_kernels(model), [b for b in before if b.ndim >= 2], gradients):
        step = w.numpy() - old
        assert np.linalg.norm(step) == pytest.approx(0.01 * np.linalg.norm(old), rel=1e-4)
        direction = gradient.numpy() / np.linalg.norm(gradient.numpy())
        np.testing.assert_allclose(step / np.linalg.norm(step), direction, atol=1e-4)
    for w, old in zip(model.trainable_variables, before):
        if w.ndim == 1:
            np.testing.assert_array_equal(w.numpy(), old)  # biases stay
    perturbation.restore(model, saved)
    for w, old in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(w.numpy(), old)  # bit for bit


def _trainer(seed, awp_gamma, labels="hard", objective="pgd_at", lr=0.0, model=None,
             rho=0.0):
    trainer = AdvCalTrainer(model or tiny_cnn(seed), PGD(0.1, 0.03, 3, random_start=False),
                            labels=labels, objective=objective, seed=2,
                            weight_perturbation=AWP(awp_gamma) if awp_gamma else None)
    trainer.compile(keras.optimizers.SGD(lr))
    if rho:
        trainer.copy_student_to_teacher()
        trainer.teacher.set_weights(tiny_cnn(seed + 50).get_weights())
        trainer.rho.assign(rho)
        trainer.temperature.assign(2.0)
    return trainer


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart"])
@pytest.mark.parametrize("labels", ["hard", "calibrated"])
def test_weights_are_restored_exactly_after_the_step(digits, objective, labels):
    x, y = _batch(digits)
    trainer = _trainer(0, 0.01, labels, objective, lr=0.0,
                       rho=0.5 if labels == "calibrated" else 0.0)
    before = [w.copy() for w in trainer.model.get_weights()]
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    for w, old in zip(trainer.model.get_weights(), before):
        np.testing.assert_array_equal(w, old)


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart"])
def test_awp_changes_the_update_with_every_objective_and_calibration(digits, objective):
    x, y = _batch(digits)
    updates = []
    for gamma in (0.0, 0.02):
        trainer = _trainer(0, gamma, "calibrated", objective, lr=0.1, rho=0.5)
        before = trainer.model.get_weights()
        trainer.train_on_batch(x, y)
        updates.append([w - b for w, b in zip(trainer.model.get_weights(), before)])
    difference = max(np.abs(a - b).max() for a, b in zip(*updates))
    size = max(np.abs(a).max() for a in updates[0])
    assert difference > 1e-3 * size


def test_update_equals_a_hand_written_awp_step(digits):
    """One step of PGD-AT + AWP: ascent on the kernels (mean CE at x'), descent gradient
    at the perturbed weights, applied to the original weights by SGD."""
    x, y = _batch(digits)
    gamma, lr = 0.02, 0.1
    trainer = _trainer(0, gamma, lr=lr)
    reference = clone_architecture(trainer.model)
    x_adv = trainer.attack(reference, x, y)

    def loss():
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            y, reference(x_adv, training=True)))

    with tf.GradientTape() as tape:
        value = loss()
    kernels = _kernels(reference)
    originals = [w.numpy().copy() for w in reference.trainable_variables]
    for w, gradient in zip(kernels, tape.gradient(value, kernels)):
        w.assign(w + gamma * tf.norm(w) * gradient / tf.norm(gradient))
    with tf.GradientTape() as tape:
        value = loss()
    gradients = tape.gradient(value, reference.trainable_variables)
    expected = [w - lr * g.numpy() for w, g in zip(originals, gradients)]

    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(float(value), rel=1e-5)  # the loss at w + v
    for w, e in zip(trainer.model.get_weights(), expected):
        np.testing.assert_allclose(w, e, atol=2e-6)
    # Without AWP the gradient is taken at the original weights: another update.
    reference.set_weights(originals)
    with tf.GradientTape() as tape:
        value = loss()
    plain = [w - lr * g.numpy() for w, g in zip(
        originals, tape.gradient(value, reference.trainable_variables))]
    assert max(np.abs(w - p).max() for w, p in zip(expected, plain)) > 1e-4


def test_the_ascent_pass_leaves_batchnorm_statistics_alone(digits):
    """With BatchNorm on the input, its statistics depend on x' only: after one step
    they equal those of the same step without AWP (only the descent pass updates
    them), while the kernels were perturbed in between."""
    x, y = _batch(digits)

    def model():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.BatchNormalization(),
                                 keras.layers.Flatten(), keras.layers.Dense(10)])

    states = []
    for gamma in (0.0, 0.05):
        trainer = _trainer(0, gamma, model=model())
        trainer.train_on_batch(x, y)
        states.append([w.numpy() for w in trainer.model.non_trainable_variables])
    assert any(not np.array_equal(s, 0) and not np.array_equal(s, 1) for s in states[0])
    for a, b in zip(*states):
        np.testing.assert_array_equal(a, b)


def test_gradient_free_kernel_is_not_moved():
    """A kernel the loss does not reach gets a zero step, not NaN."""
    keras.utils.set_random_seed(0)
    unused = keras.layers.Dense(3)
    unused.build((None, 2))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.unused = unused  # tracked, never called
    before = unused.kernel.numpy().copy()
    saved = AWP(0.1).perturb(model, lambda: tf.reduce_sum(model(tf.ones((1, 2)))))
    np.testing.assert_array_equal(unused.kernel.numpy(), before)
    AWP(0.1).restore(model, saved)


@pytest.mark.parametrize("make, error, message", [
    (lambda: AWP(gamma=-0.01), ValueError, "`gamma`"),
    (lambda: AWP(gamma=float("inf")), ValueError, "`gamma`"),
    (lambda: AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), weight_perturbation="awp",
                           labels="calibrated", objective="pgd_at"),
     TypeError, "`weight_perturbation`"),
])
def test_bad_arguments_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_serialization():
    perturbation = AWP(gamma=0.003)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(perturbation))
    assert isinstance(restored, AWP) and restored.gamma == 0.003
    assert awp.get({"gamma": 0.004}).gamma == 0.004 and awp.get(perturbation) is perturbation
