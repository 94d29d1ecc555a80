"""One configured training run, and the artifacts it leaves: the `advcal train` job.

:func:`run` takes a :class:`RunConfig` (defined in :mod:`keras_advcal.config`, which
imports no TensorFlow), trains one model with the library's pieces
(``data.load`` -> ``models.get`` -> ``AdvCalTrainer`` + ``CalibratedTeacher`` +
``RobustAccuracyTracker``) and writes into ``config.out``:

* ``model.keras``: the trainer (student, teacher, T and rho);
* ``best.keras``: the trainer at its best validation robust accuracy (only with
  ``checkpoint_best``; the teacher of the two-stage recipe);
* ``history.csv`` / ``history.json``: every logged key per epoch (``loss``,
  ``adv_accuracy``, ``val_adv_accuracy``, ``temperature``, ``rho``,
  ``teacher_adv_accuracy``, ``test_adv_accuracy``, ``test_accuracy``, ``time``...);
  epochs without a test evaluation hold empty cells / ``null``;
* ``curves.png``: robust accuracy per epoch (test, validation, training) and, for
  calibrated runs, T and rho;
* ``config.json`` and ``summary.json`` (see :func:`summarize_run`).

The defaults are the robust-overfitting benchmark's protocol (Fashion-MNIST,
500 training / 500 validation / 2,000 test images, small CNN, eps 0.1, PGD-5 training,
PGD-10 test curve every 3 epochs, Adam 1e-3, batch 64, 120 epochs).

Example:

    >>> from keras_advcal.experiment import RunConfig, run
    >>> config = RunConfig(dataset="digits", subset=150, validation_size=120,
    ...                    test_size=60, width=8, dense=32, epochs=1, eval_every=1,
    ...                    train_steps=2, eval_steps=2, final_steps=2, verbose=0,
    ...                    out="/tmp/advcal_doctest_run")
    >>> summary = run(config)
    >>> 0.0 <= summary["final_test_adv_accuracy"] <= 1.0
    True
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_advcal import data as data_lib
from keras_advcal import models as models_lib
from keras_advcal import objectives as objectives_lib
from keras_advcal.adr import ADRSchedule, adr_trainer
from keras_advcal.attacks import PGD
from keras_advcal.awp import AWP
from keras_advcal.averaging import WeightAverage
from keras_advcal.choices import RUN_LABELS, RUN_OBJECTIVES  # noqa: F401 - in __all__
from keras_advcal.config import NOT_TRAINING, RunConfig
from keras_advcal.evaluation import RobustAccuracyTracker, evaluate_robustness, summarize_history
from keras_advcal.teacher import CalibratedTeacher, calibrate_teacher
from keras_advcal.trainer import AdvCalTrainer

#: Keys of the per-epoch history that carry the calibration (plotted when present).
CALIBRATION_KEYS = ("temperature", "rho", "teacher_adv_accuracy")
SMOOTHING_WINDOW = 3
#: The short name of each split in logged keys (``test_adv_accuracy``, ``dev_adv_accuracy``).
SPLIT_KEYS = {"test": "test", "development": "dev"}


# ------------------------------------------------------------------ the recorder
class EpochRecorder(keras.callbacks.Callback):
    """Keeps every logged key of every epoch (missing keys: ``None``) and writes
    ``history.json`` / ``history.csv`` after each epoch, so a running or killed run
    leaves a readable history. Put it after the callbacks that add keys to the logs.

    Given ``previous`` (the history of an interrupted run being resumed), it keeps
    those rows; an epoch that is run again replaces its old row.

    Besides the logs, each row has ``time`` (wall-clock seconds since the run started)
    and ``cpu_time`` (CPU seconds of this process since the run started, every thread
    counted), both cumulative over a resumed run: the cost of an epoch is the difference
    between consecutive rows, and with one TensorFlow thread ``cpu_time`` does not
    depend on what else the machine runs."""

    def __init__(self, out: Path, previous: dict[str, list] | None = None):
        super().__init__()
        self.out = Path(out)
        self.rows: list[dict] = _rows(previous or {})
        self._offset = max((row.get("time") or 0.0 for row in self.rows), default=0.0)
        self._cpu_offset = max((row.get("cpu_time") or 0.0 for row in self.rows),
                               default=0.0)
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.rows = [row for row in self.rows if row["epoch"] < epoch]
        row = {"epoch": int(epoch)}
        for key, value in (logs or {}).items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                continue
        row["time"] = self._offset + time.perf_counter() - self._start
        row["cpu_time"] = self._cpu_offset + time.process_time() - self._cpu_start
        self.rows.append(row)
        write_history(self.history(), self.out)

    def history(self) -> dict[str, list]:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(key for key in row if key not in keys)
        return {key: [row.get(key) if key == "epoch" else _finite_or_none(row.get(key))
                      for row in self.rows] for key in keys}


def _rows(history: dict[str, list]) -> list[dict]:
    """The per-epoch rows of a history dict (the inverse of ``EpochRecorder.history``)."""
    epochs = history.get("epoch", [])
    return [{key: values[index] for key, values in history.items() if index < len(values)}
            for index in range(len(epochs))]


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def write_history(history: dict[str, list], out: Path) -> None:
    """Writes ``history.json`` and ``history.csv`` (one row per epoch) into ``out``."""
    out = Path(out)
    # Written to a temporary file and renamed, so a reader never sees half a file.
    staging = out / ".history.json.tmp"
    staging.write_text(json.dumps(history, indent=1))
    os.replace(staging, out / "history.json")
    keys = list(history)
    count = len(history.get("epoch", []))
    staging = out / ".history.csv.tmp"
    with open(staging, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for index in range(count):
            writer.writerow(["" if history[k][index] is None else history[k][index]
                             for k in keys])
    os.replace(staging, out / "history.csv")


def read_history(run_dir: str | os.PathLike) -> dict[str, list]:
    """The ``history.json`` of a run directory (``null`` entries as ``None``)."""
    return json.loads((Path(run_dir) / "history.json").read_text())


def records(history: dict[str, list], key: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` pairs of the epochs where ``key`` was logged.

    Example:

        >>> records({"epoch": [0, 1, 2], "x": [None, 0.5, 0.7]}, "x")
        [(1, 0.5), (2, 0.7)]
    """
    if key not in history:
        return []
    return [(int(epoch), float(value)) for epoch, value in zip(history["epoch"], history[key])
            if value is not None and not math.isnan(float(value))]


