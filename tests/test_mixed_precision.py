"""Mixed precision (issue 8): under ``mixed_float16`` and ``mixed_bfloat16`` the
calibrated trainer (with a CalibratedTeacher) fits with finite losses, its attacks stay
in the ball and the bounds, and float16 training goes through Keras'
LossScaleOptimizer. The global policy is set in a subprocess (and restored to float32
there), so it cannot leak into other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import _train_worker as worker

WORKER = str(Path(worker.__file__).resolve())
POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    completed = subprocess.run(
        [sys.executable, WORKER, "mixed", "--out", str(out), "--policy", ",".join(POLICIES)],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
        timeout=400)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return {p: json.loads((out / f"mixed_{p}.json").read_text()) for p in POLICIES}


@pytest.mark.parametrize("policy", POLICIES)
def test_trainer_fits_with_finite_loss(results, policy):
    result = results[policy]
    assert result["policy"] == policy
    assert result["compute_dtype"] == policy.split("_")[1]
    assert result["variable_dtype"] == "float32"
    assert result["logits_dtype"].endswith(f"{policy.split('_')[1]}'>")
    history = result["history"]
    for key in ("loss", "val_loss", "temperature", "rho", "calibration_nll"):
        assert np.all(np.isfinite(history[key])), key
    assert history["loss"][-1] < history["loss"][0]  # it learns
    assert result["weights_finite"] and result["teacher_ready"] == 1.0
    assert result["policy_after"] == "float32"


@pytest.mark.parametrize("policy", POLICIES)
def test_attack_stays_in_ball_and_bounds(results, policy):
    result = results[policy]
    assert result["x_adv_dtype"] == "float32"  # the attack works on float32 pixels
    assert result["linf"] <= 0.1 + 1e-6
    assert result["min"] >= 0.0 and result["max"] <= 1.0


def test_loss_scale_optimizer_for_float16_only(results):
    assert results["mixed_float16"]["is_loss_scale"]
    assert results["mixed_float16"]["optimizer_class"] == "LossScaleOptimizer"
    assert results["mixed_float16"]["loss_scale"] > 1.0
    assert not results["mixed_bfloat16"]["is_loss_scale"]


def test_policy_did_not_leak_into_this_process(results):
    assert keras.mixed_precision.global_policy().name == "float32"
