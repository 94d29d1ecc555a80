"""Cross-checks keras_advcal's APGD-CE against the Adversarial Robustness Toolbox.

Trains (or loads) a small CNN with PGD adversarial training on Fashion-MNIST, then
attacks the same test examples with

* ``keras_advcal.evaluation.APGD`` (APGD-CE, Croce & Hein 2020), and
* ART's ``AutoProjectedGradientDescent`` (``loss_type="cross_entropy"``) on a
  ``TensorFlowV2Classifier`` wrapping the same model,

with the same budget (one random start, ``--steps`` iterations, initial step size
``2 * epsilon``), and times :func:`keras_advcal.evaluation.evaluate_robustness` on
the same examples. The numbers go to ``benchmarks/results/art_crosscheck.json`` and
a markdown table is printed.

ART is not a dependency of keras-advcal; install it to run this script::

    pip install adversarial-robustness-toolbox
    python benchmarks/art_crosscheck.py            # about 10 minutes on 2 CPU cores

Fashion-MNIST is read from the gzip IDX files in ``--data-dir`` (Debian's
``/usr/share/datasets/fashion-mnist/`` by default).

Example:

    python benchmarks/art_crosscheck.py --n-test 200 --train-size 2000 --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_advcal.attacks import PGD  # noqa: E402
from keras_advcal.evaluation import APGD, evaluate_robustness  # noqa: E402
from keras_advcal.trainer import AdvCalTrainer  # noqa: E402

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
RESULTS = ROOT / "benchmarks" / "results" / "art_crosscheck.json"


# -- data and model ----------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads a (gzip) IDX file of unsigned bytes into an array.

    Example:

        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file.")
        shape = struct.unpack(">" + "I" * ndim, handle.read(4 * ndim))
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(shape)


def load_fashion_mnist(data_dir: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``(x_train, y_train), (x_test, y_test)`` with pixels in [0, 1], NHWC."""
    def part(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz")
        return (x.astype("float32") / 255.0)[..., None], y.astype("int32")
    return part("train"), part("t10k")


def build_model(seed: int) -> keras.Model:
    """The library's small CNN (``keras_advcal.models.small_cnn``) when available."""
    keras.utils.set_random_seed(seed)
    try:
        from keras_advcal.models import small_cnn
        return small_cnn((28, 28, 1), num_classes=10)
    except ImportError:  # pragma: no cover - the models module is optional here
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2, padding="same"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ])


def pgd_train(model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float,
              epochs: int, seed: int, batch_size: int = 128, steps: int = 5
              ) -> tuple[keras.Model, float]:
    """Madry-style PGD adversarial training: ``AdvCalTrainer(labels="hard")`` fitted
    with ``fit``. Returns the trained classifier and the seconds training took."""
    trainer = AdvCalTrainer(model, PGD(epsilon, steps=steps, seed=seed), labels="hard",
                            track_clean_accuracy=False, seed=seed)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=2)
    return trainer.model, time.perf_counter() - start


def predict_labels(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.concatenate([np.argmax(model(x[i:i + batch_size], training=False), axis=1)
                           for i in range(0, len(x), batch_size)])


# -- the two APGD implementations ----------------------------------------------------
def ours_apgd(model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float,
              steps: int, batch_size: int, seed: int) -> tuple[np.ndarray, float]:
    """Adversarial inputs from keras_advcal's APGD-CE and the seconds taken."""
    attack = APGD(epsilon, steps=steps, loss="ce", seed=seed)
    run = tf.function(lambda a, b: attack(model, a, b), input_signature=[
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32)])
    start = time.perf_counter()
    x_adv = np.concatenate([run(x[i:i + batch_size], y[i:i + batch_size]).numpy()
                            for i in range(0, len(x), batch_size)])
    return x_adv, time.perf_counter() - start


def _patch_keras3_reduction() -> None:
    """ART 1.20's TensorFlowV2Classifier sets ``loss.reduction`` from
    ``tf.keras.losses.Reduction``, which Keras 3 removed; Keras 3 losses take the
    same values as strings."""
    losses = tf.keras.losses
    if not hasattr(losses, "Reduction"):
        class Reduction:
            NONE = "none"
            SUM = "sum"
            SUM_OVER_BATCH_SIZE = "sum_over_batch_size"
            AUTO = "sum_over_batch_size"
        losses.Reduction = Reduction


def art_apgd(model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float,
             steps: int, batch_size: int, seed: int) -> tuple[np.ndarray, float, str]:
    """Adversarial inputs from ART's AutoProjectedGradientDescent (APGD-CE)."""
    import art
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    _patch_keras3_reduction()
    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    attack = AutoProjectedGradientDescent(
        classifier, norm=np.inf, eps=epsilon, eps_step=2 * epsilon, max_iter=steps,
        targeted=False, nb_random_init=1, batch_size=batch_size,
        loss_type="cross_entropy", verbose=False)
    np.random.seed(seed)
    start = time.perf_counter()
    x_adv = attack.generate(x=x, y=keras.utils.to_categorical(y, 10))
    return x_adv.astype("float32"), time.perf_counter() - start, art.__version__


