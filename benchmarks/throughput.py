"""Training throughput: how much AdvCalTrainer costs over a bare PGD-AT loop.

On the same model (``keras_advcal.models.small_cnn``), data (Fashion-MNIST through
``keras_advcal.data.load``; scikit-learn digits when Fashion-MNIST is not available),
batch and attack (L-inf PGD-5, eps 0.1, random start), it measures:

* ``minimal``: a hand-written ``tf.function`` PGD-AT step (PGD unrolled in the graph,
  cross-entropy, ``optimizer.apply``) in a Python loop over the ``tf.data`` batches;
* ``hard``: ``AdvCalTrainer(labels="hard")`` through ``fit``;
* ``hard-validated``: the same with ``fit(validation_data=...)``: the per-epoch robust
  validation accuracy that early-stopped PGD-AT (Rice et al.) needs, and that the
  ``best`` teacher reads. It is the reference of the calibrated rows, which do the
  same validation pass;
* ``calibrated-best``, ``calibrated-swa``, ``calibrated-ema``:
  ``AdvCalTrainer(labels="calibrated")`` with a ``CalibratedTeacher`` of that kind,
  through ``fit(validation_data=...)``, over whole epochs, so the per-epoch
  calibration (PGD on the validation split and the training sample, the 100 x 100
  grid) is included; its own time is reported too. A ``best`` teacher costs three
  kinds of epoch: one that takes a snapshot keeps T and rho (no calibration), the
  next makes new validation and training-sample PGD examples against the new
  teacher, and every later epoch until the next snapshot reuses them (one forward
  pass of the student). Its row measures the steady state between snapshots: the
  snapshot taken at the end of the first epoch is kept for the rest of the run
  (``teacher_score`` set out of reach), the second epoch's calibration (both attacks)
  is reported apart as *after a snapshot*, and examples/s come from the epochs after
  it;
* ``trades``: ``AdvCalTrainer(labels="hard", objective="trades")`` through ``fit``
  (TRADES, beta 6: its KL attack from the clean prediction, and the clean input's
  forward and backward pass in the loss); its cost is reported against ``hard``;
* ``hard-awp``: ``AdvCalTrainer(labels="hard", weight_perturbation=AWP(5e-3))``
  through ``fit``: one more forward and backward pass per batch (the ascent on the
  weights), so about ``(steps + 1) / (steps + 2)`` of ``hard``'s examples per
  CPU-second, 0.86 with PGD-5;
* ``art``: the Adversarial Robustness Toolbox's ``AdversarialTrainerMadryPGD`` on a
  ``TensorFlowV2Classifier`` of the same model, when ``art`` imports. ART is not a
  dependency of keras-advcal; to include it::

      pip install adversarial-robustness-toolbox

* ``torch-pgd-at``: what a user would write instead in plain PyTorch (eager mode, no
  ``torch.compile``): the same CNN as an ``nn.Module`` (same convolutions, widths,
  ReLUs, ``'same'`` pooling, dense layers and Glorot-uniform initialisation), the same
  images (converted to channels-first once, before the first epoch), batch, PGD-5
  (step, epsilon, random start) and Adam (1e-3), with ``torch.set_num_threads`` and
  ``torch.set_num_interop_threads`` set to ``--threads``; when ``torch`` imports. Its
  ratio is to ``hard`` (the library's PGD-AT) in the same round. PyTorch is not a
  dependency of keras-advcal either; the row is skipped without it.

Each (method, batch size, width) runs in its own subprocess, so the peak resident
memory (``ru_maxrss``) is that run's alone. Throughput is training examples per
second over the epochs after the first (the first includes tracing and is reported
separately); ``ratio`` is throughput over the ``minimal`` loop's in the same
configuration. ``--val-sizes`` repeats ``calibrated-best`` for each validation-set
size, for the scaling of the calibration time. Results go to
``benchmarks/results/throughput.json`` (``throughput_quick.json`` with ``--quick``)
and a markdown table is printed.

One measurement of a few-second epoch is noisy on a shared machine. ``--repeats N``
runs the whole grid N times in rounds (each round runs every configuration once, in
the same order): a row reports its median round and the spread of all rounds, a
ratio the median of the per-round ratios. ``--cpus`` pins every run to given cores,
e.g. one core for the measurements and the other for the rest of the machine's work.

Examples::

    python benchmarks/throughput.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/throughput.py                     # the full table (much longer)
    python benchmarks/throughput.py --batch-sizes 64 128 256 --widths 16 32 \\
        --val-sizes 500 2000 8000 --train-size 10000 --epochs 3
    python benchmarks/throughput.py --methods hard-validated calibrated-swa \\
        --val-sizes 1000 --train-size 16384 --epochs 3 --threads 1 \\
        --out benchmarks/results/throughput_swa_16k.json   # swa cost, larger training set
    python benchmarks/throughput.py --methods minimal hard hard-validated \\
        calibrated-best --batch-sizes 64 256 --widths 16 32 --val-sizes 1000 \\
        --train-size 4096 --epochs 4 --threads 1 --repeats 2 --cpus 1 \\
        --out benchmarks/results/throughput_scaling.json   # scaling, 2 rounds, core 1
    python benchmarks/throughput.py --methods hard torch-pgd-at --batch-sizes 128 \\
        --widths 32 --train-size 4096 --epochs 3 --threads 1 --repeats 2 --cpus 1 \\
        --out benchmarks/results/throughput_torch.json   # against plain PyTorch
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PyTorch is optional: only its row imports it
    import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
TORCH = "torch-pgd-at"
METHODS = ("minimal", "hard", "hard-validated", "calibrated-best", "calibrated-swa",
           "calibrated-ema", "trades", "hard-awp", "art", TORCH)
#: Rows that need a package keras-advcal does not depend on: method -> (module, install).
OPTIONAL = {"art": ("art", "pip install adversarial-robustness-toolbox"),
            TORCH: ("torch", "pip install torch")}
#: Trainer rows with another objective or AWP: method -> (objective, AWP gamma). They
#: run without validation, like ``hard``, their reference.
VARIANTS = {"trades": ("trades", 0.0), "hard-awp": ("pgd_at", 5e-3)}
SECTION = "## Throughput (issue 8)"
# What a result file's table cannot say about itself.
REPORT_NOTES = {"throughput_while_loop.json": (
                    "`--max-unrolled-steps 0` puts the trainer's PGD back in a "
                    "`tf.while_loop`, as before commit 691f95c; the next table is the same "
                    "command with the attacks unrolled (the default). With the loop, a "
                    "`hard` run lands in one of two speeds, which one varying from process "
                    "to process: here 1 of 4 runs at 0.64 of the same round's `minimal`; "
                    "in the two grids measured before that commit "
                    "(`benchmarks/results/throughput_before_unrolling.json` and "
                    "`throughput_scaling_before_unrolling.json`, made as "
                    "`throughput_scaling.json` with 8,192 training images and 3 rounds) 12 "
                    "of 15 at 0.62-0.77. Unrolled, none of the 14 `hard` runs of this "
                    "section's tables fell below 0.91.")}
REPORT_NOTES["throughput_1000.json"] = (
    "The small-data configuration, before the calibration reused the validation pass "
    "and the training steps' teacher logits (commit 2f461a0: every epoch attacked the "
    "validation images against the swa teacher, and the first calibrated epoch the "
    "training images too).")
REPORT_NOTES["throughput_1000_validation_pass.json"] = (
    "The same command after the calibration took the teacher's and the student's "
    "logits from `fit`'s validation pass and the floor's from the training steps "
    "(`calibration_examples=\"validation_pass\"`, the default since commit b958b23, and "
    "the teacher's logits recorded as soon as it exists, commit 1d659d5): the "
    "calibration makes no attack of its own.")
REPORT_NOTES["throughput_4096_validation_pass.json"] = (
    "The 4,096-image configuration of the first table (`calibrated-swa` there: 0.69 of "
    "`hard-validated`), measured with the calibration on the validation pass's "
    "examples.")
REPORT_NOTES["throughput_4096_validation_pass_rerun.json"] = (
    "The same 4,096-image measurement again, with 5 rounds instead of 3, in a later "
    "session on a faster machine of the same name (both measurements are kept; the "
    "issue's 0.95 target is read from both).")
REPORT_NOTES["throughput_4096_frozen_default.json"] = (
    "The same 4,096-image measurement after the development study froze "
    "`selection=\"minimum\"` as the default (no standard-error pass over the grid: "
    "the calibration's CPU share went from 3% to 2%), with 5 rounds, while two benchmark "
    "trainings ran on the same 2 cores (rounds spread more: 683-834 and 750-855 "
    "examples per CPU-s).")
REPORT_NOTES["throughput_torch.json"] = (
    "Against what a user would write instead: `torch-pgd-at` is the same PGD-AT in plain "
    "eager PyTorch (2.13, CPU build; no `torch.compile`): the same CNN as an `nn.Module`, "
    "the same images (channels-first), batch, PGD-5 and Adam, with "
    "`torch.set_num_threads(1)` and `torch.set_num_interop_threads(1)`; its epochs are "
    "timed like the library's, after a warm-up epoch. Measured while two benchmark "
    "trainings (`keras_advcal train`) ran on the same 2 cores: the wall-clock columns are "
    "slowed by them, and the ratio is a same-load ratio (each round ran both rows, one "
    "after the other, pinned to the same core). The PyTorch row's peak RSS includes "
    "TensorFlow, which its process imports to load the data.")
REPORT_FILES = ("throughput.json", "throughput_scaling.json", "throughput_while_loop.json",
                "throughput_unrolled.json", "throughput_swa_16k.json", "throughput_swa_59k.json",
                "throughput_1000.json", "throughput_1000_validation_pass.json",
                "throughput_4096_validation_pass.json",
                "throughput_4096_validation_pass_rerun.json",
                "throughput_4096_frozen_default.json", "throughput_objectives.json",
                "throughput_torch.json")
EPSILON, STEPS = 0.1, 5
STEP_SIZE = 2.5 * EPSILON / STEPS  # the PGD default, written out for the minimal loop


# ============================================================== child: one measurement
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _load_data(train_size: int, val_size: int, seed: int):
    from keras_advcal import data

    try:
        splits = data.load("fashion_mnist", subset=train_size, validation_size=val_size,
                           test_size=100, seed=seed)
    except FileNotFoundError:  # DatasetNotAvailableError
        splits = data.load("digits", subset=min(train_size, 1000), seed=seed)
    return splits


def _model(input_shape, num_classes, width, seed):
    import keras

    from keras_advcal import models

    keras.utils.set_random_seed(seed)
    return models.small_cnn(input_shape, num_classes=num_classes, width=width,
                            dense=8 * width)


def _dataset(x, y, batch_size, seed):
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


class _EpochTimer:
    """Collects the wall time and the process CPU time of each epoch.

    With one TensorFlow thread (``--threads 1``) the CPU time measures the work done
    whatever else the machine runs; the wall time is the throughput a user sees and
    is only comparable between methods on a quiet machine."""

    def __init__(self):
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def begin(self):
        self._start = (time.perf_counter(), time.process_time())

    def end(self):
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


def _run_minimal(model, dataset, epochs, timer):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    generator = tf.random.Generator.from_seed(1)

    @tf.function
    def step(x, y):
        x_adv = x + generator.uniform(tf.shape(x), -EPSILON, EPSILON)
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
        for _ in range(STEPS):  # unrolled: the bare reference
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    y, model(x_adv, training=False)))
            x_adv = x_adv + STEP_SIZE * tf.sign(tape.gradient(loss, x_adv))
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - EPSILON, x + EPSILON),
                                     0.0, 1.0)
        x_adv = tf.stop_gradient(x_adv)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, model(x_adv, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    for _ in range(epochs):
        timer.begin()
        for x, y in dataset:
            loss = step(x, y)
        float(loss)  # wait for the last step
        timer.end()
    return {"final_loss": float(loss)}


def _run_trainer(model, dataset, epochs, timer, kind, splits, args, validate=True,
                 objective="pgd_at", awp_gamma=0.0):
    import keras

    from keras_advcal import AWP, PGD, AdvCalTrainer, CalibratedTeacher

    validation_cpu_seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            timer.begin()

        def on_test_begin(self, logs=None):  # fit's validation pass
            self._validation_start = time.process_time()

        def on_test_end(self, logs=None):
            validation_cpu_seconds.append(time.process_time() - self._validation_start)

        def on_epoch_end(self, epoch, logs=None):  # last in the list: after calibration
            timer.end()

    calibration_seconds: list[float] = []
    calibration_cpu_seconds: list[float] = []

    class TimedTeacher(CalibratedTeacher):
        def on_epoch_end(self, epoch, logs=None):
            start, cpu_start = time.perf_counter(), time.process_time()
            super().on_epoch_end(epoch, logs)
            calibration_seconds.append(time.perf_counter() - start)
            calibration_cpu_seconds.append(time.process_time() - cpu_start)
            if self.kind == "best" and epoch == 0:
                # Keep the first snapshot: the later epochs measure the regime between
                # snapshots (see the module docstring).
                self.model.teacher_score.assign(float("inf"))

    attack = PGD(EPSILON, steps=STEPS, seed=1)
    labels = "hard" if kind is None else "calibrated"
    # The minimal loop measures no clean accuracy; neither does the trainer here.
    trainer = AdvCalTrainer(model, attack, labels=labels, track_clean_accuracy=False, seed=1,
                            objective=objective,
                            weight_perturbation=AWP(awp_gamma) if awp_gamma else None)
    trainer.compile(keras.optimizers.Adam(1e-3), jit_compile=args.jit_compile)
    callbacks = []
    if kind is not None:
        x_train, y_train = splits.train
        sample = min(len(y_train), args.train_sample)
        callbacks.append(TimedTeacher(splits.validation, (x_train[:sample], y_train[:sample]),
                                      kind=kind, batch_size=256))
    validation = (splits.validation if validate else None)
    history = trainer.fit(dataset, epochs=epochs, verbose=0, validation_data=validation,
                          validation_batch_size=256, callbacks=callbacks + [Timer()])
    out = {"final_loss": float(history.history["loss"][-1])}
    if validation_cpu_seconds:
        out["validation_cpu_seconds"] = validation_cpu_seconds
    if kind is not None:
        out["calibration_seconds"] = calibration_seconds
        out["calibration_cpu_seconds"] = calibration_cpu_seconds
        out["final_temperature"] = float(history.history["temperature"][-1])
        out["final_rho"] = float(history.history["rho"][-1])
    return out


def _run_art(model, splits, epochs, timer, batch_size):
    import art
    import keras
    import numpy as np
    import tensorflow as tf
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import TensorFlowV2Classifier

    if not hasattr(tf.keras.losses, "Reduction"):  # ART 1.20 on Keras 3
        class Reduction:
            NONE, SUM = "none", "sum"
            SUM_OVER_BATCH_SIZE = AUTO = "sum_over_batch_size"
        tf.keras.losses.Reduction = Reduction
    x, y = splits.train
    n = (len(x) // batch_size) * batch_size  # full batches, like the others
    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=splits.num_classes, input_shape=x.shape[1:],
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(1e-3), clip_values=(0.0, 1.0))
    trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=1, batch_size=batch_size,
                                         eps=EPSILON, eps_step=STEP_SIZE, max_iter=STEPS,
                                         num_random_init=1)
    np.random.seed(0)
    for _ in range(epochs):
        timer.begin()
        trainer.fit(x[:n], y[:n], nb_epochs=1, batch_size=batch_size)
        timer.end()
    return {"art_version": art.__version__}


def same_pooled(size: int, pools: int = 2) -> int:
    """The side of an image after ``pools`` 2x2 max-poolings with ``'same'`` padding
    (Keras'), which ``nn.MaxPool2d(2, ceil_mode=True)`` reproduces in PyTorch.

    Example:

        >>> same_pooled(28), same_pooled(8), same_pooled(7)
        (7, 2, 2)
    """
    for _ in range(pools):
        size = -(-size // 2)
    return size


def _torch_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int,
               dense: int) -> torch.nn.Sequential:
    """``small_cnn(input_shape, num_classes, width=width, dense=dense)`` (the model of
    ``_model``) as a PyTorch module on channels-first images, initialised as Keras
    initialises it (Glorot-uniform weights, zero biases)."""
    from torch import nn

    rows, cols, channels = input_shape
    model = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(2 * width * same_pooled(rows) * same_pooled(cols), dense), nn.ReLU(),
        nn.Linear(dense, num_classes))
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model


def _torch_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD-5 from a uniform random start, as the ``minimal`` loop's."""
    import torch
    import torch.nn.functional as F

    noise = torch.empty_like(x).uniform_(-EPSILON, EPSILON, generator=generator)
    x_adv = (x + noise).clamp(0.0, 1.0)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + STEP_SIZE * grad.sign()
        x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - EPSILON), x + EPSILON),
                            0.0, 1.0)
    return x_adv.detach()


