#!/usr/bin/env python
"""The label-noise view of robust overfitting (issue 19): a measure that is not circular,
the radius prediction, poorer data and epoch-wise double descent.

This docstring is the protocol. It was committed before any run made on it; changing a
setting, a rule or the analysis afterwards means saying so in the commit and in
RESULTS.md.

Common settings
---------------
Fashion-MNIST (Debian package), data seed 0: training subsets are prefixes of one
seeded permutation of the training pool (125 of 250 of 500 images); 500 validation
images held out from the pool (the checkpoint with the best validation robust
accuracy, and the calibrated default's calibration); test images: the first 1,000 of
data seed 0's test permutation, which the robust-overfitting benchmark and issue 7
already read (this study chooses no method on them, and leaves the 8,000 held-out
test images of ``benchmarks/heldout.py`` alone). Small CNN conv32-pool-conv64-pool-
dense256-10, no BatchNorm. Training attack PGD-5, step eps/2, random start; the
validation metric, the calibration and the per-epoch robust test curve use PGD-5 with
step eps/2; Adam 1e-3 constant, batch 64; final PGD-20 on the test images.

Methods: ``pgd_at`` (one-hot labels) and ``calibrated`` (RunConfig's calibrated
defaults, nothing pinned: the default teacher, rule and selection of the code version
that runs). Both save their best-validation checkpoint (``best.keras``). Training seeds
0 and 1 in every cell. Each run is one ``advcal train`` process writing
``benchmarks/results/label_noise/<cell>/<method>_s<seed>/``.

The measure (not circular)
--------------------------
One reference for every run, fixed before the runs: a small CNN (the same
architecture), PGD-AT at eps 0.1 (PGD-5, step 0.05, random start), Adam 1e-3, batch 64,
20 epochs, seed 0, on 10,000 images of the training pool drawn after leaving out every
image that any planned run uses (training, validation and test splits of every cell,
compared by content: :func:`keras_advcal.reference.reference_data`), its temperature
fitted by plain temperature scaling on the clean images of 2,000 other pool images
(:func:`keras_advcal.calibration.fit_temperature`). The disjointness is checked again
before every measurement (:func:`keras_advcal.reference.check_disjoint`). One radius
(0.1, the middle of the sweep) and one temperature for all runs, so that the noise of
different radii is read by the same estimator. Its weights are kept out of the
repository, in ``$ADVCAL_REFERENCE_CACHE`` (default
``~/.cache/keras-advcal/label_noise_reference``); ``results/label_noise/reference.json``
describes it (accuracies, temperature, digests of its images and weights).

For every finished run, the examples it trains on: its training images with the labels
it trains on (flipped ones included), ``x'`` made by its own training attack (PGD-5,
step eps/2, random start, seed 0) against its best-validation checkpoint (and, reported
beside, against its final model). With ``p = softmax(reference / T)`` and ``TV(input,
label) = 1 - p_label`` (:func:`keras_advcal.analysis.decompose_label_noise`):

* adversarial part = mean ``TV(x', assigned) - TV(x, assigned)``;
* injected part = mean ``TV(x, assigned) - TV(x, true)`` (0 without flipped labels);
* base = mean ``TV(x, true)`` (the reference's own error on the clean images);

which add up to the total ``TV(x', assigned)``. The same parts of the 0/1
disagreement ``argmax p != label`` are reported beside. The verdicts read the mean-TV
parts at the best-validation checkpoint of the PGD-AT runs. The issue-7 measure
(:func:`keras_advcal.analysis.measure_label_noise` with the run's own checkpoint as
reference) measured that checkpoint's own adversarial error; it is not used.

Prediction 1: the radius
------------------------
Cells ``radius_eps0.05``, ``radius_eps0.1``, ``radius_eps0.15``, ``radius_eps0.2``: 500
training images, 200 epochs, the robust test curve every 4 epochs (50 evaluations).

How the length was decided, from PGD-AT's curves in ``benchmarks/results/``: at eps 0.1
the 120-epoch runs of ``robust_overfitting/pgd_at_s0`` and ``_s1`` peak at epoch 18 and
are 3 points below their peak (3-evaluation moving averages) by epoch 42, 6-7 points by
epoch 120; issue 7's 40-epoch runs (``label_noise/eps*_pgd_at``) peak at epoch 10
(eps 0.025), 12 (0.05), 16 (0.1) and 32 (0.15, where the curve is still flat at epoch
40). Memorisation, read as training minus validation robust accuracy, grows about half
as fast at eps 0.15 as at 0.1 (from 10 points at epoch 20 to 17 at epoch 40, against
10 at epoch 18 to 25 at epoch 40), so by extrapolation PGD-AT peaks near epoch 30-40 at
eps 0.15 and 50-80 at eps 0.2, and needs about 2.5 times its peak epoch to lose 3
points: about 200 epochs at eps 0.2. Every radius gets the same 200 epochs, because
the gap depends on the length (shorter runs at small radii would favour the
prediction). Rule (a) below checks the extrapolation instead of trusting it.

Amendment (committed before any of its runs, decided from PGD-AT's 200-epoch curves
only, no calibrated run having finished): rule (a) failed at eps 0.2, where PGD-AT
peaked at epochs 176 and 104 of 200 (training PGD accuracy 79% at epoch 200: the small
CNN had not memorised its images yet). Cells ``radius_long_eps0.05`` ...
``radius_long_eps0.2``: the same settings for **600 epochs** (three times as long; 2.5
times the latest peak, 176, is 440), the curve every 12 epochs (50 evaluations, as
before), **PGD-AT only**, seeds 0 and 1. The radius verdict reads these cells; the
200-epoch round is reported beside them and decides nothing. The 200-epoch cells stay:
the data-quality verdict's base level and the calibration verdict read them, and they
give the calibrated default's gap per radius.

Prediction 2: data quality
--------------------------
At eps 0.1, two forms of poorer data, compared over the same number of optimizer steps
as the first 60 epochs of a 500-image run (480 steps of batch 64), with 15 evaluations
of the test curve in each run:

* flipped labels (the issue-7 sweep, kept): cells ``quality_flip0.1``,
  ``quality_flip0.2``, ``quality_flip0.4``: 10%, 20%, 40% of the 500 training labels
  flipped to another class (``label_noise``), 60 epochs, curve every 4 epochs. Level 0
  is the first 60 epochs of the ``radius_eps0.1`` runs.
* fewer training images (no label is wrong): cells ``quality_images250`` (250 images,
  120 epochs, curve every 8) and ``quality_images125`` (125 images, 240 epochs, curve
  every 16). Level 500 is again the first 60 epochs of ``radius_eps0.1``.

Prediction 3: epoch-wise double descent
---------------------------------------
Cell ``double_descent``: 150 training images, 200 validation images (the calibrated
default's calibration set: 500 would cost more per epoch than the training itself),
eps 0.1, 1,500 epochs (4,500 optimizer steps), the robust test curve on the first 500
of the 1,000 test images every 5 epochs (300 evaluations). With 200 validation images
the training subset is drawn after them in the same permutation, so these 150 images
are among the other cells' validation images: each run's own splits stay disjoint, and
the reference leaves all of them out.

Verdicts
--------
``benchmarks/results/label_noise/verdicts.json`` holds exactly
``{"radius": {"confirmed": bool, "evidence": str}, "data_quality": {...},
"double_descent": {...}, "calibration_removes_overfitting": {...}}``, computed by the
rules below from the run directories (``--report-only`` recomputes them). A run counts
when its ``summary.json`` exists; a cell's value is the mean over its counted seeds.
A verdict needs at least 2 counted seeds of every method it reads in every cell it
reads, and, where it reads the noise, the noise measured on each of those PGD-AT runs;
otherwise it is ``"confirmed": false`` with evidence starting ``"not enough runs"``,
never a guess. *Smoothed gap*: the best 3-evaluation moving average of the robust test
curve minus the mean of its last 3 evaluations
(:func:`keras_advcal.experiment.summarize_run`), over the epochs named. *Peak epoch*:
the centre of the best 3-evaluation moving average. *Rises with* a list of levels: the
rank correlation (Spearman) between the level's order and the cell means is at least
0.8 (with three levels: it rises at each step). Points are percentage points.

* ``radius``: confirmed when, in the 600-epoch cells (amendment above), (a) every
  PGD-AT run peaks by half its length (epoch 300; it was epoch 100 of 200), (b) the
  adversarial part of the noise rises at each step 0.05 -> 0.1 -> 0.15 -> 0.2, and (c)
  PGD-AT's smoothed gap (whole runs) rises with the radius and is at least 3 points
  larger at 0.2 than at 0.05. If (a) fails the runs were too short and the evidence
  says so. The same three readings of the 200-epoch cells, and the calibrated
  default's gaps there, follow in the evidence, not counted.
* ``data_quality``: confirmed when both forms hold. Flipped labels: (a) the adversarial
  plus injected parts rise at each step 0 -> 10 -> 20 -> 40%, and (b) PGD-AT's smoothed
  gap over the compared steps rises with the flipped fraction and is at least 3 points
  larger at 40% than at 0%. Fewer images: PGD-AT's smoothed gap over the compared steps
  rises from 500 to 250 to 125 images and is at least 3 points larger at 125 than at
  500.
* ``double_descent``: confirmed when every PGD-AT run of ``double_descent`` (at least
  2) shows one: :func:`keras_advcal.analysis.find_double_descent` on its robust test
  error with a 5-evaluation moving average (25 epochs), some smoothed value at least 3
  points above the lowest one 5 or more evaluations before it and at least 3 points
  above the lowest one 5 or more evaluations after it. (One evaluation of 500 images
  has about 2.2 points of standard error; a 5-evaluation mean about 1.) The
  calibrated runs are measured the same way and reported.
* ``calibration_removes_overfitting``: over the cells without flipped labels, each
  over its whole run (the four 200-epoch radius cells, ``quality_images250``,
  ``quality_images125`` and ``double_descent``, both methods; the 600-epoch cells have
  no calibrated runs): confirmed when PGD-AT
  overfits (mean smoothed gap at least 3 points) in at least one of them and the
  calibrated default's mean smoothed gap is at most 1 point (issue 4's bound) in every
  cell where PGD-AT overfits. The flip cells are reported in the evidence, not counted:
  flipped labels are wrong labels, and issue 7 already showed that calibrated targets
  do not undo them.

Budget
------
Per-epoch times measured in issue 7's flip runs (two at a time on this 2-core machine,
otherwise idle): 6.1 s per epoch for 3,000 training passes (500 images x (PGD-5 +
update)) and 6,000 evaluation passes; with the eval epochs apart, about 1.15 ms per
training pass, 0.35 ms per evaluation pass and 0.3 s per epoch of overhead. The
calibrated default adds its calibration (about one PGD pass of the validation images
per epoch). Estimated, one core per run: radius 5.4 core-hours, data quality 2.6,
double descent 3.7, the reference 0.4: about 12 core-hours, 6 hours on the two cores.
Issue 7's radius runs, made while the cores were shared, took 3 times longer per
epoch: up to about 36 core-hours. The 200-epoch PGD-AT radius runs then took 6 to 9
minutes each (two at a time), so the amendment's eight 600-epoch runs need about
8 x 20 minutes of one core. ``--dry-run`` prints each run's estimate.

Usage
-----
    python benchmarks/label_noise.py                 # reference, runs (resumable), report
    python benchmarks/label_noise.py --dry-run       # the plan and its cost
    python benchmarks/label_noise.py --methods pgd_at  # only the PGD-AT runs (and the report)
    python benchmarks/label_noise.py --report-only   # measure finished runs, verdicts, report
    python benchmarks/label_noise.py --quick         # smoke test under results/label_noise/quick/

Runs whose ``summary.json`` exists are skipped; an interrupted run resumes from its
backup. The full mode rewrites the label-noise section of ``benchmarks/RESULTS.md``
and ``benchmarks/figures/label_noise_*.png``; ``--quick`` writes only under
``results/label_noise/quick/`` (its own report, verdicts and figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import robust_overfitting as ro  # noqa: E402  (the job runner, code snapshot, sections)

ROOT = BENCH.parent
DEFAULT_RESULTS = BENCH / "results" / "label_noise"
SECTION = "## Label noise (issue 19)"
#: The section this one replaces in RESULTS.md (the issue-7 runs and measure).
OLD_SECTION = "## Label noise (issue 7)"
NOISE_FILE = "label_noise_parts.json"
VERDICTS_FILE = "verdicts.json"
VERDICT_NAMES = ("radius", "data_quality", "double_descent", "calibration_removes_overfitting")
#: The tutorial page whose generated block shows the verdicts and the figures; the
#: figures are copied beside it (the documentation site serves only its own folder).
TUTORIAL = ROOT / "tutorials" / "label_noise.md"
TUTORIAL_FIGURES = ROOT / "tutorials" / "figures"
TUTORIAL_MARKERS = ("<!-- label-noise-results:start -->", "<!-- label-noise-results:end -->")
VERDICT_TITLES = {"radius": "Prediction 1: the radius",
                  "data_quality": "Prediction 2: data quality",
                  "double_descent": "Prediction 3: epoch-wise double descent",
                  "calibration_removes_overfitting": "Does the calibrated default remove it?"}
NOT_ENOUGH = "not enough runs"
MIN_SEEDS = 2
METHODS = {"pgd_at": dict(labels="hard", objective="pgd_at"),
           "calibrated": dict(labels="calibrated", objective="pgd_at", teacher="swa",
                              loss_form="kd", rule="published", acc_floor=0.9,
                              selection="minimum")}
TITLES = {"pgd_at": "PGD-AT", "calibrated": "calibrated default"}

# Measured rates (see the docstring's budget), seconds.
TRAIN_PASS_S = 1.15e-3
EVAL_PASS_S = 0.35e-3
EPOCH_OVERHEAD_S = 0.3
SHARED_FACTOR = 3.0


# ------------------------------------------------------------------------ protocol
@dataclasses.dataclass(frozen=True)
class Cell:
    """One setting of the study: its runs are ``<name>/<method>_s<seed>``."""

    name: str
    prediction: str  # "radius", "data_quality" or "double_descent"
    form: str  # "radius", "flip", "images" or "double_descent"
    level: float  # the radius, the flipped fraction or the number of images
    epochs: int
    eval_every: int
    overrides: tuple[tuple[str, Any], ...] = ()
    methods: tuple[str, ...] = ("pgd_at", "calibrated")  # the methods run in this cell

    def config(self) -> dict:
        return dict(self.overrides)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The settings and the verdict rules' constants (full or quick)."""

    common: dict
    cells: tuple[Cell, ...]
    reference: dict
    seeds: tuple[int, ...] = (0, 1)
    base_epsilon: float = 0.1
    base_images: int = 500
    quality_epochs: int = 60  # the compared window at base_images (level 0 / 500)
    smoothing: int = 3
    rise: float = 0.03  # the least difference between the poorest and the base level
    overfits: float = 0.03
    small_gap: float = 0.01
    rank: float = 0.8
    dd_smooth: int = 5
    dd_side: int = 5
    dd_margin: float = 0.03
    measure_seed: int = 0
    quick: bool = False

    def cell(self, name: str) -> Cell:
        return next(cell for cell in self.cells if cell.name == name)

    def group(self, form: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.form == form]

    @property
    def base_cell(self) -> Cell:
        return next(cell for cell in self.group("radius") if cell.level == self.base_epsilon)