# ------------------------------------------------------------------- the summary
def summarize_run(history: dict[str, list], key: str = "test_adv_accuracy",
                  window: int = SMOOTHING_WINDOW, clean_key: str = "test_accuracy") -> dict:
    """The robust-overfitting numbers of one run's history.

    Returns a dict with ``best_test_adv_accuracy`` and its ``best_epoch`` (from 1),
    ``final_test_adv_accuracy``, ``gap``, ``smoothed_gap`` (best ``window``-evaluation
    moving average minus the mean of the last ``window`` evaluations),
    ``early_stopped_test_adv_accuracy`` (the test value at the evaluated epoch with
    the best ``val_adv_accuracy``) and its epoch, ``final_test_accuracy`` (clean),
    ``test_accuracy_at_best`` (clean test accuracy at the best robust epoch) and
    ``n_evaluations``. Epochs are counted from 1.

    Example:

        >>> h = {"epoch": [0, 1, 2, 3], "test_adv_accuracy": [0.2, 0.6, 0.5, 0.4],
        ...      "val_adv_accuracy": [0.1, 0.5, 0.6, 0.3]}
        >>> s = summarize_run(h, window=1)
        >>> s["best_epoch"], round(s["gap"], 2), s["early_stopped_epoch"]
        (2, 0.2, 3)
    """
    pairs = records(history, key)
    if not pairs:
        return {"n_evaluations": 0}
    summary = summarize_history(pairs, key=key, window=window)
    result = {
        "best_test_adv_accuracy": summary.best_value,
        "best_epoch": summary.best_epoch + 1,
        "final_test_adv_accuracy": summary.final_value,
        "final_epoch": summary.final_epoch + 1,
        "gap": summary.gap,
        "smoothed_best": summary.smoothed_best,
        "smoothed_final": summary.smoothed_final,
        "smoothed_gap": summary.smoothed_gap,
        "n_evaluations": summary.n_evaluations,
    }
    clean = dict(records(history, clean_key))
    if clean:
        result["final_test_accuracy"] = clean.get(summary.final_epoch)
        result["test_accuracy_at_best"] = clean.get(summary.best_epoch)
    val = dict(records(history, "val_adv_accuracy"))
    evaluated = [(epoch, value) for epoch, value in pairs if epoch in val]
    if evaluated:
        # The first evaluated epoch with the highest validation robust accuracy.
        epoch, value = max(evaluated, key=lambda pair: (val[pair[0]], -pair[0]))
        result["early_stopped_test_adv_accuracy"] = value
        result["early_stopped_epoch"] = epoch + 1
        result["early_stopped_val_adv_accuracy"] = val[epoch]
        if clean:
            result["early_stopped_test_accuracy"] = clean.get(epoch)
    return result


