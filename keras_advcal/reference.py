"""A reference model that the label-noise measurement cannot bend.

The label noise of adversarial examples is estimated with the temperature-scaled
prediction of a *reference* model. When the reference is the studied model, or its own
early-stopped checkpoint, the measurement reads that model's own adversarial error.
This module builds a reference apart from the studied runs:

1. :func:`reference_data` draws its images from the dataset's training pool, leaving
   out every image that a studied run uses (its training, validation, development and
   test splits, compared by content, so that an image stored twice is left out too),
   and splits them into a training set and a calibration set;
2. :func:`check_disjoint` verifies that no image is shared;
3. :func:`train_reference` adversarially trains a small CNN on the training set
   (PGD-AT, one-hot labels) and fits its temperature on the calibration set
   (:func:`keras_advcal.calibration.fit_temperature`);
4. :meth:`Reference.measure` splits the label noise of the examples a studied model
   trains on into its adversarial, injected and base parts
   (:func:`keras_advcal.analysis.decompose_label_noise`), after checking that the
   studied run's images are not the reference's.

:meth:`Reference.save` writes the model and a JSON description into a folder of your
choice (keep it out of version control: weights are not results).

Example:

    >>> from keras_advcal import data
    >>> run = data.load("digits", subset=300, seed=0)
    >>> pool = reference_data("digits", [run], size=400, calibration_size=150, seed=0)
    >>> check_disjoint(pool, [run])
    >>> len(pool.train[1]), len(pool.calibration[1])
    (400, 150)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from keras_advcal import data as data_lib
from keras_advcal import models as models_lib
from keras_advcal.analysis import NoiseDecomposition, decompose_label_noise
from keras_advcal.attacks import PGD, Attack
from keras_advcal.calibration import check_calibration_size, fit_temperature
from keras_advcal.teacher import AdversarialLogits, BatchedLogits
from keras_advcal.trainer import AdvCalTrainer

#: File names written by :meth:`Reference.save`.
MODEL_FILE, DESCRIPTION_FILE = "reference.keras", "reference.json"


class SharedImagesError(ValueError):
    """The reference and a studied run share images (raised by :func:`check_disjoint`,
    whose example shows one).

    Example:

        >>> issubclass(SharedImagesError, ValueError)
        True
    """


def image_keys(x: Any) -> list[bytes]:
    """A 128-bit digest of each image's pixels (as ``float32``): equal images, equal keys.

    Example:

        >>> a = np.zeros((3, 2, 2, 1), "float32")
        >>> a[2] = 1.0
        >>> keys = image_keys(a)
        >>> keys[0] == keys[1], keys[0] == keys[2]
        (True, False)
    """
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def _studied_arrays(studied: Sequence[Any]) -> list[tuple[str, np.ndarray]]:
    """``(name, images)`` of every split of every studied run: a
    :class:`keras_advcal.data.DatasetSplits` gives its four splits, an ``(x, y)`` pair
    or an array its images."""
    named = []
    for number, item in enumerate(studied):
        if isinstance(item, data_lib.DatasetSplits):
            for split in ("train", "validation", "development", "test"):
                part = getattr(item, split)
                if part is not None and len(part[0]):
                    named.append((f"run {number} {split}", np.asarray(part[0])))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            named.append((f"run {number} images", np.asarray(item[0])))
        else:
            named.append((f"run {number} images", np.asarray(item)))
    return named


@dataclasses.dataclass
class ReferenceData:
    """The images of a reference: a training set and a calibration set.

    Attributes:
        train: ``(x, y)`` the reference is trained on.
        calibration: ``(x, y)`` its temperature is fitted on.
        dataset: the dataset name.
        num_classes: number of classes.
        pool_seed: the ``seed`` of the training pool as loaded (matters for datasets
            without a test split, whose pool excludes a seeded test part).
        train_indices: positions of ``train`` in the dataset's training array.
        calibration_indices: positions of ``calibration`` in it.
        left_out: pool images left out because a studied run uses them.

    Example:

        >>> from keras_advcal import data
        >>> run = data.load("digits", subset=300, seed=0)
        >>> pool = reference_data("digits", [run], size=200, calibration_size=100)
        >>> len(pool.train[1]), len(pool.calibration[1]), pool.num_classes
        (200, 100, 10)
    """

    train: tuple[np.ndarray, np.ndarray]
    calibration: tuple[np.ndarray, np.ndarray]
    dataset: str
    num_classes: int
    pool_seed: int
    train_indices: np.ndarray
    calibration_indices: np.ndarray
    left_out: int = 0

    def digest(self) -> str:
        """A SHA-256 of the dataset name and both index sets: which images these are.

        Example:

            >>> d = ReferenceData((None, None), (None, None), "digits", 10, 0,
            ...                   np.arange(3), np.arange(3, 5))
            >>> len(d.digest())
            64
        """
        text = json.dumps([self.dataset, self.pool_seed, self.train_indices.tolist(),
                           self.calibration_indices.tolist()])
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_indices(cls, dataset: str, train_indices: Any, calibration_indices: Any,
                     pool_seed: int = 0) -> "ReferenceData":
        """The reference images at known positions of the dataset's training array.

        Example:

            >>> d = ReferenceData.from_indices("digits", [0, 5], [7], pool_seed=0)
            >>> d.train[0].shape, d.calibration[1].shape
            ((2, 8, 8, 1), (1,))
        """
        pool = _pool(dataset, pool_seed)
        positions = {int(index): place for place, index in enumerate(pool.indices["train"])}
        x, y = pool.train

        def take(indices) -> tuple[np.ndarray, np.ndarray]:
            missing = [int(i) for i in indices if int(i) not in positions]
            if missing:
                raise ValueError(f"indices {missing[:5]} are not in the training pool of "
                                 f"{dataset!r} (pool seed {pool_seed}).")
            rows = np.array([positions[int(i)] for i in indices], dtype=int)
            return x[rows], y[rows]

        return cls(take(train_indices), take(calibration_indices), pool.name,
                   pool.num_classes, pool_seed, np.asarray(train_indices, dtype=int),
                   np.asarray(calibration_indices, dtype=int))


def _pool(dataset: str, pool_seed: int) -> data_lib.DatasetSplits:
    """The dataset's whole training pool as the ``train`` split (clean labels)."""
    return data_lib.load(dataset, subset=None, validation_size=0, test_size=0, seed=pool_seed)


