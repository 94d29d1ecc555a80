"""Tests of keras_advcal.calibration: the published rule, its floor, and its cost."""

import resource

import numpy as np
import pytest

from keras_advcal import calibration
from keras_advcal.calibration import calibrate, fit_temperature


def _sample_labels(logits, temperature, rng):
    probs = np.exp(logits / temperature - (logits / temperature).max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return (probs.cumsum(axis=1) > rng.random((len(logits), 1))).argmax(axis=1)


@pytest.fixture(scope="module")
def synthetic():
    """Teacher logits z and labels drawn from softmax(z / 2.5)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 10)) * 4.0
    return z, _sample_labels(z, 2.5, rng), rng


def test_recovers_known_temperature(synthetic):
    z, y, rng = synthetic
    noise = rng.normal(size=z.shape)
    result = calibrate(z, noise, y, z, z.argmax(axis=1), acc_floor=0.0)
    assert result.feasible
    assert abs(result.temperature - 2.5) / 2.5 < 0.10
    assert result.rho > 0.9
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.10)


def test_right_teacher_gives_rho_one_and_reverse_gives_minimum(synthetic):
    z, y, rng = synthetic
    noise = rng.normal(size=z.shape) * 4.0
    right = calibrate(z, noise, y, z, z.argmax(axis=1), acc_floor=0.0)
    reverse = calibrate(noise, z, y, noise, noise.argmax(axis=1), acc_floor=0.0)
    assert right.rho >= 0.95
    assert reverse.rho == pytest.approx(calibration.DEFAULT_RHOS[0])


def test_accuracy_floor_excludes_contradicting_targets(synthetic):
    z, y, rng = synthetic
    # Training teacher logits that contradict the label on 30% of the sample.
    train_labels = z.argmax(axis=1)
    wrong = rng.random(len(z)) < 0.3
    train_labels = np.where(wrong, (train_labels + 1) % 10, train_labels)
    free = calibrate(z, rng.normal(size=z.shape), y, z, train_labels, acc_floor=0.0)
    floored = calibrate(z, rng.normal(size=z.shape), y, z, train_labels, acc_floor=0.9)
    assert floored.feasible
    assert floored.train_agreement >= 0.9
    assert floored.rho < free.rho
    # Every point above the chosen NLL-optimum that was excluded violates the floor.
    excluded = floored.agreement_grid < 0.9
    assert excluded.any() and np.all(floored.agreement_grid[excluded] < 0.9)
    assert not excluded[np.argmin(np.abs(floored.temperatures - floored.temperature)),
                        np.argmin(np.abs(floored.rhos - floored.rho))]


def test_no_feasible_point_gives_rho_zero():
    g = np.array([[0.0, 100.0]] * 200)
    result = calibrate(g, g, np.zeros(200, int), g, np.zeros(200, int), acc_floor=1.0,
                       rhos=np.linspace(0.6, 1.0, 9))
    assert result.rho == 0.0 and not result.feasible
    assert "rho = 0" in result.message


def test_minimum_selection_sends_ties_to_smaller_rho():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 5))
    y = rng.integers(0, 5, 300)
    result = calibrate(z, z, y, z, z.argmax(axis=1), selection="minimum")  # teacher == surrogate
    assert result.rho == pytest.approx(calibration.DEFAULT_RHOS[0])


def test_one_standard_error_rule_takes_the_teacher_when_the_nll_cannot_tell():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 5))
    y = rng.integers(0, 5, 300)
    result = calibrate(z, z, y, z, z.argmax(axis=1),  # teacher == surrogate: a flat NLL
                       selection="one_standard_error")
    assert result.rho == pytest.approx(calibration.DEFAULT_RHOS[-1])


def _mixture_nll_numpy(g, s, y, temperature, rho):
    def p_true(logits):
        scaled = logits / temperature
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        probs = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
        return probs[np.arange(len(y)), y]
    return -np.log(np.maximum(rho * p_true(g) + (1 - rho) * p_true(s), 1e-12))


def test_one_standard_error_rule_matches_a_direct_computation():
    """Brute force on a small grid: the chosen point is within one paired standard
    error of the minimum, and every feasible point with a larger rho is not."""
    rng = np.random.default_rng(11)
    s = (rng.normal(size=(400, 6)) * 3.0).astype("float32").astype("float64")
    y = _sample_labels(s, 1.5, rng)
    # The surrogate holds the true logits, the teacher z a slightly noisy copy: the NLL
    # prefers the surrogate, by less than its noise (float32 values, as the library casts).
    z = (s + rng.normal(size=s.shape) * 0.2).astype("float32").astype("float64")
    temps, rhos = np.geomspace(0.5, 4.0, 7), np.linspace(0.05, 1.0, 20)
    floor = calibrate(z, s, y, z, y, temperatures=temps, rhos=rhos, acc_floor=0.0,
                      selection="one_standard_error")
    minimum = calibrate(z, s, y, z, y, temperatures=temps, rhos=rhos, acc_floor=0.0,
                        selection="minimum")
    feasible = floor.agreement_grid >= 0.0
    best = _mixture_nll_numpy(z, s, y, minimum.temperature, minimum.rho)
    assert best.mean() == pytest.approx(minimum.nll, rel=1e-9)

    def within_one_se(t, r):
        diff = _mixture_nll_numpy(z, s, y, t, r) - best
        return diff.mean() <= diff.std() / np.sqrt(len(y)) + 1e-12

    assert floor.rho > minimum.rho  # the two selections differ here
    assert within_one_se(floor.temperature, floor.rho)
    for i, t in enumerate(temps):
        for j, r in enumerate(rhos):
            if r > floor.rho + 1e-12 and feasible[i, j]:
                assert not within_one_se(t, r)
    chosen_column = [k for k, t in enumerate(temps)
                     if feasible[k, np.argmin(np.abs(rhos - floor.rho))]
                     and within_one_se(t, floor.rho)]
    column_nll = floor.nll_grid[chosen_column, np.argmin(np.abs(rhos - floor.rho))]
    assert floor.nll == pytest.approx(column_nll.min())


@pytest.mark.parametrize("seed", range(6))
def test_one_standard_error_choice_on_the_default_grid(seed):
    """On the default grid, with a floor that binds and one that does not, the choice is
    the largest rho holding a feasible point within one paired standard error of the
    lowest feasible NLL, at that column's lowest NLL among those points."""
    rng = np.random.default_rng(seed)
    count, classes = 600, 10
    y = rng.integers(0, classes, count)
    onehot = np.eye(classes)[y]
    g = rng.normal(size=(count, classes)) * rng.uniform(1, 3) + onehot * rng.uniform(0, 4)
    s = rng.normal(size=(count, classes)) * rng.uniform(1, 5) + onehot * rng.uniform(0, 4)
    train = rng.normal(size=(count, classes)) * 2 + onehot * rng.uniform(1, 5)
    for floor in (0.0, 0.9):
        result = calibrate(g, s, y, train, y, acc_floor=floor, selection="one_standard_error")
        temps, rhos = result.temperatures, result.rhos
        nll, feasible = result.nll_grid, result.agreement_grid >= floor - 1e-9
        masked = np.where(feasible, nll, np.inf)
        best = np.unravel_index(np.argmin(masked), nll.shape)
        mixture = calibration._MixtureNLL(g, s, y, rhos, None)
        squared = mixture.squared_difference_grid(temps, *best)
        error = np.sqrt(np.maximum(squared - (nll - nll[best]) ** 2, 0.0) / count)
        candidates = feasible & (nll - nll[best] <= error + 1e-12)
        candidates[best] = True
        column = int(np.max(np.nonzero(candidates.any(axis=0))[0]))
        row = int(np.argmin(np.where(candidates[:, column], nll[:, column], np.inf)))
        assert (result.temperature, result.rho) == (temps[row], rhos[column])


def test_unknown_selection_is_refused():
    z = np.zeros((200, 3))
    with pytest.raises(ValueError, match="selection"):
        calibrate(z, z, np.zeros(200, int), z, np.zeros(200, int), selection="median")


def test_grid_shapes_and_json():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(200, 4))
    y = rng.integers(0, 4, 200)
    result = calibrate(z, z * 0.5, y, z, y)
    assert result.nll_grid.shape == (100, 100) == result.agreement_grid.shape
    assert 0.2 <= result.temperature <= 16.0
    assert "nll_grid" not in result.to_dict()
    assert len(result.to_dict(include_grids=True)["nll_grid"]) == 100
    assert '"rho"' in result.to_json()


