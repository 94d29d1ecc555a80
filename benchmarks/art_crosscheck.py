"""Cross-checks keras_advcal's attacks and AutoAttack against independent implementations.

Trains (or loads) a small CNN with PGD adversarial training on Fashion-MNIST, then
attacks the same test examples with keras_advcal and with

* ART's ``AutoProjectedGradientDescent`` (``loss_type="cross_entropy"``) on a
  ``TensorFlowV2Classifier`` wrapping the same model: APGD-CE, one random start,
  ``--steps`` iterations, initial step ``2 * epsilon``;
* ART's ``SquareAttack`` on the same classifier (L-inf, 5,000 queries,
  ``p_init=0.8``): against :class:`keras_advcal.square.Square` with AutoAttack's
  unscaled schedule;
* torchattacks (a PyTorch port of the AutoAttack reference code) on a PyTorch copy of
  the model (the weights copied, its logits checked against the Keras model's):
  ``APGDT`` (targeted DLR, 9 targets, 100 steps) against keras_advcal's APGD-T,
  ``FAB`` with ``multi_targeted=True`` (FAB-T: 9 targets, 100 steps) against
  :class:`keras_advcal.fab.FAB`, and the standard cascade (torchattacks'
  ``MultiAttack`` of APGD-CE, APGD-T, FAB-T and Square-5000 with the reference's
  settings; torchattacks' own ``AutoAttack`` uses 10 steps and a rescaled Square
  schedule) against :func:`keras_advcal.autoattack.autoattack`.

ART's APGD with ``targeted=True`` is not APGD-T (its DLR loss is the untargeted one,
pushed towards a target), and ART's ``AutoAttack`` runs ART's own default list (no
FAB-T, no targeted DLR): neither matches the standard AutoAttack, so APGD-T and the
cascade are checked against the port of the reference code instead. Each comparison
reports both robust accuracies, the per-example disagreements and the seconds.

The numbers go to ``benchmarks/results/art_crosscheck.json`` (``--output``) and a
markdown summary is printed.

ART, PyTorch and torchattacks are not dependencies of keras-advcal; install them to
run this script::

    pip install adversarial-robustness-toolbox torch
    pip install --no-deps torchattacks
    python benchmarks/art_crosscheck.py            # 1,000 test images: hours on 2 CPU cores

Fashion-MNIST is read from the gzip IDX files in ``--data-dir`` (Debian's
``/usr/share/datasets/fashion-mnist/`` by default).

Example:

    python benchmarks/art_crosscheck.py --n-test 200 --train-size 2000 --epochs 2

The 1,000 images in chunks (each a few hours' fraction; the same ``--model`` file, so
every chunk attacks the same weights, which each report records as ``model_sha256``),
then one report::

    python benchmarks/art_crosscheck.py --model /tmp/cc.keras --offset 0 --n-test 100 \
        --output benchmarks/results/art_crosscheck_chunks/0000.json
    ...                                   # --offset 100, 200, ..., 900
    python benchmarks/art_crosscheck.py --merge benchmarks/results/art_crosscheck_chunks/*.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
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

from keras_advcal.attacks import PGD, Attack  # noqa: E402
from keras_advcal.autoattack import autoattack, standard_attacks  # noqa: E402
from keras_advcal.evaluation import APGD, evaluate_robustness  # noqa: E402
from keras_advcal.square import Square  # noqa: E402
from keras_advcal.trainer import AdvCalTrainer  # noqa: E402

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
RESULTS = ROOT / "benchmarks" / "results" / "art_crosscheck.json"
COMPARISONS = ("apgd-ce", "apgd-t", "fab-t", "square", "autoattack")


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
                            track_clean_accuracy=False, seed=seed, objective="pgd_at",
                            weight_perturbation=None)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=2)
    return trainer.model, time.perf_counter() - start


def predict_labels(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.concatenate([np.argmax(model(x[i:i + batch_size], training=False), axis=1)
                           for i in range(0, len(x), batch_size)])


# -- the two APGD implementations ----------------------------------------------------
def ours_attack(attack: Attack, model: keras.Model, x: np.ndarray, y: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, float]:
    """Adversarial inputs from one keras_advcal attack (compiled once) and the seconds."""
    run = tf.function(lambda a, b: attack(model, a, b), input_signature=[
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32)])
    start = time.perf_counter()
    x_adv = np.concatenate([run(x[i:i + batch_size], y[i:i + batch_size]).numpy()
                            for i in range(0, len(x), batch_size)])
    return x_adv, time.perf_counter() - start


def ours_apgd(model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float,
              steps: int, batch_size: int, seed: int) -> tuple[np.ndarray, float]:
    """Adversarial inputs from keras_advcal's APGD-CE and the seconds taken."""
    return ours_attack(APGD(epsilon, steps=steps, loss="ce", seed=seed), model, x, y,
                       batch_size)


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


