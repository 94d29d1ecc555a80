"""Tiny training runs for the reliability, distribution and precision tests.

Importable (the tests use the helpers) and runnable as a script, so that settings that
cannot be undone inside one process (op determinism, logical devices, a global
mixed-precision policy, a multi-worker ``TF_CONFIG``) stay out of the test process,
and so that a real training process can be killed with SIGKILL and restarted::

    python tests/_train_worker.py MODE --out DIR [options]

Modes:

``train``       CalibratedTeacher (first) + BackupAndRestore; writes ``result.json`` at
                the end. ``--sleep`` slows each batch down so that a test can kill it.
``resume``      With op determinism on: an uninterrupted run (A), the same run again
                (B), and a run interrupted at epoch ``--interrupt`` then resumed through
                BackupAndRestore (C); states as ``<run>.npz``, histories in ``runs.json``.
``mirrored``    The same training on one device and under a MirroredStrategy over two
                logical CPU devices; ``<run>.npz`` and ``runs.json``.
``multiworker`` One worker of a MultiWorkerMirroredStrategy (``TF_CONFIG`` from the
                environment); writes ``worker<index>.npz`` and ``worker<index>.json``.
``mixed``       Fits under each mixed-precision policy of ``--policy`` (comma-separated),
                then restores ``float32``; writes ``mixed_<policy>.json``.

Data: scikit-learn digits (8x8x1, pixels / 16), labels 0..9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# Two logical CPU devices must be configured before TensorFlow initialises its devices.
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "mirrored":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_advcal import AWP, PGD, AdvCalTrainer, CalibratedTeacher  # noqa: E402

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------- helpers
def digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 sklearn digits as ``float32`` (N, 8, 8, 1) images in [0, 1] and int32 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype("float32")[..., None], bunch.target.astype("int32")


def splits():
    """Fixed train (640), validation (192, for val_adv_accuracy) and calibration
    (validation 128: the first of the validation split, so that the calibration uses
    the validation pass's examples / train sample 128) splits; sizes are multiples of
    the batch sizes used so that each fit traces one training step only."""
    x, y = digits()
    return {
        "train": (x[:640], y[:640]),
        "val": (x[640:832], y[640:832]),
        "cal_val": (x[640:768], y[640:768]),
        "cal_train": (x[:128], y[:128]),
    }


def make_model(arch: str = "dense", seed: int = 0) -> keras.Model:
    """A tiny classifier (logits out) with seeded initial weights."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1))]
    if arch == "conv":
        layers += [keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.Flatten()]
    else:
        layers += [keras.layers.Flatten(), keras.layers.Dense(32, activation="relu")]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=f"tiny_{arch}")


def make_trainer(labels: str = "calibrated", arch: str = "dense", seed: int = 0,
                 random_start: bool = True, steps: int = 3, lr: float = 1e-2,
                 jit_compile=False, **kwargs) -> AdvCalTrainer:
    """A compiled trainer on a tiny model; same ``seed`` gives the same initial state."""
    model = make_model(arch, seed)
    attack = PGD(epsilon=0.1, step_size=0.04, steps=steps, random_start=random_start)
    kwargs.setdefault("objective", "pgd_at")  # the calibrated PGD-AT trainer unless told
    trainer = AdvCalTrainer(model, attack, labels=labels, seed=seed + 1000, **kwargs)
    trainer.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=jit_compile)
    return trainer


def make_teacher_callback(kind: str = "best", **kwargs) -> CalibratedTeacher:
    # These short runs improve every epoch: calibrate in snapshot epochs too, so every
    # epoch has a calibration to check (the default keeps T and rho in those epochs).
    kwargs.setdefault("recalibrate_on_snapshot", True)
    data = splits()
    return CalibratedTeacher(data["cal_val"], data["cal_train"], kind=kind,
                             swa_start_epoch=kwargs.pop("swa_start_epoch", 0),
                             batch_size=64, **kwargs)


def trainer_state(trainer: AdvCalTrainer) -> dict[str, np.ndarray]:
    """Every piece of state that must survive a restore, as NumPy arrays."""
    state = {}
    for i, w in enumerate(trainer.student.weights):
        state[f"student/{i}"] = np.array(w.numpy())
    if trainer.teacher is not None:
        for i, w in enumerate(trainer.teacher.weights):
            state[f"teacher/{i}"] = np.array(w.numpy())
    if trainer.optimizer is not None and trainer.optimizer.built:
        for i, v in enumerate(trainer.optimizer.variables):
            state[f"optimizer/{i}"] = np.array(v.numpy())
    for name in ("temperature", "rho", "teacher_ready", "teacher_score", "teacher_updates",
                 "ema_decay"):
        state[name] = np.array(getattr(trainer, name).numpy())
    state["attack_seed"] = np.array(trainer.seed_generator.state.numpy())
    state["eval_seed"] = np.array(trainer.eval_seed_generator.state.numpy())
    for key, value in trainer.calibration_cache.items():
        state[f"calibration_cache/{key}"] = np.array(value)
    return state