def _cells(epsilons, flips, images, base_images, radius_epochs, radius_every, long_epochs,
           long_every, quality_epochs, quality_every, dd: dict) -> tuple[Cell, ...]:
    cells = [Cell(f"radius_eps{eps:g}", "radius", "radius", eps, radius_epochs, radius_every,
                  (("epsilon", eps),)) for eps in epsilons]
    # The amendment: the radius verdict's cells, PGD-AT only (see the docstring).
    cells += [Cell(f"radius_long_eps{eps:g}", "radius", "radius_long", eps, long_epochs,
                   long_every, (("epsilon", eps),), methods=("pgd_at",)) for eps in epsilons]
    cells += [Cell(f"quality_flip{rate:g}", "data_quality", "flip", rate, quality_epochs,
                   quality_every, (("label_noise", rate),)) for rate in flips]
    for count in images:
        factor = base_images // count  # the same optimizer steps and evaluations
        cells.append(Cell(f"quality_images{count}", "data_quality", "images", count,
                          quality_epochs * factor, quality_every * factor,
                          (("subset", count),)))
    dd = dict(dd)
    cells.append(Cell("double_descent", "double_descent", "double_descent", dd["subset"],
                      dd.pop("epochs"), dd.pop("eval_every"), tuple(sorted(dd.items()))))
    return tuple(cells)


