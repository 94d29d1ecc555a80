#!/usr/bin/env python
"""The study of recipes on the development split: which recipe should
``AdvCalTrainer(net, attack)`` give a user, chosen without reading the test split.

This docstring is the protocol, committed before any of its runs.

Why: on the first held-out round the calibrated default (PGD-AT with calibrated
targets, ``swa`` teacher) tied the better of early-stopped and weight-averaged PGD-AT,
and plain TRADES beat it by about 4 points of robust accuracy and 1.6 of clean
accuracy. Those test rows have been read, so this study chooses on the development
split only, and the choice is confirmed on held-out settings nobody has read (the
second round of ``benchmarks/heldout.py``).

Setting: the calibration study's (``benchmarks/development.py``'s ``BASE``):
Fashion-MNIST, data seed 0, 500 training images, 1,000 validation images, a
development split of 2,000 other images; small CNN (width 32, dense 256, no
BatchNorm); L-inf eps 0.1; training PGD-5 (step 0.05); Adam 1e-3, batch 64, 120
epochs; curve PGD-10 on the first 1,000 development images every 3 epochs. Runs write
``benchmarks/results/development/<variant>_s<seed>/`` beside the calibration study's.

Candidate rows (``row``: where it comes from), each at 3 training seeds (0, 1, 2):

* ``pgd_at``, ``pgd_at_es``, ``pgd_at_swa``: the calibration study's PGD-AT runs (final
  model, early-stopped checkpoint, weight average), already run.
* ``default``: the calibration study's frozen default (``selection_minimum``: PGD-AT +
  calibrated targets, ``swa`` teacher, KD loss, published rule, lowest NLL, floor 0.9),
  already run; ``default_swa``: the same recipe deploying its weight average (the
  uniform average of the per-epoch weights from epoch 0, which is the ``swa``
  teacher) instead of the student, from new runs ``default_averaged``.
* ``trades_hard``, ``trades_hard_es``, ``trades_hard_swa``: TRADES (beta 6, one-hot
  labels), final model, checkpoint with the best validation robust accuracy (early
  stopping), and weight average (BatchNorm statistics, where a model has them,
  re-estimated on adversarial examples), from new runs ``trades_hard``.
* ``trades_calibrated_clean``: TRADES with calibrated targets in its clean term, the
  fit on clean held-out inputs (the teacher's input in that term; the calibration
  study's ``trades_calibrated`` fitted on PGD examples), new runs.
* ``trades_awp`` and ``trades_calibrated_clean_awp``: the two TRADES rows above with
  adversarial weight perturbation. Gamma is chosen on the development split: seed 0 of
  TRADES + AWP at gamma 0.01 and 0.03 (``trades_awp_0.01``, ``trades_awp_0.03``: two
  and six times the published 0.005, which the calibration study found too small to
  move PGD-AT here; AWP's step is relative to each kernel's norm, so the value does not
  follow the weights' scale; a one-seed sweep is what this study can afford); the gamma with the
  higher final development robust accuracy (0.01 on a tie) gets seeds 1 and 2, and
  ``trades_calibrated_clean_awp`` uses it.

Reported beside them, not candidates: the calibration study's ``trades`` and
``trades_calibrated`` rows.

Order of the runs: seed-major over ``trades_hard``, ``trades_calibrated_clean`` and
``default_averaged``, then the AWP sweep, then the chosen gamma's seeds, so that the
rows the decision most likely needs finish first. (Amended after the first two runs
had started and before any had finished, because this machine runs slower than
planned with the second held-out round beside it: the sweep came at seed 0 before.)

Measured per row: final development robust accuracy (worst case of PGD-20 and
APGD-CE, 100 steps, on the 2,000 development images), clean development accuracy,
smoothed gap (final models only; best 3-evaluation moving average of the curve minus
the mean of its last 3 evaluations), and for calibrated rows the medians of the
(T, rho) used in epochs 60-120 and the share of those epochs whose fit sat on the
accuracy floor.

Decision rule (fixed here, before the runs): among the candidates whose mean clean
development accuracy is at least TRADES's (``trades_hard``) minus 1 point, take the
one with the highest mean final development robust accuracy; every candidate within
one standard error of it (the larger of the two) that is simpler wins instead, the
simplest first (then the higher mean). Simplicity, from simplest: (1) a final model
(``pgd_at``, ``trades_hard``); (2) an early-stopped checkpoint (``pgd_at_es``,
``trades_hard_es``); (3) a weight average (``pgd_at_swa``, ``trades_hard_swa``); (4)
AWP (``trades_awp``); (5) calibrated targets (``default``, ``trades_calibrated_clean``);
(6) calibrated targets deploying the average (``default_swa``); (7) calibrated targets
with AWP (``trades_calibrated_clean_awp``). The decision waits until every candidate
has its 3 seeds; a candidate that cannot run in time is reported as missing, and a
freeze made without it says so and is reopened if it later beats the winner by the same
rule. The winner becomes the library's default (``AdvCalTrainer``,
``CalibratedTeacher``, ``RunConfig``, ``advcal train``) in one commit that states these
numbers; if no calibrated row wins, the README says that calibration does not add to
the winner here.

Usage:

    python benchmarks/recipes.py --jobs 2          # the runs (resumable), then the report
    python benchmarks/recipes.py --report-only     # recipes.json + the RESULTS.md section
    python benchmarks/recipes.py --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from development import (FROZEN, RESULTS, RESULTS_MD, Variant, _mean_se, _pp,  # noqa: E402
                         late_fits, late_shares, run_dir, variant_jobs)
from robust_overfitting import (Job, add_run_options, execute, finished,  # noqa: E402
                                model_part, replace_marked, snapshot_code,
                                update_section)

SECTION = "## Recipe study on the development split"
README = Path(__file__).resolve().parents[1] / "README.md"
#: The README's generated account of the study sits between these markers.
README_MARKERS = ("<!-- recipe-study:start -->", "<!-- recipe-study:end -->")
#: Rows named in the README's account, in this order (where they have run).
README_ROWS = ("trades_hard", "trades_hard_es", "trades_hard_swa", "default",
               "default_swa", "trades_calibrated_clean", "trades_awp",
               "trades_calibrated_clean_awp", "pgd_at_es", "pgd_at_swa")
SUMMARY = RESULTS / "recipes.json"
SEEDS = (0, 1, 2)
CLEAN_MARGIN = 1.0  # points of clean accuracy a candidate may lose against TRADES
AWP_SWEEP = (0.01, 0.03)
TRADES = dict(objective="trades", beta=6.0)
AVERAGED = dict(checkpoint_best=True, weight_average=True)

#: Runs of this study (the AWP rows are added once the sweep has chosen gamma).
RUNS = [
    Variant("trades_hard", dict(labels="hard", **TRADES, **AVERAGED), SEEDS,
            "TRADES (beta 6), with its early-stopped checkpoint and weight average"),
    Variant("trades_calibrated_clean", dict(FROZEN, **TRADES), SEEDS,
            "TRADES, calibrated targets fitted on clean inputs"),
    Variant("default_averaged", dict(FROZEN, weight_average=True), SEEDS,
            "the default, also keeping its weight average"),
] + [Variant(f"trades_awp_{gamma}", dict(labels="hard", **TRADES, awp_gamma=gamma), (0,),
             f"TRADES + AWP {gamma} (the sweep)") for gamma in AWP_SWEEP]


@dataclasses.dataclass(frozen=True)
class Row:
    """A candidate (or reference) row: a model of a run variant's runs."""

    name: str
    variant: str
    model: str = "final"  # final, best or average
    rank: int | None = None  # simplicity (1 simplest); None: not a candidate


