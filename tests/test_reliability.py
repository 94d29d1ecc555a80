"""Reliability (issue 9): bad input refused at the boundary with a message that names
the argument and the fix; interruption without loss (BackupAndRestore between epochs
and mid-epoch, a resumed run bitwise equal to an uninterrupted one, a training process
killed with SIGKILL and restarted); determinism; numerical robustness of the losses and
the calibration; safe loading of saved trainers.

The failure modes tested here are the table of ``tutorials/reliability.md``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import (FGSM, PGD, AdvCalTrainer, CalibratedTeacher, InputError, calibrate,
                          calibrate_teacher)
from keras_advcal import targets
from keras_advcal.calibration import DEFAULT_TEMPERATURES
from tests import _train_worker as worker

WORKER = str(Path(worker.__file__).resolve())
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")


@pytest.fixture(scope="module")
def data():
    return worker.splits()


def _net(activation=None, channels=1):
    return keras.Sequential([keras.Input((8, 8, channels)), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation=activation)])


def _trainer(**kwargs):
    trainer = AdvCalTrainer(_net(), PGD(0.1, 0.05, 2), **kwargs)
    trainer.compile("adam")
    return trainer


def _fit(trainer, *args, **kwargs):
    return trainer.fit(*args, epochs=1, verbose=0, **kwargs)


# ======================================================== 1. input validation
class HiddenSoftmax(keras.layers.Layer):
    """A softmax that structural checks cannot see (not a Softmax layer, no activation)."""

    def call(self, inputs):
        return keras.ops.softmax(inputs)


def _twice(a):
    """128 examples from the 64 given to each case: enough for a calibration set."""
    return np.concatenate([a, a])


def _bad_input_cases():
    """(id, action(x, y), exception, substrings that the message must contain)."""
    def with_nan(x):
        x = x.copy()
        x[3, 2, 2, 0] = np.nan
        return x

    def with_inf(x):
        x = x.copy()
        x[5, 1, 1, 0] = np.inf
        return x

    def hidden_softmax(x, y):
        net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10), HiddenSoftmax()])
        trainer = AdvCalTrainer(net, PGD(0.1, 0.05, 2),
                                labels="calibrated", objective="pgd_at")  # structurally invisible
        trainer.compile("adam")
        _fit(trainer, x, y)

    def dataset(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    return [
        ("labels_too_large", lambda x, y: _fit(_trainer(), x, y + 10), InputError,
         ["`y`", "[10, 19]", "must be in [0, 9]"]),
        ("labels_negative", lambda x, y: _fit(_trainer(), x, y - 1), InputError,
         ["`y`", "[-1, 8]", "must be in [0, 9]"]),
        ("soft_labels", lambda x, y: _fit(_trainer(), x, np.full((len(y), 10), 0.1)),
         InputError, ["`y`", "soft labels", "pass integer class labels"]),
        ("non_integer_labels", lambda x, y: _fit(_trainer(), x, y + 0.5), InputError,
         ["`y`", "integer class indices"]),
        ("one_hot_of_wrong_width", lambda x, y: _fit(_trainer(), x, np.eye(12)[y]),
         InputError, ["`y`", "(batch, 10)"]),
        ("pixels_0_255", lambda x, y: _fit(_trainer(), x * 255, y), InputError,
         ["`x`", "outside the attack's bounds", "divide by 255"]),
        ("uint8_pixels", lambda x, y: _fit(_trainer(), (x * 255).astype("uint8"), y),
         InputError, ["`x`", "divide by 255"]),
        ("nan_pixels", lambda x, y: _fit(_trainer(), with_nan(x), y), InputError,
         ["`x`", "1 NaN or Inf", "np.nan_to_num"]),
        ("inf_pixels", lambda x, y: _fit(_trainer(), with_inf(x), y), InputError,
         ["`x`", "NaN or Inf", "np.nan_to_num"]),
        ("wrong_channel_count", lambda x, y: _fit(_trainer(), np.repeat(x, 3, -1), y),
         InputError, ["`x`", "3 channels", "expects 1", "NHWC"]),
        ("images_without_labels", lambda x, y: _fit(_trainer(), x), InputError,
         ["`x`", "without labels", "pass y="]),
        ("softmax_model", lambda x, y: AdvCalTrainer(_net("softmax"), PGD(0.1),
                                                     labels="calibrated", objective="pgd_at"), InputError,
         ["`model`", "softmax", "Dense(10) instead of", "from_logits=False"]),
        ("softmax_fixed_teacher",
         lambda x, y: AdvCalTrainer(_net(), PGD(0.1), teacher=_net("softmax"),
                                    labels="calibrated", objective="pgd_at"), InputError,
         ["`teacher`", "softmax", "from_logits=False"]),
        ("hidden_softmax_model", hidden_softmax, InputError,
         ["`model`", "outputs probabilities", "from_logits=False"]),
        ("negative_epsilon", lambda x, y: PGD(epsilon=-0.1), ValueError,
         ["epsilon", "non-negative", "-0.1"]),
        ("nan_epsilon", lambda x, y: FGSM(epsilon=float("nan")), ValueError,
         ["epsilon", "non-negative"]),
        ("epsilon_beyond_bounds", lambda x, y: PGD(epsilon=8.0), ValueError,
         ["epsilon=8.0", "bounds", "8/255"]),
        ("l2_epsilon_beyond_box",
         lambda x, y: _fit(AdvCalTrainer(_net(), PGD(9.0, norm="l2"),
                                         labels="calibrated", objective="pgd_at"), x, y), InputError,
         ["`attack`", "L2 epsilon=9", "diameter 8", "epsilon=0.5"]),
        ("negative_step_size", lambda x, y: PGD(0.1, step_size=-1.0), ValueError,
         ["step_size", "non-negative"]),
        ("zero_steps", lambda x, y: PGD(0.1, steps=0), ValueError,
         ["steps", "positive integer"]),
        ("calibration_set_too_small",
         lambda x, y: CalibratedTeacher((x[:20], y[:20]), (_twice(x), _twice(y))), ValueError,
         ["`validation_data`", "has 20 examples", "at least 100", "Hold out more data"]),
        ("train_sample_too_small",
         lambda x, y: CalibratedTeacher((_twice(x), _twice(y)), (x[:30], y[:30])), ValueError,
         ["`train_sample`", "has 30 examples", "at least 100"]),
        ("calibrate_teacher_too_small",
         lambda x, y: calibrate_teacher(_net(), _net(), (x[:20], y[:20]), (_twice(x), _twice(y)),
                                        PGD(0.1, steps=1)), ValueError,
         ["`validation_data`", "has 20 examples", "at least 100"]),
        ("tf_data_bad_pixels", lambda x, y: _fit(_trainer(), dataset(x * 255, y)),
         InputError, ["`x`", "divide by 255"]),
        ("tf_data_bad_labels", lambda x, y: _fit(_trainer(), dataset(x, y + 10)),
         InputError, ["`y`", "must be in [0, 9]"]),
        ("tf_data_without_labels",
         lambda x, y: _fit(_trainer(), tf.data.Dataset.from_tensor_slices(x).batch(8)),
         InputError, ["`x`", "without labels", "tf.data.Dataset of (x, y)"]),
        ("generator_bad_pixels",
         lambda x, y: _fit(_trainer(), ((x[i:i + 8] * 255, y[i:i + 8]) for i in (0, 8))),
         InputError, ["`x`", "divide by 255"]),
        ("validation_data_bad_labels",
         lambda x, y: _fit(_trainer(), x, y, validation_data=(x, y + 10)), InputError,
         ["`validation_data labels`", "must be in [0, 9]"]),
        ("validation_data_bad_pixels",
         lambda x, y: _fit(_trainer(), x, y, validation_data=(x * 255, y)), InputError,
         ["`validation_data`", "divide by 255"]),
        ("validation_tf_data_bad_labels",
         lambda x, y: _fit(_trainer(), x, y, validation_data=dataset(x, y + 10)),
         InputError, ["`validation_data labels`", "must be in [0, 9]"]),
        ("evaluate_bad_pixels",
         lambda x, y: _trainer().evaluate(x * 255, y, verbose=0), InputError,
         ["`x`", "divide by 255"]),
        ("compile_with_loss",
         lambda x, y: AdvCalTrainer(_net(), PGD(0.1),
                                    labels="calibrated", objective="pgd_at").compile("adam", loss="mse"),
         ValueError, ["without `loss`"]),
    ]


@pytest.mark.parametrize("case", _bad_input_cases(), ids=lambda case: case[0])
def test_bad_input_is_refused_with_a_fix(case, data):
    _, action, error, substrings = case
    x, y = data["train"]
    with pytest.raises(error) as raised:
        action(x[:64], y[:64])
    message = str(raised.value)
    for text in substrings:
        assert text in message, f"{text!r} not in {message!r}"


def test_refused_input_leaves_the_trainer_usable(data):
    """The checks run before Keras traces anything: after a refused call the same
    trainer trains on good data (no 'variables on a non-first call' error)."""
    x, y = data["train"]
    trainer = _trainer(labels="hard")
    with pytest.raises(InputError):
        _fit(trainer, x[:64] * 255, y[:64])
    with pytest.raises(InputError):
        _fit(trainer, x[:64])
    history = _fit(trainer, x[:64], y[:64])
    assert np.isfinite(history.history["loss"][0])


def test_one_hot_and_column_labels_train_exactly_like_integer_labels(data):
    """One-hot (batch, 10) and (batch, 1) labels are accepted, explicitly, and give
    the same training as integer labels (same seed: same weights and history)."""
    x, y = data["train"]
    x, y = x[:256], y[:256]
    results = []
    for labels in (y, np.eye(10, dtype="float32")[y], y[:, None]):
        trainer = worker.make_trainer(labels="hard", seed=4)
        history = trainer.fit(x, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        results.append((history.history, trainer.student.get_weights()))
    for history, weights in results[1:]:
        assert history == results[0][0]
        for a, b in zip(weights, results[0][1]):
            np.testing.assert_array_equal(a, b)


def test_probability_model_trains_with_from_logits_false(data):
    """The explicit alternative named in the softmax error works."""
    x, y = data["train"]
    trainer = AdvCalTrainer(_net("softmax"), PGD(0.1, 0.05, 2), labels="hard",
                            from_logits=False, objective="pgd_at")
    trainer.compile("adam")
    history = _fit(trainer, x[:128], y[:128], batch_size=64)
    assert np.isfinite(history.history["loss"][0])


# ============================================ 2. interruption: BackupAndRestore
class Snapshots(keras.callbacks.Callback):
    """Placed after BackupAndRestore: records the trainer's state each time the backup
    file is rewritten (so it is exactly what was saved), and raises at
    ``interrupt_at = (epoch, batch)`` (``batch=None``: at the epoch's beginning)."""

    def __init__(self, weights_path, interrupt_at):
        super().__init__()
        self.weights_path = weights_path
        self.interrupt_at = interrupt_at
        self.saved = None
        self.saves = 0
        self._mtime = None
        self.epoch = 0

    def _record_if_saved(self):
        if os.path.exists(self.weights_path):
            mtime = os.stat(self.weights_path).st_mtime_ns
            if mtime != self._mtime:
                self._mtime = mtime
                self.saved = worker.trainer_state(self.model)
                self.saves += 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.interrupt_at == (epoch, None):
            raise KeyboardInterrupt("simulated preemption")

    def on_train_batch_end(self, batch, logs=None):
        self._record_if_saved()
        if self.interrupt_at == (self.epoch, batch):
            raise KeyboardInterrupt("simulated preemption")

    def on_epoch_end(self, epoch, logs=None):
        self._record_if_saved()


class RestoredState(keras.callbacks.Callback):
    """Placed after BackupAndRestore: the state right after it restored."""

    def on_train_begin(self, logs=None):
        self.state = worker.trainer_state(self.model)


@pytest.mark.parametrize("kind, save_freq, interrupt_at, epochs, options", [
    ("best", "epoch", (2, None), 3, {}),  # between epochs
    # mid-epoch: saved after batch 5 of epoch 1 (batches 3, 6, 9...); calibrated on its
    # own attack (on the validation pass's examples this tiny EMA teacher's first fit
    # fails, which would leave T and rho at their initial values)
    ("ema", 3, (1, 7), 2, dict(calibration_examples="attack")),
    ("swa", "epoch", (2, None), 3, {}),  # calibrated on the validation pass's examples
], ids=["between_epochs_best", "mid_epoch_ema", "between_epochs_swa"])
def test_backup_and_restore_resumes_the_whole_state(tmp_path, kind, save_freq, interrupt_at,
                                                    epochs, options):
    """Weights, optimizer state, teacher weights, T, rho, teacher_score/ready/updates,
    EMA decay and the attack's random state are all restored, into a trainer built with
    another seed (so everything must come from the backup). Keras 3.15 resumes a
    mid-epoch backup at the beginning of the interrupted epoch (with the mid-epoch
    state), which the epochs run afterwards show."""
    backup_dir = str(tmp_path / "backup")
    weights_path = os.path.join(backup_dir, "latest.weights.h5")
    trainer = worker.make_trainer(seed=0)
    snapshots = Snapshots(weights_path, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        worker._fit(trainer, epochs, [
            worker.make_teacher_callback(kind, **options),
            keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq), snapshots])
    saved = snapshots.saved
    assert saved is not None and os.path.exists(weights_path)
    assert saved["teacher_ready"] == 1.0 and saved["rho"] > 0.0
    assert saved["temperature"] != 1.0  # fitted at the end of epoch 0
    if kind == "ema":
        assert saved["ema_decay"] == pytest.approx(0.995)
    elif kind == "best":
        assert np.isfinite(saved["teacher_score"])

    resumed = worker.make_trainer(seed=5)
    probe = RestoredState()
    history = worker._fit(resumed, epochs, [
        worker.make_teacher_callback(kind, **options),
        keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq), probe])
    assert worker.state_differences(probe.state, saved) == {}
    assert history.epoch == list(range(interrupt_at[0], epochs))
    assert np.all(np.isfinite(history.history["rho"]))
    assert not os.path.exists(backup_dir)  # deleted once training completed


