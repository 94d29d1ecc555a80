"""Writes the tutorial notebooks of this folder from the cell sources below, with the
outputs of their small run.

Edit the cells here and run ``python notebooks/_build.py`` (a few minutes on a CPU):
every notebook is executed at small size (``ADVCAL_NOTEBOOK_SIZE=small``, the Colab
install cell skipped) in a kernel running this Python, and written with its outputs
(stderr streams dropped: TensorFlow's log lines), so that the documentation site and
GitHub show its figures. Cell ids are stable, so diffs stay readable.
``--no-execute`` writes the sources only, without outputs. Every notebook:

* starts with a markdown cell holding an "Open in Colab" badge, made from the
  repository address ``repo_url`` of ``mkdocs.yml`` (the one place that names it);
* installs the package in its first code cell only when it runs in Colab (the cell is
  tagged ``skip-ci``: the tests skip it);
* reads its size from ``ADVCAL_NOTEBOOK_SIZE`` in a cell tagged ``parameters``
  (``"small"``: seconds, for CI and the saved outputs; ``"full"``, the default: the
  real experiment).

``tests/test_notebooks.py`` executes them at small size, and checks that the saved
notebooks match these sources and hold the outputs of a run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
MKDOCS = HERE.parent / "mkdocs.yml"
KERNEL_NAME = "keras-advcal-notebooks"


def repository_url(mkdocs_yml: Path = MKDOCS) -> str:
    """The ``repo_url`` of ``mkdocs.yml``, without a trailing slash.

    Example:

        >>> repository_url().startswith("https://github.com/")
        True
    """
    match = re.search(r"^repo_url:\s*(\S+)", mkdocs_yml.read_text(), flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"{mkdocs_yml} sets no repo_url")
    return match.group(1).rstrip("/")


REPOSITORY_URL = repository_url()
INSTALL = f"git+{REPOSITORY_URL}.git"


def colab_url(name: str, repository: str = REPOSITORY_URL) -> str:
    """Colab's address of ``notebooks/NAME`` on the main branch of a GitHub repository.

    Example:

        >>> colab_url("01_quickstart.ipynb", "https://github.com/o/r")
        'https://colab.research.google.com/github/o/r/blob/main/notebooks/01_quickstart.ipynb'
    """
    prefix = "https://github.com/"
    if not repository.startswith(prefix):
        raise ValueError(f"Colab opens notebooks of GitHub repositories, not {repository}")
    return (f"https://colab.research.google.com/github/{repository[len(prefix):]}"
            f"/blob/main/notebooks/{name}")


def badge(name: str) -> str:
    """The "Open in Colab" badge of a notebook, and where its saved outputs come from."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(name)})\n\n"
            "*The outputs saved with this notebook are those of its small run "
            "(`ADVCAL_NOTEBOOK_SIZE=small`, written by `python notebooks/_build.py`): they "
            "show what each cell prints and draws, not the numbers of the full run.*")


INSTALL_CELL = f'''import sys

if "google.colab" in sys.modules:  # Colab: install keras-advcal (locally: pip install -e .)
    !pip install -q "keras-advcal @ {INSTALL}"'''

SIZE_SETTING = '''SIZE = os.environ.get("ADVCAL_NOTEBOOK_SIZE", "full")
assert SIZE in ("small", "full"), SIZE
SMALL = SIZE == "small"'''


def setup_cells(settings: str, comment: str = "") -> list[tuple[str, str]]:
    """The Colab install cell, then the ``parameters`` cell: ``SIZE`` / ``SMALL`` from
    ``ADVCAL_NOTEBOOK_SIZE`` (after an optional ``comment`` line), then ``settings``."""
    lines = ["import os", ""] + ([comment] if comment else []) + [SIZE_SETTING, "", settings]
    return [("code-skip", INSTALL_CELL), ("code-params", "\n".join(lines))]


