"""The ``advcal`` command line: real (tiny) runs on digits in a temporary directory."""

import json
import os
import subprocess
import sys

import pytest

from keras_advcal import cli
from keras_advcal.config import RunConfig

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
    (["train", "--labels", "calibrated", "--teacher", "fixed"], "needs --teacher-model"),
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
    for command, expected in (("train", "--acc-floor"), ("train", "training_done.json"),
                              ("compare", "RUN_DIR"),
                              ("evaluate", "--attacks"), ("analyze", "REFERENCE.keras"),
                              ("demo", "--epochs")):
        assert cli.main([command, "--help"]) == 0
        assert expected in capsys.readouterr().out


def test_every_run_option_has_a_flag_with_help():
    import dataclasses

    from keras_advcal.experiment import RunConfig

    names = {field.name for field in dataclasses.fields(RunConfig)}
    assert names == set(cli._TRAIN_HELP)


def test_train_options_and_choices_are_the_librarys():
    """The help lists RunConfig's fields and the implementing modules' own choices."""
    import dataclasses

    from keras_advcal import autoattack, calibration, experiment, models, targets, teacher

    assert cli.run_fields() == [(field.name, field.default)
                                for field in dataclasses.fields(experiment.RunConfig)]
    implemented = {"labels": experiment.RUN_LABELS, "teacher": teacher.TEACHER_KINDS,
                   "loss_form": targets.LOSS_FORMS, "rule": calibration.RULES,
                   "selection": calibration.SELECTIONS, "model": tuple(models.available()),
                   "objective": experiment.RUN_OBJECTIVES,
                   "floor_examples": teacher.FLOOR_EXAMPLES}
    for field, names in implemented.items():
        assert tuple(cli._CHOICES[field]) == tuple(names), field
    evaluate = cli.build_parser().parse_args(["evaluate", "m.keras", "--dataset", "digits",
                                              "--epsilon", "0.1", "--version", "fast"])
    assert evaluate.version in autoattack.VERSIONS


def test_every_run_option_is_in_one_help_group():
    import dataclasses

    from keras_advcal.experiment import RunConfig

    grouped = [name for _, _, names in cli.TRAIN_GROUPS for name in names]
    assert len(grouped) == len(set(grouped))
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    assert set(grouped) == fields | set(cli._TRAIN_ONLY)
    assert [title for title, _, _ in cli.TRAIN_GROUPS] == [
        "data", "model", "threat model", "method", "optimisation", "evaluation", "output",
        "calibration study variants"]
    for name in ("optimizer", "momentum", "weight_decay", "lr_schedule", "lr_drops"):
        assert name in dict((t, n) for t, _, n in cli.TRAIN_GROUPS)["optimisation"]


def test_train_help_is_grouped_and_help_all_shows_the_study_variants(capsys):
    assert cli.main(["train", "--help"]) == 0
    short = capsys.readouterr().out
    for title in ("data:", "model:", "threat model:", "method:", "optimisation:",
                  "evaluation:", "output:", "calibration study variants:"):
        assert f"\n{title}\n" in short, title
    assert short.index("\ndata:") < short.index("\noutput:") < short.index("\ncalibration study")
    assert "--epochs" in short and "--surrogate-examples" not in short
    assert "8 more options, shown by --help-all." in short
    assert cli.main(["train", "--help-all"]) == 0
    full = capsys.readouterr().out
    for flag in ("--surrogate-examples", "--floor-examples", "--average-fits",
                 "--calibration-size", "--epochs", "--optimizer"):
        assert flag in full, flag
    # A hidden option still parses.
    args = cli.build_parser().parse_args(["train", "--surrogate-examples", "surrogate",
                                          "--average-fits"])
    assert (args.surrogate_examples, args.average_fits) == ("surrogate", True)


def test_objective_beta_and_awp_flags():
    from keras_advcal.experiment import RunConfig

    args = cli.build_parser().parse_args(["train", "--objective", "trades", "--beta", "6",
                                          "--awp", "0.005"])
    values = {k: v for k, v in vars(args).items() if k != "command"}
    config = RunConfig.from_dict(values).validate()
    assert (config.objective, config.beta, config.awp_gamma) == ("trades", 6.0, 0.005)
    args = cli.build_parser().parse_args(["train", "--objective", "mart", "--beta", "default",
                                          "--awp-gamma", "0.01"])
    assert (args.objective, args.beta, args.awp_gamma) == ("mart", None, 0.01)


