"""Tests of keras_advcal.teacher: the teacher kinds and the CalibratedTeacher callback."""

import keras
import numpy as np
import pytest

from keras_advcal import AdvCalTrainer, CalibratedTeacher, PGD, calibrate_teacher
from keras_advcal import calibration
from keras_advcal import teacher as teacher_lib
from keras_advcal.averaging import batchnorm_layers, reestimate_batchnorm
from tests.conftest import tiny_cnn


class WeightRecorder(keras.callbacks.Callback):
    """Keeps a copy of the student's weights and the logs at every epoch end."""

    def __init__(self):
        super().__init__()
        self.weights, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.model.get_weights()])
        self.logs.append(dict(logs))


def _calibration_data(digits):
    """(validation data, training sample) of the callback: 200 held-out, 200 trained."""
    x_train, y_train, x_test, y_test = digits
    return (x_test[:200], y_test[:200]), (x_train[:200], y_train[:200])


def _fit(digits, kind, epochs=4, batchnorm=False, **kwargs):
    x_train, y_train, x_test, y_test = digits
    # The calibrated trainer these tests were written for: PGD-AT, no weight perturbation.
    trainer = AdvCalTrainer(tiny_cnn(0, batchnorm=batchnorm), PGD(0.15, 0.05, 3), seed=0,
                            labels="calibrated", objective="pgd_at", weight_perturbation=None)
    trainer.compile(keras.optimizers.Adam(2e-3))
    callback = CalibratedTeacher(*_calibration_data(digits), kind=kind, **kwargs)
    recorder = WeightRecorder()
    history = trainer.fit(x_train[:600], y_train[:600], validation_data=(x_test[:200],
                          y_test[:200]), epochs=epochs, batch_size=64, verbose=0,
                          callbacks=[callback, recorder])
    return trainer, callback, recorder, history


def _same(a, b, atol=0.0):
    return all(np.allclose(u, v, atol=atol, rtol=0) for u, v in zip(a, b))


def test_best_teacher_is_the_student_at_the_best_epoch(digits):
    trainer, callback, recorder, history = _fit(digits, "best", epochs=5,
                                                recalibrate_on_snapshot=True)
    scores = history.history["val_adv_accuracy"]
    best_epoch = int(np.argmax(scores))  # first maximum: later ties do not improve
    assert _same(trainer.teacher.get_weights(), recorder.weights[best_epoch])
    assert float(trainer.teacher_score.numpy()) == pytest.approx(scores[best_epoch])
    # With recalibrate_on_snapshot, T and rho are fitted every epoch; rho > 0 once the
    # teacher exists.
    assert len(history.history["rho"]) == 5 and len(history.history["temperature"]) == 5
    assert all(r > 0 for r in history.history["rho"])
    assert float(trainer.rho.numpy()) == pytest.approx(history.history["rho"][-1])
    assert np.all(np.isfinite(history.history["calibration_nll"]))
    assert len(callback.results) == 5


def test_best_teacher_keeps_T_and_rho_in_snapshot_epochs(digits):
    """In an epoch whose end took a new snapshot, teacher == student: the NLL is flat
    in rho, so T and rho are kept; in the other epochs they are fitted."""
    trainer, callback, _, history = _fit(digits, "best", epochs=3)
    trainer.teacher_score.assign(1.0)  # no later epoch can improve on this
    more = trainer.fit(digits[0][:600], digits[1][:600],
                       validation_data=(digits[2][:200], digits[3][:200]), epochs=2,
                       batch_size=64, verbose=0, callbacks=[callback])
    logs = {key: history.history[key] + more.history[key] for key in history.history}
    scores = history.history["val_adv_accuracy"]
    improved = [score > max(scores[:i], default=-1.0) for i, score in enumerate(scores)]
    improved += [False, False]
    previous_rho = 0.0
    for epoch, snapshot in enumerate(improved):
        if snapshot:
            assert np.isnan(logs["calibration_nll"][epoch])
            assert logs["rho"][epoch] == pytest.approx(previous_rho)
            assert logs["calibration_status"][epoch] == teacher_lib.STATUS_SAME_MODEL
        else:
            assert np.isfinite(logs["calibration_nll"][epoch])
            if logs["calibration_status"][epoch] == teacher_lib.STATUS_FITTED:
                assert logs["rho"][epoch] >= 0.01 - 1e-7  # the grid's lowest, in float32
            else:  # a failed fit keeps the previous values
                assert logs["rho"][epoch] == pytest.approx(previous_rho)
        previous_rho = logs["rho"][epoch]
    assert np.isfinite(more.history["calibration_nll"]).all()


