"""Tests of keras_advcal.analysis: the label-noise measurement."""

import keras
import numpy as np
import pytest

from keras_advcal.analysis import (LabelNoiseReport, decompose_label_noise, find_double_descent,
                                   measure_label_noise, moving_average, noise_statistics,
                                   rank_correlation)
from keras_advcal.attacks import PGD
from keras_advcal.checks import InputError


def test_statistics_are_the_closed_forms():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([0, 2, 1])
    stats, tv = noise_statistics(logits, labels, temperature=2.0)
    probs = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)
    p_true = probs[np.arange(3), labels]
    # TV(onehot(y), p) = 0.5 * (|1 - p_y| + sum_{j != y} p_j) = 1 - p_y.
    tv_direct = 0.5 * np.abs(np.eye(3)[labels] - probs).sum(axis=1)
    np.testing.assert_allclose(tv, tv_direct, atol=1e-12)
    assert stats.total_variation == pytest.approx(np.mean(1 - p_true))
    assert stats.kl == pytest.approx(np.mean(-np.log(p_true)))
    # Example 2: argmax is class 1, the label 2 -> disagreement; example 3 is a tie
    # (argmax 0) against label 1 -> disagreement.
    assert stats.disagreement == pytest.approx(2 / 3)
    assert stats.count == 3 and stats.temperature == 2.0


def test_statistics_refuse_bad_input():
    with pytest.raises(InputError, match="labels"):
        noise_statistics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(InputError, match="NaN"):
        noise_statistics(np.array([[np.nan, 0.0]]), [0])
    with pytest.raises(InputError, match="same"):
        noise_statistics(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match="temperature"):
        noise_statistics(np.zeros((2, 3)), [0, 1], temperature=0.0)


@pytest.fixture(scope="module")
def measured(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    x, y = x[:300], y[:300]
    return {eps: measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val),
                                     PGD(eps, steps=5))
            for eps in (0.0, 0.05, 0.2)}


def test_zero_radius_measures_the_clean_noise(measured):
    report = measured[0.0]
    assert report.adversarial.total_variation == pytest.approx(report.clean.total_variation,
                                                               abs=1e-6)
    assert report.adversarial.disagreement == report.clean.disagreement
    np.testing.assert_allclose(report.adversarial_tv, report.clean_tv, atol=1e-5)


def test_noise_grows_with_the_radius(measured):
    tv = [measured[eps].adversarial.total_variation for eps in (0.0, 0.05, 0.2)]
    kl = [measured[eps].adversarial.kl for eps in (0.0, 0.05, 0.2)]
    flips = [measured[eps].adversarial.disagreement for eps in (0.0, 0.05, 0.2)]
    assert tv[0] < tv[1] < tv[2]
    assert kl[0] < kl[1] < kl[2]
    assert flips[0] < flips[2]
    # An undefended model is broken at eps 0.2 on most training digits: the estimated
    # true label of most PGD examples is another class.
    assert flips[2] > 0.5
    assert measured[0.2].epsilon == 0.2


def test_flipped_labels_raise_the_clean_noise(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    x, y = x[:300], y[:300]
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.4
    noisy = np.where(flip, (y + rng.integers(1, 10, len(y))) % 10, y)
    attack = PGD(0.0, steps=1)
    clean = measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val), attack)
    flipped = measure_label_noise(undefended_digits_model, (x, noisy), (x_val, y_val), attack)
    added = flipped.clean.disagreement - clean.clean.disagreement
    assert 0.3 < added < 0.5  # about the 40% flipped, less the rare agreements
    assert flipped.clean.total_variation > clean.clean.total_variation + 0.3


def test_report_outputs(measured, tmp_path):
    report = measured[0.05]
    assert isinstance(report, LabelNoiseReport)
    assert report.to_dict()["adversarial"]["count"] == 300
    assert '"clean"' in report.to_json()
    table = report.table()
    assert "| PGD |" in table and "| clean |" in table
    report.plot_histogram(tmp_path / "noise.png", title="digits")
    assert (tmp_path / "noise.png").stat().st_size > 5000