def _run_torch(splits, spec: dict, timer: _EpochTimer) -> dict:
    """PGD-AT in plain PyTorch: each epoch a new shuffle, full batches only (like the
    ``tf.data`` pipeline of the other rows), the attack in ``eval`` mode, one Adam step
    on the adversarial batch in ``train`` mode."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if spec.get("threads"):  # before any parallel work (interop threads)
        torch.set_num_threads(spec["threads"])
        torch.set_num_interop_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    x, y = splits.train
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    y = torch.from_numpy(y.astype(np.int64))
    model = _torch_cnn(splits.input_shape, splits.num_classes, spec["width"],
                       8 * spec["width"])
    # Keras' Adam default epsilon; PyTorch's is 1e-8.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    generator = torch.Generator().manual_seed(1)
    batch_size = spec["batch_size"]
    end = (len(y) // batch_size) * batch_size
    for _ in range(spec["epochs"]):
        timer.begin()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, end, batch_size):
            index = order[start:start + batch_size]
            x_batch, y_batch = x[index], y[index]
            model.eval()
            x_adv = _torch_pgd(model, x_batch, y_batch, generator)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_adv), y_batch)
            loss.backward()
            optimizer.step()
        timer.end()
    return {"final_loss": float(loss), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}


def child(spec: dict) -> dict:
    import keras
    import tensorflow as tf

    from keras_advcal import attacks

    if spec.get("max_unrolled_steps") is not None:  # 0: every attack is a tf.while_loop
        attacks.MAX_UNROLLED_STEPS = spec["max_unrolled_steps"]

    splits = _load_data(spec["train_size"], spec["val_size"], spec["seed"])
    rss_before = _rss_mb()
    x, y = splits.train
    method = spec["method"]
    model = (None if method == TORCH
             else _model(splits.input_shape, splits.num_classes, spec["width"], spec["seed"]))
    timer = _EpochTimer()
    epochs = spec["epochs"]
    args = argparse.Namespace(**spec)
    if method == "minimal":
        extra = _run_minimal(model, _dataset(x, y, spec["batch_size"], spec["seed"]),
                             epochs, timer)
    elif method == "art":
        extra = _run_art(model, splits, epochs, timer, spec["batch_size"])
    elif method == TORCH:
        extra = _run_torch(splits, spec, timer)
    elif method in VARIANTS:
        objective, awp_gamma = VARIANTS[method]
        extra = _run_trainer(model, _dataset(x, y, spec["batch_size"], spec["seed"]), epochs,
                             timer, None, splits, args, validate=False, objective=objective,
                             awp_gamma=awp_gamma)
    else:
        kind = None if method.startswith("hard") else method.split("-", 1)[1]
        extra = _run_trainer(model, _dataset(x, y, spec["batch_size"], spec["seed"]), epochs,
                             timer, kind, splits, args, validate=method != "hard")
    examples = (len(x) // spec["batch_size"]) * spec["batch_size"]
    # Steady state: after the first (tracing) epoch; for the best teacher also after the
    # epoch that rebuilt the examples for the kept snapshot.
    skip = 2 if method == "calibrated-best" and epochs > 2 else 1
    steady = timer.seconds[skip:] or timer.seconds
    steady_cpu = timer.cpu_seconds[skip:] or timer.cpu_seconds
    parameters = extra.pop("parameters") if model is None else int(model.count_params())
    result = dict(spec, dataset=splits.name, train_examples_per_epoch=examples,
                  validation_examples=len(splits.validation[1]),
                  epoch_seconds=timer.seconds, first_epoch_seconds=timer.seconds[0],
                  examples_per_second=examples * len(steady) / sum(steady),
                  epoch_cpu_seconds=timer.cpu_seconds,
                  examples_per_cpu_second=examples * len(steady_cpu) / sum(steady_cpu),
                  rss_before_model_mb=rss_before, peak_rss_mb=_rss_mb(),
                  parameters=parameters, tensorflow=tf.__version__,
                  keras=keras.__version__, **extra)
    def steady_mean(values: list[float]) -> float:
        values = values[skip:] or values
        return sum(values) / len(values)

    epoch_cpu = steady_mean(timer.cpu_seconds)
    steps_cpu = epoch_cpu  # less the validation pass and the calibration, below
    if "validation_cpu_seconds" in extra:
        result["validation_cpu_seconds_per_epoch"] = steady_mean(extra["validation_cpu_seconds"])
        steps_cpu -= result["validation_cpu_seconds_per_epoch"]
    if "calibration_seconds" in extra:
        calibration_cpu = steady_mean(extra["calibration_cpu_seconds"])
        steps_cpu -= calibration_cpu
        result["calibration_seconds_per_epoch"] = steady_mean(extra["calibration_seconds"])
        result["calibration_cpu_fraction"] = calibration_cpu / epoch_cpu
        if skip == 2:
            # The epoch after the snapshot: both attacks, against the new teacher. Its
            # share is of a steady epoch's training CPU plus this calibration.
            after = extra["calibration_cpu_seconds"][1]
            result["calibration_cpu_seconds_after_snapshot"] = after
            result["calibration_cpu_fraction_after_snapshot"] = after / (
                epoch_cpu - calibration_cpu + after)
        result["calibration_fraction"] = (result["calibration_seconds_per_epoch"]
                                          / steady_mean(timer.seconds))
    result["training_steps_cpu_seconds_per_epoch"] = steps_cpu
    return result


# ================================================================ parent: the grid
def _importable(module: str) -> bool:
    """Whether ``module`` imports in a fresh interpreter (as the runs' children)."""
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def available_methods(methods: list[str], importable=None) -> tuple[list[str], list[str]]:
    """The requested methods whose optional package (``OPTIONAL``) imports, and a note
    for each one left out.

    Args:
        methods: The requested methods, in order.
        importable: ``module name -> bool``; a fresh interpreter tries the import by
            default.

    Returns:
        ``(kept methods, notes)``.

    Example:

        >>> available_methods(["hard", "torch-pgd-at"], importable=lambda module: False)
        (['hard'], ['torch-pgd-at needs torch, which does not import here: skipping it \
(pip install torch)'])
    """
    importable = importable or _importable
    kept, notes = [], []
    for method in methods:
        module, install = OPTIONAL.get(method, (None, None))
        if module is None or importable(module):
            kept.append(method)
        else:
            notes.append(f"{method} needs {module}, which does not import here: skipping "
                         f"it ({install})")
    return kept, notes


def _measure(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    if spec.get("threads"):
        env.update(TF_NUM_INTRAOP_THREADS=str(spec["threads"]),
                   TF_NUM_INTEROP_THREADS=str(spec["threads"]),
                   OMP_NUM_THREADS=str(spec["threads"]))
    cpus = spec.get("cpus")
    pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                               capture_output=True, text=True, env=env, timeout=timeout,
                               preexec_fn=pin)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return dict(spec, error=completed.stderr[-2000:] or f"exit {completed.returncode}")


KEY = ("method", "batch_size", "width", "val_size")


def _paired_ratios(runs: list[dict], row: dict, reference: str, same: tuple[str, ...],
                   field: str) -> list[float]:
    """``row``'s ``field`` over the reference method's, one ratio per round in which
    both ran (a round runs every configuration once, so the two were measured close
    together in time)."""
    mine = {r["round"]: r[field] for r in runs
            if all(r[k] == row[k] for k in KEY) and "error" not in r}
    theirs = {r["round"]: r[field] for r in runs
              if r["method"] == reference and "error" not in r
              and all(r[k] == row[k] for k in same)}
    return [mine[i] / theirs[i] for i in sorted(mine) if i in theirs]


def combine(runs: list[dict]) -> list[dict]:
    """One row per configuration from the runs of every round.

    The row is the round whose examples per CPU-second is the median of the
    configuration's rounds (so its columns come from one run), with the spread of
    every round's examples per CPU-second, and the ratios to ``minimal``, to
    ``hard-validated`` (calibrated rows) and to ``hard`` (``VARIANTS`` and the PyTorch
    row) taken as the median of the per-round ratios."""
    keys = []
    for run in runs:
        key = tuple(run[k] for k in KEY)
        if key not in keys:
            keys.append(key)
    rows = []
    for key in keys:
        mine = [r for r in runs if tuple(r[k] for k in KEY) == key]
        good = sorted((r for r in mine if "error" not in r),
                      key=lambda r: r["examples_per_cpu_second"])
        if not good:
            rows.append(dict(mine[-1]))
            continue
        row = dict(good[(len(good) - 1) // 2])
        row["rounds"] = len(good)
        row["examples_per_cpu_second_rounds"] = [r["examples_per_cpu_second"] for r in good]
        rows.append(row)
    for row in rows:
        if "error" in row:
            continue
        config = ("batch_size", "width")
        for reference, same, suffix in (("minimal", config, "minimal"),
                                        ("hard-validated", config + ("val_size",),
                                         "hard_validated"),
                                        ("hard", config, "hard")):
            if reference == "hard-validated" and not row["method"].startswith("calibrated"):
                continue
            if reference == "hard" and row["method"] not in (*VARIANTS, TORCH):
                continue
            cpu = _paired_ratios(runs, row, reference, same, "examples_per_cpu_second")
            wall = _paired_ratios(runs, row, reference, same, "examples_per_second")
            if cpu:
                row[f"cpu_ratio_to_{suffix}"] = statistics.median(cpu)
                row[f"cpu_ratio_to_{suffix}_rounds"] = cpu
            if wall and (reference == "minimal" or row["method"] == TORCH):
                row[f"ratio_to_{suffix}"] = statistics.median(wall)
    return rows


def _spread(row: dict) -> str:
    rounds = row.get("examples_per_cpu_second_rounds", [])
    return f"{min(rounds):.0f}-{max(rounds):.0f} ({len(rounds)})" if len(rounds) > 1 else ""


def markdown(results: list[dict]) -> str:
    lines = ["| method | batch | width | val | examples/s | ratio to minimal | examples/CPU-s "
             "| CPU ratio to minimal | CPU ratio to hard-validated | first epoch s "
             "| calibration s/epoch (share; CPU share) | calibration CPU share after a "
             "snapshot | peak RSS MB | examples/CPU-s, lowest-highest (rounds) |",
             "|" + " --- |" + " ---: |" * 13]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['batch_size']} | {r['width']} | "
                         f"{r['val_size']} | failed: {r['error'].splitlines()[-1][:80]} "
                         "| | | | | | | | | |")
            continue
        calibration = ""
        after = (f"{100 * r['calibration_cpu_fraction_after_snapshot']:.0f}%"
                 if "calibration_cpu_fraction_after_snapshot" in r else "")
        reference = (f"{r['cpu_ratio_to_hard_validated']:.2f}"
                     if "cpu_ratio_to_hard_validated" in r else "")
        if "calibration_seconds_per_epoch" in r:
            calibration = (f"{r['calibration_seconds_per_epoch']:.2f} "
                           f"({100 * r['calibration_fraction']:.0f}%; CPU "
                           f"{100 * r['calibration_cpu_fraction']:.0f}%)")
        ratio = f"{r['ratio_to_minimal']:.2f}" if r.get("ratio_to_minimal") else ""
        cpu_ratio = (f"{r['cpu_ratio_to_minimal']:.2f}" if r.get("cpu_ratio_to_minimal")
                     else "")
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['width']} | "
                     f"{r['validation_examples']} | {r['examples_per_second']:.0f} | {ratio} "
                     f"| {r['examples_per_cpu_second']:.0f} | {cpu_ratio} | {reference} "
                     f"| {r['first_epoch_seconds']:.1f} | {calibration} | {after} | "
                     f"{r['peak_rss_mb']:.0f} | {_spread(r)} |")
    return "\n".join(lines)


