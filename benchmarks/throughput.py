"""Training throughput: how much AdvCalTrainer costs over a bare PGD-AT loop.

On the same model (``keras_advcal.models.small_cnn``), data (Fashion-MNIST through
``keras_advcal.data.load``; scikit-learn digits when Fashion-MNIST is not available),
batch and attack (L-inf PGD-5, eps 0.1, random start), it measures:

* ``minimal``: a hand-written ``tf.function`` PGD-AT step (PGD unrolled in the graph,
  cross-entropy, ``optimizer.apply``) in a Python loop over the ``tf.data`` batches;
* ``hard``: ``AdvCalTrainer(labels="hard")`` through ``fit``;
* ``calibrated-best``, ``calibrated-swa``, ``calibrated-ema``:
  ``AdvCalTrainer(labels="calibrated")`` with a ``CalibratedTeacher`` of that kind,
  through ``fit``, over whole epochs, so the per-epoch calibration (PGD on the
  validation split and the training sample, the 100 x 100 grid) is included; its own
  time is reported too;
* ``art``: the Adversarial Robustness Toolbox's ``AdversarialTrainerMadryPGD`` on a
  ``TensorFlowV2Classifier`` of the same model, when ``art`` imports. ART is not a
  dependency of keras-advcal; to include it::

      pip install adversarial-robustness-toolbox

Each (method, batch size, width) runs in its own subprocess, so the peak resident
memory (``ru_maxrss``) is that run's alone. Throughput is training examples per
second over the epochs after the first (the first includes tracing and is reported
separately); ``ratio`` is throughput over the ``minimal`` loop's in the same
configuration. ``--val-sizes`` repeats ``calibrated-best`` for each validation-set
size, for the scaling of the calibration time. Results go to
``benchmarks/results/throughput.json`` (``throughput_quick.json`` with ``--quick``)
and a markdown table is printed.

Examples::

    python benchmarks/throughput.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/throughput.py                     # the full table (much longer)
    python benchmarks/throughput.py --batch-sizes 64 128 256 --widths 16 32 \\
        --val-sizes 500 2000 8000 --train-size 10000 --epochs 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
METHODS = ("minimal", "hard", "calibrated-best", "calibrated-swa", "calibrated-ema", "art")
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


def _run_trainer(model, dataset, epochs, timer, kind, splits, args):
    import keras

    from keras_advcal import PGD, AdvCalTrainer, CalibratedTeacher

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            timer.begin()

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

    attack = PGD(EPSILON, steps=STEPS, seed=1)
    labels = "hard" if kind is None else "calibrated"
    # The minimal loop measures no clean accuracy; neither does the trainer here.
    trainer = AdvCalTrainer(model, attack, labels=labels, track_clean_accuracy=False, seed=1)
    trainer.compile(keras.optimizers.Adam(1e-3), jit_compile=args.jit_compile)
    callbacks = []
    if kind is not None:
        x_train, y_train = splits.train
        sample = min(len(y_train), args.train_sample)
        callbacks.append(TimedTeacher(splits.validation, (x_train[:sample], y_train[:sample]),
                                      kind=kind, batch_size=256))
    history = trainer.fit(dataset, epochs=epochs, verbose=0, callbacks=callbacks + [Timer()])
    out = {"final_loss": float(history.history["loss"][-1])}
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


def child(spec: dict) -> dict:
    import keras
    import tensorflow as tf

    splits = _load_data(spec["train_size"], spec["val_size"], spec["seed"])
    rss_before = _rss_mb()
    x, y = splits.train
    model = _model(splits.input_shape, splits.num_classes, spec["width"], spec["seed"])
    method = spec["method"]
    timer = _EpochTimer()
    epochs = spec["epochs"]
    args = argparse.Namespace(**spec)
    if method == "minimal":
        extra = _run_minimal(model, _dataset(x, y, spec["batch_size"], spec["seed"]),
                             epochs, timer)
    elif method == "art":
        extra = _run_art(model, splits, epochs, timer, spec["batch_size"])
    else:
        kind = None if method == "hard" else method.split("-", 1)[1]
        extra = _run_trainer(model, _dataset(x, y, spec["batch_size"], spec["seed"]), epochs,
                             timer, kind, splits, args)
    examples = (len(x) // spec["batch_size"]) * spec["batch_size"]
    steady = timer.seconds[1:] or timer.seconds
    steady_cpu = timer.cpu_seconds[1:] or timer.cpu_seconds
    result = dict(spec, dataset=splits.name, train_examples_per_epoch=examples,
                  validation_examples=len(splits.validation[1]),
                  epoch_seconds=timer.seconds, first_epoch_seconds=timer.seconds[0],
                  examples_per_second=examples * len(steady) / sum(steady),
                  epoch_cpu_seconds=timer.cpu_seconds,
                  examples_per_cpu_second=examples * len(steady_cpu) / sum(steady_cpu),
                  rss_before_model_mb=rss_before, peak_rss_mb=_rss_mb(),
                  parameters=int(model.count_params()), tensorflow=tf.__version__,
                  keras=keras.__version__, **extra)
    if "calibration_seconds" in extra:
        calibration = extra["calibration_seconds"][1:] or extra["calibration_seconds"]
        result["calibration_seconds_per_epoch"] = sum(calibration) / len(calibration)
        cpu = extra["calibration_cpu_seconds"][1:] or extra["calibration_cpu_seconds"]
        result["calibration_cpu_fraction"] = (sum(cpu) / len(cpu)) / (
            sum(steady_cpu) / len(steady_cpu))
        result["calibration_fraction"] = result["calibration_seconds_per_epoch"] / (
            sum(steady) / len(steady))
    return result


# ================================================================ parent: the grid
def _art_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import art"], capture_output=True)
    return probe.returncode == 0


def _measure(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    if spec.get("threads"):
        env.update(TF_NUM_INTRAOP_THREADS=str(spec["threads"]),
                   TF_NUM_INTEROP_THREADS=str(spec["threads"]),
                   OMP_NUM_THREADS=str(spec["threads"]))
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                               capture_output=True, text=True, env=env, timeout=timeout)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return dict(spec, error=completed.stderr[-2000:] or f"exit {completed.returncode}")


def markdown(results: list[dict]) -> str:
    lines = ["| method | batch | width | val | examples/s | ratio to minimal | examples/CPU-s "
             "| CPU ratio to minimal | first epoch s | calibration s/epoch (share) "
             "| peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['batch_size']} | {r['width']} | "
                         f"{r['val_size']} | failed: {r['error'].splitlines()[-1][:80]} "
                         "| | | | | | |")
            continue
        calibration = ""
        if "calibration_seconds_per_epoch" in r:
            calibration = (f"{r['calibration_seconds_per_epoch']:.2f} "
                           f"({100 * r['calibration_fraction']:.0f}%; CPU "
                           f"{100 * r['calibration_cpu_fraction']:.0f}%)")
        ratio = f"{r['ratio_to_minimal']:.2f}" if r.get("ratio_to_minimal") else ""
        cpu_ratio = (f"{r['cpu_ratio_to_minimal']:.2f}" if r.get("cpu_ratio_to_minimal")
                     else "")
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['width']} | "
                     f"{r['validation_examples']} | {r['examples_per_second']:.0f} | {ratio} "
                     f"| {r['examples_per_cpu_second']:.0f} | {cpu_ratio} "
                     f"| {r['first_epoch_seconds']:.1f} | {calibration} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    quick = args.quick
    batch_sizes = args.batch_sizes or [128]
    widths = args.widths or ([8] if quick else [32])
    val_sizes = args.val_sizes or ([200] if quick else [1000, 5000])
    train_size = args.train_size or (1024 if quick else 10000)
    epochs = args.epochs or (2 if quick else 3)
    train_sample = min(args.train_sample, 256) if quick else args.train_sample
    out = args.out or RESULTS_DIR / ("throughput_quick.json" if quick else "throughput.json")
    methods = [m for m in args.methods if m != "art" or _art_available()]
    if "art" in args.methods and "art" not in methods:
        print("art is not installed: skipping it (pip install adversarial-robustness-toolbox)")

    specs = []
    for batch_size in batch_sizes:
        for width in widths:
            for method in methods:
                for val_size in (val_sizes if method == "calibrated-best" else val_sizes[:1]):
                    specs.append(dict(method=method, batch_size=batch_size, width=width,
                                      val_size=val_size, train_size=train_size, epochs=epochs,
                                      train_sample=train_sample, seed=args.seed,
                                      jit_compile=args.jit_compile, threads=args.threads))
    results = []
    for spec in specs:
        print(f"running {spec['method']} batch={spec['batch_size']} width={spec['width']} "
              f"val={spec['val_size']} ...", flush=True)
        try:
            results.append(_measure(spec, args.timeout))
        except subprocess.TimeoutExpired:
            results.append(dict(spec, error=f"timed out after {args.timeout:g} s"))
    for r in results:
        base = [m for m in results if m["method"] == "minimal" and "error" not in m
                and m["batch_size"] == r["batch_size"] and m["width"] == r["width"]]
        if base and "error" not in r:
            r["ratio_to_minimal"] = r["examples_per_second"] / base[0]["examples_per_second"]
            r["cpu_ratio_to_minimal"] = (r["examples_per_cpu_second"]
                                         / base[0]["examples_per_cpu_second"])
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_average_at_start": list(os.getloadavg())},
        "attack": {"norm": "linf", "epsilon": EPSILON, "steps": STEPS,
                   "step_size": STEP_SIZE, "random_start": True},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print()
    print(markdown(results))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
