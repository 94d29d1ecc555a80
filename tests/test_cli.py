"""The ``advcal`` command line: real (tiny) runs on digits in a temporary directory."""

import json
import os
import subprocess
import sys

import pytest

from keras_advcal import cli

TINY = ["--dataset", "digits", "--subset", "150", "--validation-size", "120",
        "--test-size", "60", "--width", "8", "--dense", "32", "--epsilon", "0.15",
        "--train-steps", "2", "--train-step-size", "0.1", "--eval-steps", "2",
        "--eval-step-size", "0.1", "--eval-every", "1", "--final-steps", "2",
        "--verbose", "0"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    calibrated = root / "calibrated"
    hard = root / "hard"
    assert cli.main(["train", *TINY, "--labels", "calibrated", "--teacher", "best",
                     "--epochs", "2", "--out", str(calibrated)]) == 0
    assert cli.main(["train", *TINY, "--labels", "hard", "--epochs", "2",
                     "--out", str(hard)]) == 0
    return root, calibrated, hard


def test_train_writes_artifacts_and_the_calibration(two_runs, capsys):
    _, calibrated, hard = two_runs
    for run in (calibrated, hard):
        for name in ("model.keras", "history.csv", "history.json", "curves.png",
                     "config.json", "summary.json"):
            assert (run / name).is_file(), (run, name)
    history = json.loads((calibrated / "history.json").read_text())
    for key in ("temperature", "rho", "test_adv_accuracy", "teacher_adv_accuracy"):
        assert len(history[key]) == 2, key
    config = json.loads((calibrated / "config.json").read_text())
    assert (config["dataset"], config["subset"], config["epochs"]) == ("digits", 150, 2)
    assert config["teacher"] == "best" and config["epsilon"] == 0.15


def test_train_from_a_config_file_with_overrides(two_runs, tmp_path):
    _, calibrated, _ = two_runs
    out = tmp_path / "again"
    assert cli.main(["train", "--config", str(calibrated / "config.json"), "--epochs", "1",
                     "--labels", "hard", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["labels"], config["subset"]) == (1, "hard", 150)


def test_compare_prints_the_table_and_writes_the_figure(two_runs, capsys, tmp_path):
    _, calibrated, hard = two_runs
    figure = tmp_path / "compare.png"
    rows = tmp_path / "rows.json"
    assert cli.main(["compare", str(calibrated), str(hard), "--figure", str(figure),
                     "--json", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "best (epoch)" in out and "smoothed gap" in out and "clean" in out
    assert "calibrated" in out and "hard" in out
    assert figure.is_file() and figure.stat().st_size > 0
    assert len(json.loads(rows.read_text())) == 2


def test_compare_reads_a_run_in_progress(two_runs, capsys, tmp_path):
    _, calibrated, _ = two_runs
    running = tmp_path / "running"
    running.mkdir()
    (running / "history.json").write_text((calibrated / "history.json").read_text())
    assert cli.main(["compare", str(running), "--no-figure"]) == 0
    assert "running (2 ep)" in capsys.readouterr().out


def test_evaluate_prints_accuracies(two_runs, capsys, tmp_path):
    _, calibrated, _ = two_runs
    out_json = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(calibrated / "model.keras"), "--dataset", "digits",
                     "--epsilon", "0.15", "--attacks", "pgd,fgsm", "--n", "40",
                     "--steps", "3", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "pgd" in out and "robust accuracy" in out
    result = json.loads(out_json.read_text())
    assert result["n_examples"] == 40 and result["attacks"] == ["pgd", "fgsm"]


def test_analyze_writes_the_label_noise_report(two_runs, capsys, tmp_path):
    _, calibrated, hard = two_runs
    out = tmp_path / "noise"
    assert cli.main(["analyze", str(hard / "model.keras"), "--model",
                     str(calibrated / "model.keras"), "--dataset", "digits", "--epsilon",
                     "0.15", "--steps", "2", "--subset", "150", "--validation-size", "120",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| PGD |" in printed and "| clean |" in printed
    report = json.loads((out / "label_noise.json").read_text())
    assert report["adversarial"]["count"] == 150 and report["epsilon"] == 0.15
    assert report["model"].endswith("calibrated/model.keras")
    for part in ("adversarial", "clean"):
        assert 0.0 <= report[part]["total_variation"] <= 1.0
        assert 0.0 <= report[part]["disagreement"] <= 1.0
    assert (out / "label_noise.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["train", "--epsilon", "-0.1"], "--epsilon"),
    (["train", "--teacher", "oracle"], "--teacher"),
    (["train", "--labels", "soft"], "--labels"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--dataset", "no_such_dataset_xyz", "--out", "unused"], "not available"),
    (["train", "--teacher", "fixed"], "teacher_model"),
    (["compare", "/no/such/run/dir"], "not found"),
    (["evaluate", "/no/such/model.keras", "--dataset", "digits", "--epsilon", "0.1"],
     "not found"),
    (["evaluate", "x.keras", "--dataset", "digits"], "--epsilon"),
    (["analyze", "/no/such/best.keras", "--dataset", "digits", "--epsilon", "0.1"],
     "not found"),
    (["analyze", "x.keras", "--dataset", "digits", "--epsilon", "0.1", "--split", "val"],
     "--split"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options_exit_with_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_attack_name_and_wrong_input_shape(two_runs, capsys):
    _, calibrated, _ = two_runs
    model = str(calibrated / "model.keras")
    assert cli.main(["evaluate", model, "--dataset", "digits", "--epsilon", "0.1",
                     "--attacks", "pgd,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli.main(["evaluate", model, "--dataset", "fashion_mnist", "--epsilon", "0.1",
                     "--n", "10"]) == 2
    assert "shape" in capsys.readouterr().err


def test_help_of_every_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    for command, expected in (("train", "--acc-floor"), ("compare", "RUN_DIR"),
                              ("evaluate", "--attacks"), ("analyze", "REFERENCE.keras"),
                              ("demo", "--epochs")):
        assert cli.main([command, "--help"]) == 0
        assert expected in capsys.readouterr().out


def test_every_run_option_has_a_flag_with_help():
    import dataclasses

    from keras_advcal.experiment import RunConfig

    names = {field.name for field in dataclasses.fields(RunConfig)}
    assert names == set(cli._TRAIN_HELP)


def test_demo_config_is_a_digits_run():
    config = cli.demo_config("x", "hard", epochs=20, epsilon=0.15, seed=0, out="runs/d",
                             verbose=0).validate()
    assert (config.dataset, config.width, config.dense, config.labels) == (
        "digits", 32, 128, "hard")
    assert config.out.endswith(os.path.join("d", "x"))


def test_python_dash_m_help():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "keras_advcal", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0
    assert "advcal" in result.stdout and "compare" in result.stdout