@pytest.mark.parametrize("argv, message", [
    (["train", "--objective", "madry"], "--objective"),
    (["train", "--beta", "-1"], "--beta"),
    (["train", "--awp", "-0.1"], "--awp"),
    (["train", "--objective", "pgd_at", "--beta", "6"],
     "beta applies to objective trades or mart"),
])
def test_bad_objective_options_exit_with_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_config_is_a_digits_run():
    config = cli.demo_config("x", "hard", epochs=20, epsilon=0.15, seed=0, out="runs/d",
                             verbose=0).validate()
    assert (config.dataset, config.width, config.dense, config.labels) == (
        "digits", 32, 128, "hard")
    assert config.out.endswith(os.path.join("d", "x"))
    # The demo's PGD-AT baseline has no weight perturbation; its default run has the
    # default recipe's.
    assert (config.objective, config.awp_gamma) == ("pgd_at", 0.0)
    default = cli.demo_config("y", "hard", 20, 0.15, 0, "runs/d", 0, "trades",
                              RunConfig().awp_gamma)
    assert (default.objective, default.awp_gamma) == ("trades", 0.01)


@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "8"], "--epsilon 8: epsilon=8.0 is larger than the range of bounds"),
    (["--labels", "calibrated", "--validation-size", "20"],
     "--validation-size 20: calibrating T and rho needs at least 100 validation images"),
    (["--epoch", "1"], "unrecognized arguments: --epoch 1 (did you mean: --epoch -> "
                       "--epochs?)"),
    (["--dataset", "fashion_mnsit"], "unknown dataset 'fashion_mnsit'; did you mean "
                                     "fashion_mnist?"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["--final-attacks", "pgd,apgd-x"], "--final-attacks: unknown attack(s) apgd-x"),
    (["--subset", "0.5"], "argument --subset: expected a whole number or 'all', got '0.5'"),
    (["--test-size", "5000"], "--test-size must be a count in [0, 359], got 5000."),
    (["--awp-gamma", "x"], "argument --awp/--awp-gamma: expected a number, got 'x'"),
    (["--labels", "adr"], "labels='adr' is the ADR baseline, which trains with the pgd_at "
                          "objective, not 'trades': set objective='pgd_at' (on the command "
                          "line: --labels adr --objective pgd_at)."),
])
def test_bad_train_options_stop_before_anything_is_written(argv, message, tmp_path, capsys):
    """Exit 2, the train command's one-line usage and a one-line error; no run directory."""
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2 and lines[0] == "usage: advcal train [OPTIONS]", captured.err
    assert lines[1].startswith(f"advcal train: error: {message}"), captured.err
    assert captured.out == ""
    assert not out.exists()


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter, without TF_CPP_MIN_LOG_LEVEL (as a user)."""
    environ = {key: value for key, value in os.environ.items()
               if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(environ, **(env or {})), timeout=300)


def test_help_needs_no_tensorflow():
    result = _python("import sys\n"
                     "from keras_advcal import cli\n"
                     "for argv in (['--help'], ['compare', '--help'], ['demo', '--help'],\n"
                     "             ['evaluate', '--help'], ['train', '--help'],\n"
                     "             ['train', '--help-all'], ['analyze', '--help']):\n"
                     "    assert cli.main(argv) == 0\n"
                     "print('tensorflow imported:', 'tensorflow' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("tensorflow imported: False")
    assert result.stderr == ""


def test_a_bad_option_in_a_fresh_process_prints_two_lines_and_no_tensorflow_logs(tmp_path):
    """TensorFlow's start-up log lines are hidden; the error is the whole output."""
    out = tmp_path / "run"
    result = _python("import sys\nfrom keras_advcal.cli import main\n"
                     f"sys.exit(main(['train', '--dataset', 'digits', '--epsilon', '8', "
                     f"'--out', {str(out)!r}]))")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == "usage: advcal train [OPTIONS]", result.stderr
    assert lines[1].startswith("advcal train: error: --epsilon 8: ")
    assert not out.exists()


