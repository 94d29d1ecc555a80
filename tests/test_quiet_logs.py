"""What a newcomer reads on a first run: no TensorFlow start-up lines, no CUDA probe, no
absl notice; a failed calibration said once, with what was kept."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from keras_advcal import cli

GETTING_STARTED = Path(__file__).resolve().parents[1] / "tutorials" / "getting-started.md"

SMALL = ["--subset", "100", "--validation-size", "100", "--test-size", "50", "--width", "4",
         "--dense", "8", "--train-steps", "1", "--eval-steps", "1", "--final-steps", "1",
         "--epochs", "1", "--verbose", "0"]


def test_a_cli_run_writes_nothing_to_stderr_even_with_tf_cpp_min_log_level_3(tmp_path):
    """TF_CPP_MIN_LOG_LEVEL=3 (what the Makefile once set) no longer brings back
    TensorFlow's start-up lines, cuInit's failure on a machine without GPU, or absl's
    warning about a missing TFDS folder (Fashion-MNIST read from another source)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_advcal", "train", "--dataset", "fashion_mnist", *SMALL,
         "--labels", "hard", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "advcal train: fashion_mnist (100 training" in result.stdout


def test_a_failed_calibration_is_warned_about_once_with_what_was_kept(tmp_path):
    """A teacher that stays at chance (learning rate 1e-9) fails every fit: one warning,
    and the log's calibration_status records each epoch."""
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["train", "--dataset", "digits", *SMALL, "--epochs", "4",
                         "--validation-size", "120", "--learning-rate", "1e-9",
                         "--labels", "calibrated", "--out", str(out)]) == 0
    failed = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
              and "the fit of T and rho failed" in str(w.message)]
    status = json.loads((out / "history.json").read_text())["calibration_status"]
    assert sum(value in (3.0, 4.0) for value in status) >= 2, status
    assert len(failed) == 1, failed
    assert "so the trainer kept T=1, rho=0 (no fit yet: plain one-hot targets)" in failed[0]
    assert "calibration_status records every epoch" in failed[0]
    # Every column of the log is explained in the docs.
    history = json.loads((out / "history.json").read_text())
    docs = GETTING_STARTED.read_text()
    section = docs.split("### What each column of the epoch log means", 1)[1].split("\n## ")[0]
    missing = [key for key in history if key != "epoch" and f"`{key}`" not in section]
    assert not missing, missing