# ----------------------------------------------------------------------------- 01
QUICKSTART = [
    ("md", """# Quickstart: adversarial training with calibrated soft targets

{badge}

This notebook trains a small CNN on scikit-learn's 8x8 digits with **keras-advcal**:

1. wrap the classifier in `AdvCalTrainer` with a PGD attack,
2. fit it with the `CalibratedTeacher` callback, which keeps a teacher and fits the
   temperature `T` and mixing ratio `rho` of the soft targets on held-out data,
3. evaluate its robustness with an ensemble of attacks.

It runs on a CPU in a few minutes (set `ADVCAL_NOTEBOOK_SIZE=small` for a smoke run in
seconds)."""),
    *setup_cells('''EPOCHS = 8 if SMALL else 30
TRAIN_SUBSET = 400 if SMALL else None      # None: all 1,078 training digits
PGD_STEPS = 3 if SMALL else 10
EPSILON = 0.1                              # L-inf radius, pixels in [0, 1]''',
                 comment='# "small": a smoke run of a few seconds (what CI executes); '
                         '"full": the real thing.'),
    ("md", """## Data

`keras_advcal.data.load` returns seeded train / validation / test arrays (pixels in
`[0, 1]`, NHWC). The validation split is held out from training: the calibration of `T`
and `rho` is fitted on it."""),
    ("code", '''import keras
import numpy as np

import keras_advcal
from keras_advcal import PGD, AdvCalTrainer, CalibratedTeacher, data, models

keras.utils.set_random_seed(0)
splits = data.load("digits", subset=TRAIN_SUBSET, seed=0)
x_train, y_train = splits.train
x_val, y_val = splits.validation
x_test, y_test = splits.test
print(splits.input_shape, splits.num_classes, len(y_train), len(y_val), len(y_test))'''),
    ("md", """## Wrap a model

Any Keras classifier that outputs **logits** works. `AdvCalTrainer` attacks each batch
with the training attack; with `labels="calibrated"` it trains on calibrated soft
targets instead of the one-hot labels (on the default recipe, TRADES with adversarial
weight perturbation, they replace the label of TRADES's clean-input term; AWP stays on,
`weight_perturbation=None` would turn it off). `trainer.model` is your classifier,
untouched."""),
    ("code", '''model = models.small_cnn(splits.input_shape, splits.num_classes,
                         width=16 if SMALL else 32, dense=64 if SMALL else 256)
attack = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / PGD_STEPS, steps=PGD_STEPS)
trainer = AdvCalTrainer(model, attack, labels="calibrated")   # calibrated targets
trainer.compile(optimizer=keras.optimizers.Adam(1e-3))'''),
    ("md", """## Fit with calibration

`CalibratedTeacher` goes **first** in the callbacks. At the end of every epoch it
updates the teacher (by default an average of the student's weights, one per epoch: SWA)
and fits `T` and `rho` by the published rule; they are logged with the other metrics."""),
    ("code", '''teacher = CalibratedTeacher(validation_data=(x_val, y_val),
                            train_sample=(x_train[:500], y_train[:500]), verbose=1)
history = trainer.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS,
                      batch_size=64, callbacks=[teacher], verbose=2 if SMALL else 1)'''),
    ("code", '''import matplotlib.pyplot as plt

h = history.history
epochs = np.arange(1, len(h["loss"]) + 1)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(epochs, h["adv_accuracy"], label="train (adversarial)")
ax1.plot(epochs, h["val_adv_accuracy"], label="validation (adversarial)")
ax1.set_xlabel("epoch"); ax1.set_ylabel("robust accuracy"); ax1.legend()
ax2.plot(epochs, h["temperature"], label="T")
ax2.plot(epochs, h["rho"], label="rho")
ax2.set_xlabel("epoch"); ax2.set_title("fitted calibration"); ax2.legend()
plt.tight_layout()
plt.show()'''),
    ("md", """## Evaluate robustness

`trainer.evaluate` reports clean and PGD accuracy with the trainer's attack.
`keras_advcal.evaluation.evaluate_robustness` runs an AutoAttack-style ensemble
(PGD, CW margin, APGD, Square) with sanity checks against gradient masking."""),
    ("code", '''print(trainer.evaluate(x_test, y_test, return_dict=True, verbose=0))'''),
    ("code", '''from keras_advcal.evaluation import evaluate_robustness

result = evaluate_robustness(
    trainer.model, (x_test, y_test), epsilon=EPSILON,
    attacks=("pgd", "square") if SMALL else ("pgd", "cw", "apgd-ce", "apgd-t", "square"),
    steps=10 if SMALL else 100, n_queries=50 if SMALL else 5000, verbose=False)
print(result.table())'''),
    ("md", """## Save and deploy

The trainer saves with its teacher, `T` and `rho` (resume training with
`keras.models.load_model`); for deployment, save the classifier alone."""),
    ("code", '''import tempfile

folder = tempfile.mkdtemp()
trainer.save(os.path.join(folder, "trainer.keras"))           # resumable training state
model.save(os.path.join(folder, "classifier.keras"))          # the plain classifier
restored = keras.models.load_model(os.path.join(folder, "trainer.keras"))
print(type(restored).__name__, float(restored.temperature.numpy()), float(restored.rho.numpy()))'''),
]