# ================================================================ report: RESULTS.md
def _rows(results: list[dict], method: str) -> list[dict]:
    return [r for r in results if r["method"] == method and "error" not in r]


def _training_only(row: dict) -> float:
    """A calibrated row's ratio to ``hard-validated`` with its calibration time taken
    out: what the teacher costs inside the training steps."""
    return row["cpu_ratio_to_hard_validated"] / (1.0 - row["calibration_cpu_fraction"])


def _round_range(row: dict, ratio: str) -> str:
    """`` (rounds 0.64-1.06)``: the lowest and highest per-round ratio, when there
    were several rounds."""
    rounds = row.get(f"{ratio}_rounds", [])
    return f" (rounds {min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else ""


def _against_target(ratio: float, target: float) -> str:
    """``0.93 (target >= 0.90: met)``; three decimals where two would hide a miss."""
    digits = 3 if round(ratio, 2) >= target > ratio else 2
    return f"{ratio:.{digits}f} (target >= {target:.2f}: {'met' if ratio >= target else 'missed'})"


def calibrated_target(train_size: int) -> float:
    """The lowest CPU ratio of a calibrated row to ``hard-validated`` that meets the
    cost target: at most 1.10 times the CPU time per epoch on small training sets (up
    to 1,000 images), at least 0.95 of the throughput from 4,096 images on.

    Example:

        >>> round(calibrated_target(1000), 3), calibrated_target(4096)
        (0.909, 0.95)
    """
    return 1.0 / 1.10 if train_size < 4096 else 0.95


