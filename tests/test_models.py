"""Tests for keras_advcal.models: logits, parameter counts, cloning and safe loading."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_advcal import models

# Small configurations of every architecture, so that the tests stay fast.
SMALL = {
    "small_cnn": lambda: models.small_cnn((28, 28, 1), num_classes=10, width=4, dense=16),
    "small_cnn_bn_digits": lambda: models.small_cnn(
        (8, 8, 1), num_classes=10, width=4, dense=16, batchnorm=True
    ),
    "preact_resnet18": lambda: models.preact_resnet18(
        (32, 32, 3),
        num_classes=7,
        width=4,
        mean=models.CIFAR10_MEAN,
        std=models.CIFAR10_STD,
    ),
    "wide_resnet": lambda: models.wide_resnet(
        depth=10, width=1, input_shape=(16, 16, 3), num_classes=5
    ),
}


def _images(model: keras.Model, batch: int = 3, seed: int = 0) -> np.ndarray:
    shape = (batch,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype("float32")


@pytest.fixture(scope="module", params=sorted(SMALL))
def small_model(request) -> keras.Model:
    return SMALL[request.param]()


def test_outputs_are_logits_of_the_right_shape(small_model):
    x = _images(small_model)
    logits = keras.ops.convert_to_numpy(small_model(x, training=False))
    num_classes = small_model.output_shape[-1]
    assert logits.shape == (3, num_classes)
    assert np.all(np.isfinite(logits))
    # Logits, not probabilities: no softmax layer and rows do not sum to one.
    assert not any(
        getattr(layer, "activation", None) is keras.activations.softmax
        for layer in small_model.layers
    )
    assert not np.allclose(logits.sum(axis=-1), 1.0)


def test_models_are_pure_functional_without_lambda(small_model):
    assert isinstance(small_model, keras.Model)
    assert small_model.__class__.__name__ == "Functional"
    assert not any(isinstance(l, keras.layers.Lambda) for l in small_model.layers)


def _clone(model: keras.Model, tmp_path) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _save_and_safe_load(model: keras.Model, tmp_path) -> keras.Model:
    path = tmp_path / "model.keras"
    model.save(path)
    return keras.models.load_model(path, safe_mode=True)


@pytest.mark.parametrize("copy,seed", [(_clone, 1), (_save_and_safe_load, 2)],
                         ids=["clone", "save_and_safe_load"])
def test_copies_give_identical_predictions(small_model, tmp_path, copy, seed):
    copied = copy(small_model, tmp_path)
    x = _images(small_model, seed=seed)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(copied(x, training=False)),
        keras.ops.convert_to_numpy(small_model(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_small_cnn_has_the_benchmark_parameter_count():
    model = models.small_cnn((28, 28, 1), num_classes=10)
    # conv32-pool-conv64-pool-dense256-10: 320 + 18,496 + 803,072 + 2,570.
    assert model.count_params() == 824_458
    assert not any(
        isinstance(l, keras.layers.BatchNormalization) for l in model.layers
    )


def test_small_cnn_works_on_digits_shape():
    model = models.small_cnn((8, 8, 1), num_classes=10)
    assert model.output_shape == (None, 10)


def test_normalisation_is_inside_the_model():
    model = models.small_cnn((8, 8, 3), width=2, dense=4, mean=(0.5, 0.4, 0.3), std=0.2)
    norm = model.get_layer("normalise")
    x = np.full((1, 8, 8, 3), 0.5, "float32")
    out = keras.ops.convert_to_numpy(norm(x))[0, 0, 0]
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0], atol=1e-5)


def test_normalisation_needs_both_mean_and_std():
    with pytest.raises(ValueError, match="both"):
        models.small_cnn(mean=0.5)


def test_preact_resnet18_full_width_parameter_count():
    model = models.preact_resnet18((32, 32, 3), num_classes=10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # Rice et al. (2020) PreActResNet-18, final BN-ReLU included (11,171,146 without).
    assert trainable == 11_172_170


def test_wide_resnet_depth_and_name():
    model = models.wide_resnet(depth=16, width=1, input_shape=(8, 8, 3))
    assert model.name == "wrn_16_1"
    blocks = {l.name.split("_")[0] + l.name.split("_")[1] for l in model.layers
              if l.name.startswith("group") and l.name.endswith("_add")}
    assert len(blocks) == 3 * 2  # (16 - 4) / 6 = 2 blocks in each of 3 groups


@pytest.mark.parametrize("depth", [27, 4, 11])
def test_wide_resnet_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6 == 0"):
        models.wide_resnet(depth=depth, width=1)


def test_get_resolves_names_and_aliases():
    assert models.get("cnn", (8, 8, 1), 3, width=2, dense=4).output_shape == (None, 3)
    assert models.get("Small-CNN", (8, 8, 1), 3, width=2, dense=4).name == "small_cnn"
    assert models.get("wrn", (8, 8, 3), 4, depth=10, width=1).output_shape == (None, 4)
    assert models.get("preact_resnet18", (8, 8, 3), 2, width=2).output_shape == (None, 2)
    assert set(models.available()) >= {"cnn", "small_cnn", "wrn", "wide_resnet"}


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        models.get("vgg16", (32, 32, 3), 10)
    message = str(info.value)
    assert "vgg16" in message
    for valid in ("cnn", "small_cnn", "preact_resnet18", "wide_resnet", "wrn"):
        assert valid in message
