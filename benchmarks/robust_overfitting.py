#!/usr/bin/env python
"""The robust-overfitting benchmark of issue 4: does calibrated labelling remove it?

Protocol (the defaults of :class:`keras_advcal.experiment.RunConfig`): Fashion-MNIST, a
fixed 500-image training subset, 500 validation images from the rest of the training
pool (teacher, calibration and early stopping only), a fixed 2,000-image test subset;
small CNN conv32-pool-conv64-pool-dense256-10 without BatchNorm; L-inf eps 0.1;
training PGD-5 (step 0.05, random start); test PGD-10 (step 0.025) every 3 epochs;
final PGD-20; Adam 1e-3 constant, batch 64, 120 epochs.

Every method is one or more independent ``advcal train`` processes (two at a time,
one TensorFlow thread each), each writing a run directory under
``benchmarks/results/robust_overfitting/<method>_s<seed>/``. Runs whose
``summary.json`` exists are skipped, so the script resumes where it stopped. At the
end (or with ``--report-only``) it rewrites the "## Robust overfitting (issue 4)"
section of ``benchmarks/RESULTS.md`` and the figures in ``benchmarks/figures/``.

Usage:

    python benchmarks/robust_overfitting.py                  # everything (hours)
    python benchmarks/robust_overfitting.py --methods pgd_at calibrated --seeds 0
    python benchmarks/robust_overfitting.py --report-only    # table + figures only
    python benchmarks/robust_overfitting.py --quick          # smoke test (minutes)

``--quick`` uses tiny settings and writes under ``<results>/quick/`` (its own report
there; RESULTS.md is not touched).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import hashlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_RESULTS = BENCH / "results" / "robust_overfitting"
RESULTS_MD = BENCH / "RESULTS.md"
FIGURES = BENCH / "figures"
SECTION = "## Robust overfitting (issue 4)"
CURVES_PNG = "robust_overfitting_curves.png"
CALIBRATION_PNG = "robust_overfitting_calibration.png"

# Acceptance thresholds of issue 4, point 4 (fractions).
MAX_SMOOTHED_GAP = 0.01
PGD_AT_SEVERAL_POINTS = 0.03
MAX_CLEAN_DROP = 0.01


@dataclasses.dataclass
class Method:
    """One row of the table: a name, what it is, and its RunConfig overrides."""

    name: str
    title: str
    overrides: dict
    seeds: tuple[int, ...] = (0,)
    needs_pgd_at: bool = False  # the two-stage recipe reuses the PGD-AT run
    derived: bool = False  # a row computed from another method's runs


METHODS = [
    Method("pgd_at", "PGD-AT (hard labels)", dict(labels="hard", checkpoint_best=True),
           seeds=(0, 1)),
    Method("pgd_at_es", "PGD-AT + early stopping (best val, Rice et al.)", {}, seeds=(0, 1),
           derived=True),
    Method("calibrated", "calibrated: best teacher, kd, published, 1-SE selection",
           dict(labels="calibrated", teacher="best", loss_form="kd", rule="published",
                selection="one_standard_error"),
           seeds=(0, 1)),
    Method("calibrated_minimum", "calibrated: as above, lowest-NLL selection (literal rule)",
           dict(labels="calibrated", teacher="best", loss_form="kd", rule="published",
                selection="minimum")),
    Method("fixed_kd", "fixed targets T=2, rho=0.5, best teacher",
           dict(labels="calibrated", teacher="best", loss_form="kd", rule="fixed",
                fixed_temperature=2.0, fixed_rho=0.5)),
    Method("two_stage", "two-stage: PGD-AT best as teacher, calibrated once",
           dict(labels="calibrated", teacher="fixed", loss_form="kd", rule="published"),
           needs_pgd_at=True),
    Method("calibrated_swa",
           "calibrated: swa teacher, kd, published, 1-SE selection (issue 4 default)",
           dict(labels="calibrated", teacher="swa", loss_form="kd", rule="published",
                selection="one_standard_error"),
           seeds=(0, 1)),
    Method("calibrated_ema", "calibrated: ema teacher",
           dict(labels="calibrated", teacher="ema", loss_form="kd", rule="published")),
    Method("calibrated_soft", "calibrated: soft loss form",
           dict(labels="calibrated", teacher="best", loss_form="soft", rule="published")),
    Method("calibrated_confidence", "calibrated: confidence rule",
           dict(labels="calibrated", teacher="best", loss_form="kd", rule="confidence")),
    Method("adr", "ADR-style (EMA 0.995 on clean x, annealed T, rho)",
           dict(labels="adr", ema_decay=0.995)),
]
BY_NAME = {method.name: method for method in METHODS}
DEFAULT_METHOD = "calibrated_swa"
# Runs first: the two rows the acceptance test needs most, then the second seeds.
PRIORITY = [("pgd_at", 0), ("calibrated_swa", 0), ("pgd_at", 1), ("calibrated_swa", 1)]

# Run on the final model of every run (and on PGD-AT's early-stopped checkpoint),
# besides PGD-20: the evaluation module's APGD-CE (100 steps).
FINAL_ATTACKS = "apgd-ce"
QUICK = dict(subset=200, validation_size=200, test_size=200, width=8, dense=32,
             train_steps=2, eval_steps=3, eval_every=1, final_steps=3,
             final_attacks=FINAL_ATTACKS, final_attack_steps=5)
QUICK_EPOCHS = 3


# ------------------------------------------------------------------------ planning
@dataclasses.dataclass
class Job:
    method: Method
    seed: int
    run_dir: Path
    config: dict
    after: str | None = None  # run directory name that must finish first
    train_only: bool = False  # stop after training (``advcal train --train-only``)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def dependency_dir(self) -> Path | None:
        """The run directory that must finish first (``after``), if any."""
        return None if self.after is None else self.run_dir.parent / self.after


def run_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"


def plan(methods: list[str], seeds: list[int] | None, epochs: int, results: Path,
         quick: bool) -> list[Job]:
    """The runs to make, in the order they should start."""
    jobs: list[Job] = []
    for name in methods:
        method = BY_NAME[name]
        if method.derived:
            continue
        for seed in (seeds if seeds is not None else method.seeds):
            run_dir = results / run_name(name, seed)
            # The objective and the weight perturbation are named: the library's default
            # recipe may change, this benchmark's rows do not.
            config = dict(dict(objective="pgd_at", awp_gamma=0.0), **method.overrides,
                          epochs=epochs,
                          seed=seed, out=str(run_dir), verbose=2, threads=1,
                          final_attacks=FINAL_ATTACKS)
            if quick:
                config.update(QUICK)
            after = None
            if method.needs_pgd_at:
                pgd = results / run_name("pgd_at", seed)
                config.update(teacher_model=str(pgd / "best.keras"),
                              surrogate_model=str(pgd / "model.keras"))
                after = pgd.name
            jobs.append(Job(method, seed, run_dir, config, after))
    rank = {run_name(m, s): i for i, (m, s) in enumerate(PRIORITY)}
    jobs.sort(key=lambda job: (rank.get(job.name, len(rank)),
                               [m.name for m in METHODS].index(job.method.name), job.seed))
    return jobs


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def trained(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has finished training (its final evaluation may
    not have run: ``advcal train --train-only``)."""
    return (run_dir / "training_done.json").is_file() and (run_dir / "history.json").is_file()