# ----------------------------------------------------------------------------- 02
OVERFITTING = [
    ("md", """# Robust overfitting: PGD-AT versus calibrated targets

{badge}

Adversarial training gives each adversarial example `x'` the one-hot label of its clean
input, but the perturbation moves `x'` towards other classes: the label is noisy.
Fitting that noise makes **robust test accuracy peak and then fall** (robust
overfitting). This notebook trains the same small CNN on a 500-image subset of
Fashion-MNIST twice:

* **PGD-AT** (Madry et al.): `AdvCalTrainer(labels="hard", objective="pgd_at",
  weight_perturbation=None)`,
* **calibrated**: `AdvCalTrainer(labels="calibrated", objective="pgd_at",
  weight_perturbation=None)` with the `CalibratedTeacher` callback,

and records robust test accuracy after every epoch, and the fitted `T` and `rho`.

Fashion-MNIST is read from TensorFlow Datasets, the Keras cache or the Debian package
`dataset-fashion-mnist`; without any of them the notebook falls back to scikit-learn's
digits. The full run takes about an hour on a laptop CPU (minutes on a GPU)."""),
    *setup_cells('''EPOCHS = 8 if SMALL else 60
TRAIN_SUBSET = 200 if SMALL else 500
VALIDATION_SIZE = 150 if SMALL else 500
TEST_SIZE = 200 if SMALL else 1000
PGD_STEPS = 3 if SMALL else 10
TEST_PGD_STEPS = 3 if SMALL else 20
EPSILON = 0.1
SEED = 0'''),
    ("code", '''import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_advcal import PGD, AdvCalTrainer, CalibratedTeacher, data, models
from keras_advcal.evaluation import RobustAccuracyTracker, summarize_history

try:
    splits = data.load("fashion_mnist", subset=TRAIN_SUBSET,
                       validation_size=VALIDATION_SIZE, test_size=TEST_SIZE, seed=SEED)
except data.DatasetNotAvailableError as error:
    print(f"Fashion-MNIST is not available ({error}); using scikit-learn digits.")
    splits = data.load("digits", subset=TRAIN_SUBSET, seed=SEED)
print(splits.name, "from", splits.source, [len(y) for _, y in
      (splits.train, splits.validation, splits.test)])'''),
    ("md", """## One function, two trainers

Both runs share the architecture, the initial weights, the attack, the optimizer and
the data order; neither uses the adversarial weight perturbation of the library's
default recipe, so the targets are the one difference. A `RobustAccuracyTracker`
attacks the test subset with PGD after every epoch (it writes `test_adv_accuracy` into
the logs)."""),
    ("code", '''def run(labels):
    keras.utils.set_random_seed(SEED)
    model = models.small_cnn(splits.input_shape, splits.num_classes,
                             width=8 if SMALL else 32, dense=32 if SMALL else 256)
    attack = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / PGD_STEPS, steps=PGD_STEPS)
    trainer = AdvCalTrainer(model, attack, labels=labels, objective="pgd_at",
                            weight_perturbation=None, seed=SEED)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    test_attack = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / TEST_PGD_STEPS,
                      steps=TEST_PGD_STEPS)
    callbacks = [RobustAccuracyTracker(splits.test, test_attack)]
    if labels == "calibrated":
        x_train, y_train = splits.train
        callbacks.insert(0, CalibratedTeacher(splits.validation, (x_train, y_train)))
    history = trainer.fit(*splits.train, validation_data=splits.validation,
                          epochs=EPOCHS, batch_size=64, callbacks=callbacks, verbose=0)
    return history.history


histories = {"PGD-AT": run("hard"), "calibrated": run("calibrated")}'''),
    ("md", """## Robust test accuracy per epoch

With PGD-AT the robust test accuracy typically peaks early and decays while the
training robust accuracy keeps climbing; the calibrated trainer's curve stays flat."""),
    ("code", '''fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name, h in histories.items():
    epochs = np.arange(1, len(h["test_adv_accuracy"]) + 1)
    line, = ax1.plot(epochs, h["test_adv_accuracy"], label=f"{name}: test")
    ax1.plot(epochs, h["adv_accuracy"], linestyle="--", color=line.get_color(),
             label=f"{name}: train")
ax1.set_xlabel("epoch"); ax1.set_ylabel("robust accuracy (PGD)"); ax1.legend()
ax1.set_title("robust accuracy")
h = histories["calibrated"]
epochs = np.arange(1, len(h["rho"]) + 1)
ax2.plot(epochs, h["temperature"], label="T")
ax2.plot(epochs, h["rho"], label="rho")
ax2.set_xlabel("epoch"); ax2.set_title("calibrated trainer: fitted T and rho")
ax2.legend()
plt.tight_layout()
plt.show()'''),
    ("md", """## Best, final and gap

`summarize_history` gives the best epoch, the final value and the robust-overfitting
gap (best minus final, raw and smoothed over 3 epochs)."""),
    ("code", '''print(f"{'trainer':<12}{'best':>8}{'epoch':>7}{'final':>8}{'gap':>8}{'smoothed gap':>14}")
for name, h in histories.items():
    s = summarize_history(h, key="test_adv_accuracy", window=3)
    print(f"{name:<12}{s.best_value:>8.3f}{s.best_epoch + 1:>7}{s.final_value:>8.3f}"
          f"{s.gap:>8.3f}{s.smoothed_gap:>14.3f}")'''),
    ("md", """The numbers of one seed on a 500-image subset are noisy; the benchmark scripts in
`benchmarks/` repeat this comparison over seeds, datasets and radii."""),
]