def full_protocol() -> Protocol:
    common = dict(dataset="fashion_mnist", data_seed=0, subset=500, validation_size=500,
                  test_seed=0, test_size=1000, model="cnn", width=32, dense=256,
                  epsilon=0.1, train_steps=5, eval_steps=5, batch_size=64,
                  learning_rate=1e-3, final_steps=20, final_attacks="",
                  checkpoint_best=True, threads=1, verbose=2)
    cells = _cells(epsilons=(0.05, 0.1, 0.15, 0.2), flips=(0.1, 0.2, 0.4), images=(250, 125),
                   base_images=500, radius_epochs=200, radius_every=4, long_epochs=600,
                   long_every=12, quality_epochs=60,
                   quality_every=4,
                   dd=dict(subset=150, validation_size=200, curve_size=500, epochs=1500,
                           eval_every=5))
    reference = dict(size=10000, calibration_size=2000, seed=0, pool_seed=0, epsilon=0.1,
                     steps=5, epochs=20, width=32, dense=256, batch_size=64,
                     learning_rate=1e-3)
    return Protocol(common, cells, reference)


def quick_protocol() -> Protocol:
    """Tiny settings: every cell, two seeds, a few epochs (numbers meaningless)."""
    common = dict(full_protocol().common, subset=200, validation_size=100, test_size=100,
                  width=8, dense=32, train_steps=2, eval_steps=2, final_steps=2)
    cells = _cells(epsilons=(0.05, 0.1, 0.15, 0.2), flips=(0.1, 0.2, 0.4), images=(100,),
                   base_images=200, radius_epochs=4, radius_every=1, long_epochs=8,
                   long_every=1, quality_epochs=2,
                   quality_every=1,
                   dd=dict(subset=100, validation_size=100, curve_size=50, epochs=8,
                           eval_every=1))
    reference = dict(full_protocol().reference, size=300, calibration_size=200, epochs=2,
                     steps=2, width=8, dense=32)
    return Protocol(common, cells, reference, base_images=200, quality_epochs=2,
                    dd_smooth=2, dd_side=2, quick=True)