def _step_costs_text(path: Path | None = None) -> str:
    """The parts of one training step (``benchmarks/step_costs.py``), when measured."""
    path = RESULTS_DIR / "step_costs.json" if path is None else path
    if not path.is_file():
        return ""
    costs = json.loads(path.read_text())
    part = costs["parts_ms"]
    return (f". Timed apart on one batch (`{costs['command']}`, {costs['machine']}), "
            f"AWP's ascent costs {part['ascent']:.1f} ms against {part['attack_pass']:.1f} "
            f"ms for one PGD pass and {part['update']:.1f} ms for PGD-AT's update: the step "
            f"with AWP does {part['awp_ratio']:.2f} of PGD-AT's steps per CPU-second, so the "
            "ascent itself is one pass; the epoch-level ratio above is lower on this loaded "
            "machine, and that difference is not explained")


def faster(ratio: float, name: str, reference: str) -> str:
    """Which of two is faster and by how much, from ``name``'s throughput over
    ``reference``'s.

    Example:

        >>> faster(0.8, "PyTorch", "keras-advcal")
        'keras-advcal is 1.25x as fast as PyTorch'
        >>> faster(1.1, "PyTorch", "keras-advcal")
        'PyTorch is 1.10x as fast as keras-advcal'
        >>> faster(0.998, "PyTorch", "keras-advcal")
        'PyTorch and keras-advcal are as fast as each other (ratio 0.998)'
    """
    if round(ratio, 2) == 1.0:
        return f"{name} and {reference} are as fast as each other (ratio {ratio:.3f})"
    if ratio > 1.0:
        return f"{name} is {ratio:.2f}x as fast as {reference}"
    return f"{reference} is {1.0 / ratio:.2f}x as fast as {name}"


