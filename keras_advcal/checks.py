"""Input checks run once at the boundary (``fit``/``evaluate`` entry, first batch).

Each check raises :class:`InputError` (a ``ValueError``) whose message names the
argument at fault and how to fix it. Nothing here runs inside the compiled step.

Example:

    >>> import numpy as np
    >>> check_images(np.full((2, 8, 8, 1), 0.5, "float32"), (0.0, 1.0))
    >>> try:
    ...     check_images(np.full((2, 8, 8, 1), 255.0, "float32"), (0.0, 1.0))
    ... except InputError as e:
    ...     print("outside" in str(e))
    True
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
import numpy as np
import tensorflow as tf


class InputError(ValueError):
    """Bad input to the library, with a message that says what to change.

    A ``ValueError``, so ``except ValueError`` catches it too.

    Example:

        >>> try:
        ...     check_images(np.full((1, 2, 2, 1), 255.0), (0.0, 1.0))
        ... except InputError as error:
        ...     print(isinstance(error, ValueError), "divide by 255" in str(error))
        True True
    """


def non_negative_number(value: Any, name: str) -> float:
    """``value`` as a float; raises ``ValueError`` naming ``name`` unless it is a
    finite number >= 0.

    Example:

        >>> non_negative_number(6, "beta")
        6.0
        >>> non_negative_number(-1, "gamma")
        Traceback (most recent call last):
        ...
        ValueError: `gamma` must be a non-negative number, got -1.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= 0 and np.isfinite(number)):
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}.")
    return number


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    return np.asarray(value)


def check_images(x: Any, bounds: tuple[float, float], name: str = "x",
                 channels: int | None = None) -> None:
    """Checks that images are finite floats inside ``bounds`` (with the channel
    count the model expects, when given).

    Example:

        >>> check_images(np.zeros((1, 4, 4, 1)), (0.0, 1.0), channels=1)
    """
    array = _numpy(x)
    if array.dtype.kind not in "fiu":
        raise InputError(f"`{name}` must be numeric images, got dtype {array.dtype}.")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise InputError(
            f"`{name}` contains {bad} NaN or Inf values. Clean the data (for example "
            "np.nan_to_num) before training.")
    low, high = bounds
    lo, hi = float(array.min()), float(array.max())
    if lo < low - 1e-6 or hi > high + 1e-6:
        raise InputError(
            f"`{name}` has values in [{lo:g}, {hi:g}], outside the attack's bounds "
            f"{tuple(bounds)}. Pixels must lie in the bounds the attack projects onto "
            f"(put any normalisation inside the model).{rescale_hint(array, bounds)}")
    if channels is not None and array.ndim >= 2 and array.shape[-1] != channels:
        raise InputError(
            f"`{name}` has {array.shape[-1]} channels (shape {array.shape}) but the model "
            f"expects {channels}. Images must be NHWC (channels last).")


def model_input_shape(model: Any) -> tuple[int | None, ...] | None:
    """The shape of one input example the model takes (``None`` for a free axis), or
    ``None`` when the model does not say (a plain callable, an unbuilt model, several
    inputs).

    Example:

        >>> model_input_shape(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()]))
        (8, 8, 1)
        >>> model_input_shape(lambda x: x) is None
        True
    """
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(shape, tuple) or not shape or not all(
            dim is None or isinstance(dim, int) for dim in shape):
        return None
    return shape[1:]