# ------------------------------------------------------------------------ planning
@dataclasses.dataclass
class CellJob(ro.Job):
    """A run of one cell, named ``<cell>/<method>_s<seed>``."""

    cell: Cell | None = None

    @property
    def name(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


def run_config(protocol: Protocol, cell: Cell, method: str, seed: int, run_dir: Path) -> dict:
    """The ``advcal train`` settings of one run."""
    # No weight perturbation: the study's recipes, whatever the library's default.
    config = dict(protocol.common, awp_gamma=0.0, **cell.config(), **METHODS[method])
    eps = config["epsilon"]
    config.update(train_step_size=eps / 2, eval_step_size=eps / 2, epochs=cell.epochs,
                  eval_every=cell.eval_every, seed=seed, out=str(run_dir))
    return config


def plan(protocol: Protocol, results: Path) -> list[CellJob]:
    """Every run, seed by seed (each cell gets a first seed early), the longest first
    within a seed (two at a time finish closer together)."""
    jobs = []
    for seed in protocol.seeds:
        for cell in protocol.cells:
            for method in cell.methods:
                run_dir = results / cell.name / f"{method}_s{seed}"
                config = run_config(protocol, cell, method, seed, run_dir)
                jobs.append(CellJob(ro.Method(method, TITLES[method], METHODS[method]), seed,
                                    run_dir, config, cell=cell))
    jobs.sort(key=lambda job: (job.seed, -estimate_seconds(job.config)))
    return jobs


def estimate_seconds(config: dict) -> float:
    """Seconds of one run on a quiet core, from the measured rates (docstring)."""
    images, validation = config["subset"], config["validation_size"]
    curve = config.get("curve_size") or config["test_size"]
    train_pass, eval_pass = config["train_steps"] + 1, config["eval_steps"] + 1
    per_epoch_eval = validation * eval_pass + curve * eval_pass / config["eval_every"]
    if config["labels"] != "hard":
        per_epoch_eval += validation * eval_pass + images  # the calibration
    final = (config["test_size"] * (config["final_steps"] + 1) + images * eval_pass
             + curve * eval_pass) * 2  # the final model and the best checkpoint
    return (config["epochs"] * (images * train_pass * TRAIN_PASS_S
                                + per_epoch_eval * EVAL_PASS_S + EPOCH_OVERHEAD_S)
            + final * EVAL_PASS_S)


def reference_seconds(settings: dict) -> float:
    """Seconds to train and calibrate the reference on a quiet core."""
    passes = settings["size"] * (settings["steps"] + 1) * settings["epochs"]
    return passes * TRAIN_PASS_S + settings["calibration_size"] * (settings["steps"] + 2) \
        * EVAL_PASS_S


# ----------------------------------------------------------------------- reference
def reference_cache() -> Path:
    """Where the reference's weights are kept: never inside the repository."""
    cache = Path(os.environ.get("ADVCAL_REFERENCE_CACHE",
                                "~/.cache/keras-advcal/label_noise_reference")).expanduser()
    cache = cache.resolve()
    if cache == ROOT or ROOT in cache.parents:
        raise SystemExit(f"ADVCAL_REFERENCE_CACHE={cache} is inside the repository: the "
                         "reference's weights must be kept out of it.")
    return cache


def studied_splits(jobs: list[CellJob]) -> list:
    """The data splits of every planned run (one per distinct set of images)."""
    from keras_advcal import experiment

    image_keys = ("dataset", "data_seed", "subset", "validation_size", "test_size",
                  "test_seed", "test_offset", "development_size")
    seen, splits = set(), []
    for job in jobs:
        key = json.dumps({k: job.config.get(k) for k in image_keys}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            config = experiment.RunConfig.from_dict(dict(job.config, label_noise=0.0))
            splits.append(experiment.load_data(config))
    return splits


def get_reference(protocol: Protocol, jobs: list[CellJob], results: Path, train: bool):
    """The study's reference: from the cache, else trained (when ``train``) and cached;
    ``None`` when it is neither cached nor to be trained. Writes ``reference.json``."""
    from keras_advcal.reference import (DESCRIPTION_FILE, Reference, check_disjoint,
                                        reference_data, train_reference)

    settings = dict(protocol.reference)
    studied = studied_splits(jobs)
    data = reference_data(protocol.common["dataset"], studied, settings.pop("size"),
                          settings.pop("calibration_size"), seed=settings.pop("seed"),
                          pool_seed=settings.pop("pool_seed"))
    key = hashlib.sha256(json.dumps([protocol.reference, data.digest()], sort_keys=True)
                         .encode()).hexdigest()[:16]
    folder = reference_cache() / key
    if (folder / DESCRIPTION_FILE).is_file():
        reference = Reference.load(folder)
    elif train:
        started = time.time()
        print(f"training the reference ({len(data.train[1])} images) -> {folder}", flush=True)
        reference = train_reference(data, seed=protocol.reference["seed"], **settings)
        reference.settings["train_seconds"] = time.time() - started
        reference.save(folder)
    else:
        print(f"no reference in {folder}: the noise is not measured", flush=True)
        return None
    check_disjoint(reference.data, studied)
    results.mkdir(parents=True, exist_ok=True)
    (results / "reference.json").write_text(json.dumps(
        dict(reference.describe(), cache=str(folder), checked_disjoint_from=len(studied)),
        indent=2))
    return reference


def measure_run(run_dir: Path, reference, protocol: Protocol) -> dict | None:
    """The noise parts of a finished run (cached in ``label_noise_parts.json`` for this
    reference); ``None`` when the run has not finished."""
    if not ro.finished(run_dir):
        return None
    cached = _read_json(run_dir / NOISE_FILE)
    if cached is not None and (reference is None or cached.get("reference") == reference.identity):
        return cached
    if reference is None:
        return None
    from keras_advcal import experiment
    from keras_advcal.attacks import PGD

    config = experiment.RunConfig.from_stored(
        json.loads((run_dir / "config.json").read_text()))
    splits = experiment.load_data(config)
    attack = PGD(config.epsilon, step_size=config.train_step_size, steps=config.train_steps,
                 random_start=True)
    result: dict[str, Any] = {"reference": reference.identity, "epsilon": config.epsilon,
                              "label_noise": config.label_noise,
                              "images": int(len(splits.train[1]))}
    for checkpoint, file in (("best", "best.keras"), ("final", "model.keras")):
        if (run_dir / file).is_file():
            model = experiment.load_classifier(run_dir / file)
            parts = reference.measure(model, splits.train, attack,
                                      clean_labels=splits.clean_train_labels,
                                      studied=[splits], seed=protocol.measure_seed)
            result[checkpoint] = parts.to_dict()
    (run_dir / NOISE_FILE).write_text(json.dumps(result, indent=2))
    return result


def measure_all(protocol: Protocol, results: Path, reference) -> None:
    for cell in protocol.cells:
        for method in cell.methods:
            for seed in protocol.seeds:
                measure_run(results / cell.name / f"{method}_s{seed}", reference, protocol)


# ------------------------------------------------------------------ reading the runs
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


@dataclasses.dataclass
class Run:
    """What a verdict reads from one finished run directory."""

    seed: int
    history: dict
    noise: dict | None

    def curve(self, last_epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Evaluated epochs (from 1) and robust test accuracies, up to ``last_epoch``."""
        from keras_advcal import experiment

        pairs = [(epoch + 1, value) for epoch, value in
                 experiment.records(self.history, "test_adv_accuracy")
                 if last_epoch is None or epoch + 1 <= last_epoch]
        return (np.array([p[0] for p in pairs], dtype=float),
                np.array([p[1] for p in pairs], dtype=float))

    def gap(self, protocol: Protocol, last_epoch: int | None = None) -> float | None:
        from keras_advcal import experiment

        epochs, values = self.curve(last_epoch)
        if not len(values):
            return None
        history = {"epoch": [int(e) - 1 for e in epochs], "test_adv_accuracy": list(values)}
        return experiment.summarize_run(history, window=protocol.smoothing)["smoothed_gap"]

    def peak_epoch(self, protocol: Protocol) -> float | None:
        from keras_advcal.analysis import moving_average

        epochs, values = self.curve()
        smoothed = moving_average(values, protocol.smoothing)
        if not len(smoothed):
            return None
        return float(moving_average(epochs, protocol.smoothing)[int(np.argmax(smoothed))])

    def noise_part(self, part: str, checkpoint: str = "best") -> float | None:
        values = ((self.noise or {}).get(checkpoint) or {}).get("total_variation")
        return None if values is None else float(values[part])


def collect(protocol: Protocol, results: Path) -> dict[tuple[str, str], list[Run]]:
    """The finished runs of every cell and method: ``{(cell, method): [Run, ...]}``.
    A noise file counts only when it was measured with the reference that
    ``results/reference.json`` describes (any, when there is no such file)."""
    from keras_advcal import experiment

    identity = (_read_json(results / "reference.json") or {}).get("identity")
    found: dict[tuple[str, str], list[Run]] = {}
    for cell in protocol.cells:
        for method in cell.methods:
            runs = []
            for run_dir in sorted((results / cell.name).glob(f"{method}_s*")):
                suffix = run_dir.name[len(method) + 2:]
                if not suffix.isdigit() or not ro.finished(run_dir):
                    continue
                try:
                    history = experiment.read_history(run_dir)
                except (FileNotFoundError, json.JSONDecodeError):
                    continue
                noise = _read_json(run_dir / NOISE_FILE)
                if noise is not None and identity and noise.get("reference") != identity:
                    noise = None
                runs.append(Run(int(suffix), history, noise))
            found[(cell.name, method)] = runs
    return found


# ------------------------------------------------------------------------ verdicts
def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _pp(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _missing(runs: dict, protocol: Protocol, needs: list[tuple[str, str]],
             noise: list[str] = ()) -> list[str]:
    """What keeps a verdict from being computed: cells with fewer than 2 counted seeds
    of a method, and (for the cells in ``noise``) PGD-AT runs without the measure."""
    problems = []
    for cell, method in needs:
        count = len(runs.get((cell, method), []))
        if count < MIN_SEEDS:
            problems.append(f"{cell} {method}: {count} of {MIN_SEEDS} seeds finished")
    for cell in noise:
        unmeasured = [run.seed for run in runs.get((cell, "pgd_at"), [])
                      if run.noise_part("adversarial") is None]
        if unmeasured:
            problems.append(f"{cell} pgd_at: noise not measured (seeds "
                            f"{', '.join(map(str, unmeasured))})")
    return problems


def _not_enough(problems: list[str]) -> dict:
    return {"confirmed": False, "evidence": f"{NOT_ENOUGH}: " + "; ".join(problems) + "."}


def _rises(levels: list[float], values: list[float], protocol: Protocol) -> tuple[bool, float]:
    from keras_advcal.analysis import rank_correlation

    rho = rank_correlation(list(range(len(levels))), values)
    return rho >= protocol.rank, rho


def _radius_readings(runs: dict, protocol: Protocol, cells: list[Cell]) -> tuple[bool, list[str]]:
    """Rules (a), (b) and (c) of the radius verdict on one round of cells (sorted by
    radius): whether all three hold, and what each found."""
    names = [cell.name for cell in cells]
    limit = cells[0].epochs // 2
    peak_of = {(cell.name, run.seed): run.peak_epoch(protocol)
               for cell in cells for run in runs[(cell.name, "pgd_at")]}
    late = [f"eps {cell.level:g} seed {run.seed} (epoch {peak_of[(cell.name, run.seed)]:.0f})"
            for cell in cells for run in runs[(cell.name, "pgd_at")]
            if peak_of[(cell.name, run.seed)] is None or peak_of[(cell.name, run.seed)] > limit]
    noise = [_mean([run.noise_part("adversarial") for run in runs[(name, "pgd_at")]])
             for name in names]
    gaps = [_mean([run.gap(protocol) for run in runs[(name, "pgd_at")]]) for name in names]
    noise_up = all(b > a for a, b in zip(noise, noise[1:]))
    gap_up, rho = _rises(names, gaps, protocol)
    gap_up = gap_up and gaps[-1] - gaps[0] >= protocol.rise
    radii = ", ".join(f"{cell.level:g}" for cell in cells)
    peaks = [_mean([peak_of[(name, run.seed)] for run in runs[(name, "pgd_at")]])
             for name in names]
    return not late and noise_up and gap_up, [
        f"(a) PGD-AT peaks by epoch {limit} of {cells[0].epochs} in every run (mean peak "
        "epochs " + ", ".join(f"{p:.0f}" for p in peaks) + "): "
        + ("yes" if not late else "no, the runs are too short: " + ", ".join(late)),
        f"(b) adversarial part of the noise (mean TV, PGD-AT best checkpoint) at eps {radii}: "
        + ", ".join(f"{v:.3f}" for v in noise)
        + (": rises at each step" if noise_up else ": does not rise at each step"),
        "(c) PGD-AT smoothed gap (points): " + ", ".join(_pp(v) for v in gaps)
        + f", rank correlation {rho:+.2f}, last minus first {_pp(gaps[-1] - gaps[0])}: "
        + ("rises" if gap_up else "does not rise as required"),
    ]


def radius_verdict(runs: dict, protocol: Protocol) -> dict:
    """Reads the long cells (the amendment); the 200-epoch round follows, not counted."""
    long = sorted(protocol.group("radius_long"), key=lambda cell: cell.level)
    short = sorted(protocol.group("radius"), key=lambda cell: cell.level)
    names = [cell.name for cell in long]
    problems = _missing(runs, protocol, [(name, "pgd_at") for name in names], noise=names)
    if problems:
        return _not_enough(problems)
    confirmed, readings = _radius_readings(runs, protocol, long)
    evidence = f"{long[0].epochs}-epoch runs: " + "; ".join(readings) + "."
    short_names = [cell.name for cell in short]
    missing = _missing(runs, protocol, [(name, "pgd_at") for name in short_names],
                       noise=short_names)
    evidence += f" Reported, not counted: the {short[0].epochs}-epoch runs: "
    if missing:
        evidence += f"{NOT_ENOUGH} ({'; '.join(missing)})."
    else:
        evidence += "; ".join(_radius_readings(runs, protocol, short)[1]) + "."
    calibrated = [_mean([run.gap(protocol) for run in runs.get((name, "calibrated"), [])])
                  for name in short_names]
    evidence += (" The calibrated default's smoothed gap there (points): "
                 + ", ".join(_pp(v) for v in calibrated) + ".")
    return {"confirmed": bool(confirmed), "evidence": evidence}


def data_quality_verdict(runs: dict, protocol: Protocol) -> dict:
    base = protocol.base_cell.name
    flips = [base] + [cell.name for cell in sorted(protocol.group("flip"),
                                                   key=lambda cell: cell.level)]
    images = [base] + [cell.name for cell in sorted(protocol.group("images"),
                                                    key=lambda cell: -cell.level)]
    problems = _missing(runs, protocol, [(name, "pgd_at") for name in dict.fromkeys(
        flips + images)], noise=flips)
    if problems:
        return _not_enough(problems)
    window = protocol.quality_epochs

    def gaps(names):
        return [_mean([run.gap(protocol, window if name == base else None)
                       for run in runs[(name, "pgd_at")]]) for name in names]

    noise = [_mean([(run.noise_part("adversarial") or 0.0) + (run.noise_part("injected") or 0.0)
                    for run in runs[(name, "pgd_at")]]) for name in flips]
    flip_gaps, image_gaps = gaps(flips), gaps(images)
    noise_up = all(b > a for a, b in zip(noise, noise[1:]))
    flip_up, flip_rho = _rises(flips, flip_gaps, protocol)
    flip_up = flip_up and flip_gaps[-1] - flip_gaps[0] >= protocol.rise
    image_up, image_rho = _rises(images, image_gaps, protocol)
    image_up = image_up and image_gaps[-1] - image_gaps[0] >= protocol.rise
    flip_levels = ["0"] + [f"{protocol.cell(n).level:.0%}" for n in flips[1:]]
    image_levels = [str(protocol.base_images)] + [f"{protocol.cell(n).level:g}"
                                                  for n in images[1:]]
    evidence = [
        "flipped labels " + "/".join(flip_levels) + ": adversarial + injected noise "
        + ", ".join(f"{v:.3f}" for v in noise)
        + (" (rises at each step)" if noise_up else " (does not rise at each step)")
        + "; PGD-AT smoothed gap " + ", ".join(_pp(v) for v in flip_gaps)
        + f" points (rank correlation {flip_rho:+.2f}): "
        + ("holds" if noise_up and flip_up else "does not hold"),
        "fewer images " + "/".join(image_levels) + ": PGD-AT smoothed gap "
        + ", ".join(_pp(v) for v in image_gaps)
        + f" points (rank correlation {image_rho:+.2f}): "
        + ("holds" if image_up else "does not hold"),
    ]
    return {"confirmed": bool(noise_up and flip_up and image_up),
            "evidence": "; ".join(evidence) + "."}


def descent(run: Run, protocol: Protocol):
    from keras_advcal.analysis import find_double_descent

    epochs, accuracy = run.curve()
    return find_double_descent(epochs, 1.0 - accuracy, smooth=protocol.dd_smooth,
                               side=protocol.dd_side, margin=protocol.dd_margin)


def _descent_text(method: str, run: Run, protocol: Protocol) -> str:
    found = descent(run, protocol)
    if found.rise is None:
        return f"{method} seed {run.seed}: curve too short"
    return (f"{method} seed {run.seed}: robust test error {_pp(found.first_low)}% (epoch "
            f"{found.first_low_epoch:.0f}) -> {_pp(found.peak)}% (epoch "
            f"{found.peak_epoch:.0f}) -> {_pp(found.second_low)}% (epoch "
            f"{found.second_low_epoch:.0f}): rise {_pp(found.rise)}, second fall "
            f"{_pp(found.second_fall)} points, "
            + ("a double descent" if found.found else "no double descent"))


def double_descent_verdict(runs: dict, protocol: Protocol) -> dict:
    cell = protocol.group("double_descent")[0].name
    problems = _missing(runs, protocol, [(cell, "pgd_at")])
    if problems:
        return _not_enough(problems)
    pgd = runs[(cell, "pgd_at")]
    confirmed = all(descent(run, protocol).found for run in pgd)
    lines = [_descent_text("PGD-AT", run, protocol) for run in pgd]
    lines += [_descent_text("calibrated", run, protocol)
              for run in runs.get((cell, "calibrated"), [])]
    return {"confirmed": bool(confirmed), "evidence": "; ".join(lines) + "."}


def calibration_verdict(runs: dict, protocol: Protocol) -> dict:
    cells = [cell.name for cell in protocol.cells
             if cell.form != "flip" and "calibrated" in cell.methods]
    problems = _missing(runs, protocol, [(name, method) for name in cells for method in METHODS])
    if problems:
        return _not_enough(problems)

    def gap(name, method):
        return _mean([run.gap(protocol) for run in runs[(name, method)]])

    overfit = [name for name in cells if gap(name, "pgd_at") >= protocol.overfits]
    failing = [name for name in overfit if gap(name, "calibrated") > protocol.small_gap]
    lines = [f"{name}: PGD-AT {_pp(gap(name, 'pgd_at'))}, calibrated "
             f"{_pp(gap(name, 'calibrated'))}" for name in cells]
    flips = [f"{cell.name}: PGD-AT {_pp(gap(cell.name, 'pgd_at'))}, calibrated "
             f"{_pp(gap(cell.name, 'calibrated'))}" for cell in protocol.group("flip")
             if len(runs.get((cell.name, "pgd_at"), [])) and
             len(runs.get((cell.name, "calibrated"), []))]
    if not overfit:
        head = (f"PGD-AT overfits (mean smoothed gap >= {_pp(protocol.overfits, 0)} points) "
                "in none of the cells: nothing to remove")
    else:
        head = (f"PGD-AT overfits in {len(overfit)} of {len(cells)} cells; the calibrated "
                f"default's gap is at most {_pp(protocol.small_gap, 0)} point in "
                f"{len(overfit) - len(failing)} of them"
                + (f" (not in {', '.join(failing)})" if failing else ""))
    evidence = head + ". Mean smoothed gaps (points): " + "; ".join(lines)
    if flips:
        evidence += ". Not counted, flipped labels: " + "; ".join(flips)
    return {"confirmed": bool(overfit and not failing), "evidence": evidence + "."}


def verdicts(protocol: Protocol, results: Path) -> dict:
    """The four verdicts, computed from the run directories under ``results``."""
    runs = collect(protocol, results)
    return {"radius": radius_verdict(runs, protocol),
            "data_quality": data_quality_verdict(runs, protocol),
            "double_descent": double_descent_verdict(runs, protocol),
            "calibration_removes_overfitting": calibration_verdict(runs, protocol)}


# ------------------------------------------------------------------------- report
def cell_rows(protocol: Protocol, runs: dict) -> list[dict]:
    """One row per cell and method: seeds, mean smoothed gap, peak, final, noise."""
    rows = []
    for cell in protocol.cells:
        for method in cell.methods:
            found = runs.get((cell.name, method), [])
            finals = [run.curve()[1][-1] for run in found if len(run.curve()[1])]
            bests = [run.curve()[1].max() for run in found if len(run.curve()[1])]
            row = dict(cell=cell.name, form=cell.form, level=cell.level, method=method,
                       seeds=[run.seed for run in found],
                       smoothed_gap=_mean([run.gap(protocol) for run in found]),
                       peak_epoch=_mean([run.peak_epoch(protocol) for run in found]),
                       best=_mean(bests), final=_mean(finals))
            for part in ("adversarial", "injected", "base", "total"):
                row[f"noise_{part}"] = _mean([run.noise_part(part) for run in found])
            if cell.name == protocol.base_cell.name:
                row["window_gap"] = _mean([run.gap(protocol, protocol.quality_epochs)
                                           for run in found])
            rows.append(row)
    return rows


def _table(rows: list[dict], protocol: Protocol) -> str:
    lines = ["| cell | method | seeds | peak epoch | best | final | smoothed gap | noise: "
             "adversarial | injected | base | total |", "|" + "---|" * 11]
    for row in rows:
        peak = "–" if row["peak_epoch"] is None else f"{row['peak_epoch']:.0f}"
        noise = ["–" if row[f"noise_{p}"] is None else f"{row[f'noise_{p}']:.3f}"
                 for p in ("adversarial", "injected", "base", "total")]
        gap = _pp(row["smoothed_gap"])
        if row.get("window_gap") is not None:
            gap += f" (first {protocol.quality_epochs} epochs: {_pp(row['window_gap'])})"
        lines.append(f"| `{row['cell']}` | {TITLES[row['method']]} | "
                     f"{','.join(map(str, row['seeds'])) or '–'} | {peak} | "
                     f"{_pp(row['best'])} | {_pp(row['final'])} | {gap} | "
                     + " | ".join(noise) + " |")
    return "\n".join(lines)


def plot(protocol: Protocol, runs: dict, rows: list[dict], figures: Path) -> list[str]:
    """The figures: curves per radius, gaps and noise per level, double descent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    styles = {"pgd_at": "-", "calibrated": "--"}

    def legend(axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(figures / name, dpi=110)
        plt.close(fig)
        written.append(name)

    def row(cell, method):
        return next((r for r in rows if r["cell"] == cell and r["method"] == method), {})

    # Robust test curves of every radius: the 200-epoch round, then the long runs.
    radius = sorted(protocol.group("radius"), key=lambda c: c.level)
    long = sorted(protocol.group("radius_long"), key=lambda c: c.level)
    fig, axes = plt.subplots(2, len(radius), figsize=(4 * len(radius), 7), sharey=True,
                             squeeze=False)
    for cells, line in ((radius, axes[0]), (long, axes[1])):
        for axis, cell in zip(line, cells):
            for method in cell.methods:
                for run in runs.get((cell.name, method), []):
                    epochs, values = run.curve()
                    axis.plot(epochs, 100 * values, styles[method], linewidth=1,
                              label=f"{TITLES[method]} s{run.seed}")
            axis.set(title=f"eps {cell.level:g}, {cell.epochs} epochs", xlabel="epoch")
            axis.grid(alpha=0.3)
        line[0].set_ylabel("robust test accuracy (%)")
        legend(line[0])
    save(fig, "label_noise_radius_curves.png")

    # Noise parts and gaps per level, for the radius and the two forms of poor data.
    panels = [("radius", [c.name for c in radius], [c.level for c in radius], "epsilon"),
              ("flip", [protocol.base_cell.name] + [c.name for c in sorted(
                  protocol.group("flip"), key=lambda c: c.level)],
               [0.0] + [c.level for c in sorted(protocol.group("flip"), key=lambda c: c.level)],
               "fraction of labels flipped"),
              ("images", [protocol.base_cell.name] + [c.name for c in sorted(
                  protocol.group("images"), key=lambda c: -c.level)],
               [protocol.base_images] + [c.level for c in sorted(protocol.group("images"),
                                                                 key=lambda c: -c.level)],
               "training images")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for column, (form, names, levels, label) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        for part, marker in (("adversarial", "o-"), ("injected", "s-"), ("base", "^:")):
            values = [row(n, "pgd_at").get(f"noise_{part}") for n in names]
            top.plot(levels, [np.nan if v is None else v for v in values], marker,
                     label=f"{part} part")
        if form == "radius":  # the long runs' adversarial part, which the verdict reads
            values = [row(c.name, "pgd_at").get("noise_adversarial") for c in long]
            top.plot(levels, [np.nan if v is None else v for v in values], "o--",
                     label=f"adversarial part, {long[0].epochs} epochs")
        top.set(xlabel=label, ylabel="mean TV (PGD-AT runs)", title=f"label noise ({form})")
        legend(top)
        for method in METHODS:
            gaps = []
            for name in names:
                r = row(name, method)
                value = (r.get("window_gap") if form != "radius" and name ==
                         protocol.base_cell.name else r["smoothed_gap"])
                gaps.append(np.nan if value is None else 100 * value)
            bottom.plot(levels, gaps, "o" + styles[method], label=TITLES[method])
        if form == "radius":
            gaps = [row(c.name, "pgd_at").get("smoothed_gap") for c in long]
            bottom.plot(levels, [np.nan if v is None else 100 * v for v in gaps], "o:",
                        label=f"PGD-AT, {long[0].epochs} epochs")
        bottom.axhline(100 * protocol.small_gap, color="grey", linestyle=":", linewidth=1)
        bottom.set(xlabel=label, ylabel="smoothed gap (points)", title="robust overfitting")
        legend(bottom)
        if form == "images":
            for axis in (top, bottom):
                axis.invert_xaxis()
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
    save(fig, "label_noise_levels.png")

    # The double-descent cell: robust test error and its moving average.
    from keras_advcal.analysis import moving_average

    cell = protocol.group("double_descent")[0].name
    fig, axis = plt.subplots(figsize=(8, 4))
    for method in METHODS:
        for run in runs.get((cell, method), []):
            epochs, values = run.curve()
            error = 100 * (1 - values)
            axis.plot(epochs, error, styles[method], linewidth=0.5, alpha=0.4)
            axis.plot(moving_average(epochs, protocol.dd_smooth),
                      moving_average(error, protocol.dd_smooth), styles[method],
                      linewidth=1.5, label=f"{TITLES[method]} s{run.seed}")
    axis.set(xlabel="epoch", ylabel="robust test error (%)",
             title="epoch-wise double descent? (thin: each evaluation; thick: moving average)")
    axis.grid(alpha=0.3)
    legend(axis)
    save(fig, "label_noise_long_runs.png")
    return written


def report(protocol: Protocol, results: Path, figures: Path, markdown: Path,
           reference_text: str) -> tuple[str, dict]:
    """Writes verdicts.json, summary.json and the figures; returns the section's text
    (for ``markdown``) and the verdicts."""
    runs = collect(protocol, results)
    found = verdicts(protocol, results)
    rows = cell_rows(protocol, runs)
    written = plot(protocol, runs, rows, figures)
    (results / VERDICTS_FILE).write_text(json.dumps(found, indent=2) + "\n")
    (results / "summary.json").write_text(json.dumps(
        {"protocol": "benchmarks/label_noise.py (module docstring)", "cells": rows,
         "generated": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    relative = os.path.relpath(figures, markdown.parent)
    lines = [SECTION, "",
             ("QUICK SMOKE TEST (tiny settings, numbers meaningless). " if protocol.quick
              else "") + "Made by `python benchmarks/label_noise.py` (protocol, settings and "
             "verdict rules in its docstring, fixed before the runs; `--report-only` "
             "rebuilds this section, `benchmarks/results/label_noise/verdicts.json` and the "
             "figures from the run directories). Fashion-MNIST, 500 training images (fewer "
             "where named), small CNN, PGD-5 training and curves (step eps/2), Adam 1e-3, "
             "seeds 0 and 1; accuracies and gaps in %, means over the finished seeds.", "",
             "Label noise: measured with a reference trained apart from the studied runs "
             "(other images of the training pool, checked disjoint by content; temperature "
             "fitted on yet other images) on the examples each PGD-AT run trains on (its "
             "training attack against its best-validation checkpoint): the adversarial part "
             "(mean TV on x' minus on x, assigned labels), the injected part (flipped labels) "
             "and the reference's own base error. The issue-7 numbers (runs `eps*_*`, "
             "`flip*_*` in the same folder) used the run's own checkpoint as the reference, "
             "so they measured that checkpoint's own adversarial error.", "",
             reference_text, "", _table(rows, protocol), ""]
    for name in VERDICT_NAMES:
        verdict = found[name]
        lines += [f"### {VERDICT_TITLES[name]}", "",
                  f"**{'Confirmed' if verdict['confirmed'] else 'Not confirmed'}.** "
                  f"{verdict['evidence']}", ""]
    lines += [f"![{name}]({relative}/{name})" for name in written] + [""]
    return "\n".join(lines), found, written


def tutorial_block(found: dict, figures: list[str]) -> str:
    """The tutorial's generated account of the runs: each verdict with its evidence
    (``"not enough runs"`` while a cell lacks its seeds) and the figures, linked from
    the tutorial's own ``figures/`` folder.

    Example:

        >>> found = {name: {"confirmed": False, "evidence": "not enough runs: ..."}
        ...          for name in VERDICT_NAMES}
        >>> found["radius"] = {"confirmed": True, "evidence": "PGD-AT peaks ..."}
        >>> text = tutorial_block(found, ["label_noise_levels.png"])
        >>> print(text.splitlines()[2])
        - **Prediction 1: the radius.** Confirmed: PGD-AT peaks ...
        >>> print(text.splitlines()[3])
        - **Prediction 2: data quality.** Not decided yet: not enough runs: ...
        >>> text.splitlines()[-1]
        '![label_noise_levels.png](figures/label_noise_levels.png)'
    """
    lines = ["**What the runs found so far** (generated by `python benchmarks/"
             "label_noise.py --report-only` from the finished runs; the label-noise section "
             "of `benchmarks/RESULTS.md` has the table):", ""]
    for name in VERDICT_NAMES:
        verdict = found[name]
        state = ("confirmed" if verdict["confirmed"] else
                 "not decided yet" if verdict["evidence"].startswith("not enough runs")
                 else "not confirmed")
        title = VERDICT_TITLES[name]
        title += "" if title.endswith("?") else "."
        lines.append(f"- **{title}** {state.capitalize()}: {verdict['evidence']}")
    if figures:
        lines.append("")
    lines += [f"![{name}](figures/{name})" for name in figures]
    return "\n".join(lines) + "\n"


def update_tutorial(found: dict, figures: Path, written: list[str],
                    page: Path = TUTORIAL, page_figures: Path = TUTORIAL_FIGURES) -> None:
    """Copies the figures beside the tutorial and rewrites its generated block (a page
    without the markers is left as it is)."""
    import shutil

    page_figures.mkdir(parents=True, exist_ok=True)
    for name in written:
        shutil.copyfile(figures / name, page_figures / name)
    ro.replace_marked(page, tutorial_block(found, written), TUTORIAL_MARKERS)


def _reference_text(results: Path) -> str:
    described = _read_json(results / "reference.json")
    if not described:
        return "Reference: not trained yet."
    metrics = described.get("metrics", {})
    return (f"Reference: small CNN, PGD-AT at eps {described['settings']['epsilon']:g}, "
            f"{described['train_images']:,} training images, temperature "
            f"{described['temperature']:.3f} fitted on {described['calibration_images']:,} "
            f"others; on those: clean accuracy {_pp(metrics.get('calibration_accuracy'))}%, "
            f"PGD-{described['settings']['steps']} accuracy "
            f"{_pp(metrics.get('calibration_adv_accuracy'))}%.")


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings under RESULTS/quick/ (smoke test; RESULTS.md untouched)")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: measure finished runs (with a cached reference), "
                             "write the verdicts, the report and the figures")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its cost")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="train only these methods' runs (default: both); the reference, "
                             "the measurement and the report still cover every finished run")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="run directories (default: benchmarks/results/label_noise)")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="import the working tree's keras_advcal in every run")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = quick_protocol() if args.quick else full_protocol()
    results = args.results.resolve() / ("quick" if args.quick else "")
    figures = results / "figures" if args.quick else ro.FIGURES
    jobs = plan(protocol, results)
    # The reference leaves out the images of every planned run, trained now or not.
    chosen = [job for job in jobs if job.method.name in args.methods]
    if args.dry_run:
        total = 0.0
        for job in chosen:
            seconds = estimate_seconds(job.config)
            total += 0.0 if ro.finished(job.run_dir) else seconds
            print(f"{job.name:34s} {'done' if ro.finished(job.run_dir) else 'to run':7s} "
                  f"{seconds / 60:7.1f} min  {json.dumps(job.config)}")
        total += reference_seconds(protocol.reference)
        print(f"{len(chosen)} runs + the reference: about {total / 3600:.1f} core-hours left on "
              f"quiet cores, up to {SHARED_FACTOR * total / 3600:.1f} on shared ones")
        return 0
    started = time.time()
    status: dict[str, int] = {}
    from keras_advcal import experiment

    experiment.set_threads(args.jobs)
    reference = get_reference(protocol, jobs, results, train=not args.report_only)
    if not args.report_only:
        print(f"{len(chosen)} runs, {args.jobs} at a time -> {results}", flush=True)
        code_dir = None if args.no_snapshot else ro.snapshot_code(results)
        status = ro.execute(chosen, args.jobs, code_dir)
    measure_all(protocol, results, reference)
    markdown = results / "RESULTS_quick.md" if args.quick else ro.RESULTS_MD
    section, found, written = report(protocol, results, figures, markdown,
                                     _reference_text(results))
    if args.quick:
        markdown.write_text(section)
    else:
        update_tutorial(found, figures, written)
        text = ro.RESULTS_MD.read_text() if ro.RESULTS_MD.is_file() else ""
        heading = OLD_SECTION if OLD_SECTION in text.splitlines() else SECTION
        ro.update_section(ro.RESULTS_MD, section, heading)
    print(section)
    print(json.dumps(found, indent=2))
    print(f"done in {(time.time() - started) / 60:.1f} min", flush=True)
    return ro.exit_status(status)


if __name__ == "__main__":
    sys.exit(main())