def art_square(model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float,
               n_queries: int, batch_size: int, seed: int) -> tuple[np.ndarray, float]:
    """Adversarial inputs from ART's SquareAttack (L-inf) on the same model."""
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

    _patch_keras3_reduction()
    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    attack = SquareAttack(classifier, norm=np.inf, eps=epsilon, max_iter=n_queries,
                          p_init=0.8, nb_restarts=1, batch_size=batch_size, verbose=False)
    np.random.seed(seed)
    start = time.perf_counter()
    x_adv = attack.generate(x=x, y=keras.utils.to_categorical(y, 10))
    return x_adv.astype("float32"), time.perf_counter() - start


def torch_copy(model: keras.Model):
    """A PyTorch module computing the same logits as the Keras small CNN (conv / pool
    / flatten / dense layers), with its weights copied."""
    import torch

    layers: list = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "Conv2D":
            kernel, bias = layer.get_weights()
            conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2],
                                   padding="same")
            conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.tensor(bias)
            layers.append(conv)
        elif kind == "MaxPooling2D":
            layers.append(torch.nn.MaxPool2d(layer.pool_size,
                                             ceil_mode=layer.padding == "same"))
        elif kind == "Flatten":  # Keras flattens (h, w, c)
            layers += [_nhwc()(), torch.nn.Flatten()]
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            dense = torch.nn.Linear(*kernel.shape)
            dense.weight.data = torch.tensor(kernel.T.copy())
            dense.bias.data = torch.tensor(bias)
            layers.append(dense)
        elif kind != "Activation":
            raise ValueError(f"torch_copy does not know the layer {layer.name} ({kind}).")
        activation = getattr(layer, "activation", None)
        if activation is not None and activation.__name__ == "relu":
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def _nhwc():
    """A torch module class turning NCHW tensors into NHWC."""
    import torch

    class Permute(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)
    return Permute


def torch_attack(name: str, torch_model, x: np.ndarray, y: np.ndarray, epsilon: float,
                 batch_size: int, seed: int) -> tuple[np.ndarray, float, str]:
    """Adversarial inputs from torchattacks (the port of the AutoAttack reference) on
    the PyTorch copy: ``"apgd-t"``, ``"fab-t"`` or ``"autoattack"`` (the standard
    cascade with the reference's settings)."""
    import torch
    import torchattacks as ta

    torch.manual_seed(seed)
    common = dict(norm="Linf", eps=epsilon, seed=seed)
    apgd_t = lambda: ta.APGDT(torch_model, steps=100, n_restarts=1, n_classes=10,  # noqa: E731
                              **common)
    fab_t = lambda: ta.FAB(torch_model, steps=100, n_restarts=1, multi_targeted=True,  # noqa: E731
                           n_classes=10, **common)
    if name == "apgd-t":
        attack = apgd_t()
    elif name == "fab-t":
        attack = fab_t()
    else:
        attack = ta.MultiAttack([
            ta.APGD(torch_model, steps=100, n_restarts=1, loss="ce", **common), apgd_t(),
            fab_t(), ta.Square(torch_model, n_queries=5000, n_restarts=1, p_init=0.8,
                               resc_schedule=False, **common)])
    images = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    labels = torch.tensor(y.astype("int64"))
    start = time.perf_counter()
    x_adv = torch.cat([attack(images[i:i + batch_size], labels[i:i + batch_size])
                       for i in range(0, len(x), batch_size)])
    return (x_adv.detach().numpy().transpose(0, 2, 3, 1).astype("float32"),
            time.perf_counter() - start, ta.__version__)


def robust_under(model: keras.Model, x: np.ndarray, y: np.ndarray, clean: np.ndarray,
                 x_adv: np.ndarray, epsilon: float, name: str) -> np.ndarray:
    """Per-example robustness to the adversarial inputs ``x_adv``, after checking that
    they lie inside the L-inf ball and [0, 1]."""
    size = float(np.abs(x_adv - x).max())
    assert size <= epsilon + 1e-5, f"{name} left the ball: {size}"
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, f"{name} left [0, 1]"
    return clean & (predict_labels(model, x_adv) == y)