def _epoch_seconds(row: dict) -> str:
    """``4.10 CPU-s (9.8 s wall)``: a row's steady epoch, from its throughputs."""
    examples = row["train_examples_per_epoch"]
    return (f"{examples / row['examples_per_cpu_second']:.2f} CPU-s "
            f"({examples / row['examples_per_second']:.1f} s wall)")


def _torch_findings(results: list[dict]) -> list[str]:
    """The plain PyTorch PGD-AT epoch against the library's (``hard``), in words."""
    lines = []
    for r in _rows(results, TORCH):
        hard = [h for h in _rows(results, "hard")
                if (h["batch_size"], h["width"]) == (r["batch_size"], r["width"])]
        if "cpu_ratio_to_hard" not in r or not hard:
            continue
        text = (f"Plain PyTorch PGD-AT (`{TORCH}`, eager, batch {r['batch_size']}, width "
                f"{r['width']}, `torch.set_num_threads({r.get('torch_threads', '?')})`): "
                f"{_epoch_seconds(r)} per {r['train_examples_per_epoch']:,}-image epoch, "
                f"against {_epoch_seconds(hard[0])} for the library's `hard` (the "
                f"rounds in the table); per CPU-second, "
                f"{faster(r['cpu_ratio_to_hard'], 'PyTorch', 'keras-advcal')}: PyTorch / "
                f"keras-advcal {r['cpu_ratio_to_hard']:.2f}"
                f"{_round_range(r, 'cpu_ratio_to_hard')}")
        if "ratio_to_hard" in r:
            text += (f"; by the wall clock, "
                     f"{faster(r['ratio_to_hard'], 'PyTorch', 'keras-advcal')}")
        lines.append(text + ".")
    return lines