def test_curves_figure_has_integer_epochs_plain_t_labels_and_drawn_legend(tmp_path):
    from keras_advcal.experiment import plot_curves

    # A development-split curve evaluated once, T within a decade (a log axis that
    # matplotlib would label 6.2x10^-1), no clean curve.
    history = {"epoch": [0, 1, 2, 3, 4],
               "adv_accuracy": [0.2, 0.3, 0.35, 0.4, 0.42],
               "val_adv_accuracy": [0.25, 0.3, 0.33, 0.36, 0.37],
               "dev_adv_accuracy": [None, None, None, None, 0.35],
               "temperature": [0.55, 0.6, 0.62, 0.64, 0.7],
               "rho": [0.1, 0.3, 0.35, 0.4, 0.4]}
    fig = plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    accuracy, calibration = fig.axes[0], fig.axes[1]
    for ax in (accuracy, calibration):
        ticks = [tick for tick in ax.get_xticks() if 1 <= tick <= 5]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    labels = [label.get_text() for label in calibration.get_yticklabels()
              if label.get_text()]
    assert labels, "no T tick labels"
    for label in labels:
        float(label)  # a plain decimal, not 6.2x10^-1
    assert not [label.get_text() for label in calibration.get_yticklabels(minor=True)
                if label.get_text()]
    drawn = [line.get_label() for line in accuracy.get_lines() if len(line.get_xdata())]
    legend = [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert legend == drawn == ["robust development (PGD, evaluated epochs)",
                               "robust validation",
                               "robust training (training attack, during the epoch)"]
    (single,) = [line for line in accuracy.get_lines() if len(line.get_xdata()) == 1]
    assert single.get_marker() not in (None, "", "None")  # one evaluation still shows
    assert [text.get_text() for text in calibration.get_legend().get_texts()] == [
        "T (left, log)", "rho (right)"]
    # One epoch: the axis still counts whole epochs.
    one = {key: values[:1] for key, values in history.items() if key != "dev_adv_accuracy"}
    fig = plot_curves(one, tmp_path / "one.png")
    for ax in fig.axes[:2]:
        low, high = ax.get_xlim()
        ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert ticks == [1.0], ticks


def test_compare_draws_a_marker_for_every_evaluation(tmp_path):
    runs = []
    for name, key in (("once", "test_adv_accuracy"), ("dev", "dev_adv_accuracy")):
        run = tmp_path / name
        run.mkdir()
        (run / "history.json").write_text(json.dumps(
            {"epoch": [0, 1], key: [None, 0.4], "val_adv_accuracy": [0.3, 0.35]}))
        runs.append(run)
    fig = cli.plot_comparison(runs, tmp_path / "compare.png")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["once", "dev"]
    assert all(len(line.get_xdata()) == 1 and line.get_marker() == "o" for line in lines)
    assert fig.axes[0].get_ylabel() == "robust test or development accuracy"


def test_python_dash_m_help():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "keras_advcal", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0
    assert "advcal" in result.stdout and "compare" in result.stdout


# ------------------------------------------------------------------- --download
_DOWNLOAD_DIR: list = []  # where the builder below prepares itself (set by the fixture)


@pytest.fixture
def local_tfds_dataset(tmp_path):
    """A TFDS dataset that TFDS builds on this machine (no network): 8x8 grey images
    whose label is their pixel value mod 10; prepared only when asked to download."""
    import numpy as np
    import tensorflow_datasets as tfds

    class AdvcalCliDownload(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, **kwargs):
            super().__init__(**dict(kwargs, data_dir=str(_DOWNLOAD_DIR[-1])))

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 1)),
                 "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 160),
                    "test": self._generate_examples(1000, 40)}

        def _generate_examples(self, start, count):
            for key in range(start, start + count):
                yield key, {"image": np.full((8, 8, 1), key % 256, np.uint8),
                            "label": key % 10}

    _DOWNLOAD_DIR.append(tmp_path / "tfds")
    return "advcal_cli_download"