def done(job: Job) -> bool:
    """Whether ``job`` has nothing left to do: finished, or trained if it stops there."""
    return finished(job.run_dir) or (job.train_only and trained(job.run_dir))


def _environment(code_dir: Path | None) -> dict:
    env = dict(os.environ)
    env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if code_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(code_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def model_part(summary: dict, model: str) -> dict:
    """The part of a run's ``summary.json`` about one of its models: ``"final"`` (the
    summary itself), ``"best"`` (the early-stopped checkpoint) or ``"average"`` (the
    weight average); empty when the run did not keep that model.

    Example:

        >>> model_part({"a": 1, "weight_average": {"a": 2}}, "average")
        {'a': 2}
    """
    if model == "final":
        return summary
    return summary.get({"best": "best_checkpoint", "average": "weight_average"}[model]) or {}


def snapshot_code(results: Path) -> Path:
    """Copies the package to a temporary directory that every run imports, so that all
    runs use the same code even while the working tree changes (an edit to a source
    file during a run can also break TensorFlow's AutoGraph, which re-reads the source
    when it traces). Records the code version in ``results/code_version.json``."""
    target = Path(tempfile.mkdtemp(prefix="advcal_bench_"))
    shutil.copytree(ROOT / "keras_advcal", target / "keras_advcal",
                    ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((target / "keras_advcal").rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    version = {"git_head": git("rev-parse", "HEAD"),
               "uncommitted_package_files": git("status", "--short", "keras_advcal").splitlines(),
               "package_sha256": digest.hexdigest(),
               "snapshot_taken": time.strftime("%Y-%m-%d %H:%M:%S")}
    versions_file = results / "code_version.json"
    history = json.loads(versions_file.read_text()) if versions_file.is_file() else []
    history.append(version)
    versions_file.write_text(json.dumps(history, indent=2))
    return target


def open_run_log(run_dir: Path):
    """``run_dir/train.log`` opened for a new ``advcal train`` process of the run: appended
    to, so that a run resumed for its final attacks (or after an interruption) keeps the
    output of its training; a line marks where each process starts."""
    log = open(run_dir / "train.log", "a")
    if log.tell():
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: the run resumes; the output "
                  "of its earlier processes is above ===\n")
        log.flush()
    return log


def execute(jobs: list[Job], parallel: int, code_dir: Path | None = None) -> dict[str, int]:
    """Runs ``jobs`` as ``advcal train`` processes, ``parallel`` at a time, in order;
    a job waits for the run it depends on. Returns the exit status of each job run.
    With ``code_dir`` the processes import ``keras_advcal`` from there."""
    pending = [job for job in jobs if not done(job)]
    for job in jobs:
        if done(job):
            print(f"[skip] {job.name}: "
                  f"{'summary.json' if finished(job.run_dir) else 'training_done.json'} exists",
                  flush=True)
    running: dict[str, tuple[Job, subprocess.Popen, float, object]] = {}
    status: dict[str, int] = {}
    while pending or running:
        for name, (job, process, started, log) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            status[name] = code
            minutes = (time.time() - started) / 60
            word = ("trained" if job.train_only else "done") if code == 0 else f"FAILED (exit {code}; see {job.run_dir}/train.log)"
            print(f"[{time.strftime('%H:%M:%S')}] {name} {word} in {minutes:.1f} min",
                  flush=True)
        for job in list(pending):
            if len(running) >= parallel:
                break
            if job.after is not None:
                dependency = job.dependency_dir
                if not finished(dependency):
                    if job.after in running or any(p.name == job.after for p in pending):
                        continue  # wait for it
                    pending.remove(job)
                    status[job.name] = -1
                    print(f"[skip] {job.name}: needs the finished run {dependency}",
                          flush=True)
                    continue
            pending.remove(job)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            config_file = job.run_dir / "config.json"
            config_file.write_text(json.dumps(job.config, indent=2))
            log = open_run_log(job.run_dir)
            command = [sys.executable, "-m", "keras_advcal", "train", "--config",
                       str(config_file)] + (["--train-only"] if job.train_only else [])
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=_environment(code_dir), cwd=code_dir or ROOT)
            running[job.name] = (job, process, time.time(), log)
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name} (pid {process.pid})",
                  flush=True)
        if pending or running:
            time.sleep(5)
    return status