def findings(results: list[dict]) -> list[str]:
    """Sentences with the ratios the issue's targets are about, from one results list."""
    lines = []
    for r in _rows(results, "hard"):
        if "cpu_ratio_to_minimal" in r:
            lines.append(f"`hard` / `minimal` (batch {r['batch_size']}, width {r['width']}): "
                         f"{_against_target(r['cpu_ratio_to_minimal'], 0.95)}"
                         f"{_round_range(r, 'cpu_ratio_to_minimal')}.")
    for method in ("calibrated-best", "calibrated-swa", "calibrated-ema"):
        for r in _rows(results, method):
            if "cpu_ratio_to_hard_validated" not in r:
                continue
            ratio = r["cpu_ratio_to_hard_validated"]
            text = (f"`{method}` / `hard-validated` (batch {r['batch_size']}, width "
                    f"{r['width']}, {r['train_size']} training and {r['validation_examples']} "
                    f"validation images): "
                    f"{_against_target(ratio, calibrated_target(r['train_size']))}"
                    f"{_round_range(r, 'cpu_ratio_to_hard_validated')}; "
                    f"calibration {100 * r['calibration_cpu_fraction']:.0f}% of the epoch's CPU")
            if "calibration_cpu_fraction_after_snapshot" in r:
                text += (" between snapshots, "
                         f"{100 * r['calibration_cpu_fraction_after_snapshot']:.0f}% in the "
                         "epoch right after one")
            text += (f"; its epochs without the calibration ran at {_training_only(r):.2f} "
                     "of `hard-validated`")
            if _training_only(r) < 1.0:
                text += " (they add the teacher's forward pass to every training step)"
            lines.append(text + ".")
    for method in VARIANTS:
        for r in _rows(results, method):
            if "cpu_ratio_to_hard" not in r:
                continue
            ratio = r["cpu_ratio_to_hard"]
            text = (f"`{method}` / `hard` (batch {r['batch_size']}, width {r['width']}): "
                    f"{ratio:.2f}{_round_range(r, 'cpu_ratio_to_hard')}")
            if method == "hard-awp":
                # AWP costs one forward and backward pass per batch, PGD-AT steps + 1.
                text += ("; against AWP's extra pass and nothing more: "
                         f"{_against_target(ratio, (STEPS + 1) / (STEPS + 2))}")
                text += _step_costs_text()
            lines.append(text + ".")
    lines += _torch_findings(results)
    art, minimal = _rows(results, "art"), _rows(results, "minimal")
    hard = _rows(results, "hard")
    if art and hard and minimal:
        lines.append(f"ART `AdversarialTrainerMadryPGD`: {art[0]['cpu_ratio_to_minimal']:.2f} "
                     f"of `minimal`; the hard-label trainer does "
                     f"{hard[0]['examples_per_cpu_second'] / art[0]['examples_per_cpu_second']:.1f}"
                     "x ART's examples per CPU-second.")
    return lines


