#!/usr/bin/env python
"""The calibration study on the development split: which variant of the calibrated
trainer, chosen without reading the test split.

This docstring is the protocol, committed before its runs.

Setting (the development setting of the held-out protocol): Fashion-MNIST from the
Debian package, data seed 0, 500 training images, 1,000 validation images (the
calibration, the ``best`` teacher and early stopping read them; a variant's
``calibration_size`` uses the first N of them), and a *development split* of 2,000
other images of the training pool, disjoint from all three and from the test split.
Small CNN (width 32, dense 256, no BatchNorm, logits out); L-inf eps 0.1; training
PGD-5 (step 0.05, random start); Adam 1e-3 constant, batch 64, 120 epochs. The
per-epoch curve is PGD-10 (step 0.025) on the first 1,000 development images every 3
epochs; the final number is the worst case of PGD-20 and APGD-CE (100 steps) on all
2,000 development images. No run reads the test split.

The validation split has 1,000 images in every run of this study (not the 500 of the
robust-overfitting benchmark) so that the calibration-size variants use the same
training images as the others; the default calibrates on the first 500 of them.

Rows (``variant``; overrides of the default):

* ``pgd_at`` (PGD-AT, hard labels; its early-stopped checkpoint is ``pgd_at_es``, the
  baseline every variant is compared with, and its weight average ``pgd_at_swa``).
* ``default``: the library's default calibrated trainer at the start of the study
  (``swa`` teacher, KD loss, published rule, one-standard-error selection, accuracy
  floor 0.9, averaging from epoch 0; teacher and student logits on the PGD examples of
  the validation pass, made against the student, and the floor on the training steps'
  teacher logits. The validation-pass examples became the default before any
  calibrated run of this study, to remove the calibration's own attack.)
* sensitivity of the default, one setting changed at a time: ``floor_0.8``,
  ``floor_0.95``, ``selection_minimum``, ``swa_start_10``, ``swa_start_30``,
  ``calibration_250``, ``calibration_1000``, ``surrogate_attacked`` (the calibration
  makes its own examples: the teacher's logits on PGD examples made against the
  teacher, the student's on its own, as the published code).
* candidates for a rule that decides (issue: make the calibration decide):
  ``own_surrogate_temperature`` (the surrogate scaled by its own fitted temperature),
  ``average_fits`` (T and rho: the mean of the successful fits so far; added before
  any run of this study).
* the cost change of the calibration (issue: calibration that reuses what training
  computes): ``before_cost_change`` measures the accuracy floor on PGD examples of the
  training images made against the teacher and makes new validation examples against
  the teacher every epoch, as before that change (the default now uses the teacher's
  logits from the training steps and the validation pass's examples); the same fitted
  (T, rho) and final accuracy within seed noise is the check.

* the training objectives (issue: TRADES, MART and AWP in the same trainer; added in
  its own commit before any of their runs): ``trades`` (TRADES, beta 6, one-hot
  labels), ``trades_calibrated`` (the same with the default's calibrated targets in
  its supervised term), ``mart`` (MART, beta 5), ``pgd_at_awp`` (PGD-AT with
  adversarial weight perturbation, gamma 0.005) and ``calibrated_awp`` (the default
  with the same AWP). They are not candidates for the default: they answer whether
  calibration removes TRADES's robust overfitting and whether calibrated + AWP beats
  AWP alone, on the same development split.

  How the two questions are answered (added after seed 0 of every objective row had
  run, with thresholds taken unchanged from the held-out protocol and the rule above,
  not from these results): TRADES overfits here when its mean smoothed gap is at least
  3 points (the held-out protocol's keep rule); calibration removes that overfitting
  when ``trades_calibrated``'s mean smoothed gap is at most 1 point (the evidence
  issue's goal). Calibrated + AWP beats AWP alone when the mean over the seeds both
  rows have of ``calibrated_awp`` minus ``pgd_at_awp`` exceeds the larger of their two
  standard errors; within it, a tie. Each answer needs every row it reads at its
  planned number of seeds; before that it says so.

Seeds (training seeds): 0, 1, 2 for ``pgd_at``, ``default``, ``trades`` and
``trades_calibrated``; 0, 1 for the others.

Analysis: per row, mean and standard error over seeds of the final development robust
accuracy and mean smoothed gap (best 3-evaluation moving average minus the mean of the
last 3 evaluations of the curve); for calibrated rows the share of epochs 60-120 whose
chosen (T, rho) lies on the accuracy floor (training agreement within 0.005 of the
floor) and the share of epochs whose fit was kept or failed. A calibration variant
(not one of the objective rows) replaces the default only if its final development
accuracy is higher by more than the larger of the two standard errors, with a smoothed
gap of at most 1 point; the change is frozen in its own commit, which states these numbers and that the test split was not read.

Freeze (added in the commit that froze the default; no run's setting changed): the rule
above picked ``selection_minimum`` (the literal published rule, lowest NLL) over the
study's starting default once ``selection_minimum``, ``calibration_1000`` (59.3 ± 0.5)
and the three ``acc_floor`` rows had 2 seeds: final development robust accuracy 59.8 ±
0.2 against 58.9 ± 0.6 (seeds 0, 1), smoothed gap 0.2. The default was frozen then,
before the other rows had their second seed, because none of them could overtake it
without a seed-1 result at least 1.1 points above the best seed-1 result of any
calibrated row so far (60.0; the smallest such threshold is ``surrogate_attacked``'s,
61.1): their seed-1 runs still run, for the sensitivity table, and if one of them does
overtake, the freeze is reopened in a commit that says so. The frozen default gets the
default's 3 seeds. The test split was not read for this choice.

After the freeze (each added in its own commit before any of its runs): the rule now
compares every calibration row, the starting ``default`` included, with the frozen
default; ``confidence_rule`` (``rule="confidence"``: T by temperature scaling of the
teacher on the validation examples, rho such that the training targets' mean
probability of the label equals the teacher's held-out robust accuracy; no accuracy
floor) is a candidate whose rho is set by held-out data rather than by a constraint;
``rectified_no_floor`` (the frozen default's lowest-NLL fit without the accuracy floor,
``acc_floor=0``, and per-example ratios ``rho_i = clip(rho - (max_j p_j - p_y), 0, 1)``
in training, ``rectified_targets=True``, which keep every target on its label: the
floor's job done per example, the ADR idea with a fitted rho) is a second one;
``trades_calibrated`` and ``calibrated_awp``, not run before the freeze, use the frozen
default's calibration. A tie (within the larger standard error) goes to a candidate the
accuracy floor decides in under 20% of epochs 60-120 (smoothed gap at most 1 point)
when the frozen default is on the floor more often; it replaces the frozen default only
if no row beats it outright.

Usage:

    python benchmarks/development.py                  # every row (many hours; resumable)
    python benchmarks/development.py --variants pgd_at default --seeds 0
    python benchmarks/development.py --report-only    # summary.json, figure, RESULTS.md

Runs write ``benchmarks/results/development/<variant>_s<seed>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robust_overfitting import (Job, add_run_options, execute, finished,  # noqa: E402
                                replace_marked, snapshot_code, update_section)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "development"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
FIGURE = ROOT / "benchmarks" / "figures" / "development_sensitivity.png"
SECTION = "## Calibration study on the development split"
METHOD_PAGE = ROOT / "tutorials" / "method.md"
#: The method page's generated sensitivity table sits between these markers.
SENSITIVITY_MARKERS = ("<!-- sensitivity:start -->", "<!-- sensitivity:end -->")
OBJECTIVES_PAGE = ROOT / "tutorials" / "objectives.md"
#: The objectives page's generated table sits between these markers.
OBJECTIVES_MARKERS = ("<!-- objectives:start -->", "<!-- objectives:end -->")
#: A smoothed gap (points) from which a row counts as overfitting (the held-out
#: protocol's keep rule), and the gap at most which overfitting counts as removed.
OVERFITTING_GAP, REMOVED_GAP = 3.0, 1.0

#: The variant the study froze as the library's default (``"default"``, the starting
#: point, until a freeze; see the docstring's "Freeze").
FROZEN_DEFAULT = "selection_minimum"
FLOOR_MARGIN = 0.005
#: The study's goal for the share of late epochs decided by the accuracy floor.
FLOOR_GOAL = 0.2
LATE_EPOCHS = (60, 120)
BASE = dict(dataset="fashion_mnist", data_seed=0, subset=500, validation_size=1000,
            development_size=2000, curve_split="development", curve_size=1000,
            final_splits="development", final_attacks="apgd-ce", final_attack_steps=100,
            epsilon=0.1, width=32, dense=256, batchnorm=False, train_steps=5,
            train_step_size=0.05, eval_steps=10, eval_step_size=0.025, eval_every=3,
            batch_size=64, learning_rate=1e-3, epochs=120,
            awp_gamma=0.0)  # named: the library's default recipe has AWP since #33's freeze
DEFAULT = dict(labels="calibrated", objective="pgd_at", teacher="swa", loss_form="kd",
               rule="published",
               acc_floor=0.9, selection="one_standard_error", swa_start_epoch=0,
               calibration_size=500, surrogate_examples="teacher",
               separate_surrogate_temperature=False, average_fits=False,
               floor_examples="training", reuse_validation_examples=True,
               calibration_examples="validation_pass")
#: The frozen default's overrides (the ``selection_minimum`` row), which the rows made
#: after the freeze build on.
FROZEN = dict(DEFAULT, selection="minimum")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict
    seeds: tuple[int, ...] = (0, 1)
    title: str = ""


VARIANTS = [
    Variant("pgd_at", dict(labels="hard", objective="pgd_at", checkpoint_best=True,
                           weight_average=True), (0, 1, 2), "PGD-AT"),
    Variant("default", DEFAULT, (0, 1, 2), "default (swa, floor 0.9, 1-SE, start 0, 500)"),
    Variant("floor_0.8", dict(DEFAULT, acc_floor=0.8), title="accuracy floor 0.8"),
    Variant("floor_0.95", dict(DEFAULT, acc_floor=0.95), title="accuracy floor 0.95"),
    Variant("selection_minimum", FROZEN, (0, 1, 2),
            title="lowest-NLL selection (published; the frozen default)"),
    Variant("swa_start_10", dict(DEFAULT, swa_start_epoch=10), title="swa from epoch 10"),
    Variant("swa_start_30", dict(DEFAULT, swa_start_epoch=30), title="swa from epoch 30"),
    Variant("calibration_250", dict(DEFAULT, calibration_size=250),
            title="250 calibration images"),
    Variant("calibration_1000", dict(DEFAULT, calibration_size=1000),
            title="1,000 calibration images"),
    Variant("surrogate_attacked", dict(DEFAULT, calibration_examples="attack",
                                       surrogate_examples="surrogate"),
            title="surrogate logits on its own PGD examples"),
    Variant("own_surrogate_temperature", dict(DEFAULT, separate_surrogate_temperature=True),
            title="surrogate with its own temperature"),
    Variant("average_fits", dict(DEFAULT, average_fits=True),
            title="mean of the fits so far"),
    Variant("confidence_rule", dict(DEFAULT, rule="confidence"),
            title="confidence rule (no floor: rho from the teacher's held-out accuracy)"),
    Variant("rectified_no_floor", dict(FROZEN, rectified_targets=True, acc_floor=0.0),
            title="per-example rectified rho, lowest NLL, no floor"),
    Variant("before_cost_change", dict(DEFAULT, floor_examples="attack",
                                       reuse_validation_examples=False,
                                       calibration_examples="attack"),
            title="floor by attack, new validation examples every epoch"),
    Variant("trades", dict(labels="hard", objective="trades", beta=6.0), (0, 1, 2),
            "TRADES (beta 6)"),
    Variant("trades_calibrated", dict(FROZEN, objective="trades", beta=6.0), (0, 1, 2),
            "TRADES (beta 6), calibrated targets"),
    Variant("mart", dict(labels="hard", objective="mart", beta=5.0), title="MART (beta 5)"),
    Variant("pgd_at_awp", dict(labels="hard", objective="pgd_at", awp_gamma=0.005),
            title="PGD-AT + AWP 0.005"),
    Variant("calibrated_awp", dict(FROZEN, awp_gamma=0.005),
            title="default + AWP 0.005"),
]
#: Rows that answer questions about the training objectives, not candidates for the
#: default calibration.
OBJECTIVE_ROWS = ("trades", "trades_calibrated", "mart", "pgd_at_awp", "calibrated_awp")
VARIANT = {v.name: v for v in VARIANTS}


def calibration_variants() -> list[str]:
    """The rows that are candidates for the default: every variant of the calibration
    (not PGD-AT, the default itself or the objective rows)."""
    return [v.name for v in VARIANTS
            if v.name not in OBJECTIVE_ROWS and v.name not in ("pgd_at", "default")]


def changed_setting(name: str) -> str:
    """What a calibration variant changes from the default, as ``key=value`` pairs.

    Example:

        >>> changed_setting("selection_minimum")
        'selection="minimum"'
    """
    changed = {k: v for k, v in VARIANT[name].overrides.items() if DEFAULT.get(k) != v}
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}"
                     for k, v in changed.items())


def run_dir(results: Path, variant: str, seed: int) -> Path:
    return results / f"{variant}_s{seed}"


def plan(results: Path, variants: list[str], seeds: list[int] | None) -> list[Job]:
    """Seed-major, so that every row gets its first seed early."""
    return variant_jobs(results, [VARIANT[name] for name in variants],
                        lambda variant: seeds if seeds is not None else variant.seeds)


def variant_jobs(results: Path, variants: list[Variant], seeds_of) -> list[Job]:
    """The runs of ``variants`` in this setting (``seeds_of(variant)`` gives each one's
    seeds), seed-major in the order of ``variants``."""
    jobs = []
    for variant in variants:
        for seed in seeds_of(variant):
            directory = run_dir(results, variant.name, seed)
            config = dict(BASE, **variant.overrides, seed=seed, out=str(directory),
                          verbose=2, threads=1)
            jobs.append(Job(variant, seed, directory, config))
    order = [v.name for v in variants]
    jobs.sort(key=lambda job: (job.seed, order.index(job.method.name)))
    return jobs


# ------------------------------------------------------------------------ analysis
def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    se = (float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1
          else None)
    return float(np.mean(values)), se


def _pp(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 3)


def late_shares(history: dict, acc_floor: float) -> dict[str, float | None]:
    """Shares of epochs 60-120 (1-based) on the floor, kept, and failed.

    Example:

        >>> h = {"epoch": list(range(120)), "train_agreement": [0.9] * 120,
        ...      "calibration_status": [0.0] * 120}
        >>> late_shares(h, 0.9)["on_floor"]
        1.0
    """
    epochs = history.get("epoch", [])
    agreement = history.get("train_agreement", [None] * len(epochs))
    status = history.get("calibration_status", [None] * len(epochs))
    late = [i for i, e in enumerate(epochs) if LATE_EPOCHS[0] <= e + 1 <= LATE_EPOCHS[1]]
    if not late:
        return {"on_floor": None, "kept_or_failed": None}
    fitted = [i for i in late if status[i] in (None, 0.0) and agreement[i] is not None]
    on_floor = [i for i in fitted if agreement[i] <= acc_floor + FLOOR_MARGIN]
    kept = [i for i in late if status[i] not in (None, 0.0)]
    return {"on_floor": len(on_floor) / len(late), "kept_or_failed": len(kept) / len(late)}


def late_fits(history: dict) -> dict[str, float | None]:
    """Medians of the (T, rho) used in epochs 60-120 (1-based).

    Example:

        >>> h = {"epoch": [58, 59, 60], "temperature": [2.0, 1.0, 3.0], "rho": [0.1, 0.5, 0.7]}
        >>> late_fits(h)
        {'temperature': 2.0, 'rho': 0.6}
    """
    from keras_advcal import experiment

    medians: dict[str, float | None] = {}
    for key in ("temperature", "rho"):
        values = [value for epoch, value in experiment.records(history, key)
                  if LATE_EPOCHS[0] <= epoch + 1 <= LATE_EPOCHS[1]]
        medians[key] = float(np.median(values)) if values else None
    return medians


def decide(rows: list[dict], reference: str | None = None) -> dict:
    """The protocol's rule: a calibration variant (not an objective row) replaces the
    default when its final development accuracy is higher by more than the larger of the
    two standard errors, with a smoothed gap of at most 1 point, both rows with at least
    2 seeds. Rows with one seed cannot decide yet. After the freeze the reference is the
    frozen default (``FROZEN_DEFAULT``), and the study's starting default is one more
    candidate: a row that beats the frozen default reopens the freeze.

    A tie (the difference within the larger standard error, either way) goes to a
    candidate whose chosen point lies on the accuracy floor in under 20% of epochs
    60-120, with a smoothed gap of at most 1 point, when the reference's does not
    (``tie_preferred``): a rule set by held-out data rather than by a constraint is the
    study's goal. It replaces the reference only if no row is ``better``.

    Example:

        >>> rows = [{"variant": "default", "seeds": [0, 1], "dev_final_mean": 58.0,
        ...          "dev_final_se": 0.3, "dev_smoothed_gap_mean": 0.5},
        ...         {"variant": "floor_0.8", "seeds": [0, 1], "dev_final_mean": 59.0,
        ...          "dev_final_se": 0.4, "dev_smoothed_gap_mean": 0.8}]
        >>> decide(rows, reference="default")["better"]
        ['floor_0.8']
    """
    reference = FROZEN_DEFAULT if reference is None else reference
    by_name = {row["variant"]: row for row in rows}
    default = by_name.get(reference)
    candidates = [name for name in ["default", *calibration_variants()] if name != reference]
    waiting = [name for name in candidates
               if name not in by_name or len(by_name[name]["seeds"]) < 2]
    if default is None or len(default["seeds"]) < 2:
        return {"better": [], "waiting": [reference] + waiting, "complete": False,
                "reference": reference}
    reference_on_floor = default.get("floor_bound_fraction")
    floor_bound = reference_on_floor is not None and reference_on_floor >= FLOOR_GOAL
    better, tie_preferred = [], []
    for name in candidates:
        row = by_name.get(name)
        if (row is None or len(row["seeds"]) < 2
                or row["dev_smoothed_gap_mean"] > 1.0):
            continue
        margin = max(row["dev_final_se"] or 0.0, default["dev_final_se"] or 0.0)
        difference = row["dev_final_mean"] - default["dev_final_mean"]
        on_floor = row.get("floor_bound_fraction")
        if difference > margin:
            better.append(name)
        elif (abs(difference) <= margin and floor_bound and on_floor is not None
              and on_floor < FLOOR_GOAL):
            tie_preferred.append(name)
    better.sort(key=lambda name: -by_name[name]["dev_final_mean"])
    tie_preferred.sort(key=lambda name: -by_name[name]["dev_final_mean"])
    return {"better": better, "tie_preferred": tie_preferred, "waiting": waiting,
            "complete": not waiting, "reference": reference}


def collect(results: Path) -> dict:
    from keras_advcal import experiment

    runs: dict = {}
    for variant in VARIANTS:
        for seed in (0, 1, 2):
            directory = run_dir(results, variant.name, seed)
            if not finished(directory):
                continue
            summary = json.loads((directory / "summary.json").read_text())
            history = experiment.read_history(directory)
            runs.setdefault(variant.name, {})[seed] = (summary, history)
    return runs


def analyse(results: Path) -> dict:
    runs = collect(results)
    es = [s.get("best_checkpoint", {}).get("final_worst_case_dev_adv_accuracy")
          for s, _ in runs.get("pgd_at", {}).values()]
    swa = [s.get("weight_average", {}).get("final_worst_case_dev_adv_accuracy")
           for s, _ in runs.get("pgd_at", {}).values()]
    es_mean, es_se = _mean_se(es)
    rows = []
    for variant in VARIANTS:
        seeds = runs.get(variant.name, {})
        if not seeds:
            continue
        final = _mean_se([s.get("final_worst_case_dev_adv_accuracy") for s, _ in seeds.values()])
        gap = _mean_se([s.get("smoothed_gap") for s, _ in seeds.values()])
        floor = variant.overrides.get("acc_floor", 0.9)
        shares = [late_shares(h, floor) for _, h in seeds.values()]
        on_floor = _mean_se([x["on_floor"] for x in shares])[0]
        kept = _mean_se([x["kept_or_failed"] for x in shares])[0]
        calibrated = variant.overrides.get("labels") == "calibrated"
        fits = [late_fits(h) for _, h in seeds.values()]
        medians = {key: (float(np.median([f[key] for f in fits if f[key] is not None]))
                         if calibrated and any(f[key] is not None for f in fits) else None)
                   for key in ("temperature", "rho")}
        per_seed = {str(seed): _pp(summary.get("final_worst_case_dev_adv_accuracy"))
                    for seed, (summary, _) in sorted(seeds.items())}
        rows.append({"variant": variant.name, "title": variant.title, "seeds": sorted(seeds),
                     "dev_final_by_seed": per_seed,
                     "dev_final_mean": _pp(final[0]), "dev_final_se": _pp(final[1]),
                     "dev_smoothed_gap_mean": _pp(gap[0]),
                     "pgd_at_es_dev_mean": _pp(es_mean),
                     "floor_bound_fraction": on_floor if calibrated else None,
                     "kept_or_failed_fraction": kept if calibrated else None,
                     "late_temperature_median": medians["temperature"],
                     "late_rho_median": medians["rho"]})
    extra = [{"variant": "pgd_at_es", "seeds": sorted(runs.get("pgd_at", {})),
              "dev_final_mean": _pp(es_mean), "dev_final_se": _pp(es_se),
              "dev_smoothed_gap_mean": None, "pgd_at_es_dev_mean": _pp(es_mean)},
             {"variant": "pgd_at_swa", "seeds": sorted(runs.get("pgd_at", {})),
              "dev_final_mean": _pp(_mean_se(swa)[0]), "dev_final_se": _pp(_mean_se(swa)[1]),
              "dev_smoothed_gap_mean": None, "pgd_at_es_dev_mean": _pp(es_mean)}]
    rows = rows[:1] + (extra if es_mean is not None else []) + rows[1:]
    default_row = next((r for r in rows if r["variant"] == FROZEN_DEFAULT), {})
    return {"rows": rows, "default": FROZEN_DEFAULT, "study_start": "default",
            "floor_bound_fraction": default_row.get("floor_bound_fraction"),
            "decision": decide(rows),
            "protocol": "benchmarks/development.py (module docstring)",
            "generated": time.strftime("%Y-%m-%d %H:%M:%S")}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["dev_final_mean"] is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    names = [r["variant"] for r in rows]
    means = [r["dev_final_mean"] for r in rows]
    errors = [r["dev_final_se"] or 0.0 for r in rows]
    ax.errorbar(means, range(len(rows)), xerr=errors, fmt="o", capsize=3)
    es = rows[0].get("pgd_at_es_dev_mean")
    if es is not None:
        ax.axvline(es, color="grey", linestyle="--", label="PGD-AT early-stopped")
        ax.axvline(es + 1.0, color="tab:red", linestyle=":", label="early-stopped + 1 point")
        ax.legend(fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("final robust accuracy on the development split, % (PGD-20 + APGD-CE)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(summary: dict) -> str:
    lines = [SECTION, "",
             "Made by `python benchmarks/development.py` (protocol in its docstring; "
             "`--report-only` rebuilds this section, "
             "`benchmarks/results/development/summary.json` and the figure). Robust "
             "accuracy in % on the 2,000-image development split (the test split is not "
             "read): final = worst case of PGD-20 and APGD-CE; smoothed gap of the "
             "PGD-10 curve on 1,000 of those images. *On the floor*: share of epochs "
             "60-120 whose chosen (T, rho) keeps the training agreement within 0.005 of "
             "the accuracy floor; *kept/failed*: share of those epochs whose fit was not "
             "used; *T, rho*: medians over those epochs and the seeds of the values used.",
             "",
             "| variant | seeds | final (mean ± se) | smoothed gap | on the floor | "
             "kept/failed | T | rho |", "|---|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        se = row["dev_final_se"]
        floor = row.get("floor_bound_fraction")
        kept = row.get("kept_or_failed_fraction")
        lines.append(f"| `{row['variant']}` | {','.join(map(str, row['seeds']))} | "
                     f"{_cell(row['dev_final_mean'])}{'' if se is None else ' ± ' + _cell(se)}"
                     f" | {_cell(row['dev_smoothed_gap_mean'])} | "
                     f"{'–' if floor is None else f'{100 * floor:.0f}%'} | "
                     f"{'–' if kept is None else f'{100 * kept:.0f}%'} | "
                     f"{_cell(row.get('late_temperature_median'), 2)} | "
                     f"{_cell(row.get('late_rho_median'), 2)} |")
    decision = summary.get("decision")
    if decision:
        if decision["better"]:
            verdict = (f"Variants that beat `{decision.get('reference', 'default')}` by "
                       "the protocol's rule: "
                       + ", ".join(f"`{name}`" for name in decision["better"]) + ".")
        elif decision.get("complete"):
            verdict = ("Every calibration row has its seeds: no variant beats "
                       f"`{decision.get('reference', 'default')}` by the protocol's rule, "
                       "and the study is complete.")
        else:
            verdict = (f"No variant beats `{decision.get('reference', 'default')}` by the "
                       "protocol's rule so far.")
        if decision.get("tie_preferred"):
            verdict += (" Tied with it, with a rule the accuracy floor decides in under "
                        "20% of late epochs (preferred on a tie when nothing is better): "
                        + ", ".join(f"`{name}`" for name in decision["tie_preferred"])
                        + ".")
        if decision["waiting"]:
            verdict += (" Rows without 2 seeds yet (no decision from them): "
                        + ", ".join(f"`{name}`" for name in decision["waiting"]) + ".")
        if FROZEN_DEFAULT != "default":
            verdict += (f" **Frozen default: `{FROZEN_DEFAULT}`** (the library's default "
                        "since the freeze; `default` is the study's starting point; the "
                        "freeze and why it came before every row had 2 seeds are in the "
                        "protocol's docstring).")
        lines += ["", verdict]
    lines += ["", "The training objectives (not candidates for the default):", ""]
    lines += [f"- {answer}" for answer in objective_answers(summary)]
    lines += ["", f"![final development robust accuracy per variant]"
              f"(figures/{FIGURE.name})", ""]
    return "\n".join(lines)


def paired_difference(row: dict, default: dict) -> float | None:
    """Mean over the seeds both rows have of the row's final accuracy minus the
    default's (None without a common seed).

    Example:

        >>> paired_difference({"dev_final_by_seed": {"0": 58.1}},
        ...                   {"dev_final_by_seed": {"0": 58.4, "1": 59.5}})
        -0.3
    """
    mine, theirs = row.get("dev_final_by_seed", {}), default.get("dev_final_by_seed", {})
    common = [seed for seed in mine if seed in theirs
              and mine[seed] is not None and theirs[seed] is not None]
    if not common:
        return None
    return round(float(np.mean([mine[seed] - theirs[seed] for seed in common])), 3)


def _mean_cell(row: dict) -> str:
    se = row.get("dev_final_se")
    return _cell(row.get("dev_final_mean")) + ("" if se is None else " ± " + _cell(se))


def _seeds_short(by_name: dict, names: tuple[str, ...]) -> list[str]:
    """The rows among ``names`` that do not have their planned seeds yet, each as
    ``name (k of n seeds)``."""
    short = []
    for name in names:
        have = len(by_name[name]["seeds"]) if name in by_name else 0
        if have < len(VARIANT[name].seeds):
            short.append(f"`{name}` ({have} of {len(VARIANT[name].seeds)} seeds)")
    return short


def objective_answers(summary: dict) -> list[str]:
    """The objectives issue's two questions, answered by the protocol's rules
    (``OVERFITTING_GAP``, ``REMOVED_GAP``; the larger standard error for AWP), or
    ``not decided yet`` while a row lacks its planned seeds.

    Example:

        >>> rows = [{"variant": "trades", "seeds": [0, 1, 2], "dev_final_mean": 61.0,
        ...          "dev_final_se": 0.3, "dev_smoothed_gap_mean": 0.5},
        ...         {"variant": "trades_calibrated", "seeds": [0, 1, 2],
        ...          "dev_final_mean": 61.5, "dev_final_se": 0.2,
        ...          "dev_smoothed_gap_mean": 0.1}]
        >>> print(objective_answers({"rows": rows})[0][53:])
        TRADES does not overfit here (a gap under 3 points), so there is nothing to remove: smoothed gap 0.5 points without calibration, 0.1 with; final robust accuracy 61.0 ± 0.3 and 61.5 ± 0.2.
    """
    by_name = {row["variant"]: row for row in summary["rows"]}
    questions = (
        ("Does calibration remove TRADES's robust overfitting?",
         ("trades", "trades_calibrated"), _trades_answer),
        ("Does calibrated + AWP beat AWP alone?", ("pgd_at_awp", "calibrated_awp"),
         _awp_answer))
    answers = []
    for question, names, answer in questions:
        short = _seeds_short(by_name, names)
        answers.append(f"{question} " + ("Not decided yet: " + ", ".join(short) + "."
                                         if short else answer(*(by_name[n] for n in names))))
    return answers


def _trades_answer(trades: dict, calibrated: dict) -> str:
    gap, calibrated_gap = (trades["dev_smoothed_gap_mean"],
                           calibrated["dev_smoothed_gap_mean"])
    numbers = (f"smoothed gap {gap:.1f} points without calibration, "
               f"{calibrated_gap:.1f} with; final robust accuracy {_mean_cell(trades)} "
               f"and {_mean_cell(calibrated)}")
    if gap < OVERFITTING_GAP:
        return (f"TRADES does not overfit here (a gap under {OVERFITTING_GAP:.0f} points), "
                f"so there is nothing to remove: {numbers}.")
    if calibrated_gap <= REMOVED_GAP:
        return f"Yes: {numbers}."
    return f"No, the gap stays above {REMOVED_GAP:.0f} point: {numbers}."


def _awp_answer(awp: dict, calibrated: dict) -> str:
    difference = paired_difference(calibrated, awp)
    margin = max(awp.get("dev_final_se") or 0.0, calibrated.get("dev_final_se") or 0.0)
    numbers = (f"{_mean_cell(calibrated)} against {_mean_cell(awp)}, {difference:+.1f} "
               f"points on the same seeds (the larger standard error is {margin:.1f}); "
               f"smoothed gaps {calibrated['dev_smoothed_gap_mean']:.1f} and "
               f"{awp['dev_smoothed_gap_mean']:.1f}")
    if difference > margin:
        return f"Yes: {numbers}."
    if difference < -margin:
        return f"No, AWP alone is better: {numbers}."
    return f"A tie: {numbers}."


#: The objectives page's rows, in order, with what each is.
OBJECTIVE_TABLE_ROWS = {
    "pgd_at": "PGD-AT, one-hot labels, final model",
    "pgd_at_es": "PGD-AT early-stopped on validation robust accuracy",
    "pgd_at_swa": "PGD-AT, uniform average of its per-epoch weights",
    FROZEN_DEFAULT: "calibrated default (PGD-AT objective)",
    **{name: VARIANT[name].title for name in OBJECTIVE_ROWS},
}


def objectives_table(summary: dict) -> str:
    """The objectives page's table (each objective with and without calibration, on
    the development split) and the two answers of :func:`objective_answers`.

    Example:

        >>> rows = [{"variant": "trades", "seeds": [0], "dev_final_mean": 61.0,
        ...          "dev_final_se": None, "dev_smoothed_gap_mean": 0.4}]
        >>> [line for line in objectives_table({"rows": rows}).splitlines()
        ...  if line.startswith("| `trades`")]
        ['| `trades` | TRADES (beta 6) | 0 | 61.0 | 0.4 |']
    """
    by_name = {row["variant"]: row for row in summary["rows"]}
    lines = ["Generated by `python benchmarks/development.py --report-only` from the runs "
             "finished so far (development split of Fashion-MNIST, 500 training images, "
             "small CNN, eps 0.1; final robust accuracy = worst case of PGD-20 and APGD-CE "
             "on 2,000 development images, in %; the test split is not read).", "",
             "| row | what it is | seeds | final robust accuracy (mean ± se) | "
             "smoothed gap |", "|---|---|---|---|---|"]
    for name, what in OBJECTIVE_TABLE_ROWS.items():
        row = by_name.get(name)
        if row is None:
            lines.append(f"| `{name}` | {what} | – | not run yet | – |")
            continue
        lines.append(f"| `{name}` | {what} | {','.join(map(str, row['seeds']))} | "
                     f"{_mean_cell(row)} | {_cell(row.get('dev_smoothed_gap_mean'))} |")
    lines.append("")
    lines += [f"- {answer}" for answer in objective_answers(summary)]
    return "\n".join(lines) + "\n"


#: The settings of the sensitivity study, each with the rows that change it alone and
#: the values they set (the starting default's value first).
KNOBS = {
    "acc_floor": ("0.9", {"floor_0.8": "0.8", "floor_0.95": "0.95"}),
    "swa_start_epoch": ("0", {"swa_start_10": "10", "swa_start_30": "30"}),
    "calibration size": ("500", {"calibration_250": "250", "calibration_1000": "1,000"}),
}
#: A setting whose rows all stay within this many points of the default is one to
#: leave alone; otherwise it is a hyperparameter (the calibration issue's rule).
KNOB_TOLERANCE = 0.5


def knob_verdicts(summary: dict) -> list[str]:
    """Per setting of the sensitivity study, whether the result moves by less than
    ``KNOB_TOLERANCE`` points over its range (paired with the starting default on the
    same seeds, each row with at least 2 seeds).

    Example:

        >>> rows = [{"variant": "default", "seeds": [0, 1],
        ...          "dev_final_by_seed": {"0": 58.0, "1": 59.0}},
        ...         {"variant": "floor_0.8", "seeds": [0, 1],
        ...          "dev_final_by_seed": {"0": 58.1, "1": 58.9}},
        ...         {"variant": "floor_0.95", "seeds": [0, 1],
        ...          "dev_final_by_seed": {"0": 57.0, "1": 58.2}}]
        >>> knob_verdicts({"rows": rows})[0]
        '`acc_floor` (0.8, 0.9, 0.95): moves by up to 0.9 point (0.95: -0.9): a hyperparameter, not a setting to leave alone; the default 0.9 was the best value tried.'
    """
    by_name = {row["variant"]: row for row in summary["rows"]}
    default = by_name.get("default")
    lines = []
    for knob, (default_value, rows) in KNOBS.items():
        if default is None or any(name not in by_name or len(by_name[name]["seeds"]) < 2
                                  for name in rows):
            lines.append(f"`{knob}`: not measured yet (a row without 2 seeds).")
            continue
        moves = {name: paired_difference(by_name[name], default) for name in rows}
        if any(move is None for move in moves.values()):
            lines.append(f"`{knob}`: not measured yet (no seed shared with the default).")
            continue
        values = sorted([default_value, *rows.values()],
                        key=lambda v: float(v.replace(",", "")))
        largest = max(moves, key=lambda name: abs(moves[name]))
        text = (f"`{knob}` ({', '.join(values)}): moves by up to "
                f"{abs(moves[largest]):.1f} point ({rows[largest]}: {moves[largest]:+.1f})")
        if abs(moves[largest]) < KNOB_TOLERANCE:
            text += ": a setting to leave alone."
        else:
            best = max(moves, key=moves.get)
            noise = max(by_name[best].get("dev_final_se") or 0.0,
                        default.get("dev_final_se") or 0.0)
            text += ": a hyperparameter, not a setting to leave alone; " + (
                f"the default {default_value} was the best value tried."
                if moves[best] <= 0 else
                f"{rows[best]} was better than the default {default_value} "
                f"({moves[best]:+.1f}{', within seed noise' if moves[best] <= noise else ''}).")
        lines.append(text)
    return lines


def sensitivity_table(summary: dict) -> str:
    """The method page's table: each setting changed alone, against the default on
    the same seeds, on the development split (what has run so far).

    Example:

        >>> rows = [{"variant": "default", "seeds": [0, 1], "dev_final_mean": 58.9,
        ...          "dev_final_se": 0.6, "dev_smoothed_gap_mean": 0.7,
        ...          "dev_final_by_seed": {"0": 58.4, "1": 59.5}},
        ...         {"variant": "floor_0.8", "seeds": [0], "dev_final_mean": 58.1,
        ...          "dev_final_se": None, "dev_smoothed_gap_mean": 0.1,
        ...          "dev_final_by_seed": {"0": 58.1}}]
        >>> [line for line in sensitivity_table({"rows": rows}).splitlines()
        ...  if line.startswith("| `acc_floor")]
        ['| `acc_floor=0.8` | 0 | 58.1 | -0.3 | 0.1 |']
    """
    by_name = {row["variant"]: row for row in summary["rows"]}
    default = by_name.get("default")
    if default is None:
        return "The calibration study has no run of the default yet.\n"
    lines = ["| setting changed | seeds | final robust accuracy (%) | minus the default, "
             "same seeds | smoothed gap |", "|---|---|---|---|---|",
             "| none (the study's starting default) | "
             f"{','.join(map(str, default['seeds']))} | "
             f"{_cell(default['dev_final_mean'])}"
             f"{'' if default['dev_final_se'] is None else ' ± ' + _cell(default['dev_final_se'])}"
             f" | – | {_cell(default['dev_smoothed_gap_mean'])} |"]
    for name in calibration_variants():
        setting = changed_setting(name)
        row = by_name.get(name)
        if row is None:
            continue
        se = row["dev_final_se"]
        difference = paired_difference(row, default)
        lines.append(f"| `{setting}` | {','.join(map(str, row['seeds']))} | "
                     f"{_cell(row['dev_final_mean'])}{'' if se is None else ' ± ' + _cell(se)}"
                     f" | {'–' if difference is None else f'{difference + 0.0:+.1f}'} | "
                     f"{_cell(row['dev_smoothed_gap_mean'])} |")
    missing = [changed_setting(name) for name in calibration_variants()
               if name not in by_name]
    text = ("Generated by `python benchmarks/development.py --report-only` from the runs "
            "finished so far (development split of Fashion-MNIST, 500 training images, "
            "small CNN, eps 0.1; final robust accuracy = worst case of PGD-20 and APGD-CE "
            "on 2,000 development images; the test split is not read). A setting counts "
            "as a knob to leave alone only if the result moves by less than 0.5 point "
            "over its range, with at least 2 seeds per row.\n\n" + "\n".join(lines) + "\n")
    if missing:
        text += "\nNot run yet: " + ", ".join(f"`{m}`" for m in missing) + ".\n"
    text += ("\nOver each setting's range (against the starting default, same seeds):\n\n"
             + "".join(f"- {line}\n" for line in knob_verdicts(summary)))
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT), default=list(VARIANT))
    add_run_options(parser, RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = args.results.resolve()
    jobs = plan(results, args.variants, args.seeds)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name:32s} {'done' if finished(job.run_dir) else 'to run'}")
        return 0
    status = {}
    if not args.report_only:
        results.mkdir(parents=True, exist_ok=True)
        status = execute(jobs, args.jobs, snapshot_code(results))
    summary = analyse(results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, FIGURE)
    update_section(RESULTS_MD, report(summary), heading=SECTION)
    replace_marked(METHOD_PAGE, sensitivity_table(summary), SENSITIVITY_MARKERS)
    replace_marked(OBJECTIVES_PAGE, objectives_table(summary), OBJECTIVES_MARKERS)
    print(report(summary))
    return 1 if any(code != 0 for code in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