# ------------------------------------------------------------------------- report
def _load(run_dir: Path) -> tuple[dict, dict] | None:
    from keras_advcal import experiment

    try:
        summary = experiment.read_summary(run_dir)
        history = (experiment.read_history(run_dir) if (run_dir / "history.json").is_file()
                   else {})
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # not started, or caught mid-write
    return summary, history


def collect(results: Path) -> dict[tuple[str, int], tuple[dict, dict]]:
    """Summaries and histories of every run directory under ``results``."""
    found = {}
    for method in METHODS:
        if method.derived:
            continue
        for run_dir in sorted(results.glob(f"{method.name}_s*")):
            suffix = run_dir.name[len(method.name) + 2:]
            if not suffix.isdigit():
                continue
            loaded = _load(run_dir)
            if loaded is not None:
                found[(method.name, int(suffix))] = loaded
    return found


def _pct(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}"


def _last(history: dict, key: str):
    from keras_advcal import experiment

    pairs = experiment.records(history, key)
    return pairs[-1][1] if pairs else None


def table_rows(runs: dict) -> list[dict]:
    """One dict per table row (derived early-stopping rows included)."""
    rows = []
    for method in METHODS:
        source = "pgd_at" if method.derived else method.name
        seeds = sorted(seed for (name, seed) in runs if name == source)
        for seed in seeds:
            summary, history = runs[(source, seed)]
            epochs = len(history.get("epoch", []))
            if method.derived:
                checkpoint = summary.get("best_checkpoint")
                if not checkpoint:
                    continue
                value = checkpoint.get("test_adv_accuracy")
                rows.append(dict(
                    method=method.name, title=method.title, seed=seed, finished=True,
                    best=value, best_epoch=checkpoint.get("epoch"), final=value, gap=0.0,
                    smoothed_gap=None, early_stopped=value,
                    clean=checkpoint.get("test_accuracy"),
                    train_robust=checkpoint.get("final_train_adv_accuracy"),
                    pgd20=checkpoint.get("final_pgd20_test_adv_accuracy"),
                    worst=checkpoint.get("final_worst_case_test_adv_accuracy"),
                    minutes=None, epochs=checkpoint.get("epoch")))
                continue
            rows.append(dict(
                method=method.name, title=method.title, seed=seed,
                finished=bool(summary.get("finished")),
                best=summary.get("best_test_adv_accuracy"), best_epoch=summary.get("best_epoch"),
                final=summary.get("final_test_adv_accuracy"), gap=summary.get("gap"),
                smoothed_gap=summary.get("smoothed_gap"),
                early_stopped=summary.get("early_stopped_test_adv_accuracy"),
                clean=summary.get("final_test_clean_accuracy",
                                  summary.get("final_test_accuracy")),
                clean_at_best=summary.get("test_accuracy_at_best"),
                train_robust=summary.get("final_train_adv_accuracy"),
                pgd20=summary.get("final_pgd20_test_adv_accuracy"),
                worst=summary.get("final_worst_case_test_adv_accuracy"),
                minutes=(summary["wall_seconds"] / 60 if summary.get("wall_seconds")
                         else None),
                epochs=epochs, temperature=summary.get("final_temperature",
                                                        _last(history, "temperature")),
                rho=summary.get("final_rho", _last(history, "rho"))))
    return rows