def inconsistencies(results: list[dict], runs: list[dict] | None = None) -> list[str]:
    """Rows that contradict the work they do: a method that does strictly more work
    than another in the same configuration but measured more examples per CPU-second
    (by over 5%; with ``runs`` from several rounds, the median of the per-round ratios):
    a sign that the run's noise exceeds the differences it measures."""
    # Same code plus more work. (`hard` and `minimal` compute the same step through
    # different code, so either may be faster.)
    more_work = [("hard-validated", "hard"), ("calibrated-best", "hard-validated"),
                 ("trades", "hard"), ("hard-awp", "hard")]
    found = []
    for heavier, lighter in more_work:
        for h in _rows(results, heavier):
            for light in _rows(results, lighter):
                same = ("batch_size", "width", "val_size")
                if not all(h[k] == light[k] for k in same):
                    continue
                ratio = h["examples_per_cpu_second"] / light["examples_per_cpu_second"]
                paired = _paired_ratios(runs, h, lighter, same, "examples_per_cpu_second"
                                        ) if runs else []
                ratio = statistics.median(paired) if paired else ratio
                if ratio > 1.05:
                    found.append(
                        f"`{heavier}` (batch {h['batch_size']}, width {h['width']}) measured "
                        f"{ratio:.2f} times the examples per CPU-second of `{lighter}`, "
                        "although it does the same work and more.")
    for method in ("calibrated-best", "calibrated-swa", "calibrated-ema"):
        for r in _rows(results, method):
            if "cpu_ratio_to_hard_validated" in r and _training_only(r) > 1.05:
                found.append(
                    f"`{method}` (batch {r['batch_size']}, width {r['width']}, "
                    f"{r['val_size']} validation images) without its calibration measured "
                    f"{_training_only(r):.2f} times the examples per CPU-second of "
                    "`hard-validated`, although its training steps do the same work and a "
                    "teacher forward pass more.")
    return found


def epoch_regimes(history: dict) -> dict[str, int]:
    """Counts the three kinds of ``best``-teacher epoch in a run's history: no teacher
    or a snapshot (no calibration: ``calibration_nll`` is NaN), right after a snapshot
    (new examples), and between snapshots (reused examples)."""
    nll = history.get("calibration_nll", [])
    skipped = [value is None or value != value for value in nll]  # NaN or missing
    counts = {"no calibration": 0, "after a snapshot": 0, "between snapshots": 0}
    for epoch, skip in enumerate(skipped):
        if skip:
            counts["no calibration"] += 1
        elif epoch > 0 and skipped[epoch - 1]:
            counts["after a snapshot"] += 1
        else:
            counts["between snapshots"] += 1
    return counts


def regime_estimate(results: list[dict], runs_dir: Path) -> list[str]:
    """The average calibration share over the ``best`` teacher's benchmark runs,
    estimated from their epoch regimes and the measured shares of the row closest to
    that benchmark's setting (width 32, batch 64, the smallest validation set)."""
    rows = [r for r in _rows(results, "calibrated-best")
            if "calibration_cpu_fraction_after_snapshot" in r]
    if not rows:
        return []
    row = min(rows, key=lambda r: (r["width"] != 32, abs(r["batch_size"] - 64), r["val_size"]))
    lines = []
    best_runs = [path for path in sorted(runs_dir.glob("calibrated_s*/history.json"))
                 if path.parent.name[len("calibrated_s"):].isdigit()]  # not calibrated_swa_*
    for history_file in best_runs:
        history = json.loads(history_file.read_text())
        counts = epoch_regimes(history)
        total = sum(counts.values())
        share = (counts["between snapshots"] * row["calibration_cpu_fraction"]
                 + counts["after a snapshot"] * row["calibration_cpu_fraction_after_snapshot"]
                 ) / max(total, 1)
        lines.append(f"`{history_file.parent.name}` ({total} epochs): "
                     + ", ".join(f"{n} {k}" for k, n in counts.items())
                     + f"; with the shares measured at batch {row['batch_size']}, width "
                     f"{row['width']}, {row['val_size']} validation and "
                     f"{row['train_size']} training images, that mix of epochs would spend "
                     f"{100 * share:.0f}% of its CPU on the calibration (an estimate, not a "
                     "measurement; on the benchmark's own, smaller training set the share "
                     "is larger).")
    return lines


def _measurements(report: dict) -> str:
    rounds = report.get("repeats", 1)
    cpus = report["results"][0].get("cpus")
    text = (f"{rounds} interleaved rounds per row" if rounds > 1
            else "one measurement per row")
    return text + (f", every run pinned to CPU {', '.join(map(str, cpus))}" if cpus else "")