def reference_data(dataset: str, studied: Sequence[Any], size: int, calibration_size: int,
                   seed: int = 0, pool_seed: int = 0) -> ReferenceData:
    """Draws reference images that no studied run uses.

    The candidates are the dataset's training pool (``data.load(dataset,
    validation_size=0, test_size=0, seed=pool_seed)``) minus every image equal to one of
    the studied runs' images (all their splits, test included). A seeded permutation of
    what is left gives ``size`` training images, then ``calibration_size`` others.

    Args:
        dataset: dataset name for :func:`keras_advcal.data.load`.
        studied: the studied runs' :class:`~keras_advcal.data.DatasetSplits` (or
            ``(x, y)`` pairs, or image arrays).
        size: images to train the reference on.
        calibration_size: other images to fit its temperature on.
        seed: seed of the draw.
        pool_seed: seed the pool is loaded with.

    Returns:
        A :class:`ReferenceData`.

    Raises:
        ValueError: when fewer images than ``size + calibration_size`` are left.

    Example:

        >>> from keras_advcal import data
        >>> run = data.load("digits", subset=300, seed=0)
        >>> pool = reference_data("digits", [run], size=200, calibration_size=100)
        >>> len(set(pool.train_indices) & set(run.indices["train"]))
        0
    """
    pool = _pool(dataset, pool_seed)
    x, y = pool.train
    used = {key for _, images in _studied_arrays(studied) for key in image_keys(images)}
    free = np.flatnonzero([key not in used for key in image_keys(x)])
    if len(free) < size + calibration_size:
        raise ValueError(f"Only {len(free)} images of the {dataset!r} training pool are left "
                         f"after the studied runs' images; {size} + {calibration_size} "
                         "were asked for.")
    order = np.random.default_rng([seed, 19]).permutation(free)
    train_rows = np.sort(order[:size])
    calibration_rows = np.sort(order[size:size + calibration_size])
    indices = pool.indices["train"]
    return ReferenceData((x[train_rows], y[train_rows]),
                         (x[calibration_rows], y[calibration_rows]), pool.name,
                         pool.num_classes, pool_seed, indices[train_rows],
                         indices[calibration_rows], left_out=len(x) - len(free))