ROWS = [
    Row("pgd_at", "pgd_at", "final", 1),
    Row("pgd_at_es", "pgd_at", "best", 2),
    Row("pgd_at_swa", "pgd_at", "average", 3),
    Row("trades_hard", "trades_hard", "final", 1),
    Row("trades_hard_es", "trades_hard", "best", 2),
    Row("trades_hard_swa", "trades_hard", "average", 3),
    Row("trades_awp", "trades_awp", "final", 4),
    Row("default", "selection_minimum", "final", 5),
    Row("trades_calibrated_clean", "trades_calibrated_clean", "final", 5),
    Row("default_swa", "default_averaged", "average", 6),
    Row("trades_calibrated_clean_awp", "trades_calibrated_clean_awp", "final", 7),
    Row("trades", "trades"),
    Row("trades_calibrated", "trades_calibrated"),
]
ROW = {row.name: row for row in ROWS}


# ------------------------------------------------------------------------ planning
def chosen_gamma(results: Path) -> float | None:
    """The AWP sweep's gamma: the higher seed-0 final development robust accuracy
    (the smaller gamma on a tie); ``None`` until both sweep runs have finished."""
    scores = []
    for gamma in AWP_SWEEP:
        summary = _summary(run_dir(results, f"trades_awp_{gamma}", 0))
        if summary is None:
            return None
        scores.append((-summary["final_worst_case_dev_adv_accuracy"], gamma))
    return min(scores)[1]