def test_swa_teacher_is_the_mean_of_epoch_weights(digits):
    trainer, _, recorder, history = _fit(digits, "swa", epochs=4, swa_start_epoch=1)
    expected = [np.mean([epoch[i] for epoch in recorder.weights[1:]], axis=0)
                for i in range(len(recorder.weights[0]))]
    assert _same(trainer.teacher.get_weights(), expected, atol=1e-6)
    assert float(trainer.teacher_updates.numpy()) == 3.0
    assert np.isnan(history.history["calibration_nll"][0])  # no teacher before start
    assert history.history["rho"][0] == 0.0


def test_swa_reestimates_batchnorm_on_the_training_attack(digits):
    """The swa teacher's BatchNorm statistics are those of the training attack's
    examples of the training sample made against the teacher (seeded per batch), not
    of the clean images."""
    trainer, callback, _, _ = _fit(digits, "swa", epochs=2, batchnorm=True)
    teacher = trainer.teacher
    bn = batchnorm_layers(teacher)[0]
    features = keras.Model(teacher.inputs, teacher.layers[0].output)
    copy = keras.models.clone_model(teacher)
    copy.set_weights(teacher.get_weights())
    reestimate_batchnorm(copy, callback.x_train, callback.batch_size)  # the clean pass
    size = callback.batch_size
    adversarial = np.concatenate([
        trainer.attack(copy, callback.x_train[i:i + size], callback.y_train[i:i + size],
                       seed=keras.random.SeedGenerator(k)).numpy()
        for k, i in enumerate(range(0, len(callback.x_train), size))])
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               features(adversarial).numpy().mean(axis=(0, 1, 2)), atol=1e-4)
    clean = features(callback.x_train).numpy().mean(axis=(0, 1, 2))
    assert not np.allclose(bn.moving_mean.numpy(), clean, atol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_ema_teacher_follows_the_formula(digits):
    x, y = digits[0][:64], digits[1][:64]
    trainer = AdvCalTrainer(tiny_cnn(0, batchnorm=True), PGD(0.1, 0.05, 2), seed=0,
                            labels="calibrated", objective="pgd_at")
    trainer.compile(keras.optimizers.SGD(0.1))
    trainer.train_on_batch(x, y)  # build the optimizer and move the student
    old_teacher = [w.copy() for w in trainer.teacher.get_weights()]
    trainer.ema_decay.assign(0.9)
    trainer.train_on_batch(x, y)
    student = trainer.model.get_weights()
    expected = [0.9 * t + 0.1 * s for t, s in zip(old_teacher, student)]
    assert _same(trainer.teacher.get_weights(), expected, atol=1e-6)
    trainer.ema_decay.assign(0.0)
    frozen = [w.copy() for w in trainer.teacher.get_weights()]
    trainer.train_on_batch(x, y)
    assert _same(trainer.teacher.get_weights(), frozen)


def test_ema_callback_sets_and_clears_decay(digits):
    trainer, _, _, history = _fit(digits, "ema", epochs=2, ema_decay=0.9)
    assert float(trainer.teacher_ready.numpy()) == 1.0
    assert float(trainer.ema_decay.numpy()) == 0.0  # off after training
    assert not _same(trainer.teacher.get_weights(), trainer.model.get_weights())
    assert all(np.isfinite(history.history["calibration_nll"]))


def test_teacher_state_survives_save_and_load(digits, tmp_path):
    trainer, _, _, _ = _fit(digits, "best", epochs=2)
    path = tmp_path / "best.keras"
    trainer.save(path)
    loaded = keras.models.load_model(path)
    assert _same(loaded.teacher.get_weights(), trainer.teacher.get_weights())
    for name in ("temperature", "rho", "teacher_ready", "teacher_score"):
        assert float(getattr(loaded, name).numpy()) == float(getattr(trainer, name).numpy())


def test_fixed_teacher_and_two_stage_recipe(digits):
    x_train, y_train, x_test, y_test = digits
    attack = PGD(0.15, 0.05, 3)
    first = AdvCalTrainer(tiny_cnn(0), attack, labels="hard", seed=0, objective="pgd_at")
    first.compile("adam")
    first.fit(x_train[:600], y_train[:600], epochs=2, verbose=0)
    result = calibrate_teacher(first.model, first.model, (x_test[:200], y_test[:200]),
                               (x_train[:200], y_train[:200]), attack)
    assert 0.2 <= result.temperature <= 16.0 and 0.0 <= result.rho <= 1.0
    second = AdvCalTrainer(tiny_cnn(1), attack, teacher=first.model,
                           temperature=result.temperature, rho=max(result.rho, 0.5), labels="calibrated", objective="pgd_at")
    second.compile("adam")
    callback = CalibratedTeacher((x_test[:200], y_test[:200]), (x_train[:200], y_train[:200]),
                                 kind="fixed")
    history = second.fit(x_train[:600], y_train[:600], epochs=2, verbose=0,
                         callbacks=[callback])
    assert len(history.history["rho"]) == 2
    assert _same(second.teacher.get_weights(), first.model.get_weights())


@pytest.mark.parametrize("examples", ["surrogate", "teacher"])
def test_calibrate_teacher_attacks_the_model_it_is_told(digits, examples):
    # Two different models: the fit must equal the published rule applied to PGD
    # examples made against the chosen one (the surrogate, the student's stand-in,
    # by default), with both models' logits taken on those same examples.
    x_train, y_train, x_test, y_test = digits
    attack = PGD(0.15, 0.05, 3)
    models = []
    for seed in (0, 1):
        trainer = AdvCalTrainer(tiny_cnn(seed), attack, labels="hard", seed=seed,
                                objective="pgd_at")
        trainer.compile("adam")
        trainer.fit(x_train[:300], y_train[:300], epochs=1 + seed, verbose=0)
        models.append(trainer.model)
    teacher, surrogate = models
    validation, sample = (x_test[:200], y_test[:200]), (x_train[:200], y_train[:200])
    result = calibrate_teacher(teacher, surrogate, validation, sample, attack, seed=3,
                               examples=examples)
    source = surrogate if examples == "surrogate" else teacher
    teacher_val, surrogate_val = teacher_lib.adversarial_logits(
        attack, source, [teacher, surrogate], *validation, seed=3)
    teacher_train, = teacher_lib.adversarial_logits(attack, source, [teacher], *sample,
                                                     seed=10)
    expected = calibration.calibrate(teacher_val, surrogate_val, validation[1],
                                     teacher_train, sample[1])
    assert (result.temperature, result.rho) == (expected.temperature, expected.rho)
    np.testing.assert_allclose(result.nll, expected.nll, rtol=1e-6)


def test_calibrate_teacher_rejects_unknown_examples(digits):
    x_train, y_train, _, _ = digits
    net = tiny_cnn(0)
    with pytest.raises(ValueError, match="`examples` must be one of"):
        calibrate_teacher(net, net, (x_train[:200], y_train[:200]),
                          (x_train[:200], y_train[:200]), PGD(0.1, 0.05, 1),
                          examples="student")


def test_fixed_rule_sets_fixed_values(digits):
    trainer, _, _, history = _fit(digits, "best", epochs=2, rule="fixed",
                                  fixed_temperature=2.0, fixed_rho=0.5)
    assert history.history["temperature"] == [2.0, 2.0]
    assert history.history["rho"] == [0.5, 0.5]


def test_confidence_rule_with_the_swa_teacher_fits_without_a_floor(digits):
    trainer, callback, _, history = _fit(digits, "swa", epochs=3, rule="confidence",
                                         recalibrate_on_snapshot=True)
    fitted = [r for r in callback.results
              if teacher_lib.calibration_status(r) == teacher_lib.STATUS_FITTED]
    assert fitted and all(r.rule == "confidence" for r in fitted)
    assert all(0.0 <= r.rho <= 1.0 and r.temperature > 0 for r in fitted)
    # rho comes from the teacher's held-out accuracy, not from a grid against a floor.
    assert all("held-out robust accuracy" in r.message for r in fitted)
    assert float(trainer.rho.numpy()) == pytest.approx(fitted[-1].rho)
    assert float(trainer.temperature.numpy()) == pytest.approx(fitted[-1].temperature)
    assert np.all(np.isfinite(history.history["loss"]))


def test_callback_errors(digits):
    x, y = digits[0][:200], digits[1][:200]
    with pytest.raises(ValueError, match="kind"):
        CalibratedTeacher((x, y), (x, y), kind="median")
    with pytest.raises(ValueError, match="at least 100"):
        CalibratedTeacher((x[:20], y[:20]), (x, y))
    hard = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), labels="hard", objective="pgd_at")
    hard.compile("adam")
    with pytest.raises(ValueError, match="labels='calibrated'"):
        hard.fit(x, y, epochs=1, verbose=0, callbacks=[CalibratedTeacher((x, y), (x, y))])
    own = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), labels="calibrated", objective="pgd_at")
    own.compile("adam")
    with pytest.raises(ValueError, match="needs a trained teacher"):
        own.fit(x, y, epochs=1, verbose=0,
                callbacks=[CalibratedTeacher((x, y), (x, y), kind="fixed")])