def check_image_shape(shape: Any, expected: Any, name: str = "x") -> None:
    """Refuses images whose shape (batch first) cannot go into a model that takes
    examples of shape ``expected`` (``None`` for a free axis), with what to change: a
    missing channel axis, channels first, flattened images or another image size. A
    count of channels alone that differs is left to :func:`check_images`, which names
    both counts. Nothing is checked when ``expected`` is ``None``.

    Example:

        >>> check_image_shape((2, 8, 8, 1), (8, 8, 1))
        >>> check_image_shape((2, 8, 8), (8, 8, 1))
        Traceback (most recent call last):
        ...
        keras_advcal.checks.InputError: `x` has shape (2, 8, 8): examples of shape (8, 8), but the model takes examples of shape (8, 8, 1). Add the channel axis: x[..., None] (images are NHWC, channels last).
    """
    if expected is None:
        return
    shape, expected = tuple(int(d) for d in shape), tuple(expected)
    got = shape[1:]

    def fits(dims, wanted):
        return len(dims) == len(wanted) and all(w is None or d == w
                                                for d, w in zip(dims, wanted))

    if fits(got, expected) or (len(got) == len(expected) > 1
                               and fits(got[:-1], expected[:-1])):
        return
    shown = tuple("None" if w is None else w for w in expected)
    wanted = "(" + ", ".join(str(w) for w in shown) + ("," if len(shown) == 1 else "") + ")"
    message = (f"`{name}` has shape {shape}: examples of shape {got}, but the model takes "
               f"examples of shape {wanted}.")
    var = name if name.isidentifier() and name != "validation_data" else "images"
    if len(got) == len(expected) - 1 and expected[-1] == 1 and fits(got, expected[:-1]):
        hint = f" Add the channel axis: {var}[..., None] (images are NHWC, channels last)."
    elif len(got) == len(expected) == 3 and fits((got[1], got[2], got[0]), expected):
        hint = (f" They look channels first (NCHW): images must be NHWC, channels last: "
                f"np.transpose({var}, (0, 2, 3, 1)).")
    elif None not in expected and int(np.prod(got)) == int(np.prod(expected)):
        hint = (f" Reshape them: {var}.reshape(-1, "
                + ", ".join(str(w) for w in expected) + ").")
    else:
        hint = (" Resize the images, or build the model for this input shape (e.g. "
                "models.small_cnn(input_shape, num_classes)).")
    raise InputError(message + hint)


def rescale_hint(x: Any, bounds: tuple[float, float]) -> str:
    """A sentence suggesting a division that puts ``x`` inside ``bounds``, or ``""``.

    The scale is the dtype's maximum for unsigned integer images (255 for ``uint8``),
    else the largest value seen; the division is suggested only when the result fits
    the bounds (never for negative values, which a division does not fix).

    Example:

        >>> rescale_hint(np.array([0.0, 16.0]), (0.0, 1.0))
        ' If 16 is the top of their scale (the largest value seen), divide by 16.'
        >>> rescale_hint(np.array([3, 200], "uint8"), (0.0, 1.0))
        ' If 255 is the top of their scale (the uint8 maximum), divide by 255.'
        >>> rescale_hint(np.array([-1.0, 1.0]), (0.0, 1.0))
        ''
    """
    array = _numpy(x)
    low, high = bounds
    lo, hi = float(array.min()), float(array.max())
    if hi <= high + 1e-6 or hi <= 0:
        return ""
    if array.dtype.kind == "u":
        scale, what = float(np.iinfo(array.dtype).max), f"the {array.dtype} maximum"
    else:
        scale, what = hi, "the largest value seen"
    if lo / scale < low - 1e-6 or hi / scale > high + 1e-6:
        return ""
    return f" If {scale:g} is the top of their scale ({what}), divide by {scale:g}."


def labels_to_indices(y: Any, num_classes: int, name: str = "y") -> np.ndarray:
    """Validates labels and returns them as integer class indices.

    Integer labels of shape ``(batch,)`` or ``(batch, 1)`` and one-hot labels of
    shape ``(batch, num_classes)`` are both accepted; soft labels, labels out of
    ``[0, num_classes)`` and other shapes are refused.

    Example:

        >>> labels_to_indices(np.eye(3)[[2, 0]], 3).tolist()
        [2, 0]
    """
    array = _numpy(y)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        if array.shape[1] != num_classes:
            raise InputError(
                f"`{name}` has shape {array.shape}: expected integer labels (batch,) or "
                f"one-hot labels (batch, {num_classes}) for a model with {num_classes} "
                "outputs.")
        is_onehot = np.all((array == 0) | (array == 1)) and np.all(array.sum(axis=1) == 1)
        if not is_onehot:
            raise InputError(
                f"`{name}` looks like soft labels (rows are not one-hot). AdvCalTrainer "
                "builds its own soft targets: pass integer class labels.")
        return array.argmax(axis=1).astype("int32")
    if array.ndim != 1:
        raise InputError(
            f"`{name}` has shape {array.shape}: expected integer labels of shape (batch,).")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"`{name}` must hold integer class indices, got non-integer "
                             "values.")
    elif array.dtype.kind not in "iu":
        raise InputError(f"`{name}` must hold integer class indices, got dtype {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise InputError(
            f"`{name}` has labels in [{int(array.min())}, {int(array.max())}] but the model "
            f"has {num_classes} outputs, so labels must be in [0, {num_classes - 1}].")
    return array.astype("int32")


