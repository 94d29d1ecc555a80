"""keras_advcal.experiment: one configured run and its artifacts (tiny digits runs)."""

import dataclasses
import json
import math

import numpy as np
import pytest

from keras_advcal import experiment
from keras_advcal.experiment import RunConfig


def tiny_config(tmp_path, name, **overrides):
    """A run of a few seconds: digits, small subsets, a narrow CNN, short attacks."""
    values = dict(dataset="digits", labels="calibrated", objective="pgd_at", awp_gamma=0.0,
                  subset=150, validation_size=120, test_size=60,
                  width=8, dense=32, epsilon=0.15, train_steps=2, train_step_size=0.1,
                  eval_steps=2, eval_step_size=0.1, eval_every=1, epochs=2,
                  batch_size=64, final_steps=2, verbose=0, out=str(tmp_path / name))
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("experiment")
    config = tiny_config(tmp_path, "calibrated", epochs=3)
    return config, experiment.run(config)


def test_defaults_are_the_benchmark_protocol():
    config = RunConfig()
    assert (config.dataset, config.subset, config.validation_size, config.test_size) == (
        "fashion_mnist", 500, 500, 2000)
    assert (config.width, config.dense, config.batchnorm, config.epsilon) == (32, 256, False, 0.1)
    assert (config.train_steps, config.train_step_size) == (5, 0.05)
    assert (config.eval_steps, config.eval_step_size, config.eval_every) == (10, 0.025, 3)
    assert (config.learning_rate, config.batch_size, config.epochs) == (1e-3, 64, 120)
    # The default recipe, frozen by the development study of recipes: TRADES, beta 6
    # (the objective's default), one-hot labels, AWP 0.01; the calibrated options keep
    # theirs.
    assert (config.labels, config.objective, config.beta, config.awp_gamma) == (
        "hard", "trades", None, 0.01)
    assert (config.teacher, config.loss_form, config.rule) == ("swa", "kd", "published")
    assert config.final_steps == 20


def test_run_writes_every_artifact(calibrated_run):
    config, summary = calibrated_run
    out = experiment.Path(config.out)
    for name in ("model.keras", "history.csv", "history.json", "curves.png", "config.json",
                 "summary.json"):
        assert (out / name).is_file(), name
    history = experiment.read_history(out)
    assert history["epoch"] == [0, 1, 2]
    for key in ("temperature", "rho", "teacher_adv_accuracy", "test_adv_accuracy",
                "test_accuracy", "val_adv_accuracy", "adv_accuracy", "loss", "time", "cpu_time"):
        assert key in history and len(history[key]) == 3, key
    assert all(0.0 <= value <= 1.0 for value in history["rho"])
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"temperature", "rho", "test_adv_accuracy"} <= set(header)
    assert RunConfig.from_dict(json.loads((out / "config.json").read_text())) == config
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("best_test_adv_accuracy", "best_epoch", "final_test_adv_accuracy", "gap",
                "smoothed_gap", "early_stopped_test_adv_accuracy", "final_test_clean_accuracy",
                "final_train_adv_accuracy", "final_pgd20_test_adv_accuracy", "wall_seconds",
                "final_temperature", "final_rho"):
        assert on_disk[key] is not None, key
    assert summary["best_test_adv_accuracy"] >= summary["final_test_adv_accuracy"]
    assert math.isclose(summary["gap"], summary["best_test_adv_accuracy"]
                        - summary["final_test_adv_accuracy"])
    assert summary["n_evaluations"] == 3


def test_saved_trainer_loads_with_its_calibration(calibrated_run):
    import keras

    config, summary = calibrated_run
    trainer = keras.models.load_model(experiment.Path(config.out) / "model.keras")
    assert math.isclose(float(trainer.rho.numpy()), summary["final_rho"], rel_tol=1e-6)
    classifier = experiment.load_classifier(experiment.Path(config.out) / "model.keras")
    assert classifier.output_shape == (None, 10)