def runs(results: Path) -> list[Variant]:
    """Every run variant, the AWP rows included once gamma is chosen (their seed 0
    is the sweep's run at that gamma, linked, not repeated)."""
    variants = list(RUNS)
    gamma = chosen_gamma(results)
    if gamma is not None:
        variants += [Variant("trades_awp", dict(labels="hard", **TRADES, awp_gamma=gamma),
                             (1, 2), f"TRADES + AWP {gamma}"),
                     Variant("trades_calibrated_clean_awp",
                             dict(FROZEN, **TRADES, awp_gamma=gamma), SEEDS,
                             f"TRADES, calibrated (clean fit) + AWP {gamma}")]
    return variants


def plan(results: Path, seeds: list[int] | None = None,
         variants: list[str] | None = None) -> list[Job]:
    """Seed-major over the run variants (or those named in ``variants``), in the
    protocol's order, the AWP rows last."""
    chosen = [v for v in runs(results) if variants is None or v.name in variants]
    jobs = variant_jobs(results, chosen,
                        lambda variant: [s for s in variant.seeds
                                         if seeds is None or s in seeds])
    # The AWP rows last (stable sort: seed-major within each group).
    return sorted(jobs, key=lambda job: "awp" in job.method.name)


# ------------------------------------------------------------------------ analysis
def _summary(directory: Path) -> dict | None:
    return json.loads((directory / "summary.json").read_text()) if finished(directory) else None


def _run_directories(results: Path, row: Row) -> dict[int, Path]:
    """The seeds' run directories of a row (the AWP row's seed 0 is the sweep's run at
    the chosen gamma)."""
    found = {seed: run_dir(results, row.variant, seed) for seed in SEEDS}
    if row.variant == "trades_awp":
        gamma = chosen_gamma(results)
        if gamma is not None:
            found[0] = run_dir(results, f"trades_awp_{gamma}", 0)
    return {seed: path for seed, path in found.items() if finished(path)}


def measure(results: Path, row: Row) -> dict:
    """One row's numbers (points), from its finished runs."""
    from keras_advcal import experiment

    robust, clean, gaps, fits, floors = [], [], [], [], []
    seeds = []
    for seed, directory in sorted(_run_directories(results, row).items()):
        summary = _summary(directory)
        part = model_part(summary, row.model)
        if part.get("final_worst_case_dev_adv_accuracy") is None:
            continue
        seeds.append(seed)
        robust.append(part["final_worst_case_dev_adv_accuracy"])
        clean.append(part.get("final_dev_clean_accuracy"))
        if row.model == "final":
            gaps.append(summary.get("smoothed_gap"))
        config = json.loads((directory / "config.json").read_text())
        if config.get("labels") == "calibrated":
            history = experiment.read_history(directory)
            fits.append(late_fits(history))
            floors.append(late_shares(history, config.get("acc_floor", 0.9))["on_floor"])
    mean, se = _mean_se(robust)
    entry = {"row": row.name, "variant": row.variant, "model": row.model,
             "rank": row.rank, "seeds": seeds,
             "robust_by_seed": [_pp(v) for v in robust],
             "robust_mean": _pp(mean), "robust_se": _pp(se),
             "clean_mean": _pp(_mean_se(clean)[0]),
             "smoothed_gap_mean": _pp(_mean_se(gaps)[0]) if gaps else None}
    if fits:
        for key in ("temperature", "rho"):
            values = [f[key] for f in fits if f[key] is not None]
            entry[f"late_{key}_median"] = float(np.median(values)) if values else None
        entry["floor_bound_fraction"] = _mean_se(floors)[0]
    return entry