def state_differences(a: dict, b: dict, atol: float = 0.0) -> dict[str, float]:
    """Keys whose arrays differ (bitwise when ``atol == 0``), with the largest difference."""
    out = {}
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            out[key] = float("inf")
            continue
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.shape != y.shape:
            out[key] = float("inf")
        elif atol == 0.0:
            if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                out[key] = float(np.max(np.abs(x.astype("float64") - y.astype("float64"))))
        elif not np.allclose(x, y, atol=atol, rtol=0, equal_nan=True):
            out[key] = float(np.max(np.abs(x.astype("float64") - y.astype("float64"))))
    return out


# Wall-clock measurements differ from run to run by nature; everything else must not.
TIMING_KEYS = ("calibration_seconds",)


def clean_history(history: dict) -> dict:
    return {k: [float(v) for v in vals] for k, vals in history.items()
            if k not in TIMING_KEYS}


class Interrupt(keras.callbacks.Callback):
    """Raises at the beginning of epoch ``epoch`` (simulated preemption)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}")


class Sleep(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def _fit(trainer, epochs, callbacks, batch_size=64, **kwargs):
    data = splits()
    return trainer.fit(*data["train"], batch_size=batch_size, epochs=epochs, shuffle=False,
                       validation_data=data["val"], callbacks=callbacks, verbose=0, **kwargs)


# --------------------------------------------------------------------------- modes
def mode_train(args) -> None:
    trainer = make_trainer(seed=args.seed)
    # CalibratedTeacher first: the backup then holds the teacher, T and rho of the epoch.
    # double_checkpoint keeps the previous backup in case a kill hits the write.
    callbacks = [make_teacher_callback(args.kind),
                 keras.callbacks.BackupAndRestore(args.backup_dir, save_freq=args.save_freq,
                                                  double_checkpoint=True)]
    if args.csv:
        callbacks.append(keras.callbacks.CSVLogger(args.csv, append=True))
    if args.sleep:
        callbacks.append(Sleep(args.sleep))
    history = _fit(trainer, args.epochs, callbacks)
    result = {"epochs_run": list(map(int, history.epoch)),
              "history": clean_history(history.history),
              "state": {k: float(v) for k, v in trainer_state(trainer).items() if v.ndim == 0},
              "backup_left": os.path.exists(args.backup_dir)}
    (Path(args.out) / "result.json").write_text(json.dumps(result))


def mode_resume(args) -> None:
    tf.config.experimental.enable_op_determinism()
    out = Path(args.out)
    runs = {}

    def run(name, callbacks_extra=(), backup=None, expect_interrupt=False):
        trainer = make_trainer(seed=args.seed)
        callbacks = [make_teacher_callback(args.kind)]
        if backup:
            callbacks.append(keras.callbacks.BackupAndRestore(backup))
        callbacks.extend(callbacks_extra)
        try:
            history = _fit(trainer, args.epochs, callbacks)
        except KeyboardInterrupt:
            if not expect_interrupt:
                raise
            return None
        runs[name] = {"history": clean_history(history.history),
                      "epochs_run": list(map(int, history.epoch))}
        np.savez(out / f"{name}.npz", **trainer_state(trainer))
        return trainer

    run("A")
    run("B")
    backup = str(out / "backup")
    run("C_interrupted", [Interrupt(args.interrupt)], backup=backup, expect_interrupt=True)
    runs["C_checkpoint_left"] = os.path.exists(os.path.join(backup, "latest.weights.h5"))
    run("C", backup=backup)
    (out / "runs.json").write_text(json.dumps(runs))


def _replica_spread(weights) -> tuple[int, float]:
    """The number of replica copies of each variable, and the largest difference
    between copies (0 when every replica holds the same value)."""
    spread, copies_count = 0.0, 1
    for w in weights:
        value = getattr(w, "value", w)
        components = getattr(value, "values", None) or (value,)
        copies = [np.array(c.numpy()) for c in components]
        copies_count = len(copies)
        spread = max([spread] + [float(np.max(np.abs(c - copies[0]))) for c in copies])
    return copies_count, spread


def _mirrored_run(strategy, kind, epochs, out, name, runs, labels="calibrated", **options):
    """Training with a ``kind`` teacher (``None``: hard labels) and further trainer
    ``options`` (objective, AWP); ``strategy=None``: one device."""
    if strategy is None:
        trainer = make_trainer(labels, seed=3, random_start=False, **options)
    else:
        with strategy.scope():
            trainer = make_trainer(labels, seed=3, random_start=False, **options)
    callbacks = [make_teacher_callback(kind)] if kind else []
    # Global batch 64: 32 examples per replica under the two-device strategy.
    history = _fit(trainer, epochs, callbacks)
    runs[name] = {"history": clean_history(history.history),
                  "calibrations": [r.to_dict() for r in callbacks[0].results] if kind else [],
                  "calibrations_from_validation_pass": (
                      callbacks[0].calibrations_from_validation_pass if kind else 0)}
    state = trainer_state(trainer)
    # Every replica's copy of each teacher and student variable, to check that they agree.
    if trainer.teacher is not None:
        copies, spread = _replica_spread(trainer.teacher.weights)
        runs[name]["teacher_copies"] = copies
        runs[name]["teacher_replica_spread"] = spread
    runs[name]["student_replica_spread"] = _replica_spread(trainer.student.weights)[1]
    np.savez(out / f"{name}.npz", **state)


#: The objective and AWP runs of the ``mirrored`` mode: name -> (labels, teacher kind,
#: trainer options, whether to run it on one device too). TRADES's attack starts
#: from random noise, drawn per replica: its replicated run differs from one device.
OBJECTIVE_RUNS = {
    "pgd_at_awp": ("hard", None, dict(weight_perturbation=AWP(0.01)), True),
    "mart_awp": ("calibrated", "ema", dict(objective="mart", weight_perturbation=AWP(0.01)),
                 True),
    "trades_awp": ("calibrated", "best", dict(objective="trades",
                                              weight_perturbation=AWP(0.01)), False),
}


def mode_mirrored(args) -> None:
    out = Path(args.out)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices[:2])
    runs = {"replicas": mirrored.num_replicas_in_sync}
    for kind in ("best", "ema"):
        for strategy_name, strategy in (("single", None), ("mirrored", mirrored)):
            _mirrored_run(strategy, kind, args.epochs, out, f"{kind}_{strategy_name}", runs)
    for name, (labels, kind, options, single_too) in OBJECTIVE_RUNS.items():
        strategies = ((("single", None),) if single_too else ()) + (("mirrored", mirrored),)
        for strategy_name, strategy in strategies:
            _mirrored_run(strategy, kind, args.epochs, out, f"{name}_{strategy_name}", runs,
                          labels=labels, **options)
    (out / "runs.json").write_text(json.dumps(runs))


def mode_multiworker(args) -> None:
    keras.config.disable_traceback_filtering()
    out = Path(args.out)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        trainer = make_trainer(labels="calibrated", seed=3, random_start=False)
    data = splits()
    x, y = data["train"]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).with_options(options)
    validation = tf.data.Dataset.from_tensor_slices(data["val"]).batch(64).with_options(
        options)
    history = trainer.fit(dataset, epochs=args.epochs, verbose=0, validation_data=validation,
                          callbacks=[make_teacher_callback(args.kind)])
    np.savez(out / f"worker{index}.npz", **trainer_state(trainer))
    (out / f"worker{index}.json").write_text(json.dumps(
        {"history": clean_history(history.history),
         "replicas": strategy.num_replicas_in_sync}))


def mode_mixed(args) -> None:
    for policy in args.policy.split(","):
        keras.mixed_precision.set_global_policy(policy)
        try:
            result = _mixed_run()
        finally:
            keras.mixed_precision.set_global_policy("float32")
        result["policy_after"] = keras.mixed_precision.global_policy().name
        (Path(args.out) / f"mixed_{policy}.json").write_text(json.dumps(result))


def _mixed_run() -> dict:
    trainer = make_trainer(labels="calibrated", arch="conv", seed=0)
    data = splits()
    history = _fit(trainer, 2, [make_teacher_callback("best")])
    x, y = data["val"]
    x_adv = trainer.attack(trainer.student_logits, x[:64], y[:64]).numpy()
    logits = trainer.student(x[:8], training=False)
    return {
        "policy": keras.mixed_precision.global_policy().name,
        "history": clean_history(history.history),
        "optimizer_class": type(trainer.optimizer).__name__,
        "is_loss_scale": isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer),
        "loss_scale": float(trainer.optimizer.dynamic_scale.numpy())
        if hasattr(trainer.optimizer, "dynamic_scale") else None,
        "compute_dtype": trainer.student.layers[0].compute_dtype,
        "variable_dtype": str(trainer.student.weights[0].dtype),
        "logits_dtype": str(logits.dtype),
        "x_adv_dtype": str(x_adv.dtype),
        "linf": float(np.max(np.abs(x_adv.astype("float64") - x[:64]))),
        "min": float(x_adv.min()),
        "max": float(x_adv.max()),
        "teacher_ready": float(trainer.teacher_ready.numpy()),
        "weights_finite": bool(all(np.all(np.isfinite(w))
                                   for w in trainer.student.get_weights())),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["train", "resume", "mirrored", "multiworker", "mixed"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kind", default="best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interrupt", type=int, default=2)
    parser.add_argument("--backup-dir")
    parser.add_argument("--save-freq", default="epoch")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--csv")
    parser.add_argument("--policy", default="mixed_float16")
    args = parser.parse_args(argv)
    if args.save_freq != "epoch":
        args.save_freq = int(args.save_freq)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"train": mode_train, "resume": mode_resume, "mirrored": mode_mirrored,
     "multiworker": mode_multiworker, "mixed": mode_mixed}[args.mode](args)


if __name__ == "__main__":
    main()