# ----------------------------------------------------------------------------- 03
TUNER = [
    ("md", """# Hyperparameter search with KerasTuner

{badge}

`keras_advcal.tuning.AdvCalHyperModel` is a KerasTuner `HyperModel`: it builds a
classifier, wraps it in `AdvCalTrainer` and searches the learning rate, the weight
decay, the batch size and the model width, for a training attack **you** fix. The
objective is robust validation accuracy (`val_adv_accuracy`).

The calibrated trainer adds no knob to search (`T` and `rho` are fitted every epoch;
the calibration's own settings keep their defaults). A fair comparison gives the baseline its knob too: `search_baseline=True`
searches the label smoothing of PGD-AT."""),
    *setup_cells('''TRAIN_SUBSET = 400 if SMALL else None      # None: all 1,078 training digits
MAX_TRIALS = 2 if SMALL else 10
BASELINE_TRIALS = 1 if SMALL else 10
EPOCHS = 1 if SMALL else 15
PGD_STEPS = 3 if SMALL else 10
EPSILON = 0.1'''),
    ("code", '''import tempfile

import keras
import keras_tuner

from keras_advcal import PGD, data
from keras_advcal.tuning import AdvCalHyperModel, objective

keras.utils.set_random_seed(0)
splits = data.load("digits", subset=TRAIN_SUBSET, seed=0)
x_train, y_train = splits.train
x_val, y_val = splits.validation
attack = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / PGD_STEPS, steps=PGD_STEPS)
folder = tempfile.mkdtemp()'''),
    ("md", """## The calibrated trainer

In calibrated mode every trial gets a fresh `CalibratedTeacher` callback, fitted on
`calibration_data` (default: the search's `validation_data`) with `train_sample` for
the accuracy floor."""),
    ("code", '''hypermodel = AdvCalHyperModel(
    splits.input_shape, splits.num_classes, attack, labels="calibrated",
    calibration_data=(x_val, y_val), train_sample=(x_train[:500], y_train[:500]),
    batch_sizes=[64, 128], seed=0)
tuner = keras_tuner.RandomSearch(hypermodel, objective=objective(), max_trials=MAX_TRIALS,
                                 seed=0, directory=folder, project_name="calibrated")
tuner.search_space_summary()'''),
    ("code", '''tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS, verbose=0)
tuner.results_summary(num_trials=3)'''),
    ("code", '''best_hp = tuner.get_best_hyperparameters(1)[0]
print(best_hp.values)
best = tuner.get_best_models(1)[0]          # an AdvCalTrainer; best.model is the classifier
print(best.evaluate(*splits.test, return_dict=True, verbose=0))'''),
    ("md", """## The baseline, with its own knob

PGD-AT with one-hot labels (`labels="hard"`), searching the same space plus
`label_smoothing` in [0, 0.3]."""),
    ("code", '''baseline = AdvCalHyperModel(splits.input_shape, splits.num_classes, attack,
                            labels="hard", search_baseline=True, batch_sizes=[64, 128],
                            seed=0)
baseline_tuner = keras_tuner.RandomSearch(baseline, objective=objective(),
                                          max_trials=BASELINE_TRIALS, seed=0,
                                          directory=folder, project_name="baseline")
baseline_tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS,
                      verbose=0)


def best_score(tuner):
    trial = tuner.oracle.get_best_trials(1)[0]
    return trial.metrics.get_best_value("val_adv_accuracy")


print(f"calibrated: best val_adv_accuracy {best_score(tuner):.3f}")
print(f"PGD-AT + label smoothing: best val_adv_accuracy {best_score(baseline_tuner):.3f} "
      f"(label_smoothing={baseline_tuner.get_best_hyperparameters(1)[0].get('label_smoothing'):.3f})")'''),
    ("md", """With `labels="calibrated", search_baseline=True` the hypermodel instead searches a
**fixed** `(T, rho)` (T in [1, 4], rho in [0, 1]) passed to
`CalibratedTeacher(rule="fixed")`: the hand-tuned alternative to the automatic
calibration."""),
]