# ---------------------------------------------------------------------- the figure
def plot_curves(history: dict[str, list], path: str | os.PathLike, title: str = ""):
    """``curves.png``: robust accuracy per epoch and, when logged, T and rho.

    The per-epoch curve is plotted on whichever split the run logged
    (``test_adv_accuracy`` or ``dev_adv_accuracy``). Every line has markers, so a
    series with a single evaluation shows too, and only drawn lines get a legend
    entry. Epoch ticks are integers; the T axis is logarithmic with decimal labels.

    Args:
        history: the run's history (``history.json``: key -> per-epoch values).
        path: where to write the PNG.
        title: title of the accuracy panel (default: "accuracy per epoch").

    Returns:
        The matplotlib figure (closed, already written to ``path``).

    Example:

        >>> h = {"epoch": [0, 1, 2], "val_adv_accuracy": [0.3, 0.4, 0.45],
        ...      "temperature": [0.6, 0.65, 0.62], "rho": [0.2, 0.5, 0.4]}
        >>> fig = plot_curves(h, "/tmp/advcal_doctest_curves.png")
        >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
        ['robust validation']
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    temperature, rho = records(history, "temperature"), records(history, "rho")
    panels = 2 if temperature or rho else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    curves = [("test_adv_accuracy", "robust test (PGD, evaluated epochs)", "-", "o"),
              ("dev_adv_accuracy", "robust development (PGD, evaluated epochs)", "-", "o"),
              ("val_adv_accuracy", "robust validation", "-", "."),
              ("adv_accuracy", "robust training (training attack, during the epoch)", "-",
               "."),
              ("teacher_adv_accuracy", "teacher, robust validation", "--", "."),
              ("test_accuracy", "clean test", ":", "o"),
              ("dev_accuracy", "clean development", ":", "o")]
    for key, label, linestyle, marker in curves:
        pairs = records(history, key)
        if pairs:
            epochs, values = zip(*pairs)
            ax.plot(np.asarray(epochs) + 1, values, linestyle=linestyle, marker=marker,
                    label=label, markersize=3, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy per epoch")
    if panels == 2:
        ax = axes[0, 1]
        twin = ax.twinx()
        for axis, pairs, label, color in ((ax, temperature, "T (left, log)", "tab:red"),
                                          (twin, rho, "rho (right)", "tab:blue")):
            if pairs:
                epochs, values = zip(*pairs)
                axis.plot(np.asarray(epochs) + 1, values, "-o", label=label, color=color,
                          markersize=3)
        if temperature:
            ax.set_yscale("log")
            values = [value for _, value in temperature]
            # Within a decade, evenly spaced round ticks; else 1-2-5 ticks per decade.
            ax.yaxis.set_major_locator(
                ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
                if max(values) < 10 * min(values) else ticker.LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("T", color="tab:red")
        twin.set_ylabel("rho", color="tab:blue")
        twin.set_ylim(-0.02, 1.02)
        ax.set_title("calibration: T and rho")
        lines, labels = ax.get_legend_handles_labels()
        twin_lines, twin_labels = twin.get_legend_handles_labels()
        ax.legend(lines + twin_lines, labels + twin_labels, fontsize=8)
    last = max((int(epoch) + 1 for epoch in history.get("epoch", [])), default=1)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
        if last < 5:  # a few epochs: whole-epoch margins, so every tick is an epoch
            ax.set_xlim(0.5, last + 0.5)
        ax.grid(alpha=0.3)
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------- the run
def set_threads(threads: int) -> None:
    """Limits TensorFlow to ``threads`` intra- and inter-op threads (before any op)."""
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already initialised: keep what it has.
        pass


def load_data(config: RunConfig, download: bool = False) -> data_lib.DatasetSplits:
    """The dataset splits of ``config`` (``download``: let TFDS fetch a missing dataset)."""
    return data_lib.load(config.dataset, subset=config.subset, download=download,
                         validation_size=config.validation_size, test_size=config.test_size,
                         seed=config.data_seed, label_noise=config.label_noise,
                         development_size=config.development_size or None,
                         test_seed=config.test_seed, test_offset=config.test_offset)


def build_model(config: RunConfig, splits: data_lib.DatasetSplits) -> keras.Model:
    """The classifier of ``config`` for the dataset's input shape."""
    kwargs: dict[str, Any] = {}
    name = config.model.strip().lower().replace("-", "_")
    if name in ("cnn", "small_cnn"):
        kwargs = dict(width=config.width, dense=config.dense, batchnorm=config.batchnorm)
    elif name == "preact_resnet18":
        kwargs = dict(width=config.width)
    return models_lib.get(config.model, splits.input_shape, splits.num_classes, **kwargs)