def compare(ours: tuple[np.ndarray, float], theirs: tuple[np.ndarray, float],
            library: str) -> dict:
    """Robust accuracy, seconds and per-example disagreements of two attacks, each
    given as ``(per-example robustness, seconds)``."""
    entry: dict = {"library": library}
    for side, (robust, seconds) in (("keras_advcal", ours), ("other", theirs)):
        entry[side] = {"accuracy": float(robust.mean()), "seconds": seconds,
                       "seconds_per_image": seconds / len(robust)}
    entry["difference_points"] = 100 * (entry["keras_advcal"]["accuracy"]
                                        - entry["other"]["accuracy"])
    entry["agreement"] = agreement(ours[0], theirs[0])
    entry["per_example"] = {"keras_advcal": _bits(ours[0]), "other": _bits(theirs[0])}
    return entry


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, int]:
    """Per-example agreement of two robustness masks.

    Example:

        >>> agreement(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
        {'both_robust': 1, 'only_ours_broke': 0, 'only_other_broke': 1}
    """
    return {"both_robust": int(np.sum(ours & theirs)),
            "only_ours_broke": int(np.sum(~ours & theirs)),
            "only_other_broke": int(np.sum(ours & ~theirs))}


def _bits(mask: np.ndarray) -> str:
    """A boolean mask as a string of 0/1 (compact in JSON)."""
    return "".join("1" if value else "0" for value in np.asarray(mask, bool))


def _mask(bits: str) -> np.ndarray:
    return np.array([c == "1" for c in bits], dtype=bool)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's weights: the chunks of one cross-check must attack the
    same model."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


#: Settings that chunks of one cross-check must share.
CHUNK_KEYS = ("dataset", "epsilon", "norm", "steps", "train_size", "train_epochs",
              "model_sha256")


def merge(reports: list[dict]) -> dict:
    """One report from the reports of consecutive chunks of the test images (``--offset``
    and ``--n-test``), run on the same model: accuracies and agreements recomputed from
    the per-example results, seconds added.

    Example:

        >>> part = lambda offset, ours, other: {
        ...     "offset": offset, "n_examples": len(ours), "dataset": "d", "epsilon": 0.1,
        ...     "norm": "linf", "steps": 100, "train_size": 5, "train_epochs": 1,
        ...     "model_sha256": "m", "per_example": {"clean": "1" * len(ours),
        ...     "keras_advcal_apgd_ce": ours, "art_apgd_ce": other},
        ...     "keras_advcal_apgd_ce": {"seconds": 1.0}, "art_apgd_ce": {"seconds": 2.0,
        ...     "version": "v"}, "comparisons": {}}
        >>> merged = merge([part(2, "10", "00"), part(0, "11", "11")])
        >>> merged["n_examples"], merged["keras_advcal_apgd_ce"], merged["agreement"]
        (4, {'accuracy': 0.75, 'seconds': 2.0}, {'both_robust': 2, 'only_ours_broke': 0, 'only_other_broke': 1})
        >>> merged["comparisons"]["apgd-ce"]["difference_points"]
        25.0
    """
    reports = sorted(reports, key=lambda r: r.get("offset", 0))
    first = reports[0]
    for report in reports[1:]:
        differing = [key for key in CHUNK_KEYS if report.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"chunks differ in {differing}: not one cross-check")
    expected = first.get("offset", 0)
    for report in reports:
        if report.get("offset", 0) != expected:
            raise ValueError(f"chunks do not follow each other: expected offset {expected}, "
                             f"got {report.get('offset', 0)}")
        expected += report["n_examples"]

    def joined(get) -> np.ndarray:
        return np.concatenate([_mask(get(report)) for report in reports])

    def seconds(get) -> float:
        return float(sum(get(report) for report in reports))

    merged = {key: first.get(key) for key in CHUNK_KEYS}
    merged.update(offset=first.get("offset", 0), n_examples=expected - first.get("offset", 0),
                  chunks=[[r.get("offset", 0), r["n_examples"]] for r in reports],
                  machine=first.get("machine"),
                  commands=[r.get("command") for r in reports])
    clean = joined(lambda r: r["per_example"]["clean"])
    ours = joined(lambda r: r["per_example"]["keras_advcal_apgd_ce"])
    art = joined(lambda r: r["per_example"]["art_apgd_ce"])
    merged["clean_accuracy"] = float(clean.mean())
    merged["keras_advcal_apgd_ce"] = {
        "accuracy": float(ours.mean()),
        "seconds": seconds(lambda r: r["keras_advcal_apgd_ce"]["seconds"])}
    merged["art_apgd_ce"] = {"accuracy": float(art.mean()),
                             "seconds": seconds(lambda r: r["art_apgd_ce"]["seconds"]),
                             "version": first["art_apgd_ce"]["version"]}
    merged["agreement"] = agreement(ours, art)
    # The APGD-CE check joins the table of the others in the merged report.
    merged["comparisons"] = {"apgd-ce": compare(
        (ours, merged["keras_advcal_apgd_ce"]["seconds"]),
        (art, merged["art_apgd_ce"]["seconds"]),
        f"ART {first['art_apgd_ce']['version']} AutoProjectedGradientDescent (CE)")}
    for name, entry in first.get("comparisons", {}).items():
        if not all(name in r.get("comparisons", {}) for r in reports):
            continue
        sides = {side: (joined(lambda r, side=side: r["comparisons"][name]["per_example"][side]),
                        seconds(lambda r, side=side: r["comparisons"][name][side]["seconds"]))
                 for side in ("keras_advcal", "other")}
        merged["comparisons"][name] = compare(sides["keras_advcal"], sides["other"],
                                              entry["library"])
    return merged