def decide(rows: list[dict]) -> dict:
    """The protocol's decision rule (see the docstring).

    Example:

        >>> rows = [dict(row="trades_hard", rank=1, seeds=[0, 1, 2], robust_mean=61.0,
        ...              robust_se=0.5, clean_mean=80.0),
        ...         dict(row="trades_hard_swa", rank=3, seeds=[0, 1, 2], robust_mean=61.4,
        ...              robust_se=0.3, clean_mean=79.5),
        ...         dict(row="default", rank=5, seeds=[0, 1, 2], robust_mean=63.0,
        ...              robust_se=0.4, clean_mean=77.0)]
        >>> result = decide(rows)
        >>> result["winner"], result["top"], result["excluded_by_clean"]
        ('trades_hard', 'trades_hard_swa', ['default'])
    """
    candidates = [r for r in rows if r.get("rank") is not None]
    present = {r["row"]: r for r in candidates}
    waiting = [row.name for row in ROWS if row.rank is not None
               and len(present.get(row.name, {}).get("seeds", [])) < len(SEEDS)]
    complete = [r for r in candidates if len(r["seeds"]) >= len(SEEDS)]
    trades = next((r for r in complete if r["row"] == "trades_hard"), None)
    if trades is None:
        return {"winner": None, "top": None, "waiting": waiting, "complete": False,
                "excluded_by_clean": [], "within_one_se": []}
    floor = trades["clean_mean"] - CLEAN_MARGIN
    eligible = [r for r in complete if r["clean_mean"] is not None and r["clean_mean"] >= floor]
    excluded = [r["row"] for r in complete if r not in eligible]
    top = max(eligible, key=lambda r: r["robust_mean"])
    within = [r for r in eligible
              if r["robust_mean"] >= top["robust_mean"] - max(top["robust_se"] or 0.0,
                                                              r["robust_se"] or 0.0)]
    winner = min(within, key=lambda r: (r["rank"], -r["robust_mean"]))
    return {"winner": winner["row"], "top": top["row"], "waiting": waiting,
            "complete": not waiting, "clean_floor": round(floor, 3),
            "excluded_by_clean": excluded,
            "within_one_se": [r["row"] for r in within]}


def analyse(results: Path) -> dict:
    rows = [measure(results, row) for row in ROWS]
    rows = [r for r in rows if r["seeds"]]
    return {"rows": rows, "decision": decide(rows), "awp_gamma": chosen_gamma(results),
            "protocol": "benchmarks/recipes.py (module docstring)",
            "generated": time.strftime("%Y-%m-%d %H:%M:%S")}


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(summary: dict) -> str:
    decision = summary["decision"]
    lines = [SECTION, "",
             "Made by `python benchmarks/recipes.py` (protocol and decision rule in its "
             "docstring, committed before its runs; `--report-only` rebuilds this section "
             "and `benchmarks/results/development/recipes.json`). Development split only "
             "(Fashion-MNIST, 500 training images, small CNN, eps 0.1): *robust* = worst "
             "case of PGD-20 and APGD-CE on the 2,000 development images, in %; *clean* "
             "on the same images; *gap*: smoothed gap of the PGD-10 curve (final models); "
             "*T, rho*: medians over epochs 60-120 and the seeds of the values used; "
             "*floor*: share of those epochs whose fit sat on the accuracy floor. "
             f"AWP gamma chosen by the sweep: {summary.get('awp_gamma') or 'not yet'}.", "",
             "| row | simplicity | seeds | robust (mean ± se) | clean | gap | T | rho | floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        robust = _cell(r["robust_mean"]) + ("" if r["robust_se"] is None
                                            else " ± " + _cell(r["robust_se"]))
        floor = r.get("floor_bound_fraction")
        lines.append(
            f"| `{r['row']}` | {r['rank'] or 'reference'} | "
            f"{','.join(map(str, r['seeds']))} | {robust} | {_cell(r['clean_mean'])} | "
            f"{_cell(r['smoothed_gap_mean'])} | {_cell(r.get('late_temperature_median'), 2)} "
            f"| {_cell(r.get('late_rho_median'), 2)} | "
            f"{'–' if floor is None else f'{100 * floor:.0f}%'} |")
    lines.append("")
    if decision["winner"] is None:
        lines.append("Decision: not yet (TRADES's three seeds are needed first).")
    else:
        text = (f"Decision by the rule: **`{decision['winner']}`** (highest robust accuracy "
                f"among the rows within {CLEAN_MARGIN:.0f} point of TRADES's clean "
                f"accuracy: `{decision['top']}`; within one standard error of it: "
                + ", ".join(f"`{n}`" for n in decision["within_one_se"])
                + "; the simplest of those wins).")
        if decision["excluded_by_clean"]:
            text += (" Excluded by clean accuracy (below "
                     f"{decision['clean_floor']:.1f}%): "
                     + ", ".join(f"`{n}`" for n in decision["excluded_by_clean"]) + ".")
        if decision["waiting"]:
            text += (" **Provisional**: rows without their 3 seeds: "
                     + ", ".join(f"`{n}`" for n in decision["waiting"]) + ".")
        lines.append(text)
    return "\n".join(lines) + "\n"