def load_classifier(path: str | os.PathLike) -> keras.Model:
    """A classifier from a ``.keras`` file: a saved ``AdvCalTrainer`` gives its student.

    Example:

        >>> load_classifier("missing.keras")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No model file at missing.keras.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    model = keras.models.load_model(path, compile=False)
    return model.model if isinstance(model, AdvCalTrainer) else model


def _attacks(config: RunConfig):
    train_attack = PGD(config.epsilon, step_size=config.train_step_size,
                       steps=config.train_steps, random_start=True)
    eval_attack = PGD(config.epsilon, step_size=config.eval_step_size,
                      steps=config.eval_steps, random_start=True)
    final_step = (config.final_step_size if config.final_step_size is not None
                  else 2.5 * config.epsilon / config.final_steps)
    final_attack = PGD(config.epsilon, step_size=final_step, steps=config.final_steps,
                       random_start=True, seed=config.seed + 20)
    return train_attack, eval_attack, final_attack


def build_trainer(config: RunConfig, splits: data_lib.DatasetSplits):
    """The compiled trainer of ``config`` and the callbacks that drive its labels.

    Returns ``(trainer, label_callbacks, notes)``; ``notes`` records what was done
    before training (the two-stage calibration).
    """
    train_attack, eval_attack, _ = _attacks(config)
    student = build_model(config, splits)
    notes: dict[str, Any] = {}
    callbacks: list[keras.callbacks.Callback] = []
    common = dict(eval_attack=eval_attack, seed=config.seed,
                  average_weights=config.weight_average,
                  weight_perturbation=AWP(config.awp_gamma) if config.awp_gamma > 0 else None)
    objective = objectives_lib.get(config.objective, beta=config.beta)
    if config.labels == "adr":
        trainer = adr_trainer(student, train_attack, **common)
        callbacks.append(ADRSchedule(config.adr_temperature, config.adr_rho,
                                     config.ema_decay))
    elif config.labels == "hard":
        trainer = AdvCalTrainer(student, train_attack, labels="hard", objective=objective,
                                **common)
    else:
        teacher_net, temperature, rho, rule = None, 1.0, 0.0, config.rule
        fixed = (config.fixed_temperature, config.fixed_rho)
        x_val, y_val = splits.validation
        calibration_data = (x_val[:config.calibration_size], y_val[:config.calibration_size])
        if config.teacher == "fixed":
            teacher_net = load_classifier(config.teacher_model)
            teacher_net.trainable = False
            if config.surrogate_model is not None:
                surrogate = load_classifier(config.surrogate_model)
                result = calibrate_teacher(teacher_net, surrogate, calibration_data,
                                           splits.train, eval_attack,
                                           acc_floor=config.acc_floor, rule=config.rule,
                                           selection=config.selection, seed=config.seed,
                                           examples=config.two_stage_examples)
                notes["two_stage_calibration"] = result.to_dict()
                rule, fixed = "fixed", (result.temperature, result.rho)
            if rule == "fixed":
                temperature, rho = fixed
        trainer = AdvCalTrainer(student, train_attack, labels="calibrated",
                                loss_form=config.loss_form, teacher=teacher_net,
                                temperature=temperature, rho=rho, objective=objective,
                                rectified_targets=config.rectified_targets, **common)
        callbacks.append(CalibratedTeacher(
            calibration_data, splits.train, kind=config.teacher, rule=rule,
            acc_floor=config.acc_floor, selection=config.selection,
            swa_start_epoch=config.swa_start_epoch,
            ema_decay=config.ema_decay, fixed_temperature=fixed[0], fixed_rho=fixed[1],
            seed=config.seed, verbose=0, surrogate_examples=config.surrogate_examples,
            separate_surrogate_temperature=config.separate_surrogate_temperature,
            average_fits=config.average_fits, floor_examples=config.floor_examples,
            reuse_validation_examples=config.reuse_validation_examples,
            calibration_examples=config.calibration_examples))
    if config.weight_average:
        callbacks.append(WeightAverage(splits.train, start_epoch=config.swa_start_epoch))
    steps_per_epoch = math.ceil(len(splits.train[1]) / config.batch_size)
    trainer.compile(optimizer=make_optimizer(config, steps_per_epoch))
    return trainer, callbacks, notes


def make_optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The run's optimizer, with its learning-rate schedule.

    Args:
        config: the run's settings (``optimizer``, ``learning_rate``, ``momentum``,
            ``weight_decay``, ``lr_schedule``, ``lr_drops``, ``epochs``).
        steps_per_epoch: optimizer steps per epoch (the schedule counts steps).

    Returns:
        A Keras optimizer; a piecewise schedule divides the rate by 10 at the first
        step of each epoch ``round(fraction * epochs)``.

    Example:

        >>> config = RunConfig(optimizer="sgd", learning_rate=0.1, epochs=8,
        ...                    lr_schedule="piecewise")
        >>> optimizer = make_optimizer(config, steps_per_epoch=10)
        >>> rates = []
        >>> for step in (0, 39, 40, 59, 60):
        ...     _ = optimizer.iterations.assign(step)
        ...     rates.append(round(float(optimizer.learning_rate), 6))
        >>> rates
        [0.1, 0.1, 0.01, 0.01, 0.001]
    """
    rate: Any = config.learning_rate
    if config.lr_schedule == "piecewise":
        epochs = sorted({max(1, round(f * config.epochs)) for f in config.lr_drop_fractions})
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(e * steps_per_epoch) - 1 for e in epochs],
            [config.learning_rate * 0.1 ** i for i in range(len(epochs) + 1)])
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=decay)
    return keras.optimizers.Adam(rate, weight_decay=decay)