def check_torch_copy(model: keras.Model, torch_model, x: np.ndarray) -> float:
    """Largest difference between the Keras and PyTorch logits on ``x``."""
    import torch

    with torch.no_grad():
        theirs = torch_model(torch.tensor(x.transpose(0, 3, 1, 2).copy())).numpy()
    return float(np.abs(np.asarray(model(x, training=False)) - theirs).max())


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
        f"{report['agreement']['only_other_broke']} broken only by ART.",
        f"evaluate_robustness settings: steps={evaluation['steps']}, "
        f"n_queries={evaluation['n_queries']}, individual={evaluation['individual']}; "
        "per attack (cumulative accuracy, seconds): "
        + ", ".join(f"{name} {100 * evaluation['accuracy_cumulative'][name]:.1f}% "
                    f"{evaluation['seconds'][name]:.1f}s" for name in evaluation["attacks"]),
    ]
    return "\n".join(lines + comparison_markdown(report))


def comparison_markdown(report: dict) -> list[str]:
    """The table of the comparisons with ART and torchattacks, and the cascade's stages."""
    comparisons = report.get("comparisons", {})
    if not comparisons:
        return []
    lines = ["", f"Cross-checks on the same {report['n_examples']} images (robust accuracy; "
             "per example: broken only by keras_advcal / only by the other; seconds per "
             "image):", "",
             "| attack | keras_advcal | other | difference (points) | only ours broke | "
             "only other broke | s/image ours | s/image other |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in comparisons.items():
        ours, other, agreement = entry["keras_advcal"], entry["other"], entry["agreement"]
        lines.append(
            f"| {name} | {100 * ours['accuracy']:.1f}% | {entry['library']}: "
            f"{100 * other['accuracy']:.1f}% | {entry['difference_points']:+.1f} | "
            f"{agreement['only_ours_broke']} | {agreement['only_other_broke']} | "
            f"{ours['seconds_per_image']:.3f} | {other['seconds_per_image']:.3f} |")
    cascade = report.get("autoattack")
    if cascade:
        stages = ", ".join(f"{name} {100 * cascade['accuracy_cumulative'][name]:.1f}% "
                           f"({cascade['seconds'][name]:.0f} s)" for name in cascade["attacks"])
        lines += ["", f"`autoattack` (standard) after each stage: {stages}; "
                  f"{cascade['total_seconds']:.0f} s in all, "
                  f"{cascade['total_seconds'] / report['n_examples']:.3f} s per image."]
    if "torch_copy_max_logit_difference" in report:
        lines.append(f"The PyTorch copy's logits differ from the Keras model's by at most "
                     f"{report['torch_copy_max_logit_difference']:.1e}.")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--offset", type=int, default=0,
                        help="first test image (run 1,000 images as chunks: --offset 0 "
                             "--n-test 100, --offset 100 ..., with one --model file)")
    parser.add_argument("--merge", nargs="+", metavar="CHUNK_JSON",
                        help="merge the reports of consecutive chunks into --output "
                             "(nothing is attacked)")
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
    parser.add_argument("--comparisons", default=",".join(COMPARISONS),
                        help="comma-separated cross-checks to run besides APGD-CE "
                             f"(default: all of {', '.join(COMPARISONS)}; empty: none).")
    parser.add_argument("--square-queries", type=int, default=5000,
                        help="queries of the Square cross-check.")
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
    if args.merge:
        report = merge([json.loads(Path(path).read_text()) for path in args.merge])
        report["command"] = "python benchmarks/art_crosscheck.py " + " ".join(
            argv or sys.argv[1:])
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print("\n".join(comparison_markdown(report)))
        return report
    model, train_seconds = get_model(args, x_train, y_train)
    x = x_test[args.offset:args.offset + args.n_test]
    y = y_test[args.offset:args.offset + args.n_test]
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
        "dataset": "fashion_mnist", "offset": args.offset, "n_examples": int(len(y)),
        "model_sha256": weights_digest(model), "epsilon": args.epsilon,
        "norm": "linf", "steps": args.steps, "train_size": args.train_size,
        "train_epochs": args.epochs, "train_seconds": train_seconds,
        "clean_accuracy": float(clean.mean()),
        "keras_advcal_apgd_ce": {"accuracy": float(ours_robust.mean()),
                                 "seconds": ours_seconds},
        "art_apgd_ce": {"accuracy": float(art_robust.mean()), "seconds": art_seconds,
                        "version": art_version},
        "agreement": agreement(ours_robust, art_robust),
        "per_example": {"clean": _bits(clean), "keras_advcal_apgd_ce": _bits(ours_robust),
                        "art_apgd_ce": _bits(art_robust)},
        "evaluate_robustness": {**result.to_dict(), "steps": args.eval_steps,
                                "n_queries": args.n_queries, "individual": args.individual,
                                "total_seconds": evaluation_seconds},
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                    "keras": keras.__version__, "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()[0]},
        "command": "python benchmarks/art_crosscheck.py " + " ".join(argv or sys.argv[1:]),
    }
    report.update(cross_checks(args, model, x, y, clean))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return report