def test_download_fetches_a_missing_dataset_and_its_absence_says_how(local_tfds_dataset,
                                                                    tmp_path, capsys):
    small = ["--dataset", local_tfds_dataset, "--subset", "40", "--validation-size", "100",
             "--test-size", "20", "--width", "4", "--dense", "8", "--train-steps", "1",
             "--eval-steps", "1", "--final-steps", "1", "--epochs", "1", "--labels",
             "hard", "--verbose", "0"]
    assert cli.main(["train", *small, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "not available on this machine. Run again with --download" in err
    assert not (tmp_path / "refused").exists()
    assert cli.main(["train", *small, "--download", "--out", str(tmp_path / "run")]) == 0
    assert "(40 training, 100 validation, 20 test images)" in capsys.readouterr().out
    assert (_DOWNLOAD_DIR[-1] / local_tfds_dataset).is_dir()  # prepared by the download
    assert "download" not in json.loads((tmp_path / "run" / "config.json").read_text())


# ------------------------------------------- defaults that exceed digits; the run directory
SMALL_RUN = [arg for arg in TINY if arg not in ("--test-size", "60")] + [
    "--labels", "hard", "--epochs", "1", "--final-attacks", ""]


def _one_error_line(captured, command: str = "train") -> str:
    """The error line of a refusal: usage, then one line; nothing on stdout."""
    lines = captured.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"usage: advcal {command}"), captured.err
    assert captured.out == ""
    return lines[1]


def test_a_finished_run_is_resumed_refused_or_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    # The default --test-size (2000) exceeds digits' 359 test images: all of them, said once.
    assert cli.main(["train", *SMALL_RUN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--test-size 359 (the default, 2000, is more than there is)") == 1
    assert json.loads((out / "config.json").read_text())["test_size"] == 359
    model = (out / "model.keras").read_bytes()
    summary = (out / "summary.json").read_text()

    # Other training options: refused in one line, nothing touched.
    assert cli.main(["train", *SMALL_RUN, "--epochs", "2", "--out", str(out)]) == 2
    error = _one_error_line(capsys.readouterr())
    assert error == (f"advcal train: error: --out {out} holds a finished run trained with "
                     "other options (--epochs 1 -> 2); add --overwrite to replace it, or "
                     "choose another --out.")
    assert (out / "summary.json").read_text() == summary
    assert (out / "model.keras").read_bytes() == model

    # The same options: the trained model is kept and only re-evaluated.
    assert cli.main(["train", *SMALL_RUN, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "model.keras").read_bytes() == model
    assert json.loads((out / "summary.json").read_text())["resumed_after_training"] is True

    # --overwrite replaces it.
    assert cli.main(["train", *SMALL_RUN, "--epochs", "2", "--overwrite",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "history.json").read_text())["epoch"] == [0, 1]
    assert "resumed_after_training" not in json.loads((out / "summary.json").read_text())


def test_train_only_then_the_same_command_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL_RUN, "--out", str(out), "--train-only"]) == 0
    printed = capsys.readouterr().out
    assert "smoothed gap" in printed and "training time" in printed
    assert "final: clean test" not in printed and "without --train-only" in printed
    assert (out / "training_done.json").is_file() and not (out / "summary.json").exists()
    model = (out / "model.keras").read_bytes()
    assert cli.main(["train", *SMALL_RUN, "--out", str(out)]) == 0
    assert "final: clean test" in capsys.readouterr().out
    assert (out / "model.keras").read_bytes() == model
    assert json.loads((out / "summary.json").read_text())["resumed_after_training"] is True


def test_an_option_the_run_does_not_read_gets_a_note_in_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL_RUN, "--out", str(out), "--train-only",
                     "--teacher", "fixed", "--momentum", "0.5"]) == 0
    captured = capsys.readouterr()
    assert ("advcal train: note: --teacher fixed is ignored: only a run with --labels "
            "calibrated reads it.") in captured.out
    assert ("advcal train: note: --momentum 0.5 is ignored: only a run with --optimizer "
            "sgd reads it.") in captured.out
    assert "UserWarning" not in captured.err


def test_out_pointing_at_a_file_is_refused_in_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert cli.main(["train", *SMALL_RUN, "--out", str(target)]) == 2
    assert _one_error_line(capsys.readouterr()) == (
        f"advcal train: error: --out {target} is a file, not a directory; choose another "
        "--out.")
    assert target.read_text() == "mine"