def markdown_table(rows: list[dict], total_epochs: int | None) -> str:
    header = ("| method | seed | best robust test (epoch) | final | gap | smoothed gap | "
              "early-stopped | final clean | final train robust | final PGD-20 | final "
              "PGD-20 + APGD-CE | final T / rho | wall time (min) |")
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        note = "" if row["finished"] else f" (running: {row['epochs']} epochs)"
        best = (f"{_pct(row['best'])} ({row['best_epoch']})" if row["best"] is not None
                else "–")
        calibration = ("–" if row.get("rho") is None else
                       f"{row['temperature']:.2f} / {row['rho']:.2f}")
        minutes = "–" if row["minutes"] is None else f"{row['minutes']:.0f}"
        lines.append(
            f"| {row['title']}{note} | {row['seed']} | {best} | {_pct(row['final'])} | "
            f"{_pct(row['gap'])} | {_pct(row['smoothed_gap'])} | {_pct(row['early_stopped'])} | "
            f"{_pct(row['clean'])} | {_pct(row['train_robust'])} | {_pct(row['pgd20'])} | "
            f"{_pct(row.get('worst'))} | {calibration} | {minutes} |")
    return "\n".join(lines)


def criterion(cal: dict, pgd: dict) -> dict[str, tuple[bool, str]]:
    """Issue 4's checks (a)-(d) of one calibrated run against the PGD-AT run of its seed."""
    es = (pgd.get("best_checkpoint") or {}).get("test_adv_accuracy")
    return {
        "a": (cal["final_test_adv_accuracy"] >= pgd["best_test_adv_accuracy"],
              f"final {_pct(cal['final_test_adv_accuracy'])} vs PGD-AT best "
              f"{_pct(pgd['best_test_adv_accuracy'])} (early-stopped {_pct(es)})"),
        "b": (cal["smoothed_gap"] <= MAX_SMOOTHED_GAP,
              f"smoothed gap {_pct(cal['smoothed_gap'])}"),
        "c": (pgd["smoothed_gap"] >= PGD_AT_SEVERAL_POINTS,
              f"PGD-AT smoothed gap {_pct(pgd['smoothed_gap'])}"),
        "d": (cal["final_test_clean_accuracy"] >= pgd["test_accuracy_at_best"]
              - MAX_CLEAN_DROP,
              f"final clean {_pct(cal['final_test_clean_accuracy'])} vs PGD-AT clean at "
              f"its best epoch {_pct(pgd['test_accuracy_at_best'])}"),
    }


