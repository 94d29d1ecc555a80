"""Tests of AdvCalTrainer: the step, the metrics, saving, and bad input."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import AdvCalTrainer, InputError, PGD
from keras_advcal import targets as targets_lib
from keras_advcal.trainer import clone_architecture
from tests.conftest import tiny_cnn


def _batch(digits, n=64):
    x_train, y_train, _, _ = digits
    return x_train[:n], y_train[:n]


def _weights_equal(a, b, atol=0.0):
    return all(np.allclose(u, v, atol=atol, rtol=0) for u, v in zip(a, b))


def test_hard_labels_equal_hand_written_pgd_at_step(digits):
    """labels='hard' performs exactly Madry et al.'s step: same loss, same update."""
    x, y = _batch(digits)
    attack = PGD(0.1, 0.03, 5, random_start=False)
    student = tiny_cnn(0)
    reference = clone_architecture(student)
    trainer = AdvCalTrainer(student, attack, labels="hard", objective="pgd_at",
                            weight_perturbation=None)
    trainer.compile(keras.optimizers.SGD(0.1))
    logs = trainer.train_on_batch(x, y, return_dict=True)

    optimizer = keras.optimizers.SGD(0.1)
    x_adv = attack(reference, x, y)
    with tf.GradientTape() as tape:
        logits = reference(x_adv, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, reference.trainable_variables)
    optimizer.apply(grads, reference.trainable_variables)

    assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert _weights_equal(student.get_weights(), reference.get_weights(), atol=1e-6)


def test_rho_zero_calibrated_equals_hard(digits):
    x, y = _batch(digits, 128)
    results = []
    for labels in ("hard", "calibrated"):
        trainer = AdvCalTrainer(tiny_cnn(3), PGD(0.1, 0.03, 3), labels=labels, seed=7,
                                objective="pgd_at")
        trainer.compile(keras.optimizers.Adam(1e-3))
        history = trainer.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        results.append((history.history["loss"], trainer.model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    assert _weights_equal(results[0][1], results[1][1], atol=1e-6)


def test_calibrated_step_uses_teacher_when_rho_positive(digits):
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.03, 3, random_start=False),
                            labels="calibrated", objective="pgd_at")
    trainer.compile(keras.optimizers.SGD(0.0))  # no update: compare losses only
    hard = trainer.train_on_batch(x, y, return_dict=True)["loss"]
    trainer.rho.assign(1.0)
    trainer.temperature.assign(1.0)
    # The teacher is a copy of the student: with rho = 1, T = 1 the KD loss is the
    # student's own entropy, smaller than its cross-entropy on an untrained model.
    soft = trainer.train_on_batch(x, y, return_dict=True)["loss"]
    assert soft != pytest.approx(hard)
    assert np.isfinite(soft)


def test_fit_logs_metrics_and_validation_metrics(digits):
    x_train, y_train, x_test, y_test = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 3), eval_attack=PGD(0.1, 0.025, 5),
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam")
    history = trainer.fit(x_train[:256], y_train[:256], validation_data=(x_test, y_test),
                          epochs=2, batch_size=64, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "adv_accuracy", "val_loss",
                                    "val_accuracy", "val_adv_accuracy"}
    for values in history.history.values():
        assert np.all(np.isfinite(values))
    # The robust accuracy is below the clean accuracy.
    assert history.history["val_adv_accuracy"][-1] <= history.history["val_accuracy"][-1]


def test_clean_accuracy_can_be_turned_off(digits):
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), track_clean_accuracy=False,
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam")
    history = trainer.fit(x, y, epochs=1, verbose=0)
    assert "accuracy" not in history.history and "adv_accuracy" in history.history


def test_tf_data_sample_weight_and_steps_per_execution(digits):
    x, y = _batch(digits, 128)
    weights = np.where(y < 5, 1.0, 0.0).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(32)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2, random_start=False), labels="hard",
                            objective="pgd_at")
    trainer.compile(keras.optimizers.SGD(0.0), steps_per_execution=2)
    history = trainer.fit(dataset, epochs=1, verbose=0)
    # Half-zero weights shrink the reported loss (sum over batch size convention).
    unweighted = AdvCalTrainer(trainer.model, PGD(0.1, 0.05, 2, random_start=False),
                               labels="hard", objective="pgd_at")
    unweighted.compile(keras.optimizers.SGD(0.0))
    full = unweighted.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert history.history["loss"][0] < full.history["loss"][0]