def test_bad_inputs_get_clear_errors(digits_200, undefended_digits_model):
    (x, y), (x_val, y_val) = digits_200
    attack = PGD(0.1, steps=1)
    softmax_net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(InputError, match="probabilities"):
        measure_label_noise(softmax_net, (x, y), (x_val, y_val), attack)
    with pytest.raises(InputError, match="labels must be in"):
        measure_label_noise(undefended_digits_model, (x, y + 5), (x_val, y_val), attack)
    with pytest.raises(InputError, match="outside"):
        measure_label_noise(undefended_digits_model, (x * 255, y), (x_val, y_val), attack)
    with pytest.raises(ValueError, match="at least 100"):
        measure_label_noise(undefended_digits_model, (x, y), (x_val[:50], y_val[:50]), attack)
    with pytest.raises(InputError, match=r"\(x, y\) pair"):
        measure_label_noise(undefended_digits_model, x, (x_val, y_val), attack)
    three_class = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                    keras.layers.Dense(3)])
    with pytest.raises(InputError, match="outputs"):
        measure_label_noise(undefended_digits_model, (x, y), (x_val, y_val), attack,
                            model=three_class)


# ---------------------------------------------------------------- decompose_label_noise
def _fit(x, y, seed):
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((8, 8, 1)),
                            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(10)])
    net.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=10, batch_size=64, verbose=0)
    return net


@pytest.fixture(scope="module")
def studied_and_reference(digits_200):
    """A studied model and a reference trained on the two halves of the digits."""
    (x, y), _ = digits_200
    half = len(y) // 2
    return _fit(x[:half], y[:half], 0), _fit(x[half:], y[half:], 1), (x[:half], y[:half])


def test_adversarial_part_is_zero_without_an_attack(studied_and_reference):
    studied, reference, (x, y) = studied_and_reference
    parts = decompose_label_noise(reference, 1.3, studied, (x, y), PGD(0.0, steps=3))
    assert parts.total_variation.adversarial == 0.0
    assert parts.disagreement.adversarial == 0.0
    assert parts.total_variation.injected == 0.0 and parts.flipped_fraction == 0.0
    np.testing.assert_array_equal(parts.per_example["tv_adversarial"],
                                  parts.per_example["tv_clean"])
    assert parts.epsilon == 0.0 and parts.count == len(y) and parts.temperature == 1.3


def test_adversarial_part_is_positive_for_a_real_attack(studied_and_reference):
    studied, reference, (x, y) = studied_and_reference
    small = decompose_label_noise(reference, 1.0, studied, (x, y), PGD(0.1, steps=5))
    large = decompose_label_noise(reference, 1.0, studied, (x, y), PGD(0.3, steps=10))
    # Examples made against the studied model move the reference's estimate too.
    assert 0.02 < small.total_variation.adversarial < large.total_variation.adversarial
    assert large.disagreement.adversarial > 0.1
    # The base is the reference's error on the clean inputs, whatever the attack.
    assert small.total_variation.base == pytest.approx(large.total_variation.base)
    for parts in (small, large):
        for quantity in (parts.total_variation, parts.disagreement):
            assert quantity.total == pytest.approx(quantity.adversarial + quantity.injected
                                                   + quantity.base, abs=1e-12)


def test_injected_part_is_the_flips_as_constructed(studied_and_reference):
    from keras_advcal import data

    studied, reference, (x, y) = studied_and_reference
    noisy, flipped = data.flip_labels(y, 0.3, 10, seed=0)
    temperature = 0.8
    parts = decompose_label_noise(reference, temperature, studied, (x, noisy),
                                  PGD(0.1, steps=3), clean_labels=y)
    assert parts.flipped_fraction == pytest.approx(0.3, abs=1 / len(y))
    logits = np.asarray(reference(x, training=False), dtype="float64") / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    # TV(x, noisy) - TV(x, true) = p_true - p_noisy: zero where nothing was flipped.
    expected = np.where(flipped, p[rows, y] - p[rows, noisy], 0.0).mean()
    assert parts.total_variation.injected == pytest.approx(expected, abs=1e-9)
    guess = p.argmax(axis=1)
    expected_flips = np.mean(flipped & (guess == y)) - np.mean(flipped & (guess == noisy))
    assert parts.disagreement.injected == pytest.approx(expected_flips, abs=1e-12)
    # A reference right on a clean input counts its flipped label once: the injected
    # disagreement is the flipped fraction, less the reference's own errors.
    accuracy = np.mean(guess == y)
    assert parts.flipped_fraction - (1 - accuracy) - 1e-12 <= parts.disagreement.injected \
        <= parts.flipped_fraction
    assert parts.total_variation.base == pytest.approx(np.mean(1 - p[rows, y]), abs=1e-9)


