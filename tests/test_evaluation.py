"""Tests of keras_advcal.evaluation: evaluate_robustness, its sanity checks,
RobustAccuracyTracker and summarize_history."""

from __future__ import annotations

import csv
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal.evaluation import (APGD, FGSM, PGD, PGDRestarts, RobustAccuracyTracker,
                                     RobustnessResult, Square, build_attack,
                                     evaluate_robustness, summarize_history)
from keras_advcal.checks import InputError
from tests.conftest import conv_dense_model, fit_clean

N_TEST = 200
EPSILON = 0.1


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pgd_trained(digits_200):
    """Madry-style PGD adversarial training, hand-written (10 epochs, PGD-5)."""
    (x, y), _ = digits_200
    model = conv_dense_model(seed=1)
    optimizer = keras.optimizers.Adam(3e-3)
    optimizer.build(model.trainable_variables)
    attack = PGD(EPSILON, steps=5, seed=0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(xb, yb):
        x_adv = attack(model, xb, yb)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(x_adv, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2000, seed=0).batch(64)
    for _ in range(10):
        for xb, yb in dataset:
            train_step(xb, yb)
    return model


@pytest.fixture(scope="module")
def pgd_result(digits_200, pgd_trained):
    _, (x, y) = digits_200
    return evaluate_robustness(pgd_trained, (x, y), EPSILON, steps=10, n_queries=200,
                               batch_size=100, seed=0, verbose=False)


@keras.saving.register_keras_serializable(package="keras_advcal_tests")
class QuantizeInputs(keras.layers.Layer):
    """Rounds the input to ``levels`` grey levels: tf.round has no gradient, so
    the input gradient of the model is masked (zero)."""

    def __init__(self, levels: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels

    def call(self, inputs):
        return tf.round(inputs * self.levels) / self.levels

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


# -- evaluate_robustness -----------------------------------------------------------
def test_worst_case_is_below_every_attack_on_pgd_trained_model(pgd_result):
    r = pgd_result
    assert r.attacks == ["pgd", "cw", "apgd-ce", "apgd-t", "square"]
    assert r.n_examples == N_TEST
    assert 0.6 < r.clean_accuracy <= 1.0
    assert 0.0 < r.robust_accuracy < r.clean_accuracy
    for name in r.attacks:
        assert r.robust_accuracy <= r.accuracy_alone[name] <= r.clean_accuracy
        assert r.accuracy_cumulative[name] <= r.accuracy_alone[name]
        assert r.seconds[name] > 0
    cumulative = [r.accuracy_cumulative[name] for name in r.attacks]
    assert all(b <= a for a, b in zip(cumulative, cumulative[1:]))
    assert cumulative[-1] == r.robust_accuracy
    assert r.robust_mask.mean() == pytest.approx(r.robust_accuracy)
    # The trained model has honest gradients: no sanity check fires.
    assert not any("masked" in w or "above the clean" in w or "outside" in w
                   for w in r.warnings), r.warnings


def test_apgd_ce_at_least_as_strong_as_pgd_with_the_same_budget(pgd_result):
    r = pgd_result
    assert r.config["steps"] == 10
    assert r.accuracy_alone["apgd-ce"] <= r.accuracy_alone["pgd"] + 1.0 / r.n_examples


def test_result_json_round_trip_and_table(pgd_result):
    text = pgd_result.to_json()
    assert json.loads(text)["robust_accuracy"] == pgd_result.robust_accuracy
    restored = RobustnessResult.from_json(text)
    assert restored == pgd_result
    assert restored.to_dict() == pgd_result.to_dict()
    assert "robust_mask" not in json.loads(text)
    table = pgd_result.table()
    assert str(pgd_result) == table
    for name in pgd_result.attacks:
        assert name in table
    assert f"{100 * pgd_result.robust_accuracy:.2f}%" in table


def test_epsilon_zero_every_attack_gives_clean_accuracy(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    names = ("pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "square", "fgsm")
    r = evaluate_robustness(undefended_digits_model, (x[:100], y[:100]), 0.0, attacks=names,
                            steps=3, n_queries=10, verbose=False)
    assert r.attacks == list(names)
    for name in names:
        assert r.accuracy_alone[name] == r.clean_accuracy
    assert r.robust_accuracy == r.clean_accuracy


def test_undefended_model_is_broken_at_large_radius(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    r = evaluate_robustness(undefended_digits_model, (x, y), 0.3, attacks=("pgd", "apgd-ce"),
                            steps=10, verbose=False)
    assert r.clean_accuracy > 0.85
    assert r.accuracy_alone["apgd-ce"] <= r.accuracy_alone["pgd"] <= 0.05


def test_masked_gradients_trigger_the_warnings(digits_200):
    (x_train, y_train), (x, y) = digits_200
    model = fit_clean(conv_dense_model(seed=2, first=QuantizeInputs(2)), x_train, y_train, epochs=5)
    with pytest.warns(RuntimeWarning) as record:
        r = evaluate_robustness(model, (x[:100], y[:100]), 0.3,
                                attacks=("pgd", "apgd-ce", "square"), steps=5,
                                n_queries=100, verbose=False)
    assert sorted(str(w.message) for w in record) == sorted(r.warnings)
    assert any("gradient of the margin loss is zero" in w for w in r.warnings), r.warnings
    assert any("gradient-free attack (square)" in w for w in r.warnings), r.warnings
    assert r.accuracy_alone["square"] < r.accuracy_alone["apgd-ce"]


def test_softmax_output_is_flagged_and_from_logits_false_accepted(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    probabilities = keras.Sequential([undefended_digits_model, keras.layers.Softmax()])
    data = (x[:50], y[:50])
    with pytest.warns(RuntimeWarning, match="probabilities"):
        flagged = evaluate_robustness(probabilities, data, EPSILON, attacks=("fgsm",),
                                      verbose=False)
    assert any("probabilities" in w for w in flagged.warnings)
    fixed = evaluate_robustness(probabilities, data, EPSILON, attacks=("fgsm",),
                                from_logits=False, verbose=False)
    logits = evaluate_robustness(undefended_digits_model, data, EPSILON, attacks=("fgsm",),
                                 verbose=False)
    assert not any("probabilities" in w for w in fixed.warnings)
    # log-softmax differs from the logits by a per-example constant: same attack.
    assert fixed.accuracy_alone["fgsm"] == logits.accuracy_alone["fgsm"]


def test_tf_data_with_one_hot_labels_equals_arrays(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    x, y = x[:60], y[:60]
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 10))).batch(16)
    attacks = ("fgsm", PGDRestarts(EPSILON, steps=3, random_start=False))
    from_arrays = evaluate_robustness(undefended_digits_model, (x, y), EPSILON, attacks=attacks,
                                      verbose=False)
    from_dataset = evaluate_robustness(undefended_digits_model, dataset, EPSILON, attacks=attacks,
                                       verbose=False)
    assert from_arrays.attacks == ["fgsm", "pgdrestarts"]
    assert from_arrays.accuracy_cumulative == from_dataset.accuracy_cumulative
    assert from_arrays.n_examples == from_dataset.n_examples == 60


def test_cascade_without_individual_runs_gives_the_same_worst_case(
        digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    attacks = {"fgsm": FGSM(EPSILON), "pgd-det": PGDRestarts(EPSILON, steps=4,
                                                             random_start=False)}
    both = evaluate_robustness(undefended_digits_model, (x, y), EPSILON, attacks=attacks,
                               verbose=False)
    cascade = evaluate_robustness(undefended_digits_model, (x, y), EPSILON, attacks=attacks,
                                  individual=False, verbose=False)
    assert cascade.accuracy_alone == {"fgsm": None, "pgd-det": None}
    assert cascade.accuracy_cumulative == both.accuracy_cumulative
    assert cascade.robust_accuracy == both.robust_accuracy
    assert "pgd-det  " in cascade.table() and " - " in cascade.table()


def test_l2_skips_square_with_a_warning(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    with pytest.warns(RuntimeWarning, match="square skipped"):
        r = evaluate_robustness(undefended_digits_model, (x[:40], y[:40]), 0.5, norm="l2",
                                attacks=("apgd-ce", "square"), steps=3, verbose=False)
    assert r.attacks == ["apgd-ce"] and r.norm == "l2"


def test_rejects_attacks_outside_the_threat_model(digits_200, undefended_digits_model):
    _, (x, y) = digits_200
    with pytest.raises(ValueError, match="larger than the evaluated epsilon"):
        evaluate_robustness(undefended_digits_model, (x[:10], y[:10]), 0.1, attacks=[APGD(0.2)],
                            verbose=False)
    with pytest.raises(ValueError, match="Unknown attack"):
        evaluate_robustness(undefended_digits_model, (x[:10], y[:10]), 0.1, attacks=["autoattack"],
                            verbose=False)


def test_build_attack_names():
    assert isinstance(build_attack("square", 0.1, n_queries=7), Square)
    assert build_attack("square", 0.1, n_queries=7).n_queries == 7
    assert build_attack("cw", 0.1).loss == "cw"
    assert build_attack("apgd-t", 0.1, num_classes=4).n_target_classes == 3
    assert build_attack("apgd-dlr", 0.1, norm="l2").norm == "l2"


# -- RobustAccuracyTracker ---------------------------------------------------------
def test_tracker_writes_the_key_at_the_right_epochs(digits_200):
    (x_train, y_train), (x, y) = digits_200
    model = conv_dense_model(seed=3)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tracker = RobustAccuracyTracker((x[:100], y[:100]),
                                    PGD(EPSILON, steps=3, random_start=False), every=2,
                                    batch_size=64)
    history = model.fit(x_train, y_train, epochs=5, batch_size=128, verbose=0,
                        callbacks=[tracker])
    # Epochs 1 and 3 (every second one, from 0) and the last one, 4.
    assert [epoch for epoch, _ in tracker.history_records] == [1, 3, 4]
    assert history.history["test_adv_accuracy"] == [v for _, v in tracker.history_records]
    assert len(history.history["test_accuracy"]) == 3
    assert len(history.history["loss"]) == 5
    clean, robust = tracker.evaluate()
    assert robust == tracker.history_records[-1][1]
    assert clean == tracker.clean_records[-1][1]
    assert 0.0 <= robust <= clean <= 1.0
    summary = summarize_history(tracker)
    assert summary.n_evaluations == 3 and summary.final_epoch == 4


class WrapperModel(keras.Model):
    """A wrapper model whose call returns the inner model's logits."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)


def test_tracker_on_a_wrapper_model_feeds_csv_logger(digits_200, tmp_path):
    (x_train, y_train), (x, y) = digits_200
    model = WrapperModel(conv_dense_model(seed=4))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "log.csv"
    tracker = RobustAccuracyTracker(tf.data.Dataset.from_tensor_slices(
        (x[:64], y[:64])).batch(32), APGD(EPSILON, steps=3, seed=0), name="adv",
        clean_name=None)
    history = model.fit(x_train, y_train, epochs=2, batch_size=128, verbose=0,
                        callbacks=[tracker, keras.callbacks.CSVLogger(str(path))])
    assert len(history.history["adv"]) == 2 and "test_accuracy" not in history.history
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["adv"]) for row in rows] == pytest.approx(history.history["adv"])


# -- summarize_history -------------------------------------------------------------
def test_summarize_history_on_a_hand_built_history():
    values = [0.30, 0.50, 0.55, 0.52, float("nan"), 0.45, 0.40]
    s = summarize_history({"test_adv_accuracy": values, "loss": [1.0] * 7}, window=3)
    assert (s.best_epoch, s.final_epoch, s.n_evaluations, s.window) == (2, 6, 6, 3)
    assert s.best_value == pytest.approx(0.55) and s.final_value == pytest.approx(0.40)
    assert s.gap == pytest.approx(0.15)
    # Moving averages of (0.3, 0.5, 0.55, 0.52, 0.45, 0.4): 0.45, 0.5233, 0.5067, 0.4567.
    assert s.smoothed_best == pytest.approx((0.5 + 0.55 + 0.52) / 3)
    assert s.smoothed_final == pytest.approx((0.52 + 0.45 + 0.40) / 3)
    assert s.smoothed_gap == pytest.approx(s.smoothed_best - s.smoothed_final)
    assert s.to_dict()["best_epoch"] == 2


def test_summarize_history_inputs_and_edge_cases():
    pairs = [(1, 0.2), (3, 0.6), (5, None), (7, 0.1)]
    s = summarize_history(pairs, window=5)
    assert (s.best_epoch, s.final_epoch, s.window) == (3, 7, 3)
    assert s.smoothed_gap == 0.0 and s.gap == pytest.approx(0.5)
    history = keras.callbacks.History()
    history.epoch = [0, 1, 2]
    history.history = {"acc": [0.1, 0.3, 0.2]}
    assert summarize_history(history, key="acc", window=1).best_epoch == 1
    with pytest.raises(KeyError):
        summarize_history({"acc": [0.1]}, key="missing")
    with pytest.raises(ValueError, match="No evaluations"):
        summarize_history({"acc": [math.nan]}, key="acc")


def test_flattened_images_and_labels_out_of_range_are_named(digits_200,
                                                            undefended_digits_model):
    """Labels up to 10 used to count as misclassified (a robust accuracy of 0, no error);
    flattened images stopped in a Keras layer. Both now say what to change."""
    _, (x, y) = digits_200
    with pytest.raises(InputError, match=r"`y` has labels in \[3, 10\] but the model has 10 "
                                         r"outputs, so labels must be in \[0, 9\]"):
        evaluate_robustness(undefended_digits_model, (x[:8], np.arange(8) + 3), EPSILON,
                            attacks=("pgd",), verbose=False)
    with pytest.raises(InputError, match=r"`x` has shape \(8, 64\): examples of shape "
                                         r"\(64,\), .* Reshape them: x\.reshape\(-1, 8, 8, 1\)"):
        evaluate_robustness(undefended_digits_model, (x[:8].reshape(8, -1), y[:8]), EPSILON,
                            attacks=("pgd",), verbose=False)


def test_non_integer_labels_are_refused_not_truncated(digits_200, undefended_digits_model):
    """A label 1.5 used to become 1 without a word."""
    _, (x, y) = digits_200
    labels = y[:8].astype("float32")
    labels[3] = 1.5
    with pytest.raises(InputError, match=r"`y` must hold integer class indices .* 1\.5"):
        evaluate_robustness(undefended_digits_model, (x[:8], labels), EPSILON,
                            attacks=("pgd",), verbose=False)
    with pytest.raises(InputError, match="dtype <U1"):
        evaluate_robustness(undefended_digits_model, (x[:8], np.array(list("abcdefgh"))),
                            EPSILON, attacks=("pgd",), verbose=False)
    # Integer-valued floats are class indices, as before.
    result = evaluate_robustness(undefended_digits_model, (x[:8], y[:8].astype("float32")),
                                 EPSILON, attacks=("pgd",), verbose=False)
    assert 0.0 <= result.clean_accuracy <= 1.0