# ----------------------------------------------------------------------------- 04
LABEL_NOISE = [
    ("md", """# Label noise of adversarial examples

{badge}

Adversarial training gives each PGD example `x'` the one-hot label `y` of its clean
input, but the perturbation moves `x'` towards other classes, so its true label
distribution is no longer one-hot. The distribution is estimated by the
temperature-scaled prediction `p` of a robust *reference* model, and the noise is how
far the assigned label is from it: the total variation `TV = 1 - p_y`, or the
disagreement `argmax p != y`.

The reference must not be the model under study: measured with its own predictions, a
model's "label noise" on examples made against it is its own adversarial error. So the
reference here is trained on **other images**, with its temperature fitted on **yet
other images** (`keras_advcal.reference`), and the examples are those the studied model
trains on (made against it by its training attack). The noise then splits into an
*adversarial* part (what the attack adds), an *injected* part (flipped labels) and the
reference's own *base* error on clean inputs
(`keras_advcal.analysis.decompose_label_noise`).

This notebook trains a small PGD-AT model on part of scikit-learn's 8x8 digits and a
reference on other digits, measures the noise at several radii (beside the earlier,
circular measure), shows its distribution and the injected part of flipped labels, then
goes through the three predictions of the label-noise view of robust overfitting with
the figures of the benchmark `benchmarks/label_noise.py`. It runs offline on a CPU (set
`ADVCAL_NOTEBOOK_SIZE=small` for a smoke run in seconds)."""),
    *setup_cells('''EPOCHS = 10 if SMALL else 30
TRAIN_SUBSET = 300 if SMALL else 500       # the studied run's digits (the reference gets others)
PGD_STEPS = 3 if SMALL else 10             # its training attack
EPSILON = 0.1                              # its radius, pixels in [0, 1]
REFERENCE_IMAGES, CALIBRATION_IMAGES = 400, 150   # other digits: the reference's
REFERENCE_EPOCHS = 6 if SMALL else 20
EPSILONS = (0.0, 0.05, 0.1, 0.2)           # radii of the measurement (0: clean inputs)
FLIP_RATES = (0.0, 0.2, 0.4)               # fractions of training labels flipped
SEED = 0''', comment='# "small": a smoke run of a few seconds (what CI executes); '
                      '"full": the real thing.'),
    ("md", """## The studied run

A PGD-AT model: `AdvCalTrainer(labels="hard", objective="pgd_at",
weight_perturbation=None)`, one-hot labels (no weight perturbation), on a subset of the
training digits. Its training images, validation images and test
images are the studied run's; the reference below uses none of them."""),
    ("code", '''import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_advcal import PGD, AdvCalTrainer, data, models
from keras_advcal.analysis import measure_label_noise
from keras_advcal.reference import check_disjoint, reference_data, train_reference

keras.utils.set_random_seed(SEED)
splits = data.load("digits", subset=TRAIN_SUBSET, seed=SEED)
x_train, y_train = splits.train
print(splits.input_shape, splits.num_classes, [len(y) for _, y in
      (splits.train, splits.validation, splits.test)])

model = models.small_cnn(splits.input_shape, splits.num_classes,
                         width=16 if SMALL else 32, dense=64 if SMALL else 128)
attack = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / PGD_STEPS, steps=PGD_STEPS)
trainer = AdvCalTrainer(model, attack, labels="hard", objective="pgd_at",
                        weight_perturbation=None, seed=SEED)
trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
trainer.fit(x_train, y_train, validation_data=splits.validation, epochs=EPOCHS,
            batch_size=32, verbose=0)
print(trainer.evaluate(*splits.test, return_dict=True, verbose=0))'''),
    ("md", """## A reference the measurement cannot bend

`reference_data` draws the reference's images from the training pool after leaving out
every image of the studied run (compared by content), and splits them into a training
set and a calibration set; `check_disjoint` raises if any image were shared.
`train_reference` adversarially trains a small CNN on the first and fits its
temperature `T` on the clean images of the second (plain temperature scaling)."""),
    ("code", '''images = reference_data("digits", [splits], size=REFERENCE_IMAGES,
                        calibration_size=CALIBRATION_IMAGES, seed=SEED)
check_disjoint(images, [splits])           # raises if an image were shared
print(f"{images.left_out} pool images left out (the studied run's); "
      f"{len(images.train[1])} train the reference, {len(images.calibration[1])} fit T")
reference = train_reference(images, epsilon=EPSILON, epochs=REFERENCE_EPOCHS,
                            steps=2 if SMALL else 5, width=16, dense=64, batch_size=32,
                            learning_rate=3e-3, seed=SEED)
print(f"T = {reference.temperature:.2f};", reference.metrics)'''),
    ("md", """## The noise of what the model trains on, in parts

`reference.measure(model, data, attack)` makes `x'` against the studied `model` with
`attack` (at radius `eps`, the examples PGD-AT at that radius trains on), reads the
reference's `p` on `x'` and on `x` with one temperature, and splits the mean TV (and
the disagreement) into

* **adversarial** = TV(x', y) - TV(x, y): what the attack adds (exactly 0 at radius 0),
* **injected** = TV(x, y) - TV(x, true label): what flipped labels add,
* **base** = TV(x, true label): the reference's own error on the clean images,

which add up to the total. It checks first that `data` shares no image with the
reference.

For contrast, the earlier measure, `measure_label_noise` with the studied model as its
own reference (how issue 7 used it), reads the model's own adversarial error: it
rises with the radius whatever the labels' true distribution does."""),
    ("code", '''parts, earlier = {}, {}
for eps in EPSILONS:
    attack_at = PGD(epsilon=eps, step_size=2.5 * eps / PGD_STEPS, steps=PGD_STEPS)
    parts[eps] = reference.measure(model, splits.train, attack_at, studied=[splits],
                                   seed=SEED)
    earlier[eps] = measure_label_noise(model, splits.train, splits.validation, attack_at,
                                       seed=SEED).adversarial.total_variation
    print(f"epsilon = {eps:g}")
    print(parts[eps].table(), end="\\n\\n")'''),
    ("code", '''fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
tv = [parts[eps].total_variation for eps in EPSILONS]
ax1.plot(EPSILONS, [p.adversarial for p in tv], "o-", label="adversarial part")
ax1.plot(EPSILONS, [p.base for p in tv], "s:", label="base (reference's own error)")
ax1.plot(EPSILONS, [earlier[eps] for eps in EPSILONS], "^--",
         label="earlier measure (model as its own reference)")
ax1.set_xlabel("epsilon"); ax1.set_ylabel("mean TV"); ax1.legend(fontsize=8)
ax1.set_title("label noise of the training examples")
ax2.plot(EPSILONS, [parts[eps].disagreement.adversarial for eps in EPSILONS], "o-")
ax2.set_xlabel("epsilon"); ax2.set_title("adversarial part of label != argmax p")
plt.tight_layout()
plt.show()'''),
    ("md", """## The distribution of the noise

`parts.per_example` keeps the per-example TV on the clean images (`tv_clean`) and on
the PGD examples (`tv_adversarial`). For a good reference the clean images concentrate
near 0; the attack moves part of the PGD examples towards 1."""),
    ("code", '''per_example = parts[EPSILON].per_example
bins = np.linspace(0.0, 1.0, 41)
plt.figure(figsize=(6, 3.6))
plt.hist(per_example["tv_clean"], bins=bins, alpha=0.6,
         label=f"clean (mean {per_example['tv_clean'].mean():.3f})")
plt.hist(per_example["tv_adversarial"], bins=bins, alpha=0.6,
         label=f"PGD (mean {per_example['tv_adversarial'].mean():.3f})")
plt.xlabel("TV between one-hot label and the reference's estimate")
plt.ylabel("training examples"); plt.title(f"label noise at epsilon {EPSILON:g}")
plt.legend(); plt.tight_layout()
plt.show()'''),
    ("md", """## Flipped labels: the injected part

`data.flip_labels` flips a fraction of the training labels to another class
(`data.load(..., label_noise=0.2)` does the same when loading). Given the true labels
(`clean_labels=`), the measure reports what they add as the injected part: for a
reference right on every clean image it is the flipped fraction itself. The adversarial
part falls as more labels are flipped: a flipped label already has a TV near 1 under
the reference, and the attack has nothing to add to it."""),
    ("code", '''attack_at_eps = PGD(epsilon=EPSILON, step_size=2.5 * EPSILON / PGD_STEPS,
                    steps=PGD_STEPS)
print(f"{'flipped':>8}{'injected TV':>13}{'injected flips':>16}{'adversarial TV':>16}")
for rate in FLIP_RATES:
    noisy, flipped = data.flip_labels(y_train, rate, splits.num_classes, seed=SEED)
    r = reference.measure(model, (x_train, noisy), attack_at_eps, clean_labels=y_train,
                          studied=[splits], seed=SEED)
    print(f"{r.flipped_fraction:>8.0%}{r.total_variation.injected:>13.3f}"
          f"{r.disagreement.injected:>16.1%}{r.total_variation.adversarial:>16.3f}")'''),
    ("md", """## Three predictions

If robust overfitting is the network fitting the noisy labels of its adversarial
examples, three things follow. The benchmark `benchmarks/label_noise.py` tests them on
Fashion-MNIST (PGD-AT against the calibrated default, two seeds per cell, the noise
measured with a reference trained on 10,000 other images), writes its verdicts to
`benchmarks/results/label_noise/verdicts.json` and the "Label noise" section of
[`benchmarks/RESULTS.md`]({repository}/blob/main/benchmarks/RESULTS.md),
and draws the figures below. The cells show them when the benchmark has been run in
this checkout (paths relative to `notebooks/`)."""),
    ("code", '''from pathlib import Path

from IPython.display import Image, display

FIGURE_FOLDERS = [Path("..") / "benchmarks" / "figures", Path("benchmarks") / "figures"]


def show_benchmark_figure(name):
    """Displays benchmarks/figures/NAME if it exists, else says how to make it."""
    for folder in FIGURE_FOLDERS:
        if (folder / name).is_file():
            display(Image(filename=str(folder / name)))
            return
    print(f"benchmarks/figures/{name} is not there yet: "
          "run `python benchmarks/label_noise.py` from the repository root.")'''),
    ("md", """### Prediction 1: the radius

A larger `epsilon` moves PGD examples further from their clean input, so their labels
are noisier (the adversarial part above), and there is more noise to fit: PGD-AT's
robust overfitting (best minus final robust test accuracy) should grow with the
radius, while calibrated targets, which follow an estimated distribution instead of
the one-hot label, should keep it small. The benchmark trains 200 epochs at every
radius, long enough for PGD-AT to peak and decline. First the robust test curves per
radius; then, per level, the noise parts (top) and the gaps of both trainers
(bottom): the radius, and the two forms of poorer data of prediction 2."""),
    ("code", '''show_benchmark_figure("label_noise_radius_curves.png")
show_benchmark_figure("label_noise_levels.png")'''),
    ("md", """### Prediction 2: data quality

Poorer data should make PGD-AT overfit more at a fixed radius: flipped training labels
add the injected part on top of the adversarial one (the table above), and fewer
training images leave the noisy labels easier to memorise. The benchmark compares 10,
20 and 40% flipped labels, and 250 or 125 images instead of 500, over the same number
of optimizer steps (the middle and right columns of the figure above)."""),
    ("md", """### Prediction 3: epoch-wise double descent

In standard training with label noise, test error falls, rises while the network
memorises the noisy labels, and can fall again with much longer training (epoch-wise
double descent). The label-noise view predicts the same shape for the robust test
error of adversarial training. The benchmark looks for it on 150 training images for
1,500 epochs (the robust test error of 500 test images every 5 epochs), and counts a
double descent only when the moving average rises and then falls again by 3 points or
more, in both seeds."""),
    ("code", '''show_benchmark_figure("label_noise_long_runs.png")'''),
    ("md", """The verdicts, as the benchmark wrote them (each computed by a rule fixed before
the runs; "not enough runs" until every cell it reads has two finished seeds):"""),
    ("code", '''import json

for folder in FIGURE_FOLDERS:
    path = folder.parent / "results" / "label_noise" / "verdicts.json"
    if path.is_file():
        for name, verdict in json.loads(path.read_text()).items():
            state = ("confirmed" if verdict["confirmed"] else "not decided yet"
                     if verdict["evidence"].startswith("not enough runs") else "not confirmed")
            print(f"{name}: {state}\\n    {verdict['evidence']}\\n")
        break
else:
    print("No verdicts.json yet: run `python benchmarks/label_noise.py` from the "
          "repository root.")'''),
    ("md", """From the command line, `advcal analyze REFERENCE.keras --dataset fashion_mnist
--epsilon 0.1 --out runs/noise` runs the earlier measure (`label_noise.json` and the
histogram `label_noise.png`): given a run's own checkpoint, it reads that checkpoint's
adversarial error, not the label noise."""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_robust_overfitting.ipynb": OVERFITTING,
    "03_keras_tuner.ipynb": TUNER,
    "04_label_noise.ipynb": LABEL_NOISE,
}


def make_notebook(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    stem = name.split(".")[0]
    for index, (kind, source) in enumerate(cells):
        source = source.replace("{badge}", badge(name)).replace("{repository}",
                                                                REPOSITORY_URL)
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "code-skip":
                cell.metadata["tags"] = ["skip-ci"]
            elif kind == "code-params":
                cell.metadata["tags"] = ["parameters"]  # papermill's parameter cell
        cell.id = f"{stem[:2]}-{index:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def _kernel(prefix: Path) -> str:
    """Writes a kernelspec that runs this Python into ``prefix`` and makes Jupyter
    find it; returns its name."""
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, prefix=str(prefix), display_name="keras-advcal")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(prefix / "share" / "jupyter")] + ([os.environ["JUPYTER_PATH"]]
                                               if os.environ.get("JUPYTER_PATH") else []))
    return KERNEL_NAME