def check_disjoint(reference: ReferenceData, studied: Sequence[Any]) -> None:
    """Raises unless the reference's images and every studied run's images differ.

    Images are compared by content, so a duplicate stored at another position of the
    dataset counts as shared. The reference's own two sets must differ too.

    Args:
        reference: the reference's images.
        studied: as in :func:`reference_data`.

    Raises:
        SharedImagesError: naming the split and the number of shared images.

    Example:

        >>> from keras_advcal import data
        >>> run = data.load("digits", subset=300, seed=0)
        >>> pool = reference_data("digits", [run], size=200, calibration_size=100)
        >>> check_disjoint(pool, [pool.calibration])
        Traceback (most recent call last):
        ...
        keras_advcal.reference.SharedImagesError: The reference shares 100 images with run 0 images.
    """
    train_keys = set(image_keys(reference.train[0]))
    calibration_keys = set(image_keys(reference.calibration[0]))
    if train_keys & calibration_keys:
        raise SharedImagesError(f"The reference's training and calibration sets share "
                                f"{len(train_keys & calibration_keys)} images.")
    mine = train_keys | calibration_keys
    for name, images in _studied_arrays(studied):
        shared = len(mine & set(image_keys(images)))
        if shared:
            raise SharedImagesError(f"The reference shares {shared} images with {name}.")