def test_decomposition_outputs_and_errors(studied_and_reference):
    studied, reference, (x, y) = studied_and_reference
    parts = decompose_label_noise(reference, 1.0, studied, (x[:50], y[:50]), PGD(0.1, steps=1))
    assert set(parts.to_dict()) == {"total_variation", "disagreement", "temperature",
                                    "epsilon", "count", "flipped_fraction"}
    assert "| mean TV (1 - p_label) |" in parts.table()
    with pytest.raises(ValueError, match="temperature"):
        decompose_label_noise(reference, 0.0, studied, (x, y), PGD(0.1, steps=1))
    with pytest.raises(InputError, match="clean_labels"):
        decompose_label_noise(reference, 1.0, studied, (x, y), PGD(0.1, steps=1),
                              clean_labels=y[:5])
    three = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    with pytest.raises(InputError, match="outputs"):
        decompose_label_noise(reference, 1.0, three, (x, y), PGD(0.1, steps=1))


# ------------------------------------------------------------------- reading curves
def test_find_double_descent():
    epochs = np.arange(1, 301) * 5
    fall = np.interp(epochs, [5, 100, 500, 1500], [0.9, 0.45, 0.56, 0.46])
    found = find_double_descent(epochs, fall)
    assert found.found and found.rise == pytest.approx(0.11, abs=0.01)
    assert found.second_fall == pytest.approx(0.10, abs=0.01)
    assert found.first_low_epoch < found.peak_epoch < found.second_low_epoch
    # Robust overfitting alone (fall, then rise) is not a double descent...
    assert not find_double_descent(epochs, np.interp(epochs, [5, 100, 1500],
                                                     [0.9, 0.45, 0.56])).found
    # ... nor a second fall smaller than the margin, nor a plain fall.
    assert not find_double_descent(epochs, np.interp(epochs, [5, 100, 500, 1500],
                                                     [0.9, 0.45, 0.56, 0.54])).found
    assert not find_double_descent(epochs, np.linspace(0.9, 0.4, 300)).found
    short = find_double_descent([1, 2, 3], [0.5, 0.6, 0.5])
    assert not short.found and short.rise is None