def readme_block(summary: dict) -> str:
    """The README's short account of the study: the decision and the rows behind it.

    Example:

        >>> text = readme_block({"rows": [], "decision": {"winner": None}})
        >>> "not decided yet" in text
        True
    """
    decision = summary["decision"]
    head = ("**How the default recipe was chosen** (generated by `python "
            "benchmarks/recipes.py --report-only`; the rule was fixed before the runs; "
            "Fashion-MNIST, 500 training images, a small CNN, eps 0.1; final robust "
            "accuracy against the worst case of PGD-20 and APGD-CE on 2,000 development "
            "images, never the test split; mean ± standard error over seeds): ")
    if decision.get("winner") is None:
        return head + "not decided yet.\n"
    by_name = {r["row"]: r for r in summary["rows"]}
    parts = []
    for name in README_ROWS:
        row = by_name.get(name)
        if row is None:
            continue
        se = "" if row["robust_se"] is None else f" ± {row['robust_se']:.1f}"
        seeds = len(row["seeds"])
        parts.append(f"`{name}` {row['robust_mean']:.1f}{se}% robust, "
                     f"{row['clean_mean']:.1f}% clean"
                     + ("" if seeds == len(SEEDS) else f" ({seeds} of {len(SEEDS)} seeds)"))
    text = head + "; ".join(parts) + ". "
    text += (f"The rule (the highest robust accuracy among the rows within "
             f"{CLEAN_MARGIN:.0f} point of TRADES's clean accuracy, the simplest within one "
             f"standard error) picked **`{decision['winner']}`**")
    if decision["excluded_by_clean"]:
        text += (", with " + ", ".join(f"`{n}`" for n in decision["excluded_by_clean"])
                 + f" out for clean accuracy below {decision['clean_floor']:.1f}%")
    text += "."
    if decision["waiting"]:
        text += (" Decided before these rows had their 3 seeds (reopened if one of them "
                 "beats it by the same rule): "
                 + ", ".join(f"`{n}`" for n in decision["waiting"]) + ".")
    return text + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these run variants (default: every one)")
    add_run_options(parser, RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = args.results.resolve()
    status: dict = {}
    if args.dry_run:
        for job in plan(results, args.seeds, args.variants):
            print(f"{job.name:36s} {'done' if finished(job.run_dir) else 'to run'}")
        return 0
    if not args.report_only:
        results.mkdir(parents=True, exist_ok=True)
        code = snapshot_code(results)
        # Twice: the AWP rows are planned once the sweep has chosen gamma.
        for _ in range(2):
            status.update(execute(plan(results, args.seeds, args.variants), args.jobs, code))
    summary = analyse(results)
    SUMMARY.write_text(json.dumps(summary, indent=2))
    update_section(RESULTS_MD, report(summary), heading=SECTION)
    if README_MARKERS[0] in README.read_text():
        replace_marked(README, readme_block(summary), README_MARKERS)
    print(report(summary))
    return 1 if any(code != 0 for code in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
