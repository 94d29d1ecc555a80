"""Model zoo: small CNN, pre-activation ResNet-18 and WideResNet.

Every model is a functional Keras 3 model built only from stock Keras layers, so it
saves and loads with ``keras.models.load_model(path, safe_mode=True)`` and copies with
``keras.models.clone_model``. All models:

* take pixels in ``[0, 1]`` (the attacks' bounds),
* normalise inside the model when ``mean``/``std`` are given (a fixed
  ``keras.layers.Normalization``; nothing is learned from data),
* output **logits** (no softmax).

Example:

    >>> from keras_advcal import models
    >>> model = models.get("cnn", input_shape=(28, 28, 1), num_classes=10)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras

#: Per-channel mean and standard deviation of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 in Keras), as used by the
# adversarial-training reference implementations these architectures come from.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _inputs_and_normalise(
    input_shape: Sequence[int],
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Creates the model input and the optional fixed per-channel normalisation.

    Args:
        input_shape: ``(height, width, channels)``.
        mean: Per-channel (or scalar) mean in pixel units, or ``None`` for no
            normalisation.
        std: Per-channel (or scalar) standard deviation; required with ``mean``.

    Returns:
        ``(inputs, normalised)``; both the same tensor when no normalisation is asked.

    Raises:
        ValueError: If only one of ``mean`` and ``std`` is given, or a std is not
            positive.

    Example:

        >>> inputs, x = _inputs_and_normalise((8, 8, 1), mean=0.5, std=0.25)
        >>> tuple(x.shape)
        (None, 8, 8, 1)
    """
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {tuple(input_shape)}."
        )
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    if mean is None and std is None:
        return inputs, inputs
    if mean is None or std is None:
        raise ValueError("Give both `mean` and `std` for normalisation, or neither.")
    channels = int(input_shape[-1])
    means = _per_channel(mean, channels, "mean")
    stds = _per_channel(std, channels, "std")
    if min(stds) <= 0:
        raise ValueError(f"`std` must be positive, got {std}.")
    normalise = keras.layers.Normalization(
        mean=means, variance=[s * s for s in stds], name="normalise"
    )
    return inputs, normalise(inputs)


def _per_channel(value: float | Sequence[float], channels: int, label: str) -> list[float]:
    """Broadcasts a scalar (or checks a sequence) to one float per channel.

    Raises:
        ValueError: If a sequence does not have one value per channel.

    Example:

        >>> _per_channel(0.5, 3, "mean")
        [0.5, 0.5, 0.5]
    """
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"`{label}` needs one value per channel ({channels}), got {len(values)}."
        )
    return values


