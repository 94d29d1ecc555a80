"""Tests of keras_advcal.checks: each bad input gets an error that names it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import checks
from keras_advcal.checks import InputError


def test_images_ok_and_bad():
    checks.check_images(np.zeros((2, 4, 4, 1)), (0.0, 1.0), channels=1)
    with pytest.raises(InputError, match="NaN or Inf"):
        checks.check_images(np.array([[np.nan]], "float32"), (0.0, 1.0))
    with pytest.raises(InputError, match="outside the attack's bounds"):
        checks.check_images(np.full((1, 2), -0.5), (0.0, 1.0))
    with pytest.raises(InputError, match="expects 3"):
        checks.check_images(np.zeros((1, 4, 4, 1)), (0.0, 1.0), channels=3)
    with pytest.raises(InputError, match="numeric"):
        checks.check_images(np.array([["a"]]), (0.0, 1.0))


def test_labels():
    assert checks.labels_to_indices([[1], [2]], 3).tolist() == [1, 2]
    assert checks.labels_to_indices(np.eye(4)[[3, 1]], 4).tolist() == [3, 1]
    assert checks.labels_to_indices(np.array([1.0, 2.0]), 3).tolist() == [1, 2]
    with pytest.raises(InputError, match="non-integer"):
        checks.labels_to_indices(np.array([0.5]), 3)
    with pytest.raises(InputError, match=r"\[0, 2\]"):
        checks.labels_to_indices([3], 3)
    with pytest.raises(InputError, match="shape"):
        checks.labels_to_indices(np.zeros((2, 2, 2)), 3)


def test_softmax_detection():
    logits = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    probs = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Softmax()])
    assert not checks.ends_in_softmax(logits)
    assert checks.ends_in_softmax(probs)
    assert checks.outputs_look_like_probabilities(tf.nn.softmax(tf.random.normal((5, 3))))
    assert not checks.outputs_look_like_probabilities(np.array([[2.0, -1.0]]))


def test_model_num_classes_and_multi_output():
    assert checks.model_num_classes(keras.Sequential([keras.Input((3,)),
                                                      keras.layers.Dense(5)])) == 5
    inputs = keras.Input((3,))
    two = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(InputError, match="outputs"):
        checks.model_num_classes(two)


def test_first_batch_peeks_datasets():
    data = tf.data.Dataset.from_tensor_slices((np.zeros((6, 2)), np.arange(6))).batch(4)
    x, y = checks.first_batch(data)
    assert x.shape == (4, 2) and list(y.numpy()) == [0, 1, 2, 3]
    assert checks.first_batch(iter([])) is None


def test_pixel_range_message_says_what_was_seen_and_fits_its_hint():
    # Digits come as 0..16 levels: the hint divides by 16, not 255.
    with pytest.raises(InputError) as error:
        checks.check_images(np.array([[0.0, 16.0]]), (0.0, 1.0))
    message = str(error.value)
    assert "[0, 16]" in message and "divide by 16." in message and "255" not in message
    # uint8 images: the dtype's maximum, whatever the largest value seen.
    with pytest.raises(InputError, match="divide by 255"):
        checks.check_images(np.array([[3, 200]], "uint8"), (0.0, 1.0))
    # Normalised data: no division fixes negative values, so none is suggested.
    with pytest.raises(InputError) as error:
        checks.check_images(np.array([[-2.0, 3.0]]), (0.0, 1.0))
    assert "[-2, 3]" in str(error.value) and "divide" not in str(error.value)


@pytest.mark.parametrize("shape, message", [
    ((2, 8, 8), r"examples of shape \(8, 8\), but the model takes examples of shape "
                r"\(8, 8, 1\)\. Add the channel axis: x\[\.\.\., None\]"),
    ((2, 1, 8, 8), r"channels first \(NCHW\).*np\.transpose\(x, \(0, 2, 3, 1\)\)"),
    ((2, 64), r"examples of shape \(64,\).*Reshape them: x\.reshape\(-1, 8, 8, 1\)"),
    ((2, 28, 28, 1), r"examples of shape \(28, 28, 1\).*Resize the images, or build the "
                     r"model for this input shape"),
])
def test_image_shape_says_what_to_change(shape, message):
    with pytest.raises(InputError, match=message):
        checks.check_image_shape(shape, (8, 8, 1))


def test_image_shape_leaves_free_axes_and_channel_counts_alone():
    checks.check_image_shape((2, 8, 8, 1), (None, None, 1))
    checks.check_image_shape((2, 8, 8, 3), (8, 8, 1))  # check_images names the counts
    checks.check_image_shape((2, 5), None)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    assert checks.model_input_shape(model) == (8, 8, 1)
    assert checks.model_input_shape(lambda x: x) is None