def test_evaluate_takes_the_whole_small_test_split_and_names_its_own_flag(two_runs, capsys):
    _, _, hard = two_runs
    model = str(hard / "model.keras")
    assert cli.main(["evaluate", model, "--dataset", "digits", "--epsilon", "0.15",
                     "--attacks", "fgsm"]) == 0
    out = capsys.readouterr().out
    assert out.count("advcal evaluate: digits: --n 359 (the default, 1000, is more than "
                     "there is)") == 1
    assert "on 359 digits test images" in out
    assert cli.main(["evaluate", model, "--dataset", "digits", "--epsilon", "0.15",
                     "--n", "5000"]) == 2
    assert _one_error_line(capsys.readouterr(), "evaluate") == (
        "advcal evaluate: error: --n must be a count in [0, 359], got 5000.")


@pytest.mark.parametrize("content, what", [
    (b"epochs,loss\n0,1.2\n", 'it is a text file (model.keras starts with "epochs,loss")'),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "it is an HDF5 file (a legacy .h5 model?"),
    (b"", "it is an empty file"),
])
def test_evaluate_says_what_a_file_that_is_not_a_keras_model_is(tmp_path, capsys, content,
                                                               what):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    assert cli.main(["evaluate", str(path), "--dataset", "digits", "--epsilon", "0.1"]) == 2
    error = _one_error_line(capsys.readouterr(), "evaluate")
    assert error.startswith(f"advcal evaluate: error: {path} is not a Keras model (.keras): "
                            f"{what}"), error


def test_evaluate_with_autoattack(two_runs, capsys, tmp_path):
    _, _, hard = two_runs
    out_json = tmp_path / "aa.json"
    assert cli.main(["evaluate", str(hard / "model.keras"), "--dataset", "digits",
                     "--epsilon", "0.15", "--autoattack", "--version", "fast", "--n", "20",
                     "--json", str(out_json)]) == 0
    assert "AutoAttack, version fast" in capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["attacks"] == ["pgd-20", "apgd-ce", "apgd-t", "square"]
    assert result["n_examples"] == 20 and result["config"]["version"] == "fast"
    assert 0.0 <= result["robust_accuracy"] <= result["clean_accuracy"] <= 1.0
    assert cli.main(["evaluate", str(hard / "model.keras"), "--dataset", "digits",
                     "--epsilon", "0.15", "--autoattack", "--version", "quick"]) == 2
    assert "argument --version: invalid choice: 'quick'" in capsys.readouterr().err


def test_download_reads_a_local_copy_first():
    """download=True (--download) fetches only what no source has: Fashion-MNIST from
    the Debian package or the Keras cache loads without a network."""
    from keras_advcal import data

    splits = data.load("fashion_mnist", subset=20, validation_size=10, test_size=10,
                       download=True)
    assert splits.source in ("tfds", "keras_cache", "debian")
    assert [len(y) for _, y in (splits.train, splits.validation, splits.test)] == [20, 10, 10]


def test_help_names_the_default_recipe_and_the_demo_s_three_runs(capsys):
    """The default objective is TRADES: the help no longer calls hard labels PGD-AT."""
    assert cli.main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    assert "demo PGD-AT, the default (TRADES + AWP) and calibrated PGD-AT on digits" in top
    assert cli.main(["train", "--help"]) == 0
    train = " ".join(capsys.readouterr().out.split())
    assert "by default TRADES with one-hot labels and AWP" in train
    assert "PGD-AT (--objective pgd_at --awp 0)" in train
    assert "'hard' (one-hot labels; PGD-AT with --objective pgd_at)" in train
    assert "(PGD-AT, one-hot labels)" not in train
    assert cli.main(["demo", "--help"]) == 0
    assert "three runs" in capsys.readouterr().out


def test_a_run_written_before_the_objective_existed_is_not_taken_for_the_default(tmp_path):
    # Its config.json lacks `objective` and `awp_gamma`: it trained PGD-AT without weight
    # perturbation, so a run with today's defaults (TRADES + AWP) at the same --out is
    # another run, refused as such, not resumed as if it were the same.
    out = tmp_path / "old"
    out.mkdir()
    stored = RunConfig(objective="pgd_at", awp_gamma=0.0, out=str(out)).to_dict()
    del stored["objective"], stored["awp_gamma"]
    (out / "config.json").write_text(json.dumps(stored))
    problem = cli.out_problem(RunConfig(out=str(out)))
    assert "--objective pgd_at -> trades" in problem and "--awp-gamma 0.0 -> 0.01" in problem
    assert cli.out_problem(RunConfig(objective="pgd_at", awp_gamma=0.0, out=str(out))) is None
