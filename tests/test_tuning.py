"""keras_advcal.tuning: a real KerasTuner search, and the search spaces."""

import math
import warnings

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import AWP, PGD, AdvCalTrainer, CalibratedTeacher
from keras_advcal.tuning import AdvCalHyperModel, objective


def _digits():
    """(train, validation) digits splits as [0, 1] NHWC arrays."""
    try:
        from keras_advcal import data
        splits = data.load("digits", seed=0)
        return splits.train, splits.validation
    except (ImportError, AttributeError):  # pragma: no cover - data.py not there yet
        from sklearn.datasets import load_digits
        raw = load_digits()
        x = (raw.images / 16.0).astype("float32")[..., None]
        y = raw.target.astype("int32")
        order = np.random.default_rng(0).permutation(len(y))
        x, y = x[order], y[order]
        return (x[:1078], y[:1078]), (x[1078:1438], y[1078:1438])


def _attack():
    return PGD(epsilon=0.1, step_size=0.05, steps=3)


def test_random_search_on_digits_finds_a_finite_robust_accuracy(tmp_path):
    (x_train, y_train), (x_val, y_val) = _digits()
    hypermodel = AdvCalHyperModel(
        (8, 8, 1), 10, _attack(), labels="calibrated",
        calibration_data=(x_val, y_val), train_sample=(x_train[:200], y_train[:200]),
        batch_sizes=[64, 128], seed=0)
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective=objective(), max_trials=2, seed=0,
        directory=str(tmp_path), project_name="digits", overwrite=True)
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=1, verbose=0)

    trials = tuner.oracle.get_best_trials(num_trials=2)
    assert len(trials) == 2
    best = trials[0]
    score = best.metrics.get_best_value("val_adv_accuracy")
    assert score is not None and math.isfinite(score) and 0.0 <= score <= 1.0
    # The calibration ran in every trial and logged its values next to the metrics.
    assert best.metrics.exists("rho") and best.metrics.exists("temperature")

    hp = tuner.get_best_hyperparameters(1)[0]
    assert hp.get("width") in (16, 32, 64)
    assert 1e-4 <= hp.get("learning_rate") <= 1e-2
    assert 1e-5 <= hp.get("weight_decay") <= 1e-2
    assert hp.get("batch_size") in (64, 128)

    # The rebuilt trainer takes the checkpoint's optimizer state too, without Keras'
    # "Skipping variable loading for optimizer" warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tuner.get_best_models(1)[0]
    assert not [str(w.message) for w in caught if "Skipping variable" in str(w.message)]
    assert int(model.optimizer.iterations.numpy()) > 0  # steps of the trial, restored
    assert isinstance(model, AdvCalTrainer) and model.labels == "calibrated"
    assert model.model.predict(x_val[:4], verbose=0).shape == (4, 10)


def test_hard_baseline_search_space_has_label_smoothing():
    hypermodel = AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="hard",
                                  search_baseline=True)
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    assert "label_smoothing" in hp.values
    (space,) = [p for p in hp.space if p.name == "label_smoothing"]
    assert (space.min_value, space.max_value) == (0.0, 0.3)
    assert "temperature" not in hp.values and "rho" not in hp.values

    hp.values["label_smoothing"] = 0.2
    trainer = hypermodel.build(hp)
    assert trainer.labels == "hard"
    assert trainer.label_smoothing == pytest.approx(0.2)
    assert trainer.teacher is None


def test_plain_hard_search_has_no_baseline_knob():
    hp = keras_tuner.HyperParameters()
    AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="hard").declare_hyperparameters(hp)
    assert set(hp.values) == {"learning_rate", "weight_decay", "batch_size"}


def test_calibrated_baseline_searches_a_fixed_temperature_and_rho():
    x = np.random.default_rng(0).random((200, 8, 8, 1)).astype("float32")
    y = np.arange(200) % 10
    hypermodel = AdvCalHyperModel((8, 8, 1), 10, _attack(), search_baseline=True,
                                  calibration_data=(x, y), train_sample=(x, y))
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    ranges = {p.name: (p.min_value, p.max_value) for p in hp.space
              if p.name in ("temperature", "rho")}
    assert ranges["temperature"] == (1.0, 4.0) and ranges["rho"] == (0.0, 1.0)
    hp.values.update(temperature=3.0, rho=0.25)
    callback = hypermodel._teacher_callback(hp, [], {})
    assert isinstance(callback, CalibratedTeacher)
    assert callback.rule == "fixed" and callback.fixed == (3.0, 0.25)

    automatic = AdvCalHyperModel((8, 8, 1), 10, _attack(), calibration_data=(x, y),
                                 train_sample=(x, y))
    hp = keras_tuner.HyperParameters()
    automatic.declare_hyperparameters(hp)
    assert "temperature" not in hp.values and "rho" not in hp.values
    assert automatic._teacher_callback(hp, [], {}).rule == "published"