def cross_checks(args: argparse.Namespace, model: keras.Model, x: np.ndarray,
                 y: np.ndarray, clean: np.ndarray) -> dict:
    """The comparisons named by ``--comparisons``, on the images ``x``."""
    names = [name.strip() for name in args.comparisons.split(",") if name.strip()]
    unknown = sorted(set(names) - set(COMPARISONS))
    if unknown:
        raise SystemExit(f"unknown comparisons {unknown}; choose from {COMPARISONS}")
    eps, batch, seed = args.epsilon, args.batch_size, args.seed
    report: dict = {"comparisons": {}}
    ours_attacks = dict(standard_attacks(eps, num_classes=10, seed=seed))
    torch_model = None
    if set(names) & {"apgd-t", "fab-t", "autoattack"}:
        torch_model = torch_copy(model)
        report["torch_copy_max_logit_difference"] = check_torch_copy(model, torch_model, x)
    for name in names:
        print(f"[cross-check] {name}", flush=True)
        if name == "apgd-ce":
            continue  # the APGD-CE comparison with ART above
        if name == "autoattack":
            start = time.perf_counter()
            result = autoattack(model, x, y, eps, batch_size=batch, seed=seed)
            seconds = time.perf_counter() - start
            report["autoattack"] = {**result.to_dict(), "total_seconds": seconds}
            ours = (result.robust_mask, seconds)
        else:
            attack = (Square(eps, n_queries=args.square_queries, rescale_schedule=False,
                             seed=seed) if name == "square" else ours_attacks[name])
            x_adv, seconds = ours_attack(attack, model, x, y, batch)
            ours = (robust_under(model, x, y, clean, x_adv, eps, name), seconds)
        if name == "square":
            x_other, other_seconds = art_square(model, x, y, eps, args.square_queries,
                                                batch, seed)
            import art
            library = f"ART {art.__version__} SquareAttack"
        else:
            x_other, other_seconds, version = torch_attack(name, torch_model, x, y, eps,
                                                           batch, seed)
            library = f"torchattacks {version} " + {
                "apgd-t": "APGDT", "fab-t": "FAB (multi_targeted)",
                "autoattack": "MultiAttack (standard settings)"}[name]
        theirs = (robust_under(model, x, y, clean, x_other, eps, library), other_seconds)
        report["comparisons"][name] = compare(ours, theirs, library)
        print(json.dumps(report["comparisons"][name]), flush=True)
    return report


if __name__ == "__main__":
    main()