def test_memory_stays_bounded_for_50000_examples():
    """50,000 x 10 logits: a full (T, rho, N, K) tensor would take 20 GB."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(50_000, 10)).astype("float32")
    y = z.argmax(axis=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = calibrate(z, z + rng.normal(size=z.shape).astype("float32"), y, z[:5000], y[:5000])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert result.feasible
    assert (after - before) < 1_500_000  # under 1.5 GB


def test_confidence_rule():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(500, 10)) * 3
    y = _sample_labels(z, 1.0, rng)
    result = calibrate(z, z, y, z, y, rule="confidence", teacher_accuracy=0.6)
    p = np.exp(z / result.temperature)
    p /= p.sum(axis=1, keepdims=True)
    mean_p = p[np.arange(len(y)), y].mean()
    assert result.rho == pytest.approx(np.clip(0.4 / (1 - mean_p), 0, 1), rel=1e-4)
    assert result.temperature == pytest.approx(fit_temperature(z, y))


def test_fixed_rule_and_bad_arguments():
    z = np.zeros((10, 3))
    fixed = calibrate(z, z, np.zeros(10, int), z, np.zeros(10, int), rule="fixed",
                      fixed=(2.0, 0.5))
    assert (fixed.temperature, fixed.rho) == (2.0, 0.5)
    with pytest.raises(ValueError, match="rule"):
        calibrate(z, z, np.zeros(10, int), z, np.zeros(10, int), rule="magic")
    with pytest.raises(ValueError, match="NaN or Inf"):
        calibrate(z + np.nan, z, np.zeros(10, int), z, np.zeros(10, int))
    with pytest.raises(ValueError, match="labels"):
        calibrate(z, z, np.full(10, 5), z, np.zeros(10, int))
    with pytest.raises(ValueError, match="at least 100"):
        calibration.check_calibration_size(20, "validation_data")


def test_separate_surrogate_temperature():
    """The surrogate can be scaled by its own fitted temperature instead of the grid T:
    the teacher-only column (rho = 1) is unchanged, the mixed columns change."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(2000, 10)) * 3
    y = _sample_labels(z, 1.0, rng)
    overconfident = z * 8.0 + rng.normal(size=z.shape) * 8.0
    temps, rhos = [0.5, 1.0, 2.0], [0.3, 1.0]
    shared = calibration.nll_grid(z, overconfident, y, temps, rhos)
    own = calibration.nll_grid(z, overconfident, y, temps, rhos, surrogate_temperature=8.0)
    np.testing.assert_allclose(own[:, 1], shared[:, 1], rtol=1e-6)
    assert np.all(own[:, 0] < shared[:, 0])  # T=8 tames the overconfident surrogate
    result = calibrate(z, overconfident, y, z, y, acc_floor=0.0,
                       separate_surrogate_temperature=True)
    assert result.feasible and result.rho > 0.8