def run(config: RunConfig, splits: data_lib.DatasetSplits | None = None, *,
        train_only: bool = False) -> dict:
    """Trains one configured run and writes its artifacts into ``config.out``.

    Args:
        config: the run's settings.
        splits: the data, when already loaded (else :func:`load_data`).
        train_only: stop once training has ended (``model.keras``, the history and
            ``training_done.json`` written), before the final attacks; calling ``run``
            again without it evaluates the trained model without training again.

    Returns:
        The summary dict also written to ``summary.json``; with ``train_only``, the
        summary of the per-epoch curve (:func:`training_summary`), which is not written
        to ``summary.json``.
    """
    config.validate()
    for name, needs in config.ignored_options():
        warnings.warn(f"{name}={getattr(config, name)!r} is ignored: only a run with {needs} "
                      "reads it.", stacklevel=2)
    set_threads(config.threads)
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = _finished_training(out, config)
    if train_only and trained is not None:  # nothing to do, nothing to touch
        return training_summary(out, config.curve_split)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    backup = out / "backup"
    # An interrupted run left a BackupAndRestore checkpoint: resume it, keeping its
    # history; a run interrupted after training (during the final evaluation) keeps
    # its trained model; otherwise start afresh.
    resuming = (backup / "training_metadata.json").is_file() and (out / "history.json").is_file()
    previous = read_history(out) if resuming else None
    keep = ("history.json", "history.csv", "model.keras", TRAINED_MARKER) if trained else ()
    keep += ("history.json", "history.csv") if resuming else ()
    for stale in ("summary.json", "history.json", "history.csv", TRAINED_MARKER):
        if stale not in keep:
            (out / stale).unlink(missing_ok=True)
    if trained is None:  # the models evaluated before are about to be replaced
        for stale in out.glob(EVALUATED_PATTERN.format(label="*")):
            stale.unlink()
    if splits is None:
        splits = load_data(config)
    if trained is not None:
        trainer = keras.models.load_model(out / "model.keras")
        _, eval_attack, final_attack = _attacks(config)
        return _finish(config, out, trainer, read_history(out), splits, eval_attack,
                       final_attack, dict(trained["notes"], resumed_after_training=True),
                       trained["train_seconds"], start)
    keras.utils.set_random_seed(config.seed)
    trainer, label_callbacks, notes = build_trainer(config, splits)
    _, eval_attack, final_attack = _attacks(config)

    short = SPLIT_KEYS[config.curve_split]
    curve_x, curve_y = splits.split(config.curve_split)
    if config.curve_size is not None:
        curve_x, curve_y = curve_x[:config.curve_size], curve_y[:config.curve_size]
    tracker = RobustAccuracyTracker((curve_x, curve_y), eval_attack, every=config.eval_every,
                                    name=f"{short}_adv_accuracy", clean_name=f"{short}_accuracy")
    recorder = EpochRecorder(out, previous)
    # Order matters: the teacher/calibration callbacks first (they add T and rho to the
    # logs and update the teacher), the recorder before the backup, so that an epoch
    # in the backup always has its history row.
    callbacks = list(label_callbacks) + [tracker]
    if config.checkpoint_best:
        best_so_far = [value for _, value in records(previous or {}, "val_adv_accuracy")]
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(out / "best.keras"), monitor="val_adv_accuracy", mode="max",
            save_best_only=True, verbose=0,
            initial_value_threshold=max(best_so_far) if best_so_far else None))
    callbacks.append(recorder)
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True))
    x_train, y_train = splits.train
    train_start = time.perf_counter()
    trainer.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.epochs,
                validation_data=splits.validation, validation_batch_size=256,
                callbacks=callbacks, shuffle=True, verbose=config.verbose)
    train_seconds = time.perf_counter() - train_start
    trainer.save(out / "model.keras")
    history = recorder.history()
    write_history(history, out)
    (out / TRAINED_MARKER).write_text(json.dumps(_json_safe(
        {"config": config.training_settings(), "train_seconds": train_seconds,
         "notes": notes}), indent=2))
    if train_only:
        return training_summary(out, config.curve_split)
    return _finish(config, out, trainer, history, splits, eval_attack, final_attack, notes,
                   train_seconds, start)


