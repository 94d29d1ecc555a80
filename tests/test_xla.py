"""XLA (issue 8): with ``jit_compile=True`` on CPU the train and test steps compile and
give the graph-mode results, and neither step is traced again when T, rho or the
teacher change between epochs (they are variables read inside the compiled step)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_advcal import AdvCalTrainer
from tests import _train_worker as worker


class ChangeCalibration(keras.callbacks.Callback):
    """Sets a different T and rho at every epoch (after CalibratedTeacher's own fit),
    so that the step sees new values of both, including rho going from 0 to > 0, and
    records the number of traces so far at the end of each epoch."""

    def __init__(self, traces):
        super().__init__()
        self.traces = traces
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.model.temperature.assign(0.5 + epoch)
        self.model.rho.assign(0.3 * epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(dict(self.traces))


@pytest.fixture(scope="module")
def runs():
    """The same calibrated training (EMA teacher updated inside the step, T and rho
    changed every epoch) in graph mode and under XLA, counting Python traces of
    ``train_step`` and ``test_step``."""
    traces = {}
    original_train, original_test = AdvCalTrainer.train_step, AdvCalTrainer.test_step

    def counting(step, key):
        def wrapper(self, data):
            traces[key] = traces.get(key, 0) + 1  # runs once per trace, not per step
            return step(self, data)
        return wrapper

    results = {}
    try:
        AdvCalTrainer.train_step = counting(original_train, "train")
        AdvCalTrainer.test_step = counting(original_test, "test")
        for jit in (False, True):
            traces.clear()
            trainer = worker.make_trainer(seed=2, random_start=False, jit_compile=jit)
            teacher_callback = worker.make_teacher_callback("ema")
            change = ChangeCalibration(traces)
            history = worker._fit(trainer, 3, [change, teacher_callback])
            data = worker.splits()
            evaluation = trainer.evaluate(*data["val"], batch_size=64, verbose=0,
                                          return_dict=True)
            results[jit] = dict(history=history.history, evaluation=evaluation,
                                traces=dict(traces), per_epoch=change.per_epoch,
                                trainer=trainer, callback=teacher_callback)
    finally:
        AdvCalTrainer.train_step, AdvCalTrainer.test_step = original_train, original_test
    return results


def test_xla_steps_compile(runs):
    trainer = runs[True]["trainer"]
    assert trainer.jit_compile is True
    assert runs[True]["history"]["rho"][-1] >= 0.0
    assert np.all(np.isfinite(runs[True]["history"]["loss"]))


def test_xla_matches_graph_mode(runs):
    graph, xla = runs[False], runs[True]
    for key in ("loss", "accuracy", "adv_accuracy", "val_loss", "val_adv_accuracy",
                "temperature", "rho"):
        np.testing.assert_allclose(xla["history"][key], graph["history"][key], rtol=1e-4,
                                   atol=1e-5, err_msg=key)
    for key, value in graph["evaluation"].items():
        assert xla["evaluation"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    a, b = graph["trainer"], xla["trainer"]
    for model in ("student", "teacher"):
        for u, v in zip(getattr(a, model).get_weights(), getattr(b, model).get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_no_retracing_when_t_rho_or_teacher_change(runs, jit):
    run = runs[jit]
    # T and rho did change from epoch to epoch, and the EMA teacher moved every step.
    assert len(set(np.round(run["history"]["temperature"], 6))) > 1
    assert not np.allclose(run["trainer"].teacher.get_weights()[0],
                           worker.make_model("dense", seed=2).get_weights()[0])
    # All tracing happens in the first epoch and nothing after it (fit's later epochs
    # and the final evaluate): 640 training and 192 validation examples in batches of
    # 64 give one input shape. The first call may trace train_step twice: Keras builds
    # the optimizer inside it when no strategy is set, and tf.function traces again
    # after a trace that created variables.
    assert run["per_epoch"][0] == run["per_epoch"][-1] == run["traces"]
    assert run["traces"]["test"] == 1
    assert run["traces"]["train"] <= 2
    # The calibration used the validation pass's records (recorded inside the one
    # traced test step); its own attack functions were traced at most once.
    assert run["callback"].calibrations_from_validation_pass > 0
    for name in ("_val_examples", "_student_logits", "_train_logits"):
        step = getattr(run["callback"], name)._step
        assert step.experimental_get_tracing_count() <= 1, name


@pytest.mark.parametrize("objective", ["mart", "trades"])
def test_objectives_with_awp_compile_under_xla(objective):
    """Calibrated MART or TRADES with AWP (EMA teacher updated in the step, the weights
    perturbed and restored in it) compiles under XLA and is traced in the first epoch
    only; MART's attack has no random start, so XLA also gives the graph-mode run.
    (TRADES's Gaussian start is drawn by another random algorithm under XLA.)"""
    from keras_advcal import AWP

    results = {}
    for jit in (False, True):
        trainer = worker.make_trainer(seed=2, random_start=False, jit_compile=jit,
                                      objective=objective, weight_perturbation=AWP(0.01))
        traces = {}
        step = trainer.train_step

        def counting(data, step=step, traces=traces):
            traces["train"] = traces.get("train", 0) + 1  # once per trace
            return step(data)

        trainer.train_step = counting
        change = ChangeCalibration(traces)
        history = worker._fit(trainer, 3, [change, worker.make_teacher_callback("ema")])
        results[jit] = (history.history, trainer)
        assert np.all(np.isfinite(history.history["loss"]))
        assert change.per_epoch[0] == change.per_epoch[-1] and traces["train"] <= 2
    assert results[True][1].jit_compile is True
    if objective == "mart":
        for key in ("loss", "adv_accuracy", "val_adv_accuracy", "rho"):
            np.testing.assert_allclose(results[True][0][key], results[False][0][key],
                                       rtol=1e-4, atol=1e-5, err_msg=key)
        for u, v in zip(results[False][1].student.get_weights(),
                        results[True][1].student.get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_rectified_targets_compile_under_xla_and_match_graph_mode():
    """Per-example rectified ratios are plain tensor ops of the step: the XLA step gives
    the graph-mode run (no random start), with a calibration that fits rho without a
    floor."""
    results = {}
    for jit in (False, True):
        trainer = worker.make_trainer(seed=4, random_start=False, jit_compile=jit,
                                      rectified_targets=True)
        history = worker._fit(trainer, 3, [worker.make_teacher_callback("swa", acc_floor=0.0)])
        assert np.all(np.isfinite(history.history["loss"]))
        results[jit] = history.history
    assert max(results[True]["rho"]) > 0.0  # the rectified targets were trained on
    for key in ("loss", "adv_accuracy", "val_adv_accuracy", "rho", "temperature"):
        np.testing.assert_allclose(results[True][key], results[False][key],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
