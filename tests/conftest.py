"""Shared fixtures: scikit-learn digits as [0, 1] images and tiny classifiers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test): 1,297 / 500 digits, 8x8x1 in [0, 1]."""
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1297], y[:1297], x[1297:], y[1297:]


def tiny_cnn(seed: int = 0, batchnorm: bool = False, num_classes: int = 10) -> keras.Model:
    """A small functional CNN for 8x8x1 digits (logits out)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, padding="same")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.ReLU(), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
               keras.layers.Dense(64, activation="relu"), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


@pytest.fixture
def make_cnn():
    return tiny_cnn


def digits_holdout(n_test: int = 200):
    """((x_train, y_train), (x_test, y_test)) with the last ``n_test`` digits held out."""
    data = load_digits()
    x = (data.images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = data.target.astype("int32")
    return (x[:-n_test], y[:-n_test]), (x[-n_test:], y[-n_test:])


def conv_dense_model(seed: int = 0, first: keras.layers.Layer | None = None) -> keras.Model:
    """Conv(16)-Dense(64)-Dense(10) for 8x8x1 digits; ``first`` is an optional layer
    placed right after the input (e.g. a gradient-masking one)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1))] + ([first] if first is not None else []) + [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ]
    return keras.Sequential(layers)


def fit_clean(model: keras.Model, x, y, epochs: int = 8) -> keras.Model:
    """Plain (undefended) training with cross-entropy on logits."""
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a logits model on (x, y)."""
    return float(np.mean(np.argmax(model(x, training=False), axis=1) == y))


@pytest.fixture(scope="session")
def digits_200():
    """digits_holdout(200), shared by the attack and evaluation tests."""
    return digits_holdout(200)


@pytest.fixture(scope="session")
def undefended_digits_model(digits_200):
    """conv_dense_model trained without defence on digits_200's training part."""
    (x, y), _ = digits_200
    return fit_clean(conv_dense_model(), x, y)