def _weights_digest(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Reference:
    """A trained reference: its classifier, its temperature and where it comes from.

    Attributes:
        model: the classifier (logits out).
        temperature: its temperature, fitted on the calibration images.
        data: its images.
        settings: how it was trained.
        metrics: its clean and robust accuracy on the calibration images.

    Example:

        :func:`train_reference` makes one; any classifier and temperature make one too:

        >>> from keras_advcal import data
        >>> run = data.load("digits", subset=300, seed=0)
        >>> pool = reference_data("digits", [run], size=200, calibration_size=100)
        >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(10)])
        >>> reference = Reference(net, 1.5, pool, settings={}, metrics={})
        >>> reference.describe()["calibration_images"], len(reference.identity)
        (100, 64)
    """

    model: keras.Model
    temperature: float
    data: ReferenceData
    settings: dict
    metrics: dict

    @property
    def identity(self) -> str:
        """A SHA-256 of the weights and the temperature: which reference measured."""
        return hashlib.sha256(f"{_weights_digest(self.model)} {self.temperature!r}".encode()
                              ).hexdigest()

    def measure(self, model: Callable, data: Any, attack: Attack, clean_labels: Any = None,
                studied: Sequence[Any] | None = None, batch_size: int = 256,
                seed: int = 0) -> NoiseDecomposition:
        """The label noise of the examples ``model`` trains on, in parts.

        Args:
            model: the studied classifier (logits out).
            data: ``(x, y)`` with the labels the model trains on.
            attack: the studied run's training attack.
            clean_labels: the true labels (default ``y``).
            studied: the studied run's splits; checked against the reference's images
                (default: ``data`` alone).
            batch_size: batch size of the passes.
            seed: seed of the attack's random starts.

        Returns:
            A :class:`~keras_advcal.analysis.NoiseDecomposition`.

        Raises:
            SharedImagesError: when a studied image is one of the reference's.
        """
        check_disjoint(self.data, [data] if studied is None else studied)
        return decompose_label_noise(self.model, self.temperature, model, data, attack,
                                     clean_labels=clean_labels, batch_size=batch_size,
                                     seed=seed)

    def describe(self) -> dict:
        """What the reference is, without its weights (JSON-friendly)."""
        return {"dataset": self.data.dataset, "pool_seed": self.data.pool_seed,
                "train_images": int(len(self.data.train_indices)),
                "calibration_images": int(len(self.data.calibration_indices)),
                "pool_images_left_out": int(self.data.left_out),
                "images_digest": self.data.digest(), "temperature": self.temperature,
                "settings": self.settings, "metrics": self.metrics,
                "identity": self.identity}

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``reference.keras`` and ``reference.json`` (with the image indices)
        into ``directory`` (``~`` expanded); returns it."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_FILE)
        description = dict(self.describe(),
                           train_indices=self.data.train_indices.tolist(),
                           calibration_indices=self.data.calibration_indices.tolist())
        (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Reference":
        """Reads what :meth:`save` wrote (the images are re-read from the dataset)."""
        directory = Path(directory).expanduser()
        description = json.loads((directory / DESCRIPTION_FILE).read_text())
        data = ReferenceData.from_indices(description["dataset"],
                                          description["train_indices"],
                                          description["calibration_indices"],
                                          description["pool_seed"])
        data.left_out = int(description.get("pool_images_left_out", 0))
        model = keras.models.load_model(directory / MODEL_FILE, compile=False)
        return cls(model, float(description["temperature"]), data,
                   description["settings"], description["metrics"])


def train_reference(data: ReferenceData, epsilon: float = 0.1, epochs: int = 20,
                    steps: int = 5, width: int = 32, dense: int = 256,
                    batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                    temperature_attack: Attack | None = None, verbose: int = 0) -> Reference:
    """PGD-AT of a small CNN on ``data.train``; temperature fitted on ``data.calibration``.

    Args:
        data: the reference's images (:func:`reference_data`).
        epsilon: L-inf radius of its training attack (PGD, step ``epsilon / 2``,
            random start).
        epochs: training epochs (Adam, constant learning rate).
        steps: PGD steps of its training attack.
        width: the small CNN's first convolution's filters
            (:func:`keras_advcal.models.small_cnn`).
        dense: the small CNN's hidden dense units.
        batch_size: training batch size.
        learning_rate: Adam's learning rate.
        seed: seed of the initialisation, shuffling and attacks.
        temperature_attack: fit the temperature on examples of the calibration images
            made by this attack against the reference (default: on the clean images).
        verbose: Keras' verbosity.

    Returns:
        A :class:`Reference`.

    Example:

        >>> from keras_advcal import data
        >>> run = data.load("digits", subset=300, seed=0)
        >>> pool = reference_data("digits", [run], size=300, calibration_size=100)
        >>> ref = train_reference(pool, epochs=1, steps=1, width=4, dense=8)
        >>> ref.temperature > 0, sorted(ref.metrics)
        (True, ['calibration_accuracy', 'calibration_adv_accuracy'])
    """
    x, y = data.train
    x_cal, y_cal = data.calibration
    check_calibration_size(len(y_cal), "the calibration images", acc_floor=0.0)
    keras.utils.set_random_seed(seed)
    model = models_lib.small_cnn(x.shape[1:], data.num_classes, width=width, dense=dense)
    attack = PGD(epsilon, step_size=epsilon / 2, steps=steps, random_start=True)
    trainer = AdvCalTrainer(model, attack, labels="hard", objective="pgd_at",
                            weight_perturbation=None, seed=seed)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    trainer.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose)
    if temperature_attack is None:
        logits = BatchedLogits(model)(x_cal)
    else:
        logits, = AdversarialLogits(temperature_attack, model, [model])(x_cal, y_cal, seed)
    temperature = fit_temperature(logits, y_cal)
    adversarial, = AdversarialLogits(attack, model, [model])(x_cal, y_cal, seed + 1)
    clean = BatchedLogits(model)(x_cal)
    metrics = {"calibration_accuracy": float(np.mean(clean.argmax(axis=1) == y_cal)),
               "calibration_adv_accuracy": float(np.mean(adversarial.argmax(axis=1) == y_cal))}
    settings = {"model": "small_cnn", "objective": trainer.objective.name, "width": width,
                "dense": dense, "epsilon": epsilon, "steps": steps,
                "step_size": epsilon / 2, "epochs": epochs,
                "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                "temperature_inputs": "clean" if temperature_attack is None else
                temperature_attack.get_config()}
    return Reference(model, temperature, data, settings, metrics)


__all__ = ["Reference", "ReferenceData", "SharedImagesError", "check_disjoint", "image_keys",
           "reference_data", "train_reference"]
