"""keras_advcal.callbacks: ClassifierCheckpoint saves the bare classifier, with every
ModelCheckpoint option, from a real (tiny) adversarial training on digits."""

import keras
import numpy as np

from keras_advcal import PGD, AdvCalTrainer, ClassifierCheckpoint
from tests.conftest import digits_holdout, tiny_cnn


def _fit(callbacks, epochs=2):
    (x, y), (x_val, y_val) = digits_holdout(200)
    trainer = AdvCalTrainer(tiny_cnn(), PGD(0.1, step_size=0.05, steps=2), labels="hard",
                            seed=0, objective="pgd_at")
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = trainer.fit(x[:256], y[:256], validation_data=(x_val, y_val), epochs=epochs,
                          batch_size=64, callbacks=callbacks, verbose=0)
    return trainer, history, x_val


def test_saves_the_classifier_not_the_trainer(tmp_path):
    pattern = str(tmp_path / "classifier_{epoch}.keras")
    trainer, _, x_val = _fit([ClassifierCheckpoint(pattern)])
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "classifier_1.keras", "classifier_2.keras"]
    loaded = keras.models.load_model(tmp_path / "classifier_2.keras", safe_mode=True)
    assert not isinstance(loaded, AdvCalTrainer)
    assert type(loaded) is type(trainer.model)
    # The last checkpoint is the trained classifier: same logits.
    np.testing.assert_allclose(loaded.predict(x_val, verbose=0),
                               trainer.model.predict(x_val, verbose=0), rtol=1e-5, atol=1e-5)


def test_save_best_only_on_validation_robust_accuracy(tmp_path):
    path = tmp_path / "best.keras"
    kept = []

    class Snapshot(keras.callbacks.Callback):
        """The classifier's weights at the end of every epoch."""

        def on_epoch_end(self, epoch, logs=None):
            kept.append([w.copy() for w in self.model.model.get_weights()])

    checkpoint = ClassifierCheckpoint(str(path), monitor="val_adv_accuracy", mode="max",
                                      save_best_only=True)
    _, history, _ = _fit([checkpoint, Snapshot()], epochs=3)
    scores = history.history["val_adv_accuracy"]
    best = int(np.argmax(scores))  # the first epoch with the highest score
    assert checkpoint.best == scores[best]
    saved = keras.models.load_model(path).get_weights()
    for saved_weight, best_weight in zip(saved, kept[best]):
        np.testing.assert_array_equal(saved_weight, best_weight)


def test_weights_only(tmp_path):
    path = tmp_path / "classifier.weights.h5"
    trainer, _, _ = _fit([ClassifierCheckpoint(str(path), save_weights_only=True)], epochs=1)
    fresh = tiny_cnn(seed=1)
    fresh.load_weights(path)
    for loaded, trained in zip(fresh.get_weights(), trainer.model.get_weights()):
        np.testing.assert_array_equal(loaded, trained)