def test_rank_correlation_and_moving_average():
    assert rank_correlation([1, 2, 3], [0.1, 0.2, 0.3]) == 1.0
    assert rank_correlation([1, 2, 3], [0.3, 0.2, 0.1]) == -1.0
    assert rank_correlation([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.8)
    assert rank_correlation([1, 2, 3], [0.2, 0.2, 0.2]) == 0.0
    np.testing.assert_allclose(moving_average([0, 3, 6, 9], 3), [3, 6])
    assert len(moving_average([1, 2], 3)) == 0


# ------------------------------------------- the verdicts of benchmarks/label_noise.py
def _benchmark():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "label_noise.py"
    spec = importlib.util.spec_from_file_location("label_noise_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


def _write_run(run_dir, cell, knots, noise=None, finished=True):
    """A run directory as ``advcal train`` leaves it: history.json/csv and summary.json
    (written by the library's own functions) and, optionally, the noise file."""
    import json

    from keras_advcal import experiment

    run_dir.mkdir(parents=True)
    epochs = list(range(cell.epochs))
    evaluated = [(e + 1) % cell.eval_every == 0 or e + 1 == cell.epochs for e in epochs]
    where, values = zip(*knots)
    curve = np.interp(np.arange(1, cell.epochs + 1), where, values)
    history = {"epoch": epochs,
               "test_adv_accuracy": [float(c) if ok else None
                                     for c, ok in zip(curve, evaluated)]}
    experiment.write_history(history, run_dir)
    if finished:
        summary = dict(experiment.summarize_run(history), run=run_dir.name)
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if noise is not None:
        (run_dir / "label_noise_parts.json").write_text(json.dumps(
            {"reference": "ref-1", "best": {"total_variation": noise}}))


def _peak(cell, peak, gap, top=0.55):
    """Rises to ``top`` at ``peak``, then loses ``gap`` by the last epoch."""
    return [(1, top - 0.25), (peak, top), (cell.epochs, top - gap)]


def _noise(adversarial, injected=0.0, base=0.1):
    return {"adversarial": adversarial, "injected": injected, "base": base,
            "total": adversarial + injected + base}


#: PGD-AT per cell in the "everything holds" tree: (peak epoch, gap, noise parts).
HOLDS = {"radius_eps0.05": (20, 0.02, _noise(0.10)), "radius_eps0.1": (30, 0.04, _noise(0.20)),
         "radius_eps0.15": (50, 0.06, _noise(0.30)), "radius_eps0.2": (80, 0.09, _noise(0.40)),
         "radius_long_eps0.05": (20, 0.03, _noise(0.10)),
         "radius_long_eps0.1": (30, 0.05, _noise(0.20)),
         "radius_long_eps0.15": (90, 0.07, _noise(0.30)),
         "radius_long_eps0.2": (240, 0.08, _noise(0.40)),
         "quality_flip0.1": (16, 0.03, _noise(0.21, 0.05)),
         "quality_flip0.2": (16, 0.06, _noise(0.22, 0.10)),
         "quality_flip0.4": (16, 0.10, _noise(0.23, 0.20)),
         "quality_images250": (40, 0.04, _noise(0.20)),
         "quality_images125": (80, 0.07, _noise(0.20))}
DOUBLE_DESCENT = [(1, 0.1), (100, 0.55), (500, 0.44), (1500, 0.53)]
OVERFITTING_ONLY = [(1, 0.1), (100, 0.55), (1500, 0.44)]


def _tree(bench, root, pgd=None, calibrated_gap=0.003, dd=DOUBLE_DESCENT, skip=(),
          unfinished=(), unmeasured=()):
    protocol = bench.full_protocol()
    pgd = dict(HOLDS, **(pgd or {}))
    for cell in protocol.cells:
        for seed in protocol.seeds:
            for method in cell.methods:
                name = f"{cell.name}/{method}_s{seed}"
                if name in skip:
                    continue
                if method == "calibrated":
                    knots, noise = _peak(cell, cell.epochs // 2, calibrated_gap), None
                elif cell.name == "double_descent":
                    knots, noise = dd, None
                else:
                    peak, gap, noise = pgd[cell.name]
                    knots = _peak(cell, peak, gap)
                _write_run(root / cell.name / f"{method}_s{seed}", cell, knots,
                           None if name in unmeasured else noise,
                           finished=name not in unfinished)
    return protocol


def _confirmed(found):
    return {name: verdict["confirmed"] for name, verdict in found.items()}


def test_verdicts_confirm_when_every_rule_holds(bench, tmp_path):
    protocol = _tree(bench, tmp_path)
    found = bench.verdicts(protocol, tmp_path)
    assert list(found) == list(bench.VERDICT_NAMES)
    assert all(set(verdict) == {"confirmed", "evidence"} for verdict in found.values())
    assert _confirmed(found) == dict.fromkeys(bench.VERDICT_NAMES, True), found
    assert found["radius"]["evidence"].startswith("600-epoch runs: (a) PGD-AT peaks by epoch "
                                                  "300 of 600 in every run")
    assert "rises at each step" in found["radius"]["evidence"]
    assert "Reported, not counted: the 200-epoch runs" in found["radius"]["evidence"]
    assert "a double descent" in found["double_descent"]["evidence"]
    assert "flipped labels" in found["calibration_removes_overfitting"]["evidence"]


def test_verdicts_without_enough_runs_say_so(bench, tmp_path):
    # One seed of PGD-AT at eps 0.2 missing in each round, one still running at 250 images.
    protocol = _tree(bench, tmp_path, skip={"radius_eps0.2/pgd_at_s1",
                                            "radius_long_eps0.2/pgd_at_s1"},
                     unfinished={"quality_images250/pgd_at_s0"})
    found = bench.verdicts(protocol, tmp_path)
    assert _confirmed(found) == {"radius": False, "data_quality": False,
                                 "double_descent": True,
                                 "calibration_removes_overfitting": False}
    for name in ("radius", "data_quality", "calibration_removes_overfitting"):
        assert found[name]["evidence"].startswith("not enough runs")
    assert "radius_long_eps0.2 pgd_at: 1 of 2" in found["radius"]["evidence"]
    assert "radius_eps0.2 pgd_at: 1 of 2" in found["calibration_removes_overfitting"]["evidence"]
    assert "quality_images250 pgd_at: 1 of 2" in found["data_quality"]["evidence"]
    empty = bench.verdicts(protocol, tmp_path / "nothing")
    assert all(v == {"confirmed": False, "evidence": v["evidence"]} and
               v["evidence"].startswith("not enough runs") for v in empty.values())


def test_radius_needs_the_noise_measured(bench, tmp_path):
    protocol = _tree(bench, tmp_path, unmeasured={"radius_long_eps0.1/pgd_at_s0"})
    found = bench.verdicts(protocol, tmp_path)
    assert not found["radius"]["confirmed"]
    assert found["radius"]["evidence"].startswith("not enough runs")
    assert "noise not measured" in found["radius"]["evidence"]
    assert found["calibration_removes_overfitting"]["confirmed"]  # reads no noise


def test_noise_of_another_reference_does_not_count(bench, tmp_path):
    import json

    protocol = _tree(bench, tmp_path)
    (tmp_path / "reference.json").write_text(json.dumps({"identity": "ref-2"}))
    found = bench.verdicts(protocol, tmp_path)
    assert "noise not measured" in found["radius"]["evidence"]
    (tmp_path / "reference.json").write_text(json.dumps({"identity": "ref-1"}))
    assert bench.verdicts(protocol, tmp_path)["radius"]["confirmed"]


def test_predictions_that_do_not_hold_are_not_confirmed(bench, tmp_path):
    # PGD-AT peaks at epoch 500 of 600 at eps 0.2 (runs too short), its gap does not
    # grow with fewer images, no second descent, and the calibrated default overfits.
    protocol = _tree(bench, tmp_path,
                     pgd={"radius_long_eps0.2": (500, 0.01, _noise(0.40)),
                          "quality_images125": (80, 0.0, _noise(0.20))},
                     dd=OVERFITTING_ONLY, calibrated_gap=0.03)
    found = bench.verdicts(protocol, tmp_path)
    assert _confirmed(found) == dict.fromkeys(bench.VERDICT_NAMES, False)
    assert "too short: eps 0.2 seed 0" in found["radius"]["evidence"]
    assert "fewer images" in found["data_quality"]["evidence"]
    assert found["data_quality"]["evidence"].endswith("does not hold.")
    assert "no double descent" in found["double_descent"]["evidence"]
    assert "not in" in found["calibration_removes_overfitting"]["evidence"]
    assert not any(v["evidence"].startswith("not enough") for v in found.values())


def test_noise_that_does_not_rise_is_not_confirmed(bench, tmp_path):
    protocol = _tree(bench, tmp_path, pgd={"radius_long_eps0.15": (90, 0.07, _noise(0.15))})
    found = bench.verdicts(protocol, tmp_path)
    assert not found["radius"]["confirmed"]
    assert "does not rise at each step" in found["radius"]["evidence"]
    assert found["data_quality"]["confirmed"]


def test_the_radius_verdict_reads_the_long_runs_and_reports_the_short_ones(bench, tmp_path):
    # The 200-epoch round fails rule (a) at eps 0.2 and its noise does not rise; the
    # 600-epoch round holds: only the long round counts, the short one is reported.
    protocol = _tree(bench, tmp_path, pgd={"radius_eps0.2": (180, 0.01, _noise(0.25))})
    found = bench.verdicts(protocol, tmp_path)
    assert found["radius"]["confirmed"]
    counted, reported = found["radius"]["evidence"].split("Reported, not counted")
    assert "too short" not in counted and "does not rise" not in counted
    assert "peaks by epoch 100 of 200" in reported
    assert "too short: eps 0.2 seed 0 (epoch 184)" in reported
    assert "does not rise at each step" in reported
    assert "calibrated default's smoothed gap there (points): 0.3, 0.3, 0.3, 0.3" in reported
    # The long cells have no calibrated runs: the plan, the rows and that verdict skip them.
    assert not any(job.method.name == "calibrated" and job.cell.form == "radius_long"
                   for job in bench.plan(protocol, tmp_path))
    rows = bench.cell_rows(protocol, bench.collect(protocol, tmp_path))
    assert {row["method"] for row in rows if row["form"] == "radius_long"} == {"pgd_at"}
    assert "radius_long" not in found["calibration_removes_overfitting"]["evidence"]


def test_the_long_radius_cells_repeat_the_short_ones_three_times_as_long(bench):
    protocol = bench.full_protocol()
    for short, long in zip(protocol.group("radius"), protocol.group("radius_long")):
        assert (long.level, long.overrides) == (short.level, short.overrides)
        assert (long.epochs, long.eval_every) == (3 * short.epochs, 3 * short.eval_every)
        assert long.epochs // long.eval_every == short.epochs // short.eval_every == 50
        assert long.methods == ("pgd_at",) and short.methods == tuple(bench.METHODS)


def test_report_writes_the_verdicts_file(bench, tmp_path):
    import json

    protocol = _tree(bench, tmp_path / "runs")
    section, found, figures = bench.report(protocol, tmp_path / "runs", tmp_path / "figures",
                                           tmp_path / "RESULTS.md", "Reference: test.")
    written = json.loads((tmp_path / "runs" / "verdicts.json").read_text())
    assert written == found and list(written) == list(bench.VERDICT_NAMES)
    assert all(set(v) == {"confirmed", "evidence"} and isinstance(v["confirmed"], bool)
               for v in written.values())
    assert section.startswith(bench.SECTION) and "](figures/label_noise_levels.png)" in section
    assert (tmp_path / "figures" / "label_noise_long_runs.png").stat().st_size > 5000
    assert "label_noise_long_runs.png" in figures


def test_the_tutorial_shows_the_verdicts_and_its_own_copies_of_the_figures(bench, tmp_path):
    protocol = _tree(bench, tmp_path / "runs")
    _, found, figures = bench.report(protocol, tmp_path / "runs", tmp_path / "figures",
                                     tmp_path / "RESULTS.md", "Reference: test.")
    page = tmp_path / "docs" / "label_noise.md"
    page.parent.mkdir()
    start, end = bench.TUTORIAL_MARKERS
    page.write_text(f"# Label noise\n\n{start}\nold text\n{end}\n\nwritten by hand\n")
    bench.update_tutorial(found, tmp_path / "figures", figures, page, page.parent / "figures")
    text = page.read_text()
    assert "old text" not in text and text.endswith(f"{end}\n\nwritten by hand\n")
    for name in bench.VERDICT_NAMES:
        verdict = "Confirmed" if found[name]["confirmed"] else "Not confirmed"
        assert f"{bench.VERDICT_TITLES[name].rstrip('?')}" in text
        assert f"** {verdict}: {found[name]['evidence']}" in text
    for name in figures:  # every figure the page links is beside it, byte for byte
        assert f"](figures/{name})" in text
        assert ((page.parent / "figures" / name).read_bytes()
                == (tmp_path / "figures" / name).read_bytes())
