"""Tests of keras_advcal.reference: a reference disjoint from the studied runs."""

import dataclasses

import numpy as np
import pytest

from keras_advcal import data
from keras_advcal.attacks import PGD
from keras_advcal.reference import (Reference, ReferenceData, SharedImagesError,
                                    check_disjoint, image_keys, reference_data,
                                    train_reference)


@pytest.fixture(scope="module")
def digits_run():
    return data.load("digits", subset=300, seed=0)


@pytest.fixture(scope="module")
def digits_reference_data(digits_run):
    return reference_data("digits", [digits_run], size=400, calibration_size=150, seed=0)


@pytest.fixture(scope="module")
def trained(digits_reference_data):
    return train_reference(digits_reference_data, epsilon=0.1, epochs=6, steps=2, width=16,
                           dense=64, batch_size=32, learning_rate=3e-3)


def _keys(*arrays):
    return {key for x in arrays for key in image_keys(x)}


def test_reference_images_are_disjoint_from_the_run(digits_run, digits_reference_data):
    ref = digits_reference_data
    run_images = _keys(digits_run.train[0], digits_run.validation[0], digits_run.test[0])
    assert not _keys(ref.train[0]) & run_images
    assert not _keys(ref.calibration[0]) & run_images
    assert not _keys(ref.train[0]) & _keys(ref.calibration[0])
    # Index by index too: digits' test part comes from the same array as the pool.
    used = set(np.concatenate([digits_run.indices[s] for s in ("train", "validation", "test")]))
    assert not used & set(ref.train_indices) and not used & set(ref.calibration_indices)
    assert len(ref.train[1]) == 400 and len(ref.calibration[1]) == 150
    # Labels travel with their images.
    pool = data.load("digits", validation_size=0, test_size=0, seed=0)
    where = {int(i): n for n, i in enumerate(pool.indices["train"])}
    np.testing.assert_array_equal(ref.train[1], pool.train[1][[where[int(i)] for i in
                                                               ref.train_indices]])
    check_disjoint(ref, [digits_run])  # does not raise


def test_the_protocol_reference_is_disjoint_on_fashion_mnist():
    # The benchmark's sizes: 10,000 + 2,000 pool images beside a 500-image run with its
    # 500 validation images and 1,000 test images.
    run = data.load("fashion_mnist", subset=500, validation_size=500, test_size=1000, seed=0)
    small = data.load("fashion_mnist", subset=150, validation_size=200, test_size=1000, seed=0)
    ref = reference_data("fashion_mnist", [run, small], size=10000, calibration_size=2000)
    run_images = _keys(*(split[0] for s in (run, small)
                         for split in (s.train, s.validation, s.test)))
    assert not (_keys(ref.train[0]) | _keys(ref.calibration[0])) & run_images
    assert ref.left_out == 500 + 500  # the 150 + 200 of the other run lie among them
    check_disjoint(ref, [run, small])


def test_images_are_compared_by_content(digits_run):
    pool = data.load("digits", validation_size=0, test_size=0, seed=0)
    # A studied "run" holding copies of 100 pool images (no indices at all).
    copies = pool.train[0][:100].copy()
    ref = reference_data("digits", [digits_run, copies], size=300, calibration_size=100)
    assert not set(pool.indices["train"][:100]) & set(ref.train_indices)
    assert not set(pool.indices["train"][:100]) & set(ref.calibration_indices)
    with pytest.raises(SharedImagesError, match="shares 1 images with run 0 images"):
        check_disjoint(ref, [ref.train[0][3:4].copy()])


def test_check_disjoint_names_the_shared_split(digits_run, digits_reference_data):
    ref = digits_reference_data
    leaked = dataclasses.replace(digits_run, test=(ref.calibration[0][:7], ref.calibration[1][:7]))
    with pytest.raises(SharedImagesError, match="shares 7 images with run 0 test"):
        check_disjoint(ref, [leaked])
    overlapping = dataclasses.replace(ref, calibration=ref.train)
    with pytest.raises(SharedImagesError, match="training and calibration sets share"):
        check_disjoint(overlapping, [])


def test_too_few_images_left_is_an_error(digits_run):
    with pytest.raises(ValueError, match="Only .* images .* are left"):
        reference_data("digits", [digits_run], size=2000, calibration_size=100)


def test_trained_reference_is_robust_and_calibrated(trained):
    assert trained.metrics["calibration_accuracy"] > 0.8
    assert 0.3 < trained.metrics["calibration_adv_accuracy"] <= trained.metrics[
        "calibration_accuracy"]
    assert trained.temperature > 0
    assert trained.settings["epsilon"] == 0.1 and trained.settings["temperature_inputs"] == "clean"
    # PGD-AT, as documented, whatever the library's default objective is.
    assert trained.settings["objective"] == "pgd_at"


def test_reference_round_trips(trained, tmp_path):
    folder = trained.save(tmp_path / "ref")
    again = Reference.load(folder)
    assert again.identity == trained.identity
    assert again.temperature == trained.temperature
    np.testing.assert_array_equal(again.data.train_indices, trained.data.train_indices)
    np.testing.assert_array_equal(again.data.calibration[0], trained.data.calibration[0])
    x = trained.data.calibration[0][:20]
    np.testing.assert_allclose(np.asarray(again.model(x)), np.asarray(trained.model(x)),
                               atol=1e-6)
    assert again.describe()["images_digest"] == trained.data.digest()


def test_from_indices_refuses_unknown_positions():
    with pytest.raises(ValueError, match="not in the training pool"):
        ReferenceData.from_indices("digits", [10 ** 6], [0])


def test_measure_checks_and_splits_the_noise(trained, digits_run, undefended_digits_model):
    x, y = digits_run.train
    clean = trained.measure(undefended_digits_model, (x, y), PGD(0.0, steps=1),
                            studied=[digits_run])
    assert clean.total_variation.adversarial == 0.0 and clean.disagreement.adversarial == 0.0
    attacked = trained.measure(undefended_digits_model, (x, y), PGD(0.2, steps=5),
                               studied=[digits_run])
    assert attacked.total_variation.adversarial > 0.02
    assert attacked.total_variation.base == pytest.approx(clean.total_variation.base)
    with pytest.raises(SharedImagesError):
        trained.measure(undefended_digits_model, trained.data.calibration, PGD(0.1, steps=1))