#: Lines of TensorFlow's Python logger that reach stdout (retracing notices...).
LOG_LINE = re.compile(r"^(WARNING|INFO):(tensorflow|absl):")


def _without_log_lines(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A stream output without TensorFlow's log lines; other outputs unchanged."""
    if output.output_type == "stream":
        output.text = "".join(line for line in output.text.splitlines(True)
                              if not LOG_LINE.match(line))
    return output


def execute(nb: nbformat.NotebookNode, kernel_name: str,
            timeout: int = 900) -> nbformat.NotebookNode:
    """Runs ``nb`` at small size in ``notebooks/`` (the ``skip-ci`` cells are left
    unrun) and keeps its outputs, without stderr streams nor TensorFlow's log lines;
    returns ``nb``."""
    from nbclient import NotebookClient

    os.environ.update(ADVCAL_NOTEBOOK_SIZE="small", TF_CPP_MIN_LOG_LEVEL="3",
                      MPLBACKEND="module://matplotlib_inline.backend_inline")
    skipped = [cell for cell in nb.cells if "skip-ci" in cell.metadata.get("tags", [])]
    run = nbformat.from_dict(dict(nb, cells=[cell for cell in nb.cells
                                             if cell not in skipped]))
    NotebookClient(run, kernel_name=kernel_name, timeout=timeout, record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    outputs = {cell.id: cell for cell in run.cells}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.id in outputs:
            cell.outputs = [_without_log_lines(output) for output in outputs[cell.id].outputs
                            if output.get("name") != "stderr"]
            cell.outputs = [output for output in cell.outputs
                            if output.output_type != "stream" or output.text]
            cell.execution_count = outputs[cell.id].execution_count
    nb.metadata = dict(nb.metadata, kernelspec={"display_name": "Python 3",
                                                "language": "python", "name": "python3"})
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Writes the notebooks of notebooks/.",
                                     allow_abbrev=False)
    parser.add_argument("--no-execute", action="store_true",
                        help="write the sources only, without running them")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"notebooks to write (default: all): {', '.join(NOTEBOOKS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebook(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as folder:
        kernel = None if args.no_execute else _kernel(Path(folder))
        for name in args.names or NOTEBOOKS:
            nb = make_notebook(name, NOTEBOOKS[name])
            if kernel is not None:
                print("running", name, "at small size ...", flush=True)
                nb = execute(nb, kernel)
            nbformat.validate(nb)
            nbformat.write(nb, HERE / name)
            print("wrote", HERE / name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
