"""keras_advcal.averaging: the weight average of the student and BatchNorm re-estimation."""

import keras
import numpy as np
import pytest

from keras_advcal import PGD, AdvCalTrainer
from keras_advcal.averaging import WeightAverage, average_into, reestimate_batchnorm


def _net(batchnorm=False):
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    return keras.Sequential(layers + [keras.layers.Dense(3)])


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 6)).astype("float32"), (np.arange(n) % 3).astype("int32")


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.student.get_weights()])


def test_average_is_the_uniform_mean_of_the_epoch_end_weights():
    keras.utils.set_random_seed(0)
    trainer = AdvCalTrainer(_net(), PGD(0.1, steps=1), labels="hard", average_weights=True,
                            objective="pgd_at")
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = _data()
    snapshots = _Snapshots()
    # Snapshots first: callbacks run in order, so it sees the same weights.
    trainer.fit(x, y, epochs=4, batch_size=16, verbose=0,
                callbacks=[snapshots, WeightAverage(x, start_epoch=1)])
    expected = [np.mean([s[i] for s in snapshots.weights[1:]], axis=0)
                for i in range(len(snapshots.weights[0]))]
    for got, want in zip(trainer.average_model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(trainer.average_updates.numpy()) == 3


def test_average_survives_save_and_load(tmp_path):
    trainer = AdvCalTrainer(_net(batchnorm=True), PGD(0.1, steps=1), labels="hard",
                            average_weights=True, objective="pgd_at")
    trainer.compile(optimizer="adam")
    x, y = _data()
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[WeightAverage(x)])
    trainer.save(tmp_path / "t.keras")
    loaded = keras.models.load_model(tmp_path / "t.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.average_model.predict(x, verbose=0),
                                  trainer.average_model.predict(x, verbose=0))
    assert int(loaded.average_updates.numpy()) == 2


def test_batchnorm_statistics_of_the_average_are_reestimated():
    trainer = AdvCalTrainer(_net(batchnorm=True), PGD(0.1, steps=1), labels="hard",
                            average_weights=True, objective="pgd_at")
    trainer.compile(optimizer="adam")
    x, y = _data()
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[WeightAverage(x)])
    bn = trainer.average_model.layers[1]
    hidden = trainer.average_model.layers[0](x).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), hidden.mean(axis=0), rtol=1e-4,
                               atol=1e-5)


def test_batchnorm_statistics_come_from_the_training_attack_against_the_average():
    """An adversarially trained model's BatchNorm statistics are those of adversarial
    inputs: with labels, the average's statistics are the mean of the batch
    statistics of the training attack's examples made against the average itself
    (in inference mode, with the statistics of a clean pass)."""
    attack = PGD(0.3, step_size=0.1, steps=3, random_start=False)
    trainer = AdvCalTrainer(_net(batchnorm=True), attack, labels="hard", average_weights=True,
                            objective="pgd_at")
    trainer.compile(optimizer="adam")
    x, y = _data()
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0,
                callbacks=[WeightAverage((x, y), batch_size=64)])
    average = trainer.average_model
    bn = average.layers[1]
    # Rebuild the expectation: a clean pass, then the attack against that model.
    copy = keras.models.clone_model(average)
    copy.set_weights(average.get_weights())
    reestimate_batchnorm(copy, x, batch_size=64)
    x_adv = attack(copy, x, y).numpy()
    hidden_adv = average.layers[0](x_adv).numpy()
    hidden_clean = average.layers[0](x).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), hidden_adv.mean(axis=0), rtol=1e-4,
                               atol=1e-5)
    assert not np.allclose(bn.moving_mean.numpy(), hidden_clean.mean(axis=0), atol=1e-3)


def test_reestimation_with_an_attack_needs_labels():
    x, _ = _data()
    with pytest.raises(ValueError, match="labels"):
        reestimate_batchnorm(_net(batchnorm=True), x, attack=PGD(0.1, steps=1))


def test_errors_name_the_problem():
    trainer = AdvCalTrainer(_net(), PGD(0.1, steps=1), labels="hard", objective="pgd_at")
    trainer.compile(optimizer="adam")
    x, y = _data(16)
    with pytest.raises(ValueError, match="average_weights=True"):
        trainer.fit(x, y, epochs=1, verbose=0, callbacks=[WeightAverage(x)])
    with pytest.raises(ValueError, match="average_weights=True"):
        trainer.average_model
    with pytest.raises(ValueError, match="start_epoch"):
        WeightAverage(x, start_epoch=-1)


def test_average_into_copies_first_then_averages():
    a, b = _net(), _net()
    counter = keras.Variable(0.0)
    average_into(a, b, counter)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