def test_summarize_run_numbers():
    history = {"epoch": list(range(8)),
               "test_adv_accuracy": [None, 0.30, None, 0.50, None, 0.40, None, 0.35],
               "test_accuracy": [None, 0.6, None, 0.7, None, 0.75, None, 0.8],
               "val_adv_accuracy": [0.1, 0.2, 0.9, 0.3, 0.2, 0.6, 0.1, 0.2]}
    summary = experiment.summarize_run(history, window=2)
    assert (summary["best_epoch"], summary["final_epoch"]) == (4, 8)
    assert math.isclose(summary["gap"], 0.15)
    # Moving averages of 2: 0.40, 0.45, 0.375 -> 0.45 - 0.375.
    assert math.isclose(summary["smoothed_gap"], 0.075)
    # Best validation among evaluated epochs (2, 4, 6, 8 from 1) is at epoch 6: 0.6.
    assert summary["early_stopped_epoch"] == 6
    assert math.isclose(summary["early_stopped_test_adv_accuracy"], 0.40)
    assert math.isclose(summary["test_accuracy_at_best"], 0.7)
    assert math.isclose(summary["final_test_accuracy"], 0.8)


def test_hard_run_with_best_checkpoint_and_two_stage_recipe(tmp_path):
    hard = tiny_config(tmp_path, "pgd_at", labels="hard", checkpoint_best=True)
    summary = experiment.run(hard)
    history = experiment.read_history(hard.out)
    assert "rho" not in history and "test_adv_accuracy" in history
    checkpoint = summary["best_checkpoint"]
    assert (experiment.Path(hard.out) / "best.keras").is_file()
    assert 1 <= checkpoint["epoch"] <= 2
    assert 0.0 <= checkpoint["final_pgd20_test_adv_accuracy"] <= 1.0

    two_stage = tiny_config(tmp_path, "two_stage", teacher="fixed", epochs=1,
                            teacher_model=str(experiment.Path(hard.out) / "best.keras"),
                            surrogate_model=str(experiment.Path(hard.out) / "model.keras"))
    summary = experiment.run(two_stage)
    fitted = summary["two_stage_calibration"]
    assert math.isclose(summary["final_rho"], fitted["rho"], rel_tol=1e-6)
    assert math.isclose(summary["final_temperature"], fitted["temperature"], rel_tol=1e-6)


def test_adr_baseline_anneals_temperature_and_rho(tmp_path):
    import keras

    config = tiny_config(tmp_path, "adr", labels="adr", epochs=3, eval_every=3)
    experiment.run(config)
    history = experiment.read_history(config.out)
    np.testing.assert_allclose(history["temperature"], [2.5, 2.25, 2.0], atol=1e-6)
    np.testing.assert_allclose(history["rho"], [0.7, 0.825, 0.95], atol=1e-6)
    # The baseline is the library's trainer with the "adr" objective, soft loss.
    trainer = keras.models.load_model(experiment.Path(config.out) / "model.keras")
    assert type(trainer).__name__ == "AdvCalTrainer"
    assert (trainer.objective.name, trainer.loss_form) == ("adr", "soft")


def test_trades_calibrated_run_with_awp(tmp_path):
    """objective, beta and awp_gamma reach the trainer; the run trains, saves and
    reloads with them."""
    import keras

    config = tiny_config(tmp_path, "trades_awp", objective="trades", beta=3.0,
                         awp_gamma=0.01, epochs=2, eval_every=2)
    summary = experiment.run(config)
    assert 0.0 <= summary["final_test_adv_accuracy"] <= 1.0
    trainer = keras.models.load_model(experiment.Path(config.out) / "model.keras")
    assert trainer.objective.name == "trades" and trainer.objective.beta == 3.0
    assert trainer.weight_perturbation.gamma == 0.01 and trainer.labels == "calibrated"
    history = experiment.read_history(config.out)
    assert len(history["rho"]) == 2 and np.all(np.isfinite(history["loss"]))
    assert "TRADES (beta 3) calibrated" in experiment._title(config)
    assert experiment._title(config).endswith("AWP 0.01")


def test_rectified_run_without_a_floor(tmp_path):
    """rectified_targets and acc_floor=0 reach the trainer and the callback; the run
    trains, saves and reloads with them."""
    import keras

    config = tiny_config(tmp_path, "rectified", rectified_targets=True, acc_floor=0.0,
                         epochs=2, eval_every=2)
    experiment.run(config)
    trainer = keras.models.load_model(experiment.Path(config.out) / "model.keras")
    assert trainer.rectified_targets and trainer.labels == "calibrated"
    history = experiment.read_history(config.out)
    assert len(history["rho"]) == 2 and np.all(np.isfinite(history["loss"]))
    assert experiment._title(config).endswith("rectified targets")