def test_fit_puts_the_teacher_first_and_sets_the_batch_size(monkeypatch):
    x = np.random.default_rng(0).random((200, 8, 8, 1)).astype("float32")
    y = (np.arange(200) % 10).astype("int32")
    hypermodel = AdvCalHyperModel((8, 8, 1), 10, _attack(), batch_sizes=[32])
    seen = {}

    def fake_fit(self, *args, **kwargs):
        seen.update(kwargs, args=args)
        return None

    monkeypatch.setattr(AdvCalTrainer, "fit", fake_fit)
    hp = keras_tuner.HyperParameters()
    trainer = hypermodel.build(hp)
    marker = keras.callbacks.Callback()
    hypermodel.fit(hp, trainer, x, y, validation_data=(x, y), callbacks=[marker])
    assert seen["batch_size"] == 32
    assert isinstance(seen["callbacks"][0], CalibratedTeacher)
    assert seen["callbacks"][1] is marker
    # The default training sample comes from the training arrays.
    assert len(seen["callbacks"][0].y_train) == 200

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    seen.clear()
    hypermodel.fit(hp, trainer, dataset, validation_data=(x, y))
    assert "batch_size" not in seen
    assert next(iter(seen["args"][0]))[0].shape[0] == 32
    assert len(seen["callbacks"][0].y_train) == 200  # sampled from the dataset

    with pytest.raises(ValueError, match="batch_sizes=None"):
        hypermodel.fit(hp, trainer, x, y, batch_size=16, validation_data=(x, y))
    fixed = AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="hard", batch_sizes=None)
    seen.clear()
    fixed.fit(hp, fixed.build(hp), x, y, batch_size=16)
    assert seen["batch_size"] == 16 and seen["callbacks"] == []


def test_calibrated_search_without_held_out_data_is_refused():
    x = np.zeros((200, 8, 8, 1), "float32")
    y = np.zeros(200, "int32")
    hypermodel = AdvCalHyperModel((8, 8, 1), 10, _attack())
    hp = keras_tuner.HyperParameters()
    with pytest.raises(ValueError, match="calibration_data"):
        hypermodel.fit(hp, hypermodel.build(hp), x, y, epochs=1)


def test_search_of_the_objective_and_beta():
    hypermodel = AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="hard",
                                  objectives=("pgd_at", "trades", "mart"),
                                  beta_range=(1.0, 10.0))
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    (choice,) = [p for p in hp.space if p.name == "objective"]
    assert list(choice.values) == ["pgd_at", "trades", "mart"]
    (beta,) = [p for p in hp.space if p.name == "beta"]
    assert (beta.min_value, beta.max_value, beta.sampling) == (1.0, 10.0, "log")
    assert hypermodel.build(hp).objective.name == "pgd_at"  # the first choice
    # Searched as published: no weight perturbation unless asked for.
    assert hypermodel.build(hp).weight_perturbation is None
    with_awp = AdvCalHyperModel((8, 8, 1), 10, PGD(0.1, steps=2), labels="hard",
                                weight_perturbation=AWP(0.01))
    assert with_awp.build(keras_tuner.HyperParameters()).weight_perturbation.gamma == 0.01
    for name in ("trades", "mart"):
        hp.values.update(objective=name, beta=2.5)
        objective = hypermodel.build(hp).objective
        assert (objective.name, objective.beta) == (name, 2.5)
    hp.values["objective"] = "pgd_at"
    assert not hp.is_active(beta)  # beta only goes with trades and mart
    # One objective: no `objective` hyperparameter; its default beta unless searched.
    single = keras_tuner.HyperParameters()
    trainer = AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="hard",
                               objectives="mart").build(single)
    assert trainer.objective.beta == 5.0 and "objective" not in single.values


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="labels"):
        AdvCalHyperModel((8, 8, 1), 10, _attack(), labels="soft")
    with pytest.raises(ValueError, match="teacher_kind"):
        AdvCalHyperModel((8, 8, 1), 10, _attack(), teacher_kind="fixed")
    with pytest.raises(ValueError, match="input_shape"):
        AdvCalHyperModel((8, 8), 10, _attack())
    with pytest.raises(ValueError, match="batch_sizes"):
        AdvCalHyperModel((8, 8, 1), 10, _attack(), batch_sizes=[0])
    with pytest.raises(ValueError, match="`objectives`"):
        AdvCalHyperModel((8, 8, 1), 10, _attack(), objectives=("pgd_at", "adr"))
    with pytest.raises(ValueError, match="`beta_range`"):
        AdvCalHyperModel((8, 8, 1), 10, _attack(), objectives="trades", beta_range=(0, 5))