# Written once training has ended (model.keras and the history saved): a run
# interrupted afterwards, during its final evaluation, restarts from there.
TRAINED_MARKER = "training_done.json"
# The final numbers of one evaluated model (final, best, average) of a run whose
# evaluation is not finished: a restart does not attack that model again.
EVALUATED_PATTERN = "evaluated_{label}.json"


def training_summary(out: str | os.PathLike, split: str = "test") -> dict:
    """What a trained run's directory says before its final evaluation: the summary of
    its per-epoch curve (:func:`curve_summary`) and its training time, with
    ``"train_only": True``.

    Args:
        out: a run directory with ``history.json`` and ``training_done.json``.
        split: the split of its per-epoch curve (``RunConfig.curve_split``).

    Returns:
        The curve's summary (best, final, gap, smoothed gap...) and ``train_seconds``.

    Raises:
        FileNotFoundError: ``out`` has no finished training.

    Example:

        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> write_history({"epoch": [0, 1], "test_adv_accuracy": [0.5, 0.4],
        ...                "test_accuracy": [0.8, 0.9]}, out)
        >>> _ = (out / TRAINED_MARKER).write_text('{"train_seconds": 12.0}')
        >>> summary = training_summary(out)
        >>> summary["final_test_adv_accuracy"], summary["train_seconds"]
        (0.4, 12.0)
    """
    out = Path(out)
    marker = out / TRAINED_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{out} has no {TRAINED_MARKER}: its training has not ended")
    done = json.loads(marker.read_text())
    summary: dict[str, Any] = {"run": out.name, "train_only": True}
    summary.update(curve_summary(read_history(out), split))
    summary["train_seconds"] = done.get("train_seconds")
    return summary


def _finished_training(out: Path, config: RunConfig) -> dict | None:
    """The marker of a finished training of this very configuration, if there is one."""
    marker = out / TRAINED_MARKER
    if not (marker.is_file() and (out / "model.keras").is_file()
            and (out / "history.json").is_file()):
        return None
    try:
        done = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None

    def settings(values: RunConfig) -> dict:
        return json.loads(json.dumps(_json_safe(values.training_settings())))

    # A setting the marker lacks did not exist when it was written: it had the value
    # it was added with (RunConfig.from_stored); markers of earlier versions also
    # recorded some of the evaluation's settings.
    recorded = {key: value for key, value in (done.get("config") or {}).items()
                if key not in NOT_TRAINING}
    written = {**settings(RunConfig.from_stored({})), **recorded}
    return done if written == settings(config) else None


def _finish(config: RunConfig, out: Path, trainer, history: dict, splits, eval_attack,
            final_attack, notes: dict, train_seconds: float, start: float) -> dict:
    """The final evaluation and the summary of a trained run."""
    summary: dict[str, Any] = {"run": out.name, "labels": config.labels}
    summary.update(curve_summary(history, config.curve_split))
    final_eval = _final_numbers(trainer.model, splits, eval_attack, final_attack, config,
                                out, "final")
    summary.update(final_eval)
    for key in CALIBRATION_KEYS:
        pairs = records(history, key)
        if pairs:
            summary[f"final_{key}"] = pairs[-1][1]
    if config.checkpoint_best and (out / "best.keras").is_file():
        summary["best_checkpoint"] = _checkpoint_numbers(out / "best.keras", history, splits,
                                                         eval_attack, final_attack, config, out)
    if config.weight_average:
        summary["weight_average"] = _model_numbers(
            trainer.average_model, splits, eval_attack, final_attack, config, out, "average")
        summary["weight_average"]["epochs_averaged"] = int(trainer.average_updates.numpy())
    summary.update(notes)
    summary["train_seconds"] = train_seconds
    summary["wall_seconds"] = time.perf_counter() - start
    summary["epoch_seconds"] = train_seconds / max(len(history.get("epoch", [])), 1)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    for done in out.glob(EVALUATED_PATTERN.format(label="*")):  # now in the summary
        done.unlink()
    plot_curves(history, out / "curves.png", title=_title(config))
    return summary