def _finished_pairs(runs: dict, method: str) -> list[tuple[int, dict, dict]]:
    """(seed, calibrated summary, PGD-AT summary) for each seed where both finished."""
    pairs = []
    for (name, seed), (summary, _) in sorted(runs.items()):
        pgd = runs.get(("pgd_at", seed))
        if (name == method and pgd is not None and summary.get("finished")
                and pgd[0].get("finished")):
            pairs.append((seed, summary, pgd[0]))
    return pairs


def criterion_table(runs: dict) -> list[str]:
    """Every finished label method against the criterion, one row per seed."""
    lines = ["| method | seed | (a) final >= PGD-AT best | (b) smoothed gap <= 1 | "
             "(c) PGD-AT gap >= 3 | (d) clean drop <= 1 | final >= PGD-AT early-stopped "
             "| meets (a)-(d) |", "|" + "---|" * 8]
    for method in METHODS:
        if method.name == "pgd_at" or method.derived:
            continue
        for seed, cal, pgd in _finished_pairs(runs, method.name):
            checks = criterion(cal, pgd)
            es = (pgd.get("best_checkpoint") or {}).get("test_adv_accuracy")
            versus_es = ("–" if es is None else
                         f"{'yes' if cal['final_test_adv_accuracy'] >= es else 'no'} "
                         f"({_pct(cal['final_test_adv_accuracy'])} vs {_pct(es)})")
            cells = [f"{'ok' if ok else 'FAILS'}: {text}" for ok, text in checks.values()]
            met = all(ok for ok, _ in checks.values())
            lines.append(f"| `{method.name}` | {seed} | " + " | ".join(cells)
                         + f" | {versus_es} | {'**yes**' if met else 'no'} |")
    return lines


