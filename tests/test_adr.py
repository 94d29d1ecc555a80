"""keras_advcal.adr: the ADR-style baseline as the "adr" objective, an EMA teacher and
the cosine schedules of T and rho."""

import json
import math

import keras
import numpy as np
import tensorflow as tf

from keras_advcal import PGD, adr
from keras_advcal.trainer import AdvCalTrainer


def test_per_example_ratio_follows_the_teacher_on_the_clean_input():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    # epsilon 0.05: x' differs from x, and the target must come from the teacher on x.
    trainer = adr.adr_trainer(net, PGD(0.05, 0.05, 1, random_start=False))
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer.teacher.set_weights(teacher.get_weights())
    trainer.rho.assign(0.9)
    trainer.temperature.assign(1.5)
    x = np.random.default_rng(0).random((6, 4)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2], "int32")
    x_adv = trainer.attack(net, x, y).numpy()
    assert np.abs(x_adv - x).max() > 0.01
    probs = tf.nn.softmax(teacher(x).numpy() / 1.5).numpy()
    rho_i = np.clip(0.9 - (probs.max(1) - probs[np.arange(6), y]), 0, 1)
    target = rho_i[:, None] * probs + (1 - rho_i[:, None]) * np.eye(3)[y]
    expected = -np.mean(np.sum(target * tf.nn.log_softmax(net(x_adv)).numpy(), axis=1))
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert math.isclose(logs["loss"], expected, rel_tol=1e-5)


def test_schedule_starts_the_ema_teacher_and_anneals_t_and_rho(digits):
    x, y = digits[0][:128], digits[1][:128]
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
    trainer = adr.adr_trainer(net, PGD(0.1, 0.05, 2), seed=0)
    trainer.compile("adam")
    schedule = adr.ADRSchedule((2.5, 2.0), (0.7, 0.95), ema_decay=0.9)
    history = trainer.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[schedule])
    np.testing.assert_allclose(history.history["temperature"], [2.5, 2.25, 2.0], atol=1e-6)
    np.testing.assert_allclose(history.history["rho"], [0.7, 0.825, 0.95], atol=1e-6)
    assert float(trainer.teacher_ready.numpy()) == 1.0
    assert float(trainer.ema_decay.numpy()) == 0.0  # reset at the end of training
    # The EMA teacher trails the student: close to it, not equal.
    gaps = [np.abs(t - s).max() for t, s in zip(trainer.teacher.get_weights(),
                                                trainer.model.get_weights())]
    assert 0 < max(gaps) < 0.5


def test_cosine_schedule_endpoints_and_midpoint():
    assert adr.cosine_schedule(2.5, 2.0, 0, 5) == 2.5
    assert math.isclose(adr.cosine_schedule(2.5, 2.0, 2, 5), 2.25)
    assert math.isclose(adr.cosine_schedule(2.5, 2.0, 4, 5), 2.0)
    assert adr.cosine_schedule(0.7, 0.95, 0, 1) == 0.7


def test_trainers_saved_as_adr_trainer_still_load():
    """The config of a trainer saved when the baseline was a subclass (no `objective`
    key, class ADRTrainer) builds the same trainer with the "adr" objective."""
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    config = json.loads(json.dumps(adr.adr_trainer(net, PGD(0.1, steps=1)).get_config()))
    config.pop("objective")
    config.pop("weight_perturbation")
    old = keras.saving.deserialize_keras_object(
        {"module": "keras_advcal.adr", "class_name": "ADRTrainer", "config": config,
         "registered_name": "keras_advcal>ADRTrainer"})
    assert isinstance(old, AdvCalTrainer) and old.objective.name == "adr"
    assert old.loss_form == "soft" and old.labels == "calibrated"