def section(reports: list[dict], runs_dir: Path) -> str:
    """The "## Throughput (issue 8)" section of RESULTS.md from result files."""
    parts = [f"{SECTION}\n",
             "Made by `python benchmarks/throughput.py` (results in `benchmarks/results/"
             "throughput*.json`; `--report-only` rebuilds this section). Same model "
             "(`small_cnn`), data (Fashion-MNIST training images), batch and attack "
             "(L-inf PGD-5, eps 0.1, step 0.05, random start) for every row; each row is its "
             "own process. The validation pass of `fit` and the calibration use PGD-10.",
             "",
             "**Read the CPU columns.** With `--threads 1` each run uses one TensorFlow "
             "thread, so its process CPU time per example measures the work it does, "
             "whatever else the machine runs; *CPU ratio* is examples per CPU-second over "
             "the reference's. Wall-clock examples/s depend on the machine's load at the "
             "time (given per file) and are comparable between rows only on a quiet "
             "machine. The targets: `hard` within 5% of `minimal`; the calibrated trainer "
             "within 10% of `hard-validated` (the same training and validation pass, "
             "without the teacher and the calibration).", "",
             "With `--repeats N`, every configuration runs N times, in rounds that each run "
             "every configuration once in the same order; a row shows its median round, "
             "the last column the lowest and highest examples per CPU-second of its rounds, "
             "and the ratios are the median of the per-round ratios (the two runs of a "
             "ratio ran minutes apart). `--cpus` pins every run to the given cores, so "
             "other work can use the rest of the machine.", ""]
    consistent = []  # the rows of the reports that passed the consistency check
    for report in reports:
        machine = report.get("machine", {})
        parts += [f"Command: `python benchmarks/{report['command']}` ({report['created']}; "
                  f"{machine.get('platform', '?')}, {machine.get('cpus', '?')} CPUs, load "
                  f"average at start {machine.get('load_average_at_start', ['?'])[0]:.1f}; "
                  f"{report['results'][0].get('train_size', '?')} training images, "
                  f"{report['results'][0].get('epochs', '?')} epochs per run; "
                  f"{_measurements(report)}):", "",
                  markdown(report["results"]), ""]
        if report.get("file") in REPORT_NOTES:
            parts += [REPORT_NOTES[report["file"]], ""]
        contradictions = inconsistencies(report["results"], report.get("runs"))
        if contradictions:
            parts += ["**Not reliable: the rows contradict the work they do**, so the CPU "
                      "time of a process did not measure its work well enough in this run "
                      f"({_measurements(report)}; the noise is larger than the differences "
                      "measured). Its ratios are not used for any conclusion:", ""]
            parts += [f"- {line}" for line in contradictions] + [""]
        found = findings(report["results"])
        if found and not contradictions:
            parts += ["What it says:", ""] + [f"- {line}" for line in found] + [""]
        if not contradictions:
            consistent += report["results"]
    estimate = regime_estimate(consistent, runs_dir)
    if estimate:
        parts += ["In the robust-overfitting benchmark's runs with the `best` teacher "
                  "(`benchmarks/results/robust_overfitting/calibrated_s*`), its epochs "
                  "were:", ""]
        parts += [f"- {line}" for line in estimate] + [""]
    return "\n".join(parts).rstrip() + "\n"


def write_section(paths: list[Path], results_md: Path, runs_dir: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import robust_overfitting  # the section writer all benchmarks share

    reports = [dict(json.loads(path.read_text()), file=path.name)
               for path in paths if path.is_file()]
    if not reports:
        raise SystemExit(f"no result files among {[str(p) for p in paths]}")
    robust_overfitting.update_section(results_md, section(reports, runs_dir), SECTION)
    print(f"wrote the throughput section of {results_md}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small data, width 8, 2 epochs: checks the script works")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--widths", nargs="+", type=int, default=None,
                        help="small_cnn widths (first conv filters; dense = 8 x width)")
    parser.add_argument("--val-sizes", nargs="+", type=int, default=None,
                        help="validation sizes; the first is used by every method, the "
                             "others by calibrated-best only (calibration-time scaling)")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--train-sample", type=int, default=1000,
                        help="training-sample size of the calibration (accuracy floor)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run; the first is excluded from examples/s")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the trainer's step with XLA (the minimal loop stays "
                             "in graph mode)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow threads per run (0: TensorFlow's default); with 1, "
                             "the CPU-time columns measure work independently of the load")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds: each runs every configuration once, in the same "
                             "order; a row reports its median round and the ratios the "
                             "median of the per-round ratios")
    parser.add_argument("--cpus", nargs="+", type=int, default=None,
                        help="pin every run to these CPU cores (os.sched_setaffinity), "
                             "e.g. one core left to the runs while other work uses the rest")
    parser.add_argument("--max-unrolled-steps", type=int, default=None,
                        help="set keras_advcal.attacks.MAX_UNROLLED_STEPS in every run (0: "
                             "the trainer's attacks run as a tf.while_loop; the minimal "
                             "loop is always unrolled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="no measurement: rewrite the throughput section of "
                             "benchmarks/RESULTS.md from --reports")
    parser.add_argument("--reports", nargs="+", type=Path,
                        default=[RESULTS_DIR / name for name in REPORT_FILES],
                        help="result files the section is made of (default: "
                             f"{', '.join(REPORT_FILES)}; missing ones are left out)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.report_only:
        write_section(args.reports, ROOT / "benchmarks" / "RESULTS.md",
                      RESULTS_DIR / "robust_overfitting")
        return

    quick = args.quick
    batch_sizes = args.batch_sizes or [128]
    widths = args.widths or ([8] if quick else [32])
    val_sizes = args.val_sizes or ([200] if quick else [1000, 5000])
    train_size = args.train_size or (1024 if quick else 10000)
    epochs = args.epochs or (2 if quick else 3)
    train_sample = min(args.train_sample, 256) if quick else args.train_sample
    out = args.out or RESULTS_DIR / ("throughput_quick.json" if quick else "throughput.json")
    methods, notes = available_methods(args.methods)
    for note in notes:
        print(note)
    if not methods:
        raise SystemExit("no method left to measure")

    specs = []
    for batch_size in batch_sizes:
        for width in widths:
            for method in methods:
                scaled = method in ("calibrated-best", "hard-validated")
                for val_size in (val_sizes if scaled else val_sizes[:1]):
                    specs.append(dict(method=method, batch_size=batch_size, width=width,
                                      val_size=val_size, train_size=train_size, epochs=epochs,
                                      train_sample=train_sample, seed=args.seed,
                                      jit_compile=args.jit_compile, threads=args.threads,
                                      cpus=args.cpus,
                                      max_unrolled_steps=args.max_unrolled_steps))
    runs = []
    for round_index in range(args.repeats):
        for spec in specs:
            print(f"round {round_index + 1}/{args.repeats}: {spec['method']} batch="
                  f"{spec['batch_size']} width={spec['width']} val={spec['val_size']} ...",
                  flush=True)
            try:
                run = _measure(spec, args.timeout)
            except subprocess.TimeoutExpired:
                run = dict(spec, error=f"timed out after {args.timeout:g} s")
            runs.append(dict(run, round=round_index))
    results = combine(runs)
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_average_at_start": list(os.getloadavg())},
        "attack": {"norm": "linf", "epsilon": EPSILON, "steps": STEPS,
                   "step_size": STEP_SIZE, "random_start": True},
        "repeats": args.repeats,
        "results": results,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print()
    print(markdown(results))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