@pytest.mark.parametrize("labels, objective, beta, awp_gamma", [
    ("hard", "mart", None, 0.0), ("hard", "pgd_at", None, 0.005), ("calibrated", "mart", 2.0, 0.0),
])
def test_build_trainer_takes_objective_beta_and_awp(labels, objective, beta, awp_gamma):
    from keras_advcal import data

    config = RunConfig(dataset="digits", subset=150, validation_size=120, test_size=60,
                       width=8, dense=32, labels=labels, objective=objective, beta=beta,
                       awp_gamma=awp_gamma).validate()
    trainer, callbacks, _ = experiment.build_trainer(config, data.load(
        "digits", subset=150, validation_size=120, test_size=60))
    assert trainer.objective.name == objective and trainer.labels == labels
    if beta is not None:
        assert trainer.objective.beta == beta
    assert (trainer.weight_perturbation is None) == (awp_gamma == 0.0)
    if awp_gamma:
        assert trainer.weight_perturbation.gamma == awp_gamma
    assert len(callbacks) == (1 if labels == "calibrated" else 0)


@pytest.mark.parametrize("changes, message", [
    (dict(epsilon=-0.1), "epsilon"),
    (dict(labels="calibrated", teacher="nope"), "teacher"),
    (dict(labels="soft"), "labels"),
    (dict(labels="calibrated", teacher="fixed"), "teacher_model"),
    (dict(epochs=0), "epochs"),
    (dict(labels="calibrated", surrogate_model="x.keras"), "surrogate_model"),
    (dict(objective="madry"), "objective must be one of"),
    (dict(objective="adr"), "objective must be one of"),
    (dict(labels="adr", objective="trades"), "labels='adr'"),
    (dict(objective="pgd_at", beta=6.0), "beta applies to objective trades or mart"),
    (dict(objective="trades", beta=-1.0), "beta must be >= 0"),
    (dict(awp_gamma=-0.01), "awp_gamma must be >= 0"),
    (dict(calibration_examples="pass"), "calibration_examples must be one of"),
    (dict(two_stage_examples="student"), "two_stage_examples must be one of"),
    (dict(labels="hard", rectified_targets=True), "rectified_targets needs"),
    (dict(optimizer="rmsprop"), "optimizer must be one of"),
    (dict(lr_schedule="cosine"), "lr_schedule must be one of"),
    (dict(lr_drops="0.75,0.5"), "lr_drops must be increasing"),
    (dict(lr_drops="half"), "lr_drops must be increasing"),
    (dict(momentum=1.0), "momentum must be in"),
    (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
])
def test_invalid_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes).validate()


def test_unknown_option_in_a_config_dict():
    with pytest.raises(ValueError, match="Unknown RunConfig option"):
        RunConfig.from_dict({"epoch": 3})