# -- the report ----------------------------------------------------------------------
def markdown(report: dict) -> str:
    """The markdown table pasted into benchmarks/RESULTS.md."""
    n, eps = report["n_examples"], report["epsilon"]
    ours, theirs = report["keras_advcal_apgd_ce"], report["art_apgd_ce"]
    evaluation = report["evaluate_robustness"]
    lines = [
        f"APGD-CE cross-check: Fashion-MNIST, {n} test examples, PGD-trained small CNN, "
        f"L-inf eps={eps:g}, {report['steps']} steps, 1 random start",
        "",
        "| | robust accuracy | seconds |",
        "| --- | ---: | ---: |",
        f"| clean | {100 * report['clean_accuracy']:.1f}% | |",
        f"| keras_advcal APGD-CE | {100 * ours['accuracy']:.1f}% | {ours['seconds']:.1f} |",
        f"| ART {theirs['version']} AutoProjectedGradientDescent (CE) | "
        f"{100 * theirs['accuracy']:.1f}% | {theirs['seconds']:.1f} |",
        f"| evaluate_robustness ({', '.join(evaluation['attacks'])}) | "
        f"{100 * evaluation['robust_accuracy']:.1f}% | {evaluation['total_seconds']:.1f} |",
        "",
        f"Per example: {report['agreement']['both_robust']} robust to both, "
        f"{report['agreement']['only_ours_broke']} broken only by keras_advcal, "
        f"{report['agreement']['only_art_broke']} broken only by ART.",
        f"evaluate_robustness settings: steps={evaluation['steps']}, "
        f"n_queries={evaluation['n_queries']}, individual={evaluation['individual']}; "
        "per attack (cumulative accuracy, seconds): "
        + ", ".join(f"{name} {100 * evaluation['accuracy_cumulative'][name]:.1f}% "
                    f"{evaluation['seconds'][name]:.1f}s" for name in evaluation["attacks"]),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="APGD iterations.")
    parser.add_argument("--eval-steps", type=int, default=20,
                        help="steps of evaluate_robustness' gradient attacks.")
    parser.add_argument("--n-queries", type=int, default=500,
                        help="queries of evaluate_robustness' Square attack.")
    parser.add_argument("--individual", action="store_true",
                        help="evaluate_robustness runs every attack on every example.")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None,
                        help="a saved .keras model to load (trained and saved there if missing).")
    parser.add_argument("--output", default=str(RESULTS))
    return parser.parse_args(argv)


def get_model(args: argparse.Namespace, x_train: np.ndarray, y_train: np.ndarray
              ) -> tuple[keras.Model, float | None]:
    if args.model and Path(args.model).exists():
        return keras.models.load_model(args.model), None
    rng = np.random.default_rng(args.seed)
    subset = rng.choice(len(x_train), size=min(args.train_size, len(x_train)), replace=False)
    model = build_model(args.seed)
    model, seconds = pgd_train(model, x_train[subset], y_train[subset], args.epsilon,
                               args.epochs, args.seed)
    if args.model:
        model.save(args.model)
    return model, seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(args.data_dir)
    model, train_seconds = get_model(args, x_train, y_train)
    x, y = x_test[:args.n_test], y_test[:args.n_test]
    clean = predict_labels(model, x) == y

    ours_x, ours_seconds = ours_apgd(model, x, y, args.epsilon, args.steps, args.batch_size,
                                     args.seed)
    art_x, art_seconds, art_version = art_apgd(model, x, y, args.epsilon, args.steps,
                                               args.batch_size, args.seed)
    ours_robust = clean & (predict_labels(model, ours_x) == y)
    art_robust = clean & (predict_labels(model, art_x) == y)
    for name, x_adv in (("keras_advcal", ours_x), ("ART", art_x)):
        size = float(np.abs(x_adv - x).max())
        assert size <= args.epsilon + 1e-5, f"{name} left the ball: {size}"

    start = time.perf_counter()
    result = evaluate_robustness(model, (x, y), args.epsilon, steps=args.eval_steps,
                                 n_queries=args.n_queries, batch_size=args.batch_size,
                                 seed=args.seed, individual=args.individual, verbose=True)
    evaluation_seconds = time.perf_counter() - start
    report = {
        "dataset": "fashion_mnist", "n_examples": int(len(y)), "epsilon": args.epsilon,
        "norm": "linf", "steps": args.steps, "train_size": args.train_size,
        "train_epochs": args.epochs, "train_seconds": train_seconds,
        "clean_accuracy": float(clean.mean()),
        "keras_advcal_apgd_ce": {"accuracy": float(ours_robust.mean()),
                                 "seconds": ours_seconds},
        "art_apgd_ce": {"accuracy": float(art_robust.mean()), "seconds": art_seconds,
                        "version": art_version},
        "agreement": {
            "both_robust": int(np.sum(ours_robust & art_robust)),
            "only_ours_broke": int(np.sum(~ours_robust & art_robust)),
            "only_art_broke": int(np.sum(ours_robust & ~art_robust)),
        },
        "evaluate_robustness": {**result.to_dict(), "steps": args.eval_steps,
                                "n_queries": args.n_queries, "individual": args.individual,
                                "total_seconds": evaluation_seconds},
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                    "keras": keras.__version__, "cpus": os.cpu_count()},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
