"""tf.distribute (issue 8): MirroredStrategy over two logical CPU devices gives the
single-device losses, metrics (val_adv_accuracy included), calibration and teacher
(best and EMA, the EMA updated inside the replicated step) on the same global batch;
MultiWorkerMirroredStrategy across two real worker processes finishes with equal
weights on both. Each configuration runs in subprocesses (logical devices and
TF_CONFIG must be set before TensorFlow initialises)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import _train_worker as worker

WORKER = str(Path(worker.__file__).resolve())
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
KINDS = ("best", "ema")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    completed = subprocess.run([sys.executable, WORKER, "mirrored", "--out", str(out),
                                "--epochs", "2"], env=ENV, capture_output=True, text=True,
                               timeout=500)
    assert completed.returncode == 0, completed.stderr[-4000:]
    runs = json.loads((out / "runs.json").read_text())
    states = {path.stem: dict(np.load(path)) for path in out.glob("*.npz")}
    return runs, states


def test_mirrored_strategy_has_two_replicas(mirrored):
    runs, _ = mirrored
    assert runs["replicas"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_mirrored_matches_single_device(mirrored, kind):
    """Same global batch (64 = 2 x 32), attacks without random start: losses, metrics,
    val_adv_accuracy, T, rho and the final weights agree to float32 rounding."""
    runs, states = mirrored
    single, replicated = runs[f"{kind}_single"], runs[f"{kind}_mirrored"]
    assert set(single["history"]) == set(replicated["history"])
    for key in ("loss", "accuracy", "adv_accuracy", "val_loss", "val_accuracy",
                "val_adv_accuracy", "temperature", "rho", "calibration_nll",
                "train_agreement", "teacher_adv_accuracy"):
        np.testing.assert_allclose(replicated["history"][key], single["history"][key],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    assert [c["rho"] for c in replicated["calibrations"]] == [
        c["rho"] for c in single["calibrations"]]
    if kind == "ema":  # calibrated on the validation pass's records (both replicas')
        assert replicated["calibrations_from_validation_pass"] == len(
            replicated["calibrations"])
    differences = worker.state_differences(states[f"{kind}_single"],
                                           states[f"{kind}_mirrored"], atol=1e-5)
    assert differences == {}
    assert states[f"{kind}_mirrored"]["teacher_ready"] == 1.0
    assert single["history"]["rho"][-1] > 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_copies_agree_across_replicas(mirrored, kind):
    """The teacher is mirrored (one copy per device); the EMA update inside the step
    and the callback's snapshot leave all copies equal."""
    runs, states = mirrored
    replicated = runs[f"{kind}_mirrored"]
    assert replicated["teacher_copies"] == 2
    assert replicated["teacher_replica_spread"] == 0.0
    teacher = [v for k, v in states[f"{kind}_mirrored"].items() if k.startswith("teacher/")]
    student = [v for k, v in states[f"{kind}_mirrored"].items() if k.startswith("student/")]
    # The EMA teacher trails the student; the best teacher is a snapshot of it.
    assert any(not np.array_equal(t, s) for t, s in zip(teacher, student)) or kind == "best"
    if kind == "ema":
        assert float(states["ema_mirrored"]["ema_decay"]) == 0.0  # reset at train end


@pytest.mark.parametrize("name", [n for n, run in worker.OBJECTIVE_RUNS.items() if run[3]])
def test_objectives_and_awp_mirrored_match_single_device(mirrored, name):
    """PGD-AT + AWP and calibrated MART + AWP (EMA teacher): the ascent gradient is
    summed over the replicas, so the replicated run takes the single-device steps."""
    runs, states = mirrored
    single, replicated = runs[f"{name}_single"], runs[f"{name}_mirrored"]
    assert set(single["history"]) == set(replicated["history"])
    for key in ("loss", "adv_accuracy", "val_loss", "val_adv_accuracy"):
        np.testing.assert_allclose(replicated["history"][key], single["history"][key],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    assert worker.state_differences(states[f"{name}_single"], states[f"{name}_mirrored"],
                                    atol=1e-5) == {}
    assert replicated["student_replica_spread"] == 0.0


def test_trades_awp_replicas_agree(mirrored):
    runs, states = mirrored
    run = runs["trades_awp_mirrored"]
    assert run["student_replica_spread"] == 0.0 and run["teacher_replica_spread"] == 0.0
    assert np.all(np.isfinite(run["history"]["loss"]))
    assert all(np.all(np.isfinite(v)) for v in states["trades_awp_mirrored"].values())


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_mirrored_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    logs = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, WORKER, "multiworker", "--out", str(tmp_path), "--epochs", "2",
             "--kind", "best"], env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for process in processes:
            process.wait(timeout=400)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    for index, process in enumerate(processes):
        assert process.returncode == 0, (tmp_path / f"worker{index}.log").read_text()[-4000:]
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    states = [dict(np.load(tmp_path / f"worker{i}.npz")) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert worker.state_differences(states[0], states[1]) == {}
    assert results[0]["history"] == results[1]["history"]
    history = results[0]["history"]
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["val_loss"]))
    assert np.all(np.isfinite(history["rho"])) and states[0]["teacher_ready"] == 1.0