class _Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_backup(tmp_path, monkeypatch):
    """A run killed after epoch 2 resumes from BackupAndRestore with its history,
    teacher, T and rho, and ends with every epoch recorded once."""
    config = tiny_config(tmp_path, "resumed", epochs=4)
    original = experiment.EpochRecorder.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise _Interrupted()

    monkeypatch.setattr(experiment.EpochRecorder, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(_Interrupted):
        experiment.run(config)
    out = experiment.Path(config.out)
    assert (out / "backup" / "training_metadata.json").is_file()
    before = experiment.read_history(out)
    assert before["epoch"] == [0, 1]

    monkeypatch.setattr(experiment.EpochRecorder, "on_epoch_end", original)
    summary = experiment.run(config)
    history = experiment.read_history(out)
    assert history["epoch"] == [0, 1, 2, 3]
    # Epoch 0 was backed up before the crash: its row is the one from the first run.
    assert history["val_adv_accuracy"][0] == before["val_adv_accuracy"][0]
    assert history["time"] == sorted(history["time"])
    assert history["cpu_time"] == sorted(history["cpu_time"]) and history["cpu_time"][0] > 0
    assert not (out / "backup" / "training_metadata.json").exists()  # deleted at the end
    assert summary["final_test_adv_accuracy"] == pytest.approx(history["test_adv_accuracy"][-1])


def test_a_run_killed_during_its_final_evaluation_does_not_train_again(tmp_path, monkeypatch):
    """After training, model.keras, the history and a marker are on disk: a restart
    (summary.json missing) goes straight to the final evaluation with the same numbers;
    a changed training setting trains afresh."""
    config = tiny_config(tmp_path, "evaluated", epochs=2, labels="hard")
    first = experiment.run(config)
    out = experiment.Path(config.out)
    assert (out / experiment.TRAINED_MARKER).is_file()
    (out / "summary.json").unlink()  # as if killed during the final evaluation
    model_written = (out / "model.keras").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("fit() must not run again")

    monkeypatch.setattr(experiment.AdvCalTrainer, "fit", no_training)
    again = experiment.run(config)
    assert again["resumed_after_training"] is True
    assert (out / "model.keras").stat().st_mtime_ns == model_written
    # (final_train_adv_accuracy is left out: that PGD's random start is not seeded.)
    for key in ("final_test_adv_accuracy", "final_pgd20_test_adv_accuracy",
                "final_test_clean_accuracy", "final_train_accuracy", "best_epoch",
                "train_seconds"):
        assert again[key] == pytest.approx(first[key]), key
    # Another training setting (more epochs) is a new run: it must train.
    longer = tiny_config(tmp_path, "evaluated", epochs=3, labels="hard")
    with pytest.raises(AssertionError, match="must not run again"):
        experiment.run(longer)
    assert not (out / experiment.TRAINED_MARKER).exists()


def test_train_only_stops_before_the_final_evaluation_and_a_later_run_evaluates(
        tmp_path, monkeypatch):
    """``train_only`` writes the model, the history and the marker but no summary and no
    correctness file; asking again changes nothing; a plain run afterwards evaluates the
    trained model without training it again."""
    config = tiny_config(tmp_path, "staged", epochs=2, labels="hard")
    stopped = experiment.run(config, train_only=True)
    out = experiment.Path(config.out)
    assert stopped["train_only"] is True and stopped["train_seconds"] > 0
    history = experiment.read_history(out)
    assert stopped["final_test_adv_accuracy"] == pytest.approx(history["test_adv_accuracy"][-1])
    assert (out / "model.keras").is_file() and (out / experiment.TRAINED_MARKER).is_file()
    assert not (out / "summary.json").exists() and not list(out.glob("correctness_*.npz"))
    model_written = (out / "model.keras").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("fit() must not run again")

    monkeypatch.setattr(experiment.AdvCalTrainer, "fit", no_training)
    assert experiment.run(config, train_only=True) == stopped
    summary = experiment.run(config)
    assert summary["resumed_after_training"] is True
    assert summary["smoothed_gap"] == stopped["smoothed_gap"]
    assert (out / "model.keras").stat().st_mtime_ns == model_written
    assert (out / "summary.json").is_file() and (out / "correctness_final.npz").is_file()
    with pytest.raises(FileNotFoundError, match="training has not ended"):
        experiment.training_summary(tmp_path)


def test_options_the_run_does_not_read_are_named_in_a_warning(tmp_path):
    """With one-hot labels the calibrated targets' options do nothing: a run given one
    says so, and names what would read it; options in use give no warning."""
    config = tiny_config(tmp_path, "ignored", epochs=1, labels="hard", teacher="fixed",
                         acc_floor=0.8, fixed_rho=0.3)
    assert [name for name, _ in config.ignored_options()] == ["teacher", "acc_floor",
                                                             "fixed_rho"]
    with pytest.warns(UserWarning) as caught:
        experiment.run(config, train_only=True)
    assert [str(w.message) for w in caught if "ignored" in str(w.message)] == [
        f"{name}={value!r} is ignored: only a run with labels='calibrated' reads it."
        for name, value in (("teacher", "fixed"), ("acc_floor", 0.8), ("fixed_rho", 0.3))]
    assert tiny_config(tmp_path, "used", teacher="ema", ema_decay=0.9).ignored_options() == []
    assert tiny_config(tmp_path, "sgd", optimizer="sgd", momentum=0.5,
                       lr_schedule="piecewise", lr_drops="0.5").ignored_options() == []


def test_a_restarted_final_evaluation_skips_the_models_already_evaluated(tmp_path,
                                                                         monkeypatch):
    """Killed while attacking the weight average: the restart attacks only that model
    (the final one and the early-stopped checkpoint keep their numbers and files), and
    the finished run keeps no evaluated_*.json."""
    config = tiny_config(tmp_path, "partial", epochs=2, labels="hard", checkpoint_best=True,
                         weight_average=True)
    original = experiment.evaluate_robustness
    attacked = []

    def killed_at_the_average(model, *args, **kwargs):
        attacked.append(model.name)
        if len(attacked) == 3:  # final, best, then the average
            raise KeyboardInterrupt("killed")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate_robustness", killed_at_the_average)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(config)
    out = experiment.Path(config.out)
    assert sorted(p.name for p in out.glob("evaluated_*.json")) == [
        "evaluated_best.json", "evaluated_final.json"]
    kept = {label: (out / f"correctness_{label}.npz").stat().st_mtime_ns
            for label in ("final", "best")}
    attacked.clear()
    monkeypatch.setattr(experiment, "evaluate_robustness", original)
    counted = []
    monkeypatch.setattr(experiment, "evaluate_robustness",
                        lambda *a, **k: counted.append(1) or original(*a, **k))
    summary = experiment.run(config)
    assert len(counted) == 1  # the average only
    for label, written in kept.items():
        assert (out / f"correctness_{label}.npz").stat().st_mtime_ns == written
    assert 0.0 <= summary["weight_average"]["final_pgd20_test_adv_accuracy"] <= 1.0
    assert 0.0 <= summary["best_checkpoint"]["final_pgd20_test_adv_accuracy"] <= 1.0
    assert not list(out.glob("evaluated_*.json"))


def test_hard_run_with_weight_average_dev_curve_and_cascade(tmp_path):
    config = tiny_config(tmp_path, "hard_avg", labels="hard", checkpoint_best=True,
                         weight_average=True, development_size=100, curve_split="development",
                         curve_size=50, final_splits="development,test",
                         final_attacks="apgd-ce", final_attack_steps=3,
                         final_strong_attacks="apgd-t,square", final_strong_size=40,
                         final_square_queries=20, final_cascade=True, epochs=3)
    summary = experiment.run(config)
    out = experiment.Path(config.out)
    history = experiment.read_history(out)
    assert "dev_adv_accuracy" in history and "test_adv_accuracy" not in history
    assert summary["final_dev_adv_accuracy"] == history["dev_adv_accuracy"][-1]
    for key in ("final_worst_case_dev_adv_accuracy", "final_worst_case_test_adv_accuracy",
                "final_pgd20_dev_adv_accuracy", "final_dev_clean_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    # a cascade: each attack's cumulative accuracy is at most the one before
    steps = list(summary["final_attacks_dev"].values())
    assert steps == sorted(steps, reverse=True)
    assert summary["weight_average"]["epochs_averaged"] == 3
    assert summary["best_checkpoint"]["epoch"] in (1, 2, 3)
    for model in ("final", "best", "average"):
        with np.load(out / f"correctness_{model}.npz") as arrays:
            robust, clean = arrays["development_robust"], arrays["development_clean"]
            assert robust.shape == (100,) and arrays["test_robust"].shape == (60,)
            assert not np.any(robust & ~clean)
            assert np.all(arrays["development_after_apgd-ce"] == robust)
            assert len(set(arrays["development_indices"])) == 100
            strong = arrays["development_strong_robust"]
            assert strong.shape == (40,) and not np.any(strong & ~robust[:40])
            assert np.all(arrays["development_strong_after_square"] == strong)
    with np.load(out / "correctness_final.npz") as arrays:
        assert math.isclose(arrays["development_robust"].mean(),
                            summary["final_worst_case_dev_adv_accuracy"])
        assert math.isclose(arrays["development_strong_robust"].mean(),
                            summary["final_strong_dev_adv_accuracy"])
    assert (summary["final_strong_dev_adv_accuracy"]
            <= summary["final_strong_dev_before_accuracy"])
    partial = experiment.read_summary(out)
    assert partial["final_dev_adv_accuracy"] == summary["final_dev_adv_accuracy"]


def test_a_trained_run_takes_another_final_attack_without_training_again(tmp_path,
                                                                        monkeypatch):
    """The final attacks are not training settings: a run trained with one cascade is
    evaluated with a FAB-T stage added, without training, and that stage attacks only
    what Square left."""
    config = tiny_config(tmp_path, "fab", epochs=1, labels="hard", final_attack_steps=3,
                         final_attacks="apgd-ce", final_strong_attacks="apgd-t,square",
                         final_strong_size=30, final_square_queries=10)
    experiment.run(config, train_only=True)

    def no_training(*args, **kwargs):
        raise AssertionError("fit() must not run again")

    monkeypatch.setattr(experiment.AdvCalTrainer, "fit", no_training)
    with_fab = dataclasses.replace(config, final_strong_attacks="apgd-t,square,fab-t")
    summary = experiment.run(with_fab)
    assert summary["resumed_after_training"] is True
    with np.load(experiment.Path(config.out) / "correctness_final.npz") as arrays:
        square, fab = arrays["test_strong_after_square"], arrays["test_strong_after_fab-t"]
        assert fab.shape == square.shape == (30,)
        assert not np.any(fab & ~square)
        assert np.array_equal(fab, arrays["test_strong_robust"])


def test_development_options_are_validated():
    with pytest.raises(ValueError, match="development_size"):
        RunConfig(curve_split="development").validate()
    with pytest.raises(ValueError, match="final_splits"):
        RunConfig(final_splits="train").validate()
    with pytest.raises(ValueError, match="curve_split"):
        RunConfig(curve_split="dev").validate()


def test_sgd_with_momentum_weight_decay_and_a_piecewise_rate(tmp_path):
    """The standard recipe's optimizer: SGD, momentum 0.9, weight decay 5e-4, the rate
    divided by 10 at the first step of epochs 2 and 3 of 4; a run trains with it."""
    config = tiny_config(tmp_path, "sgd", labels="hard", epochs=4, optimizer="sgd",
                         learning_rate=0.05, weight_decay=5e-4, lr_schedule="piecewise")
    optimizer = experiment.make_optimizer(config, steps_per_epoch=5)
    assert isinstance(optimizer, experiment.keras.optimizers.SGD)
    assert optimizer.momentum == 0.9 and optimizer.weight_decay == 5e-4
    rates = []
    for step in range(20):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    np.testing.assert_allclose(rates, [0.05] * 10 + [0.005] * 5 + [0.0005] * 5, rtol=1e-6)
    experiment.run(config)
    assert experiment.read_history(config.out)["epoch"] == [0, 1, 2, 3]
    trainer = experiment.keras.models.load_model(experiment.Path(config.out) / "model.keras")
    assert isinstance(trainer.optimizer, experiment.keras.optimizers.SGD)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.0005)


def test_strong_stages_are_saved_when_nothing_survives_the_first_attacks(tmp_path):
    """A model that the first attacks break everywhere still gets one array per strong
    stage (all False): the per-stage reading of a run (e.g. after Square) needs it."""
    config = tiny_config(tmp_path, "broken", labels="hard", epsilon=0.9,
                         train_step_size=0.5, eval_step_size=0.5, epochs=1,
                         final_steps=20, final_attacks="apgd-ce", final_attack_steps=20,
                         final_strong_attacks="apgd-t,square", final_strong_size=20,
                         final_square_queries=10, final_cascade=True)
    summary = experiment.run(config)
    assert summary["final_worst_case_test_adv_accuracy"] == 0.0
    with np.load(experiment.Path(config.out) / "correctness_final.npz") as arrays:
        for stage in ("apgd-t", "square"):
            after = arrays[f"test_strong_after_{stage}"]
            assert after.shape == (20,) and not after.any()


def test_a_training_marker_lacking_a_later_option_is_read_as_the_recipe_of_its_time(tmp_path):
    # A training_done.json written before `objective`/`awp_gamma` existed marks a
    # finished PGD-AT training: it is reused for a PGD-AT config, never for the default.
    out = tmp_path / "marked"
    out.mkdir()
    old = RunConfig(objective="pgd_at", awp_gamma=0.0, out=str(out))
    recorded = {key: value for key, value in json.loads(json.dumps(
        old.training_settings())).items() if key not in ("objective", "awp_gamma")}
    (out / experiment.TRAINED_MARKER).write_text(json.dumps({"config": recorded}))
    (out / "model.keras").write_bytes(b"")
    experiment.write_history({"epoch": [0], "test_adv_accuracy": [0.5]}, out)
    assert experiment._finished_training(out, old) is not None
    assert experiment._finished_training(out, RunConfig(out=str(out))) is None