def test_jit_compile_trains(digits):
    x, y = _batch(digits, 128)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 3), seed=0,
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam", jit_compile=True)
    trainer.rho.assign(0.5)
    # (tests/test_xla.py compiles the test step too and compares with graph mode.)
    history = trainer.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_save_load_round_trip(digits, tmp_path):
    x, y = _batch(digits, 128)
    student = tiny_cnn(0, batchnorm=True)
    attack = PGD(0.1, 0.05, 3, loss="cw")
    trainer = AdvCalTrainer(student, attack, eval_attack=PGD(0.1, 0.02, 7), loss_form="soft",
                            seed=5, labels="calibrated", objective="pgd_at")
    trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)
    trainer.copy_student_to_teacher()
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)  # student moves, teacher stays
    trainer.temperature.assign(2.5)
    trainer.rho.assign(0.7)
    trainer.teacher_ready.assign(1.0)
    path = tmp_path / "trainer.keras"
    trainer.save(path)

    loaded = keras.models.load_model(path)
    assert isinstance(loaded, AdvCalTrainer)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0))
    assert float(loaded.temperature.numpy()) == 2.5
    assert float(loaded.rho.numpy()) == pytest.approx(0.7)
    assert float(loaded.teacher_ready.numpy()) == 1.0
    assert _weights_equal(loaded.teacher.get_weights(), trainer.teacher.get_weights())
    assert not _weights_equal(loaded.teacher.get_weights(), loaded.model.get_weights())
    assert loaded.attack.get_config() == attack.get_config()
    assert loaded.eval_attack.get_config() == trainer.eval_attack.get_config()
    assert loaded.loss_form == "soft"
    # The optimizer state came back and training goes on.
    assert loaded.optimizer.iterations.numpy() == trainer.optimizer.iterations.numpy()
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    # The exported classifier alone predicts the same as the trainer.
    np.testing.assert_array_equal(loaded.model.predict(x, verbose=0),
                                  loaded.predict(x, verbose=0))


def test_save_load_with_fixed_teacher(digits, tmp_path):
    teacher = tiny_cnn(9)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), teacher=teacher, rho=0.4,
                            temperature=3.0, labels="calibrated", objective="pgd_at")
    assert float(trainer.teacher_ready.numpy()) == 1.0
    path = tmp_path / "fixed.keras"
    trainer.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.has_fixed_teacher
    assert _weights_equal(loaded.teacher.get_weights(), teacher.get_weights())


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart"])
def test_save_load_round_trip_with_objective_and_awp(digits, tmp_path, objective):
    from keras_advcal import AWP, objectives

    x, y = _batch(digits, 64)
    trainer = AdvCalTrainer(tiny_cnn(0, batchnorm=True), PGD(0.1, 0.05, 2),
                            objective=objectives.get(objective, beta=None),
                            weight_perturbation=AWP(0.004), seed=5, labels="calibrated")
    trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / f"{objective}.keras"
    trainer.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0))
    assert loaded.objective == trainer.objective and loaded.objective.name == objective
    assert loaded.weight_perturbation.gamma == 0.004
    history = loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)  # the step still compiles
    assert np.isfinite(history.history["loss"][0])


def test_config_round_trip():
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), eval_attack=PGD(0.1, 0.01, 20),
                            labels="hard", label_smoothing=0.1, seed=3, name="at",
                            objective="pgd_at", weight_perturbation=None)
    config = trainer.get_config()
    again = AdvCalTrainer.from_config(json.loads(json.dumps(config)))
    assert json.dumps(again.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    assert config["objective"]["class_name"] == "PGDAT" and config["weight_perturbation"] is None
    # Configs written before objectives and AWP existed load as PGD-AT without AWP.
    old = {k: v for k, v in json.loads(json.dumps(config)).items()
           if k not in ("objective", "weight_perturbation")}
    assert AdvCalTrainer.from_config(old).objective.name == "pgd_at"
    assert AdvCalTrainer.from_config(old).weight_perturbation is None
    # The default recipe's AWP round-trips too.
    default = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2)).get_config()
    assert AdvCalTrainer.from_config(json.loads(json.dumps(default))
                                     ).weight_perturbation.gamma == 0.01


def test_rectified_targets_keep_every_label_on_top():
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), rectified_targets=True,
                            labels="calibrated", objective="pgd_at")
    trainer.rho.assign(1.0)
    trainer.temperature.assign(1.5)
    rng = np.random.default_rng(0)
    teacher_logits = (rng.normal(size=(256, 10)) * 3).astype("float32")
    labels = rng.integers(0, 10, 256)
    target = trainer.make_target(labels, teacher_logits)
    probabilities = target.probabilities(10).numpy()
    # With rho = 1 the plain target is the teacher's, whose argmax is mostly another
    # class; the rectified one keeps the label as its most likely class everywhere.
    assert np.all(probabilities.argmax(axis=1) == labels)
    plain = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), labels="calibrated", objective="pgd_at")
    plain.rho.assign(1.0)
    plain.temperature.assign(1.5)
    assert np.mean(plain.make_target(labels, teacher_logits).probabilities(10).numpy()
                   .argmax(axis=1) == labels) < 0.5
    expected = targets_lib.rectified_ratio(teacher_logits, labels, 1.5, 1.0).numpy()
    np.testing.assert_allclose(np.asarray(target.rho), expected, rtol=1e-6)