def ends_in_softmax(model: Any) -> bool:
    """True when the model's last layer applies a softmax (structural check).

    Example:

        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, "softmax")])
        >>> ends_in_softmax(m)
        True
    """
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    if activation is None:
        return False
    name = getattr(activation, "__name__", str(activation))
    return name == "softmax"


def outputs_look_like_probabilities(outputs: Any) -> bool:
    """True when every row is in ``[0, 1]`` and sums to one (a softmax output).

    Example:

        >>> outputs_look_like_probabilities(np.array([[0.2, 0.8]]))
        True
    """
    array = _numpy(outputs).astype("float64")
    if array.ndim != 2 or array.shape[1] < 2:
        return False
    return bool(np.all(array >= 0) and np.all(array <= 1)
                and np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def softmax_error(name: str = "model") -> InputError:
    """The error raised for a model that outputs probabilities."""
    return InputError(
        f"`{name}` outputs probabilities (it ends in a softmax). Attacks and calibrated "
        "targets need logits: remove the final softmax (e.g. Dense(10) instead of "
        "Dense(10, activation='softmax')), or pass from_logits=False to AdvCalTrainer.")


def model_num_classes(model: Any) -> int | None:
    """The size of the model's last output axis, when Keras knows it statically.

    Example:

        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
        >>> model_num_classes(m)
        4
    """
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        raise InputError(
            f"The model has {len(shape)} outputs; AdvCalTrainer needs a classifier with a "
            "single (batch, classes) logits output.")
    if not shape or len(shape) != 2 or shape[-1] is None:
        if shape and len(shape) != 2:
            raise InputError(
                f"The model's output shape is {tuple(shape)}; AdvCalTrainer needs a "
                "classifier whose output is (batch, classes) logits.")
        return None
    return int(shape[-1])


def has_no_labels(data: Any) -> bool:
    """True for data given without labels where labels are needed: a bare image array
    or tensor, or a ``tf.data.Dataset`` whose elements are not ``(x, y)`` tuples.

    Example:

        >>> has_no_labels(np.zeros((2, 3))), has_no_labels((np.zeros((2, 3)), [0, 1]))
        (True, False)
    """
    if isinstance(data, (np.ndarray, tf.Tensor)):
        return True
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        return not isinstance(spec, (tuple, list)) or len(spec) < 2
    return False


def check_attack_radius(attack: Any, image_shape: Any, name: str = "attack") -> None:
    """Refuses an L2 ``epsilon`` larger than the diameter of the box of valid images
    (the ball would cover every input). The L-inf case is refused by the attack itself.

    Example:

        >>> from keras_advcal.attacks import PGD
        >>> check_attack_radius(PGD(0.5, norm="l2"), (8, 8, 1))
    """
    if getattr(attack, "norm", None) != "l2":
        return
    low, high = attack.bounds
    shape = tuple(int(d) for d in image_shape)
    diameter = (high - low) * float(np.sqrt(np.prod(shape)))
    if attack.epsilon > diameter:
        raise InputError(
            f"`{name}` has an L2 epsilon={attack.epsilon:g}, larger than the diameter "
            f"{diameter:g} of the box {tuple(attack.bounds)} for images of shape {shape}: "
            "the ball covers every input. Give the radius in the units of the pixels in "
            "the bounds (for example epsilon=0.5 for 32x32x3 images in [0, 1]).")


def first_batch(data: Any) -> tuple[Any, Any] | None:
    """Returns ``(x, y)`` of the first batch of ``data`` (arrays, ``tf.data``,
    ``keras.utils.PyDataset``) without consuming a Python generator (``None`` when it
    cannot peek; see :func:`peek_generator`).

    Example:

        >>> first_batch((np.zeros((5, 2)), np.zeros(5)))[0].shape
        (5, 2)
    """
    if isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        element = (next(iter(data.take(1))) if isinstance(data, tf.data.Dataset)
                   else data[0])
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            return None
        return element[0], element[1]
    if isinstance(data, (tuple, list)) and len(data) >= 2:
        return data[0], data[1]
    return None


def peek_generator(data: Any) -> tuple[Any, Any]:
    """For a Python generator, returns ``(first_element, generator)`` where the new
    generator yields the first element again and then the rest, so that the first
    batch can be checked without losing it. Other data: ``(None, data)``.

    Example:

        >>> first, gen = peek_generator(i for i in range(3))
        >>> first, list(gen)
        (0, [0, 1, 2])
    """
    if not inspect.isgenerator(data):
        return None, data
    try:
        first = next(data)
    except StopIteration:
        return None, (item for item in ())

    def chained():
        yield first
        yield from data

    return first, chained()