def curve_summary(history: dict[str, list], split: str = "test") -> dict:
    """:func:`summarize_run` of the per-epoch curve on ``split``; for the development
    split every ``test`` in the keys reads ``dev`` (``final_dev_adv_accuracy``...).

    Example:

        >>> h = {"epoch": [0, 1], "dev_adv_accuracy": [0.5, 0.4]}
        >>> curve_summary(h, "development")["final_dev_adv_accuracy"]
        0.4
    """
    short = SPLIT_KEYS[split]
    result = summarize_run(history, key=f"{short}_adv_accuracy",
                           clean_key=f"{short}_accuracy")
    return result if short == "test" else {key.replace("test", short): value
                                           for key, value in result.items()}


def _final_numbers(model, splits, eval_attack, final_attack, config, out: Path | None = None,
                   label: str = "final") -> dict:
    """Training robust accuracy (eval PGD), and PGD-20 plus the extra final attacks on
    each final split; writes the per-example correctness to ``correctness_<label>.npz``.

    With ``out``, a model evaluated before with the same configuration (a run
    interrupted later in its final evaluation) is not evaluated again: its numbers are
    read back from ``evaluated_<label>.json``."""
    evaluated = None if out is None else Path(out) / EVALUATED_PATTERN.format(label=label)
    settings = _json_safe(config.to_dict())
    if evaluated is not None and evaluated.is_file() and (
            Path(out) / f"correctness_{label}.npz").is_file():
        saved = json.loads(evaluated.read_text())
        if saved.get("config") == settings:
            return saved["numbers"]
    numbers: dict[str, Any] = {}
    train_tracker = RobustAccuracyTracker(splits.train, eval_attack)
    clean, robust = train_tracker.evaluate(model)
    numbers["final_train_accuracy"] = clean
    numbers["final_train_adv_accuracy"] = robust
    attacks: list[Any] = [(f"pgd-{config.final_steps}", final_attack)]
    attacks += [name.strip() for name in config.final_attacks.split(",") if name.strip()]
    arrays: dict[str, np.ndarray] = {}
    for split in config.final_split_names:
        short = SPLIT_KEYS[split]
        x, y = splits.split(split)
        result = evaluate_robustness(model, (x, y), config.epsilon, attacks=attacks,
                                     steps=config.final_attack_steps,
                                     n_queries=config.final_square_queries, seed=config.seed,
                                     individual=not config.final_cascade, verbose=False)
        # The first attack runs on every clean-correct example either way.
        numbers[f"final_pgd20_{short}_adv_accuracy"] = result.accuracy_cumulative[attacks[0][0]]
        numbers[f"final_{short}_clean_accuracy"] = result.clean_accuracy
        if len(attacks) > 1:
            suffix = "" if short == "test" else f"_{short}"
            numbers[f"final_attacks{suffix}"] = (result.accuracy_cumulative
                                                 if config.final_cascade
                                                 else result.accuracy_alone)
            numbers[f"final_worst_case_{short}_adv_accuracy"] = result.robust_accuracy
            numbers[f"final_attack_seconds{suffix}"] = result.seconds
        if result.warnings:
            numbers.setdefault("evaluation_warnings", []).extend(result.warnings)
        arrays.update({f"{split}_{key}": value for key, value in result.per_example().items()})
        strong = [name.strip() for name in config.final_strong_attacks.split(",")
                  if name.strip()]
        if strong:
            count = len(y) if config.final_strong_size is None else min(
                config.final_strong_size, len(y))
            alive = np.flatnonzero(result.robust_mask[:count])
            survived = np.zeros(count, bool)
            timing = {}
            if len(alive):
                more = evaluate_robustness(model, (x[alive], y[alive]), config.epsilon,
                                           attacks=strong, steps=config.final_attack_steps,
                                           n_queries=config.final_square_queries,
                                           seed=config.seed + 50, individual=False,
                                           verbose=False)
                survived[alive] = more.robust_mask
                timing = more.seconds
                for name, mask in more.cumulative_masks.items():
                    after = np.zeros(count, bool)
                    after[alive] = mask
                    arrays[f"{split}_strong_after_{name}"] = after
                if more.warnings:
                    numbers.setdefault("evaluation_warnings", []).extend(more.warnings)
            else:  # nothing left to attack: every stage leaves nothing
                for name in strong:
                    arrays[f"{split}_strong_after_{name}"] = np.zeros(count, bool)
            numbers[f"final_strong_{short}_adv_accuracy"] = float(np.mean(survived))
            numbers[f"final_strong_{short}_size"] = count
            numbers[f"final_strong_{short}_before_accuracy"] = float(
                np.mean(result.robust_mask[:count]))
            numbers[f"final_strong_seconds_{short}"] = timing
            arrays[f"{split}_strong_robust"] = survived
        arrays[f"{split}_indices"] = np.asarray(splits.indices.get(split, np.arange(len(y))))
        arrays[f"{split}_labels"] = np.asarray(y)
    if out is not None:
        np.savez_compressed(Path(out) / f"correctness_{label}.npz", **arrays)
        evaluated.write_text(json.dumps(_json_safe({"config": settings, "numbers": numbers}),
                                        indent=2))
    return numbers