def acceptance(runs: dict) -> str:
    """Issue 4, point 4, computed per seed for the default configuration, then for
    every other finished configuration."""
    default = BY_NAME[DEFAULT_METHOD]
    pairs = _finished_pairs(runs, DEFAULT_METHOD)
    if not pairs:
        return (f"Not evaluated yet: it needs finished `pgd_at` and `{DEFAULT_METHOD}` runs "
                "with the same seed.")
    lines = [
        f"Criterion (issue 4, point 4), per seed: the default configuration "
        f"(`{DEFAULT_METHOD}`: {default.title.split(': ', 1)[-1].replace(' (issue 4 default)', '')}) "
        "must (a) end at a final robust test "
        "accuracy at least PGD-AT's best one (the peak of its PGD-10 curve; its early-"
        "stopped value is also shown), (b) with a smoothed gap of at most "
        f"{100 * MAX_SMOOTHED_GAP:.0f} point, (c) while PGD-AT's smoothed gap is several "
        f"points (at least {100 * PGD_AT_SEVERAL_POINTS:.0f}), and (d) with a final clean "
        f"accuracy no more than {100 * MAX_CLEAN_DROP:.0f} point below PGD-AT's clean "
        "accuracy at PGD-AT's best epoch.", ""]
    verdicts = []
    for seed, cal, pgd in pairs:
        checks = criterion(cal, pgd)
        ok = all(passed for passed, _ in checks.values())
        verdicts.append(ok)
        failed = [key for key, (passed, _) in checks.items() if not passed]
        detail = "; ".join(f"({key}) {text} {'ok' if passed else 'FAILS'}"
                           for key, (passed, text) in checks.items())
        lines.append(f"- seed {seed}: **{'meets' if ok else 'does not meet'}** the "
                     f"criterion{'' if ok else ' (fails ' + ', '.join(failed) + ')'}: "
                     f"{detail}.")
    lines.append("")
    if all(verdicts) and len(verdicts) >= 2:
        lines.append(f"**Verdict: the default configuration meets the acceptance "
                     f"criterion on all {len(verdicts)} seeds.**")
    elif all(verdicts):
        lines.append("**Verdict so far: met on the finished seed; at least 2 seeds are "
                     "required.**")
    else:
        lines.append(f"**Verdict: the default configuration does not meet the acceptance "
                     f"criterion on {verdicts.count(False)} of {len(verdicts)} seed(s).**")
    lines += ["", "Every finished configuration against the same checks (the second-last "
              "column reads (a) against PGD-AT's early-stopped model instead of the peak of "
              "its test curve, which is chosen on the test set):", ""]
    lines += criterion_table(runs)
    finals = {name: summary["final_test_adv_accuracy"]
              for (name, seed), (summary, _) in runs.items()
              if seed == 0 and summary.get("finished") and name not in ("pgd_at",)
              and summary.get("final_test_adv_accuracy") is not None}
    if finals:
        best = max(finals, key=finals.get)
        lines.append("")
        lines.append(f"Highest final robust test accuracy at seed 0 among the label methods: "
                     f"`{best}` ({_pct(finals[best])}%)"
                     + (" — the default." if best == DEFAULT_METHOD else
                        f"; the default `{DEFAULT_METHOD}` has "
                        f"{_pct(finals.get(DEFAULT_METHOD))}%."))
    return "\n".join(lines)