def _conv(filters: int, kernel: int, strides: int = 1, name: str | None = None):
    """A bias-free ``'same'`` convolution with He initialisation (before BatchNorm).

    Example:

        >>> _conv(16, 3).get_config()["use_bias"]
        False
    """
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn_relu(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """BatchNorm followed by ReLU.

    Example:

        >>> x = keras.Input((4, 4, 2))
        >>> tuple(_bn_relu(x, "demo").shape)
        (None, 4, 4, 2)
    """
    x = keras.layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=f"{name}_bn"
    )(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def small_cnn(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    width: int = 32,
    dense: int = 256,
    batchnorm: bool = False,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    name: str = "small_cnn",
) -> keras.Model:
    """Two-block CNN: conv-pool-conv-pool-dense-dense, the benchmark's small model.

    ``Conv(width, 3x3, 'same') -> ReLU -> MaxPool(2) -> Conv(2*width) -> ReLU ->
    MaxPool(2) -> Flatten -> Dense(dense, ReLU) -> Dense(num_classes)``. With the
    defaults on 28x28x1 images it has 824,458 trainable parameters. ``batchnorm``
    inserts BatchNorm between each convolution and its ReLU. Pooling uses ``'same'``
    padding so that small inputs (8x8 digits) work.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: Number of output logits.
        width: Filters of the first convolution (the second has twice as many).
        dense: Units of the hidden dense layer.
        batchnorm: Whether to add BatchNorm after each convolution.
        mean: Optional per-channel mean for the in-model normalisation.
        std: Optional per-channel standard deviation (with ``mean``).
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model`` mapping pixels in ``[0, 1]`` to logits.

    Example:

        >>> model = small_cnn((28, 28, 1), num_classes=10)
        >>> model.count_params()
        824458
        >>> small_cnn((8, 8, 1), width=8, dense=32).output_shape
        (None, 10)
    """
    inputs, x = _inputs_and_normalise(input_shape, mean, std)
    for i, filters in enumerate((width, 2 * width), start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not batchnorm, name=f"conv{i}"
        )(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"conv{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", name="dense")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _preact_block(
    x: keras.KerasTensor,
    filters: int,
    strides: int,
    name: str,
    dropout: float = 0.0,
) -> keras.KerasTensor:
    """Pre-activation basic block (He et al. 2016, "Identity Mappings").

    ``BN-ReLU`` is shared by the residual branch and, when the shape changes, by the
    1x1 projection shortcut; otherwise the shortcut is the raw input.

    Example:

        >>> x = keras.Input((8, 8, 4))
        >>> tuple(_preact_block(x, 8, 2, "demo").shape)
        (None, 4, 4, 8)
    """
    out = _bn_relu(x, f"{name}_pre")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, name=f"{name}_shortcut")(out)
    else:
        shortcut = x
    out = _conv(filters, 3, strides, name=f"{name}_conv1")(out)
    out = _bn_relu(out, f"{name}_mid")
    if dropout > 0:
        out = keras.layers.Dropout(dropout, name=f"{name}_dropout")(out)
    out = _conv(filters, 3, 1, name=f"{name}_conv2")(out)
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def _residual_head(
    inputs: keras.KerasTensor, x: keras.KerasTensor, num_classes: int, name: str
) -> keras.Model:
    """Final BN-ReLU, global average pooling and the logit layer.

    Example:

        >>> inputs = keras.Input((4, 4, 2))
        >>> _residual_head(inputs, inputs, 3, "demo").output_shape
        (None, 3)
    """
    x = _bn_relu(x, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def preact_resnet18(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    width: int = 64,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    name: str = "preact_resnet18",
) -> keras.Model:
    """Pre-activation ResNet-18 as used in adversarial-training papers.

    A 3x3 stem convolution, four stages of two pre-activation basic blocks with
    ``width, 2*width, 4*width, 8*width`` filters (strides 1, 2, 2, 2), a final
    BN-ReLU, global average pooling and a dense logit layer (about 11.2M parameters
    at ``width=64`` on CIFAR-10).

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: Number of output logits.
        width: Filters of the stem and first stage.
        mean: Optional per-channel mean for the in-model normalisation
            (e.g. :data:`CIFAR10_MEAN`).
        std: Optional per-channel standard deviation (e.g. :data:`CIFAR10_STD`).
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model`` mapping pixels in ``[0, 1]`` to logits.

    Example:

        >>> model = preact_resnet18(num_classes=10, width=8)
        >>> model.output_shape
        (None, 10)
    """
    inputs, x = _inputs_and_normalise(input_shape, mean, std)
    x = _conv(width, 3, name="stem_conv")(x)
    for stage, (multiplier, strides) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2))):
        for block in range(2):
            x = _preact_block(
                x,
                width * multiplier,
                strides if block == 0 else 1,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    return _residual_head(inputs, x, num_classes, name)


def wide_resnet(
    depth: int = 28,
    width: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    dropout: float = 0.0,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    name: str | None = None,
) -> keras.Model:
    """WideResNet-``depth``-``width`` (Zagoruyko & Komodakis 2016).

    A 3x3 stem with 16 filters, three groups of ``(depth - 4) / 6`` pre-activation
    basic blocks with ``16*width, 32*width, 64*width`` filters (strides 1, 2, 2), a
    final BN-ReLU, global average pooling and a dense logit layer. WRN-28-10 has
    about 36.5M parameters; WRN-34-10 is the other common choice in robustness work.

    Args:
        depth: Total depth; ``(depth - 4)`` must be divisible by 6 (10, 16, 22, 28, 34...).
        width: Widening factor ``k``.
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: Number of output logits.
        dropout: Dropout rate between the two convolutions of each block.
        mean: Optional per-channel mean for the in-model normalisation.
        std: Optional per-channel standard deviation (with ``mean``).
        name: Model name; ``"wrn_{depth}_{width}"`` when ``None``.

    Returns:
        An uncompiled functional ``keras.Model`` mapping pixels in ``[0, 1]`` to logits.

    Raises:
        ValueError: If ``depth`` is not of the form ``6n + 4`` with ``n >= 1``, or
            ``width`` is not positive.

    Example:

        >>> model = wide_resnet(depth=10, width=1)
        >>> model.output_shape
        (None, 10)
        >>> wide_resnet(depth=27)
        Traceback (most recent call last):
        ...
        ValueError: WideResNet depth must satisfy (depth - 4) % 6 == 0 ...
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            "WideResNet depth must satisfy (depth - 4) % 6 == 0 with depth >= 10 "
            f"(e.g. 10, 16, 22, 28, 34), got depth={depth}."
        )
    if width < 1:
        raise ValueError(f"WideResNet width must be a positive integer, got {width}.")
    blocks = (depth - 4) // 6
    inputs, x = _inputs_and_normalise(input_shape, mean, std)
    x = _conv(16, 3, name="stem_conv")(x)
    for group, (multiplier, strides) in enumerate(((16, 1), (32, 2), (64, 2))):
        for block in range(blocks):
            x = _preact_block(
                x,
                multiplier * width,
                strides if block == 0 else 1,
                name=f"group{group + 1}_block{block + 1}",
                dropout=dropout,
            )
    return _residual_head(inputs, x, num_classes, name or f"wrn_{depth}_{width}")


_REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "small_cnn": small_cnn,
    "cnn": small_cnn,
    "preact_resnet18": preact_resnet18,
    "wide_resnet": wide_resnet,
    "wrn": wide_resnet,
}


def available() -> list[str]:
    """Names (and aliases) that :func:`get` accepts.

    Returns:
        Sorted list of model names.

    Example:

        >>> available()
        ['cnn', 'preact_resnet18', 'small_cnn', 'wide_resnet', 'wrn']
    """
    return sorted(_REGISTRY)


def get(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    **kwargs: Any,
) -> keras.Model:
    """Builds a model of the zoo by name.

    Args:
        name: One of :func:`available` (case-insensitive; ``-`` is read as ``_``).
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: Number of output logits.
        **kwargs: Passed to the builder (e.g. ``width``, ``depth``, ``mean``, ``std``).

    Returns:
        An uncompiled functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names).

    Example:

        >>> get("wrn", (32, 32, 3), 100, depth=10, width=1).output_shape
        (None, 100)
        >>> get("vgg", (32, 32, 3), 10)
        Traceback (most recent call last):
        ...
        ValueError: Unknown model 'vgg'. Valid names: cnn, preact_resnet18, ...
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(available())}."
        )
    return _REGISTRY[key](input_shape=input_shape, num_classes=num_classes, **kwargs)