def test_rectified_targets_config_round_trip_and_errors():
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), rectified_targets=True,
                            labels="calibrated", objective="pgd_at")
    again = AdvCalTrainer.from_config(json.loads(json.dumps(trainer.get_config())))
    assert again.rectified_targets
    with pytest.raises(ValueError, match="rectified_targets.*calibrated"):
        AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), labels="hard", rectified_targets=True,
                      objective="pgd_at")
    with pytest.raises(ValueError, match="rectifies its targets already"):
        AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2), objective="adr", rectified_targets=True,
                      labels="calibrated")


# --------------------------------------------------------------------- bad input
def test_labels_out_of_range(digits):
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1),
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam")
    with pytest.raises(InputError, match=r"labels must be in \[0, 9\]"):
        trainer.fit(x, y + 5, epochs=1, verbose=0)


def test_labels_of_wrong_shape(digits):
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1),
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam")
    with pytest.raises(InputError, match="expected integer labels"):
        trainer.fit(x, np.zeros((len(y), 3)), epochs=1, verbose=0)
    with pytest.raises(InputError, match="soft labels"):
        trainer.fit(x, np.full((len(y), 10), 0.1), epochs=1, verbose=0)


def test_images_of_the_wrong_shape_say_how_to_fix_them(digits):
    """Flattened images or a missing channel axis: the fix, not Keras' layer error."""
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1))
    trainer.compile("adam")
    with pytest.raises(InputError, match=r"`x` has shape \(64, 64\): examples of shape "
                                         r"\(64,\), but the model takes examples of shape "
                                         r"\(8, 8, 1\)\. Reshape them: x\.reshape\(-1, 8, 8, 1\)"):
        trainer.fit(x.reshape(len(x), -1), y, epochs=1, verbose=0)
    with pytest.raises(InputError, match=r"Add the channel axis: x\[\.\.\., None\]"):
        trainer.fit(x[..., 0], y, epochs=1, verbose=0)
    with pytest.raises(InputError, match=r"`validation_data` has shape \(64, 8, 8\).*"
                                         r"images\[\.\.\., None\]"):
        trainer.fit(x, y, validation_data=(x[..., 0], y), epochs=1, verbose=0)


def test_model_output_does_not_match_classes():
    with pytest.raises(InputError, match="outputs 10 logits but num_classes=7"):
        AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), num_classes=7,
                      labels="calibrated", objective="pgd_at")


def test_softmax_model_is_refused():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(InputError, match="remove the final softmax"):
        AdvCalTrainer(model, PGD(0.1, steps=1), labels="calibrated", objective="pgd_at")
    # ... unless the user says the model outputs probabilities.
    trainer = AdvCalTrainer(model, PGD(0.1, steps=1), from_logits=False,
                            labels="calibrated", objective="pgd_at")
    assert trainer.from_logits is False


def test_pixels_outside_bounds(digits):
    x, y = _batch(digits)
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1),
                            labels="calibrated", objective="pgd_at")
    trainer.compile("adam")
    with pytest.raises(InputError, match="divide by 255"):
        trainer.fit(x * 255.0, y, epochs=1, verbose=0)


def test_compile_refuses_loss():
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1),
                            labels="calibrated", objective="pgd_at")
    with pytest.raises(ValueError, match="computes its own loss"):
        trainer.compile("adam", loss="mse")


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels="soft"), "labels"),
    (dict(loss_form="mse"), "loss_form"),
    (dict(rho=1.5), "rho"),
    (dict(temperature=0.0), "temperature"),
    (dict(labels="calibrated", label_smoothing=0.1), "labels='hard' only"),
])
def test_bad_trainer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), **kwargs)


def test_inputs_are_checked_once_per_fit_not_every_epoch(digits, monkeypatch):
    x_train, y_train, x_test, y_test = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 1), labels="hard", objective="pgd_at")
    trainer.compile("adam")
    calls = []
    original = trainer.check_data
    monkeypatch.setattr(trainer, "check_data",
                        lambda *a, **k: calls.append(k.get("name")) or original(*a, **k))
    trainer.fit(x_train[:64], y_train[:64], validation_data=(x_test[:64], y_test[:64]),
                epochs=3, verbose=0)
    assert calls == ["x", "validation_data"]
    trainer.evaluate(x_test[:64], y_test[:64], verbose=0)
    assert calls[-1] == "x"