def _model_numbers(model, splits, eval_attack, final_attack, config, out: Path,
                   label: str) -> dict:
    """Curve-split robust accuracy (eval PGD) and the final numbers of another model of
    the run (the early-stopped checkpoint, the weight average)."""
    short = SPLIT_KEYS[config.curve_split]
    tracker = RobustAccuracyTracker(splits.split(config.curve_split), eval_attack)
    clean, robust = tracker.evaluate(model)
    numbers = {f"{short}_accuracy": clean, f"{short}_adv_accuracy": robust}
    numbers.update(_final_numbers(model, splits, eval_attack, final_attack, config, out, label))
    return numbers


def _checkpoint_numbers(path, history, splits, eval_attack, final_attack, config,
                        out: Path | None = None) -> dict:
    """The early-stopped (best validation) model's numbers: Rice et al.'s baseline."""
    model = load_classifier(path)
    val = records(history, "val_adv_accuracy")
    epoch, value = max(val, key=lambda pair: (pair[1], -pair[0])) if val else (None, None)
    numbers = {"epoch": None if epoch is None else epoch + 1, "val_adv_accuracy": value}
    numbers.update(_model_numbers(model, splits, eval_attack, final_attack, config,
                                  Path(out if out is not None else path.parent), "best"))
    return numbers


def _title(config: RunConfig) -> str:
    objective = {"pgd_at": "PGD-AT", "trades": "TRADES", "mart": "MART"}[config.objective]
    if config.beta is not None:
        objective += f" (beta {config.beta:g})"
    if config.labels == "hard":
        kind = f"{objective} (hard labels)"
    elif config.labels == "adr":
        kind = "ADR-style baseline"
    else:
        kind = (f"{objective} calibrated: teacher={config.teacher}, loss={config.loss_form}, "
                f"rule={config.rule}")
    if config.rectified_targets:
        kind += ", rectified targets"
    if config.awp_gamma > 0:
        kind += f", AWP {config.awp_gamma:g}"
    return f"{Path(config.out).name}: {kind}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def read_summary(run_dir: str | os.PathLike) -> dict:
    """A run's summary: ``summary.json`` when the run finished, else what its
    ``history.json`` gives so far (``"finished": False``).

    Raises:
        FileNotFoundError: when the directory holds neither file.
    """
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["finished"] = True
        return summary
    if (run_dir / "history.json").is_file():
        history = read_history(run_dir)
        summary = {"run": run_dir.name, "finished": False,
                   "epochs_done": len(history.get("epoch", []))}
        split = "test"
        if (run_dir / "config.json").is_file():
            split = json.loads((run_dir / "config.json").read_text()).get("curve_split", split)
        summary.update(curve_summary(history, split))
        return summary
    raise FileNotFoundError(f"{run_dir} is not a run directory (no summary.json or "
                            "history.json).")


__all__ = ["curve_summary", "EpochRecorder", "RUN_LABELS", "RUN_OBJECTIVES", "RunConfig",
           "build_model", "build_trainer", "load_classifier", "load_data",
           "plot_curves", "read_history", "read_summary", "records", "run", "summarize_run",
           "write_history"]