def test_reestimate_batchnorm_exact_mean():
    model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    data = np.random.default_rng(0).normal(3.0, 2.0, (1000, 2)).astype("float32")
    teacher_lib.reestimate_batchnorm(model, data, batch_size=100)
    bn = model.layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), data.mean(axis=0), atol=1e-4)
    batch_vars = np.mean([data[i:i + 100].var(axis=0) for i in range(0, 1000, 100)], axis=0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batch_vars, rtol=1e-3)


class CountingCalls:
    """Wraps a callable and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


def _nudge(trainer, factor=1.05):
    """Changes the student a little, as a training epoch would."""
    kernel = trainer.student.layers[-1].kernel
    kernel.assign(kernel * factor)


def test_best_teacher_reuses_validation_examples_until_it_changes(digits):
    """Between snapshots the validation PGD examples are made once and reused (one
    attack pass for two epochs); a snapshot drops them; a fresh callback seeded the
    same way computes the same calibration from scratch."""
    trainer, callback, _, _ = _fit(digits, "best", epochs=1, calibration_examples="attack")
    assert callback.reuse_validation_examples
    _nudge(trainer)
    no_improvement = {"val_adv_accuracy": -1.0}
    counter = CountingCalls(callback._val_examples)
    callback._val_examples = counter
    callback.on_epoch_end(1, dict(no_improvement))
    callback.on_epoch_end(2, dict(no_improvement))
    assert counter.calls == 1
    first, second = callback.results[-2:]
    assert first.to_dict() == second.to_dict()  # same examples, same student
    kept = trainer.calibration_cache["x_adv"].copy()

    trainer.calibration_cache.clear()
    fresh = CalibratedTeacher(*_calibration_data(digits), kind="best",
                              calibration_examples="attack")
    fresh.set_model(trainer)
    fresh.on_train_begin()
    fresh.on_epoch_end(2, dict(no_improvement))
    assert fresh.results[-1].to_dict() == second.to_dict()
    np.testing.assert_array_equal(trainer.calibration_cache["x_adv"], kept)

    callback.on_epoch_end(3, {"val_adv_accuracy": 2.0})  # a new snapshot: teacher == student
    assert callback.results[-1] is second or len(callback.results) == 2
    _nudge(trainer)
    callback.on_epoch_end(4, dict(no_improvement))
    assert counter.calls == 2
    x_adv = trainer.calibration_cache["x_adv"]
    assert not np.array_equal(x_adv, kept)
    assert np.max(np.abs(x_adv - callback.x_val)) <= 0.15 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_validation_examples_are_remade_every_epoch_without_reuse(digits):
    trainer, callback, _, _ = _fit(digits, "best", epochs=1, reuse_validation_examples=False,
                                   calibration_examples="attack")
    _nudge(trainer)
    counter = CountingCalls(callback._val_examples)
    callback._val_examples = counter
    for epoch in (1, 2):
        callback.on_epoch_end(epoch, {"val_adv_accuracy": -1.0})
    assert counter.calls == 2 and not trainer.calibration_cache


def test_moving_teacher_keeps_its_examples_until_it_moves(digits):
    """swa: the examples are kept while the teacher's NLL on them stays within its
    standard error, and made anew once the teacher has changed."""
    trainer, callback, _, history = _fit(digits, "swa", epochs=3, calibration_examples="attack")
    assert callback.reused_validation_examples + callback.remade_validation_examples == 2
    counter = CountingCalls(callback._val_examples)
    callback._val_examples = counter
    callback._validation_examples(5)  # the teacher did not move
    assert counter.calls == 0
    kernel = trainer.teacher.layers[-1].kernel
    kernel.assign(kernel * 0.2)  # a teacher that moved a lot
    callback._validation_examples(6)
    assert counter.calls == 1
    assert np.all(np.isfinite(history.history["calibration_seconds"]))


def test_teacher_equal_to_student_keeps_t_and_rho_for_every_kind(digits):
    """The first swa average is the student itself: rho stays 0 in that epoch."""
    trainer, callback, _, history = _fit(digits, "swa", epochs=2)
    assert history.history["calibration_status"][0] == teacher_lib.STATUS_SAME_MODEL
    assert history.history["rho"][0] == 0.0
    assert history.history["calibration_status"][1] != teacher_lib.STATUS_SAME_MODEL


def test_a_failed_fit_keeps_the_last_good_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    chance = rng.normal(size=(300, 10)) * 0.01  # a teacher at chance level
    result = teacher_lib.calibration.calibrate(chance, chance + 0.01 * rng.normal(
        size=chance.shape), labels, chance, labels)
    assert teacher_lib.calibration_status(result) in (teacher_lib.STATUS_EDGE,
                                                       teacher_lib.STATUS_INFEASIBLE)


def test_average_fits_uses_the_mean_of_the_fits_so_far(digits):
    trainer, callback, _, history = _fit(digits, "swa", epochs=4, average_fits=True,
                                         recalibrate_on_snapshot=True)
    fits = [(r.temperature, r.rho) for r in callback.results
            if teacher_lib.calibration_status(r) == teacher_lib.STATUS_FITTED]
    assert fits, "no successful fit to average"
    np.testing.assert_allclose(trainer.calibration_cache["fits"], fits)
    assert float(trainer.rho.numpy()) == pytest.approx(np.mean([f[1] for f in fits]))
    assert float(trainer.temperature.numpy()) == pytest.approx(np.mean([f[0] for f in fits]))


def test_floor_uses_the_teacher_logits_of_the_training_steps(digits):
    """After the first epochs no attack is made on the training sample: the training
    steps recorded the teacher's logits on the student's examples of the epoch."""
    trainer, callback, _, history = _fit(digits, "best", epochs=2, recalibrate_on_snapshot=True)
    trainer.rho.assign(0.5)
    counter = CountingCalls(callback._train_logits)
    callback._train_logits = counter
    x_train, y_train = digits[0][:600], digits[1][:600]
    trainer.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0, callbacks=[callback])
    logits, labels = trainer.floor_sample()
    assert len(labels) == 600 and int(trainer.floor_count.numpy()) == 600
    assert sorted(labels.tolist()) == sorted(y_train.tolist())
    assert np.all(np.isfinite(logits)) and np.any(logits != 0.0)
    assert counter.calls == 0 and callback.floor_from_training >= 1
    callback.on_epoch_begin(3)
    assert trainer.floor_sample()[1].shape == (0,)


def test_floor_by_attack_keeps_the_published_training_sample(digits):
    trainer, callback, _, _ = _fit(digits, "best", epochs=2, floor_examples="attack",
                                   recalibrate_on_snapshot=True)
    assert callback.floor_from_training == 0
    with pytest.raises(ValueError, match="floor_examples"):
        CalibratedTeacher(*_calibration_data(digits), floor_examples="train")


def test_calibration_uses_the_validation_pass_without_an_attack(digits):
    """By default the calibration takes the teacher's and the student's logits on the
    PGD examples of fit's validation pass: no attack of its own, the swa teacher
    averaged once per epoch (before the pass), the student's recorded logits giving
    the logged val_adv_accuracy."""
    x_train, y_train, x_test, y_test = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.15, 0.05, 3), seed=0,
                            labels="calibrated", objective="pgd_at")
    trainer.compile(keras.optimizers.Adam(2e-3))
    callback = CalibratedTeacher(*_calibration_data(digits), kind="swa")
    attacks = CountingCalls(None)

    class CountAttacks(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # after the CalibratedTeacher's
            attacks.function = callback._val_examples
            callback._val_examples = attacks

    history = trainer.fit(x_train[:600], y_train[:600], validation_data=(x_test[:200],
                          y_test[:200]), epochs=3, batch_size=64, verbose=0,
                          callbacks=[callback, CountAttacks()])
    assert attacks.calls == 0 and callback.calibrations_from_attack == 0
    assert callback.calibrations_from_validation_pass == 2  # epoch 0: teacher == student
    assert float(trainer.teacher_updates.numpy()) == 3.0  # once per epoch
    teacher_logits, student_logits, labels = trainer.validation_sample()
    np.testing.assert_array_equal(labels, y_test[:200])
    assert np.mean(student_logits.argmax(1) == labels) == pytest.approx(
        history.history["val_adv_accuracy"][-1], abs=1e-6)
    assert not np.allclose(teacher_logits, student_logits)  # the average, not the student
    assert history.history["teacher_adv_accuracy"][-1] == pytest.approx(
        np.mean(teacher_logits.argmax(1) == labels))
    assert float(trainer.validation_recording.numpy()) == 0.0  # off after fit
    trainer.evaluate(x_test[:64], y_test[:64], verbose=0)
    assert int(trainer.validation_record_count.numpy()) == 200  # evaluate() records nothing


def test_calibration_falls_back_to_an_attack_without_a_validation_pass(digits):
    x_train, y_train, x_test, y_test = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.15, 0.05, 3), seed=0,
                            labels="calibrated", objective="pgd_at")
    trainer.compile(keras.optimizers.Adam(2e-3))
    callback = CalibratedTeacher(*_calibration_data(digits), kind="swa")
    trainer.fit(x_train[:600], y_train[:600], epochs=2, batch_size=64, verbose=0,
                callbacks=[callback])
    assert callback.calibrations_from_attack == 1
    assert callback.calibrations_from_validation_pass == 0
    # Validation data other than the callback's: a warning, and an attack.
    with pytest.warns(RuntimeWarning, match="validation data"):
        trainer.fit(x_train[:600], y_train[:600], validation_data=(x_test[200:400],
                    y_test[200:400]), epochs=1, batch_size=64, verbose=0,
                    callbacks=[callback])
    assert callback.calibrations_from_attack == 2
    assert callback.calibrations_from_validation_pass == 0


def test_validation_pass_calibrates_on_the_first_1024_validation_examples(digits):
    x_train, y_train = digits[0], digits[1]
    many = (np.repeat(x_train[:100], 11, axis=0), np.repeat(y_train[:100], 11))
    callback = CalibratedTeacher(many, (x_train[:200], y_train[:200]))
    assert len(callback.y_val) == teacher_lib.VALIDATION_SAMPLE_SIZE == 1024
    np.testing.assert_array_equal(callback.x_val, many[0][:1024])
    attacked = CalibratedTeacher(many, (x_train[:200], y_train[:200]),
                                 calibration_examples="attack")
    assert len(attacked.y_val) == 1100
    with pytest.raises(ValueError, match="calibration_examples"):
        CalibratedTeacher(*_calibration_data(digits), calibration_examples="pass")


def test_trades_calibration_reads_clean_validation_logits(digits):
    """With TRADES the calibrated target supervises the clean term, so the fit reads
    the teacher's and the student's logits on the clean validation images (recorded in
    the validation pass), and the fallback without a pass attacks nothing."""
    from keras_advcal import TRADES

    x_train, y_train, x_test, y_test = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.15, 0.05, 3), objective=TRADES(), seed=0,
                            labels="calibrated")
    trainer.compile(keras.optimizers.Adam(2e-3))
    callback = CalibratedTeacher(*_calibration_data(digits), kind="swa")
    history = trainer.fit(x_train[:600], y_train[:600], validation_data=(x_test[:200],
                          y_test[:200]), epochs=3, batch_size=64, verbose=0,
                          callbacks=[callback])
    assert callback.calibration_input == "clean"
    assert callback.calibrations_from_validation_pass == 2
    teacher_logits, student_logits, labels = trainer.validation_sample()
    np.testing.assert_allclose(teacher_logits, trainer.teacher_logits(x_test[:200]),
                               atol=1e-4)
    np.testing.assert_allclose(student_logits, trainer.student_logits(x_test[:200]),
                               atol=1e-4)
    assert history.history["teacher_adv_accuracy"][-1] == pytest.approx(
        np.mean(np.asarray(trainer.teacher_logits(x_test[:200])).argmax(1) == y_test[:200]))
    # Without a validation pass: clean logits too, and no PGD example is made.
    attacks = CountingCalls(callback._val_examples)
    callback._val_examples = attacks
    before = callback.calibrations_from_attack
    trainer.fit(x_train[:600], y_train[:600], epochs=1, batch_size=64, verbose=0,
                callbacks=[callback])
    assert callback.calibrations_from_attack == before + 1 and attacks.calls == 0


def test_a_known_temperature_is_recovered_on_clean_inputs():
    """A fixed teacher whose clean logits are T* times the true log-probabilities of
    the labels: the fit on clean held-out inputs (TRADES) recovers T*."""
    from keras_advcal import TRADES

    true_temperature = 2.5
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6, 4)).astype("float32")
    x = rng.uniform(0, 1, size=(4000, 6)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(x @ weights * 3.0))
    y = np.array([rng.choice(4, p=p / p.sum()) for p in probabilities], "int32")
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, use_bias=False)])
    teacher.layers[0].set_weights([weights * 3.0 * true_temperature])
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    trainer = AdvCalTrainer(student, PGD(0.05, 0.02, 2), objective=TRADES(), teacher=teacher,
                            labels="calibrated")
    trainer.compile(keras.optimizers.Adam(0.0))  # the student does not move
    callback = CalibratedTeacher((x[:3000], y[:3000]), (x[3000:], y[3000:]), kind="fixed",
                                 acc_floor=0.0)
    trainer.fit(x[3000:], y[3000:], validation_data=(x[:3000], y[:3000]), epochs=1,
                batch_size=250, verbose=0, callbacks=[callback])
    result = callback.results[-1]
    assert result.temperature == pytest.approx(true_temperature, rel=0.1)


def test_a_one_hot_trainer_is_told_to_ask_for_calibrated_labels(digits):
    """AdvCalTrainer(net, attack) has one-hot labels (TRADES): the callback says which
    argument to add, or to leave it out."""
    x, y, _, _ = digits
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1))
    trainer.compile("adam")
    callback = CalibratedTeacher((x[:200], y[:200]), (x[200:400], y[200:400]))
    with pytest.raises(ValueError, match=r"got labels='hard' \(one-hot targets, which need "
                                         r"no teacher\): build the trainer with "
                                         r"AdvCalTrainer\(model, attack, labels='calibrated'\), "
                                         r"or leave CalibratedTeacher out of the callbacks"):
        trainer.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[callback])