def test_restarted_teacher_callback_reuses_the_same_training_sample_examples(data):
    """After a restart the callback rebuilds its cache of teacher logits on the training
    sample; it must equal the cache of an uninterrupted run (the pass is seeded
    independently of the epoch), or resumed runs drift from uninterrupted ones."""
    trainer = worker.make_trainer(seed=0)
    running = worker.make_teacher_callback("best")
    worker._fit(trainer, 1, [running])
    no_improvement = {"val_adv_accuracy": -1.0}
    running.on_epoch_end(1, dict(no_improvement))  # keeps its cache (teacher unchanged)
    restarted = worker.make_teacher_callback("best")
    restarted.set_model(trainer)
    restarted.on_train_begin()
    restarted.on_epoch_end(1, dict(no_improvement))  # rebuilds it
    np.testing.assert_array_equal(restarted._teacher_cache["train"],
                                  running._teacher_cache["train"])
    assert restarted.results[-1].to_dict() == running.results[-1].to_dict()


# ===================== 2-3. bitwise resume and determinism (op determinism: subprocess)
def _run_worker(args, timeout):
    completed = subprocess.run([sys.executable, WORKER, *args], env=ENV, timeout=timeout,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.fixture(scope="module", params=["best", "swa"])
def deterministic_runs(tmp_path_factory, request):
    """best: the snapshot teacher; swa (the default): a moving teacher whose kept
    validation examples must come back from the backup."""
    out = tmp_path_factory.mktemp("resume")
    epochs, interrupt = ("3", "2") if request.param == "best" else ("4", "3")
    _run_worker(["resume", "--out", str(out), "--epochs", epochs, "--interrupt", interrupt,
                 "--kind", request.param], timeout=600)
    runs = json.loads((out / "runs.json").read_text())
    states = {name: dict(np.load(out / f"{name}.npz")) for name in ("A", "B", "C")}
    return runs, states


def test_same_seed_gives_identical_history_and_weights(deterministic_runs):
    """Two runs with the same seed and data order, op determinism on: bitwise equal."""
    runs, states = deterministic_runs
    assert runs["A"]["history"] == runs["B"]["history"]
    assert worker.state_differences(states["A"], states["B"]) == {}
    assert runs["A"]["history"]["rho"][-1] > 0.0  # the teacher was in use


def test_interrupted_and_resumed_run_is_bitwise_identical(deterministic_runs):
    """A run interrupted at epoch 2 (a callback raising) and resumed by BackupAndRestore
    ends with exactly the weights, optimizer state, teacher, T and rho of the
    uninterrupted run (bitwise; op determinism on, same seed, unshuffled data: with
    ``shuffle=True`` the resumed epochs would see another order, since the shuffling
    stream is not part of the checkpoint)."""
    runs, states = deterministic_runs
    assert runs["C_checkpoint_left"]
    start = runs["C"]["epochs_run"][0]
    assert start >= 2 and runs["C"]["epochs_run"] == runs["A"]["epochs_run"][start:]
    assert worker.state_differences(states["A"], states["C"]) == {}
    for key, values in runs["C"]["history"].items():
        assert values == runs["A"]["history"][key][start:], key


# ================================================ 2. a real SIGKILL and restart
def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def test_training_killed_with_sigkill_resumes_and_completes(tmp_path):
    epochs = 6
    backup = tmp_path / "backup"
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--backup-dir", str(backup), "--epochs", str(epochs),
            "--kind", "best", "--csv", str(tmp_path / "log.csv")]
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen([sys.executable, WORKER, *args, "--sleep", "0.1"], env=ENV,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            meta = _read_json(backup / "training_metadata.json")
            if meta is not None and meta["epoch"] >= 2:
                break
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        process.kill()  # SIGKILL: no Python cleanup, no on_train_end
        assert process.wait(timeout=30) == -9
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert not (out / "result.json").exists()
    checkpoint_epoch = (_read_json(backup / "training_metadata.json") or {"epoch": None})[
        "epoch"]
    with open(tmp_path / "log.csv") as handle:
        before = list(csv.DictReader(handle))

    _run_worker(args, timeout=300)
    result = json.loads((out / "result.json").read_text())
    first = result["epochs_run"][0]
    # Resumed, not restarted: from the last checkpoint (or the one before it, which
    # double_checkpoint keeps in case the kill hit the write).
    assert first >= 1 and first in (checkpoint_epoch, checkpoint_epoch - 1)
    assert result["epochs_run"] == list(range(first, epochs))
    history, state = result["history"], result["state"]
    assert len(history["rho"]) == epochs - first
    for key in ("rho", "temperature", "calibration_nll", "teacher_adv_accuracy"):
        assert np.all(np.isfinite(history[key])), key
    assert state["teacher_ready"] == 1.0
    assert state["rho"] == pytest.approx(history["rho"][-1], abs=1e-6)
    assert state["temperature"] == pytest.approx(history["temperature"][-1], rel=1e-6)
    # The best-teacher score survived the kill: it is the best val_adv_accuracy of all
    # the epochs the final weights went through (before the checkpoint, and after).
    scores = [float(row["val_adv_accuracy"]) for row in before if int(row["epoch"]) < first]
    scores += history["val_adv_accuracy"]
    assert state["teacher_score"] >= max(history["val_adv_accuracy"]) - 1e-7
    if len({int(row["epoch"]) for row in before if int(row["epoch"]) < first}) == first:
        assert state["teacher_score"] == pytest.approx(max(scores), abs=1e-6)
    assert not result["backup_left"]


# ====================================================== 5. numerical robustness
EXTREME = [1e4, -1e4]


def _extreme_logits(seed, dtype="float32", n=16, k=10):
    rng = np.random.default_rng(seed)
    logits = rng.choice(EXTREME + [0.0, 3.0], size=(n, k))
    return tf.constant(logits, dtype=dtype), tf.constant(rng.integers(0, k, n), "int32")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("temperature", [float(DEFAULT_TEMPERATURES[0]),
                                         float(DEFAULT_TEMPERATURES[-1])])
@pytest.mark.parametrize("loss", [targets.kd_loss, targets.soft_target_loss],
                         ids=["kd", "soft"])
def test_calibrated_losses_finite_for_extreme_logits(loss, temperature, dtype):
    student, labels = _extreme_logits(0, dtype)
    teacher, _ = _extreme_logits(1, dtype)
    for rho in (0.0, 0.5, 1.0):
        with tf.GradientTape() as tape:
            tape.watch(student)
            values = loss(labels, student, teacher, temperature, rho)
        gradient = tape.gradient(values, student)
        assert values.dtype == tf.float32
        assert np.all(np.isfinite(values.numpy())), (rho, values.numpy())
        assert np.all(np.isfinite(tf.cast(gradient, "float32").numpy()))
        assert np.all(values.numpy() >= -1e-3)
    assert np.all(np.isfinite(targets.hard_loss(labels, student).numpy()))
    targets_ = targets.calibrated_targets(teacher, labels, temperature, 0.5)
    np.testing.assert_allclose(tf.reduce_sum(targets_, -1).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_calibrate_finite_for_extreme_logits(dtype):
    teacher, labels = _extreme_logits(2, dtype, n=120)
    surrogate, _ = _extreme_logits(3, dtype, n=120)
    train, train_labels = _extreme_logits(4, dtype, n=120)
    for floor in (0.0, 0.9):
        result = calibrate(teacher.numpy(), surrogate.numpy(), labels.numpy(), train.numpy(),
                           train_labels.numpy(), acc_floor=floor)
        assert DEFAULT_TEMPERATURES[0] <= result.temperature <= DEFAULT_TEMPERATURES[-1] or (
            not result.feasible and result.temperature == 1.0)
        assert 0.0 <= result.rho <= 1.0
        assert np.all(np.isfinite(result.nll_grid))
        if result.feasible:
            assert np.isfinite(result.nll)
    # The grid ends themselves.
    grid = calibrate(teacher.numpy(), surrogate.numpy(), labels.numpy(), train.numpy(),
                     train_labels.numpy(), acc_floor=0.0,
                     temperatures=[DEFAULT_TEMPERATURES[0], DEFAULT_TEMPERATURES[-1]])
    assert np.all(np.isfinite(grid.nll_grid)) and np.all(np.isfinite(grid.agreement_grid))


def test_training_step_finite_with_extreme_teacher(data):
    """A teacher with logits of order 1e4 and T at both grid ends keeps the step finite."""
    x, y = data["train"]
    trainer = worker.make_trainer(seed=0)
    for teacher_var in trainer.teacher.weights:
        teacher_var.assign(teacher_var * 3e3)
    trainer.rho.assign(1.0)
    for temperature in (DEFAULT_TEMPERATURES[0], DEFAULT_TEMPERATURES[-1]):
        trainer.temperature.assign(temperature)
        logs = trainer.train_on_batch(x[:64], y[:64], return_dict=True)
        assert np.isfinite(logs["loss"])
    assert float(np.max(np.abs(trainer.teacher_logits(x[:64]).numpy()))) > 1e3
    assert all(np.all(np.isfinite(w)) for w in trainer.student.get_weights())


# ============================================================ 6. safe loading
def _assert_same_trainer(a, b, x):
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    assert worker.state_differences(worker.trainer_state(a), worker.trainer_state(b)) == {}
    assert a.attack.get_config() == b.attack.get_config()
    assert type(a.attack) is type(b.attack)
    assert a.validation_attack.get_config() == b.validation_attack.get_config()
    # Same JSON config (a loaded config has lists where the original has tuples).
    assert json.dumps(a.get_config(), sort_keys=True) == json.dumps(b.get_config(),
                                                                    sort_keys=True)


@pytest.mark.parametrize("variant", ["hard", "calibrated", "fixed_teacher"])
def test_safe_mode_load_restores_everything(tmp_path, data, variant):
    x, y = data["train"]
    x_val, y_val = data["val"]
    kwargs = {}
    attack = PGD(0.1, 0.04, 2, norm="linf", seed=11)
    eval_attack = PGD(1.0, 0.3, 3, norm="l2", loss="cw", random_start=False)
    if variant == "fixed_teacher":
        kwargs = dict(teacher=worker.make_model("dense", seed=9), temperature=1.7, rho=0.4)
    labels = "hard" if variant == "hard" else "calibrated"
    trainer = AdvCalTrainer(worker.make_model("dense", seed=1), attack, eval_attack=eval_attack,
                            labels=labels, seed=21, **kwargs)
    trainer.compile(keras.optimizers.Adam(1e-2))
    callbacks = []
    if variant == "calibrated":
        callbacks = [worker.make_teacher_callback("best")]
    trainer.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0,
                validation_data=(x_val, y_val), callbacks=callbacks)
    if variant == "calibrated":
        assert trainer.teacher_ready.numpy() == 1.0
        # One epoch's fit may be kept (teacher == student): set values to round-trip.
        trainer.temperature.assign(1.3)
        trainer.rho.assign(0.37)
        trainer.calibration_cache["x_adv"] = np.asarray(x_val[:8])
    path = str(tmp_path / f"{variant}.keras")
    trainer.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, AdvCalTrainer)
    _assert_same_trainer(trainer, loaded, x_val)
    assert loaded.has_fixed_teacher == (variant == "fixed_teacher")
    if loaded.teacher is not None:
        np.testing.assert_array_equal(trainer.teacher_logits(x_val).numpy(),
                                      loaded.teacher_logits(x_val).numpy())
    assert sorted(loaded.calibration_cache) == sorted(trainer.calibration_cache)
    for key, value in trainer.calibration_cache.items():
        np.testing.assert_array_equal(loaded.calibration_cache[key], value)
    assert float(loaded.optimizer.iterations.numpy()) == 4.0