def plot_figures(runs: dict, figures: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_advcal import experiment

    figures.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {m.name: colors[i % len(colors)] for i, m in
                enumerate(m for m in METHODS if not m.derived)}
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for (name, seed), (_, history) in sorted(runs.items()):
        pairs = experiment.records(history, "test_adv_accuracy")
        if not pairs:
            continue
        epochs, values = zip(*pairs)
        ax.plot(np.add(epochs, 1), values, color=color_of[name],
                linestyle="-" if seed == 0 else "--", linewidth=1.6 if seed == 0 else 1.0,
                label=f"{name} (seed {seed})")
    ax.set(xlabel="epoch", ylabel="robust test accuracy (PGD-10, 2,000 images)",
           title="Robust test accuracy per epoch (Fashion-MNIST, 500 images, eps 0.1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    curves = figures / CURVES_PNG
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for (name, seed), (_, history) in sorted(runs.items()):
        for ax, key in zip(axes, ("temperature", "rho", "teacher_adv_accuracy")):
            pairs = experiment.records(history, key)
            if pairs:
                epochs, values = zip(*pairs)
                ax.plot(np.add(epochs, 1), values, color=color_of[name],
                        linestyle="-" if seed == 0 else "--",
                        linewidth=1.4 if seed == 0 else 0.9, label=f"{name} (seed {seed})")
    titles = ("temperature T", "rho", "teacher's own robust validation accuracy (PGD-10)")
    for ax, title in zip(axes, titles):
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    calibration = figures / CALIBRATION_PNG
    fig.savefig(calibration, dpi=110)
    plt.close(fig)
    return curves, calibration


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    return (f"{cpu}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, Keras "
            f"{keras.__version__}; two runs at a time, one thread each")


def report(results: Path, results_md: Path | None, figures: Path, epochs: int,
           quick: bool) -> str:
    """Builds the section text, writes the figures, and updates ``results_md``."""
    runs = collect(results)
    rows = table_rows(runs)
    if runs:
        curves, calibration = plot_figures(runs, figures)
    relative = os.path.relpath(figures, (results_md or figures / "x").parent)
    protocol = ("Fashion-MNIST, fixed 500-image training subset, 500 validation images "
                "(teacher, calibration, early stopping only), fixed 2,000-image test subset; "
                "small CNN conv32-pool-conv64-pool-dense256-10 without BatchNorm (824,458 "
                "parameters); L-inf eps 0.1; training PGD-5 (step 0.05, random start); "
                "robust test accuracy with PGD-10 (step 0.025) every 3 epochs; final PGD-20 "
                f"(step 0.0125); Adam 1e-3 constant, batch 64, {epochs} epochs.")
    if quick:
        protocol = "QUICK SMOKE TEST (tiny settings, numbers meaningless): " + json.dumps(
            dict(QUICK, epochs=QUICK_EPOCHS))
    text = [SECTION, "",
            "Made by `python benchmarks/robust_overfitting.py` (resumable; "
            "`--report-only` rebuilds this section and the figures from the run "
            "directories in `benchmarks/results/robust_overfitting/`).", "",
            f"Protocol: {protocol}", "",
            f"Machine: {_machine()}.", "",
            "Columns: accuracies in %. *best robust test (epoch)*: the peak of the PGD-10 "
            "test curve; *final*: its last value; *gap*: best − final; *smoothed gap*: best "
            "3-evaluation moving average − mean of the last 3 evaluations (one evaluation "
            "has about 1 point of standard error at 2,000 images); *early-stopped*: the test "
            "value at the evaluated epoch with the best validation robust accuracy; *final "
            "train robust*: PGD-10 on the 500 training images; *final PGD-20*: the final "
            "model on the test subset; *final PGD-20 + APGD-CE*: the worst case of PGD-20 "
            "and APGD-CE (100 steps) per example. The early-stopping row is PGD-AT's "
            "best-validation checkpoint (all epochs), measured directly.", ""]
    text.append(markdown_table(rows, epochs) if rows else "No finished runs yet.")
    text += ["", "### Acceptance", "", acceptance(runs), ""]
    if runs:
        text += ["### Figures", "",
                 f"![robust test accuracy per epoch]({relative}/{CURVES_PNG})", "",
                 f"![T, rho and the teacher's robust accuracy per epoch]"
                 f"({relative}/{CALIBRATION_PNG})", ""]
    section = "\n".join(text).rstrip() + "\n"
    if results_md is not None:
        update_section(results_md, section)
    return section


def exit_status(status: dict[str, int]) -> int:
    """1 (naming them on stderr) when any run failed or was skipped, else 0."""
    failed = [name for name, code in status.items() if code != 0]
    if failed:
        print(f"failed or skipped runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def update_section(path: Path, section: str, heading: str = SECTION,
                   first: bool = False) -> None:
    """Replaces the ``## `` section titled ``heading`` (default: this benchmark's) of
    ``path`` (or adds it: at the end, or before the first ``## `` section with
    ``first``), leaving the other sections as they are."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
    else:
        lines = ["# Benchmark results\n", "\n",
                 "Every number here is produced by a script in `benchmarks/`; each section "
                 "says which and how to re-run it.\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        top = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
        if first and top is not None:
            new = lines[:top] + [section, "\n"] + lines[top:]
        else:
            if lines and lines[-1].strip():
                lines.append("\n")
            new = lines + [section]
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ")), len(lines))
        tail = lines[end:]
        new = lines[:start] + [section] + (["\n"] if tail else []) + tail
    path.write_text("".join(new))


def replace_marked(path: Path, text: str, markers: tuple[str, str]) -> None:
    """Replaces what lies between the two marker lines of ``path`` by ``text``; a file
    without the markers is left as it is (the generated lines go where a person put
    the markers)."""
    if not path.is_file():
        return
    content = path.read_text()
    start, end = content.find(markers[0]), content.find(markers[1])
    if start < 0 or end < start:
        return
    head = content[:start + len(markers[0])]
    path.write_text(head + "\n" + text + content[end:])


# --------------------------------------------------------------------------- main
def add_run_options(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every run-directory benchmark shares: seeds, parallel jobs, the
    results directory, report-only and dry-run."""
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=results)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Robust-overfitting benchmark (issue 4): runs the methods and writes "
                    "the table and figures into benchmarks/RESULTS.md.",
        epilog="Methods: " + ", ".join(m.name for m in METHODS))
    parser.add_argument("--methods", nargs="+", choices=[m.name for m in METHODS],
                        default=[m.name for m in METHODS],
                        help="methods to run (default: all; pgd_at_es is derived from the "
                             "pgd_at runs, two_stage needs the pgd_at run of its seed)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="seeds of every selected method (default: 0 1 for pgd_at and "
                             "calibrated, 0 for the others)")
    parser.add_argument("--epochs", type=int, default=120, help="epochs (default: 120)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at a time, one thread each (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, 3 epochs, outputs under RESULTS/quick/ (smoke "
                             "test; RESULTS.md untouched)")
    parser.add_argument("--report-only", action="store_true",
                        help="do not train: rebuild the report and figures from the run "
                             "directories")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help=f"run directories (default: {DEFAULT_RESULTS.relative_to(ROOT)})")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="import the working tree's keras_advcal in every run instead "
                             "of a copy taken at the start")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.jobs < 1:
        parser.error("--epochs and --jobs must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results, results_md, figures = args.results.resolve(), RESULTS_MD, FIGURES
    epochs = args.epochs
    if args.quick:
        results = results / "quick"
        results_md = results / "RESULTS_quick.md"
        figures = results / "figures"
        epochs = QUICK_EPOCHS if args.epochs == 120 else args.epochs
    jobs = plan(args.methods, args.seeds, epochs, results, args.quick)
    if args.dry_run:
        for job in jobs:
            state = "done" if finished(job.run_dir) else "to run"
            print(f"{job.name:28s} {state:7s} {json.dumps(job.config)}")
        return 0
    status = {}
    if not args.report_only:
        results.mkdir(parents=True, exist_ok=True)
        started = time.time()
        print(f"{len(jobs)} runs, {args.jobs} at a time -> {results}", flush=True)
        code_dir = None if args.no_snapshot else snapshot_code(results)
        status = execute(jobs, args.jobs, code_dir)
        print(f"training done in {(time.time() - started) / 60:.1f} min", flush=True)
    section = report(results, results_md, figures, epochs, args.quick)
    print(section)
    print(f"report: {results_md}; figures: {figures}")
    return exit_status(status)


if __name__ == "__main__":
    sys.exit(main())
