"""The ``advcal`` command: train, compare, evaluate, analyze, demo.

    advcal train --dataset fashion_mnist --subset 500 --model cnn --epsilon 0.1 \\
                 --labels calibrated --teacher best --epochs 120 --out runs/x
    advcal compare runs/x runs/y --figure compare.png
    advcal evaluate runs/x/model.keras --dataset fashion_mnist --epsilon 0.1
    advcal demo

``advcal COMMAND --help`` explains every option. Bad options exit with status 2 and
a message (argparse's convention), before anything is written; ``main(argv)``
returns the exit status. Options must be spelt in full (no prefix matching).

TensorFlow is imported only once a command needs it (``advcal --help`` and
``advcal train --help`` do not), with its start-up log lines hidden (also CUDA's
``failed call to cuInit`` on a machine without GPU, and absl's warnings); run with
``TF_CPP_MIN_LOG_LEVEL=0`` to see them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from keras_advcal import choices
from keras_advcal.config import FIELD_CHOICES, RunConfig

DEFAULT_ATTACKS = "pgd,cw,apgd-ce,apgd-t,square"
#: Test images of `advcal evaluate` unless --n says otherwise (fewer if there are fewer).
EVALUATE_N = 1000
_N_NOT_GIVEN = 0  # --n's default: not a value a user can type (--n must be >= 1)

# Help text of each RunConfig option (the default is appended from RunConfig itself).
_TRAIN_HELP: dict[str, str] = {
    "dataset": "Dataset: digits, fashion_mnist, mnist or any prepared TFDS image dataset "
               "(cifar10, svhn_cropped, ...).",
    "subset": "Training subset size (a count; 'all' keeps the whole training pool). The "
              "subset is also the calibration's training sample.",
    "validation_size": "Validation examples held out from the training pool (never trained "
                       "on): validation robust accuracy each epoch, the best teacher, the "
                       "calibration of T and rho, early stopping. 'default': the loader's.",
    "test_size": "Size of a fixed random subset of the test split ('all': all of it).",
    "data_seed": "Seed of the data splits (kept fixed across training seeds).",
    "development_size": "Examples of the training pool held out as a development split "
                        "(0: none): compare variants of the method there, and read the "
                        "test split only to report.",
    "test_seed": "Seed of the test subset's draw ('default': the data seed).",
    "test_offset": "Skip the first N images of the seeded test permutation (images an "
                   "earlier subset used).",
    "curve_split": "Split of the per-epoch robust accuracy curve: test or development.",
    "curve_size": "Evaluate the per-epoch curve on the first N images of its split "
                  "('all': every image).",
    "label_noise": "Fraction of training labels flipped to another class.",
    "model": "Model: cnn (small CNN), preact_resnet18, wide_resnet.",
    "width": "Small CNN: filters of the first convolution (the second has twice as many); "
             "preact_resnet18: filters of the stem and first stage.",
    "dense": "Small CNN: units of the hidden dense layer.",
    "batchnorm": "Small CNN: BatchNorm after each convolution.",
    "epsilon": "L-inf radius of the threat model, on [0, 1] pixels.",
    "train_steps": "PGD steps of the training attack (random start).",
    "train_step_size": "Step size of the training attack.",
    "eval_steps": "PGD steps of the evaluation attack (validation metric, calibration and "
                  "the per-epoch robust test accuracy).",
    "eval_step_size": "Step size of the evaluation attack.",
    "eval_every": "Measure robust test accuracy every N epochs (and at the last one).",
    "labels": "Targets: 'hard' (one-hot labels; PGD-AT with --objective pgd_at), "
              "'calibrated' (soft targets from a teacher with fitted T and rho) or 'adr' "
              "(ADR-style baseline, with --objective pgd_at: EMA teacher on the clean "
              "input, cosine-annealed T and rho, per-example rho).",
    "objective": "Training objective: pgd_at (CE on the adversarial example), trades "
                 "(CE on the clean input + beta KL(f(x) || f(x')), KL attack) or mart "
                 "(boosted CE + misclassification-weighted KL). Calibrated labels replace "
                 "the one-hot label in its supervised term.",
    "beta": "Weight of the KL term of trades or mart ('default': 6 for trades, 5 for mart).",
    "rectified_targets": "Calibrated labels: per-example ratios rho_i = clip(rho - (max_j p_j "
                         "- p_y), 0, 1) that keep every target on its label (use with "
                         "--acc-floor 0).",
    "awp_gamma": "Adversarial weight perturbation (AWP): relative size gamma of the ascent "
                 "step on the weights before each descent step (default 0.01, part of the "
                 "default recipe; the published value is 0.005; 0: no AWP).",
    "teacher": "Teacher of the calibrated trainer: swa (weight average per epoch; the "
               "default), best (snapshot at the best validation robust accuracy), ema "
               "(moving average per step), fixed (a trained model: --teacher-model).",
    "loss_form": "Calibrated loss: kd ((1-rho) CE(f,y) + rho T^2 H(p_T(g), p_T(f))) or soft "
                 "(CE with the soft target).",
    "rule": "How T and rho are fitted each epoch: published (validation NLL grid under the "
            "accuracy floor), confidence (temperature scaling + rho from the teacher's "
            "held-out accuracy) or fixed (--fixed-temperature, --fixed-rho).",
    "acc_floor": "Published rule: minimum fraction of training targets that keep their label.",
    "selection": "Published rule: how the grid point is picked: minimum (the lowest NLL, "
                 "as published; the default) or one_standard_error (the largest rho whose "
                 "NLL is within one standard error of the minimum).",
    "fixed_temperature": "T of --rule fixed.",
    "fixed_rho": "rho of --rule fixed.",
    "swa_start_epoch": "First epoch (from 0) averaged into an swa teacher.",
    "calibration_size": "Calibrate T and rho on the first N validation images only ('all': "
                        "every one); early stopping still reads them all.",
    "surrogate_examples": "Where the surrogate's calibration logits are taken: teacher (on "
                          "the examples made against the teacher) or surrogate (on its "
                          "own PGD examples: one more attack per epoch).",
    "separate_surrogate_temperature": "Scale the surrogate by its own fitted temperature "
                                      "in the calibration's NLL.",
    "average_fits": "Use the mean of the successful fits of T and rho so far, not the "
                    "latest one.",
    "floor_examples": "Where the accuracy floor is measured: training (the teacher's logits "
                      "from the training steps, no extra attack) or attack (PGD examples "
                      "of the training images made against the teacher).",
    "reuse_validation_examples": "Keep the calibration's validation PGD examples while "
                                 "they still fit the teacher (--calibration-examples "
                                 "attack).",
    "calibration_examples": "The calibration's validation examples: validation_pass (the "
                            "validation pass's PGD examples, made against the student; no "
                            "extra attack) or attack (made against the teacher).",
    "ema_decay": "Decay of the ema teacher (and of the ADR teacher).",
    "teacher_model": "A trained teacher (.keras: a classifier or a saved trainer) for "
                     "--teacher fixed.",
    "surrogate_model": "Two-stage recipe: the overfitted (last) model (.keras). With "
                       "--teacher fixed, T and rho are calibrated once before training.",
    "two_stage_examples": "Two-stage recipe: which model the one-off calibration's PGD "
                          "examples are made against: surrogate (the student's stand-in, "
                          "as in training) or teacher (earlier versions).",
    "adr_temperature": "ADR: temperature schedule START END (cosine).",
    "adr_rho": "ADR: rho schedule START END (cosine).",
    "epochs": "Training epochs.",
    "batch_size": "Batch size.",
    "learning_rate": "Learning rate (the initial one under --lr-schedule piecewise).",
    "optimizer": "Optimizer: adam or sgd (SGD with --momentum; the standard adversarial-"
                 "training recipe: --optimizer sgd --learning-rate 0.1 --weight-decay 5e-4 "
                 "--lr-schedule piecewise).",
    "momentum": "Momentum of --optimizer sgd.",
    "weight_decay": "Weight decay (decoupled, Keras' form; 0: none).",
    "lr_schedule": "Learning-rate schedule: constant or piecewise (divided by 10 at each "
                   "fraction of the epochs in --lr-drops).",
    "lr_drops": "Comma-separated fractions of the epochs where --lr-schedule piecewise "
                "divides the learning rate by 10.",
    "seed": "Seed of initialisation, shuffling and attacks.",
    "final_steps": "Steps of the final PGD robust test accuracy.",
    "final_step_size": "Step size of the final PGD (default 2.5 * epsilon / steps).",
    "final_attacks": "Extra attacks on the final model, comma separated (pgd, cw, apgd-ce, "
                     "apgd-t, fab-t, square); empty: none.",
    "final_attack_steps": "Steps of those extra attacks.",
    "final_square_queries": "Queries of the Square attack among them.",
    "final_cascade": "Run each final attack only on what the previous ones left.",
    "final_splits": "Splits of the final evaluation, comma separated (test, development).",
    "final_strong_attacks": "Attacks that continue the cascade on the first "
                            "--final-strong-size images of each final split.",
    "final_strong_size": "Images the strong final attacks see ('all': every image).",
    "weight_average": "Also keep and evaluate the uniform average of the student's weights "
                      "(from --swa-start-epoch).",
    "checkpoint_best": "Also save best.keras at the best validation robust accuracy (the "
                       "teacher of the two-stage recipe).",
    "threads": "TensorFlow intra/inter-op threads (0: TensorFlow's default).",
    "out": "Output directory. It gets config.json when the run starts; history.csv/json "
           "after every epoch; backup/ (the resume point of an interrupted training, "
           "removed when training ends); model.keras (the trainer: classifier, teacher, "
           "T and rho) and training_done.json when training ends (a run interrupted "
           "during its final evaluation restarts from the trained model); then "
           "summary.json, curves.png and correctness_final.npz (per-example results); "
           "best.keras with --checkpoint-best.",
    "verbose": "0 silent, 1 progress bars, 2 one line per epoch.",
}


# ------------------------------------------------------------ TensorFlow, quietly
# Lines TensorFlow's native code writes to stderr while it starts (CUDA probing on a
# machine without GPU, CPU features, absl's pre-initialisation notice, cuInit's
# failure where there is no GPU).
_START_UP_NOISE = re.compile(
    r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions:"
    r"|[EW]\d{4} .*(Unable to register cu(DNN|FFT|BLAS) factory|failed call to cuInit))")


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Captures what native code writes to file descriptor 2 inside the block and
    writes back every line but TensorFlow's start-up noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not _START_UP_NOISE.match(line)]
            sys.stderr.write("".join(kept))


def _library(module: str):
    """``keras_advcal.<module>``, importing TensorFlow first, quietly: its start-up log
    lines and CUDA's probe on a machine without GPU (``failed call to cuInit``) are
    hidden, and absl's warnings (TFDS' notice about a missing dataset folder) are off;
    unless the user set ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything.

    Example:

        >>> _library("targets").LOSS_FORMS
        ('kd', 'soft')
    """
    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _native_stderr_filtered():
            import tensorflow

            tensorflow.config.list_physical_devices()  # CUDA's probe logs here, once
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    return importlib.import_module(f"keras_advcal.{module}")


# ------------------------------------------------------------------------ parsers
class _Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching (``--epoch`` is not
    ``--epochs``), whose options may be added when it is first used (``populate``),
    so that ``advcal --help`` needs no TensorFlow."""

    def __init__(self, *args: Any, populate: Callable[[argparse.ArgumentParser], None]
                 | None = None, **kwargs: Any):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args=None, namespace=None):
        self._populated()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populated()
        return super().format_help()


# --------------------------------------------------------------------- argument types
def _number(kind: type, low: float | None = None, strict: bool = False,
            high: float | None = None, optional: tuple[str, ...] = ()):
    def parse(text: str):
        if text.lower() in optional:
            return None
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            words = "".join(f" or {word!r}" for word in optional[:1])
            raise argparse.ArgumentTypeError(f"expected {what}{words}, got {text!r}") from None
        if isinstance(value, float) and math.isnan(value):
            raise argparse.ArgumentTypeError("NaN is not allowed")
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


_ARG_TYPES: dict[str, Any] = {
    "subset": _number(int, 1, optional=("all", "none")),
    "validation_size": _number(int, 0, optional=("default", "none")),
    "test_size": _number(int, 1, optional=("all", "none")),
    "data_seed": int,
    "development_size": _number(int, 0),
    "test_seed": _number(int, 0, optional=("default", "none")),
    "test_offset": _number(int, 0),
    "curve_size": _number(int, 1, optional=("all", "none")),
    "final_square_queries": _number(int, 1),
    "final_strong_size": _number(int, 1, optional=("all", "none")),
    "label_noise": _number(float, 0, high=0.999999),
    "width": _number(int, 1),
    "dense": _number(int, 1),
    "epsilon": _number(float, 0),
    "train_steps": _number(int, 1),
    "train_step_size": _number(float, 0),
    "eval_steps": _number(int, 1),
    "eval_step_size": _number(float, 0),
    "eval_every": _number(int, 1),
    "acc_floor": _number(float, 0, high=1),
    "fixed_temperature": _number(float, 0, strict=True),
    "fixed_rho": _number(float, 0, high=1),
    "beta": _number(float, 0, optional=("default", "none")),
    "awp_gamma": _number(float, 0),
    "swa_start_epoch": _number(int, 0),
    "calibration_size": _number(int, 1, optional=("all", "none")),
    "ema_decay": _number(float, 0, strict=True, high=0.999999),
    "adr_temperature": _number(float, 0, strict=True),
    "adr_rho": _number(float, 0, high=1),
    "epochs": _number(int, 1),
    "batch_size": _number(int, 1),
    "learning_rate": _number(float, 0, strict=True),
    "momentum": _number(float, 0, high=0.999999),
    "weight_decay": _number(float, 0),
    "seed": int,
    "final_steps": _number(int, 1),
    "final_step_size": _number(float, 0, optional=("default", "none")),
    "final_attack_steps": _number(int, 1),
    "threads": _number(int, 0),
    "verbose": _number(int, 0, high=2),
}


# ------------------------------------------------------------- RunConfig's fields
# `advcal train --help` lists RunConfig's fields, defaults and the library's choice
# lists: keras_advcal.config and keras_advcal.choices import no TensorFlow, so the
# help comes at once; the commands that run import the rest themselves.
def run_fields() -> list[tuple[str, Any]]:
    """RunConfig's fields and defaults, in order.

    Example:

        >>> run_fields()[0]
        ('dataset', 'fashion_mnist')
    """
    return [(field.name, field.default) for field in dataclasses.fields(RunConfig)]


#: The choice lists of RunConfig's fields (the model's too, which models.get checks).
_CHOICES = {**FIELD_CHOICES, "model": choices.MODEL_NAMES}

#: The groups of `advcal train --help`, in order: (title, description, fields). The
#: last one, the calibration study's variants, shows with --help-all only.
TRAIN_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("data", "The dataset and its splits.",
     ("dataset", "download", "subset", "validation_size", "test_size", "data_seed",
      "development_size", "test_seed", "test_offset", "label_noise")),
    ("model", "The classifier.", ("model", "width", "dense", "batchnorm")),
    ("threat model", "The L-inf attacks of training and of the per-epoch evaluation.",
     ("epsilon", "train_steps", "train_step_size", "eval_steps", "eval_step_size")),
    ("method", "Which targets and objective: TRADES with one-hot labels and AWP 0.01 "
               "(the default), plain TRADES (--awp 0), PGD-AT (--objective pgd_at --awp 0), "
               "calibrated targets (--labels calibrated), ADR (--labels adr --objective "
               "pgd_at --awp 0); MART.",
     ("labels", "objective", "beta", "awp_gamma", "teacher", "loss_form", "rule",
      "acc_floor", "selection", "fixed_temperature", "fixed_rho", "swa_start_epoch",
      "ema_decay", "rectified_targets", "teacher_model", "surrogate_model",
      "adr_temperature", "adr_rho")),
    ("optimisation", "Training length, batches, optimizer and schedule.",
     ("epochs", "batch_size", "learning_rate", "optimizer", "momentum", "weight_decay",
      "lr_schedule", "lr_drops", "seed", "threads")),
    ("evaluation", "The per-epoch robust accuracy curve and the final attacks.",
     ("eval_every", "curve_split", "curve_size", "final_steps", "final_step_size",
      "final_attacks", "final_attack_steps", "final_square_queries", "final_cascade",
      "final_splits", "final_strong_attacks", "final_strong_size", "weight_average",
      "checkpoint_best")),
    ("output", "Where the run is written and what it prints.",
     ("config", "out", "overwrite", "train_only", "verbose")),
    ("calibration study variants", "Variants of the calibration compared in the "
                                   "development study (tutorials/method.md); the defaults "
                                   "are the chosen ones.",
     ("calibration_size", "surrogate_examples", "separate_surrogate_temperature",
      "average_fits", "floor_examples", "reuse_validation_examples",
      "calibration_examples", "two_stage_examples")),
)
_STUDY_GROUP = TRAIN_GROUPS[-1][0]


class _HelpAll(argparse.Action):
    """``--help-all``: the help with the options hidden from ``--help``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:  # noqa: SLF001 - argparse has no public list
            action.help = getattr(action, "full_help", action.help)
        for group in parser._action_groups:  # noqa: SLF001
            group.description = getattr(group, "full_description", group.description)
        parser.print_help()
        parser.exit()


_DOWNLOAD_HELP = ("Download the dataset if it is not on this machine yet (TensorFlow "
                  "Datasets prepares it in ~/tensorflow_datasets; needs internet). "
                  "Without it only local copies are read, and a missing dataset stops "
                  "the command with the ways to get it. digits needs no download.")

#: The options of `advcal train` that are not RunConfig fields.
_TRAIN_ONLY: dict[str, dict[str, Any]] = {
    "config": dict(metavar="FILE", help="JSON file of options (e.g. a run's config.json); "
                                        "flags given on the command line override it."),
    "download": dict(action="store_true", help=_DOWNLOAD_HELP),
    "overwrite": dict(action="store_true", help=(
        "Replace a finished run in --out that was trained with other options. Without "
        "it advcal refuses; the same options resume (or re-evaluate) the run.")),
    "train_only": dict(action="store_true", help=(
        "Stop once training has ended (model.keras, history and training_done.json "
        "written), before the final attacks. The same command without it later runs "
        "only the final evaluation.")),
}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, in the groups of :data:`TRAIN_GROUPS` (a field no
    group names under "options"); absent flags keep RunConfig's defaults (or the values
    of --config). Needs no TensorFlow."""
    fields = dict(run_fields())
    parser.add_argument("--help-all", action=_HelpAll,
                        help="show this help with every option (also the calibration "
                             "study's variants) and exit")
    placed = set()
    for title, description, names in TRAIN_GROUPS:
        group = parser.add_argument_group(title, description)
        hidden = title == _STUDY_GROUP
        if hidden:
            group.full_description = description
            group.description = f"{len(names)} more options, shown by --help-all."
        for name in names:
            if name in _TRAIN_ONLY:
                group.add_argument("--" + name.replace("_", "-"), dest=name,
                                   default=argparse.SUPPRESS,
                                   **_TRAIN_ONLY[name])
            elif name in fields:
                _add_field(group, name, fields[name], hidden)
            placed.add(name)
    for name in fields.keys() - placed:  # a new field no group names yet
        _add_field(parser, name, fields[name], False)


def _add_field(group: Any, name: str, default: Any, hidden: bool) -> None:
    """The flag of RunConfig field ``name`` (its help kept as ``full_help``)."""
    # Flags that are not the field's name: --awp (also --awp-gamma) for awp_gamma.
    flags = {"awp_gamma": ("--awp", "--awp-gamma")}.get(name, ("--" + name.replace("_", "-"),))
    shown = (" ".join(map(str, default)) if isinstance(default, tuple)
             else "''" if default == "" else default)
    help_text = f"{_TRAIN_HELP.get(name, name.replace('_', ' '))} (default: {shown})"
    kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS,
                                  help=argparse.SUPPRESS if hidden else help_text)
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _ARG_TYPES.get(name, str)
        if name in _CHOICES:
            kwargs["choices"] = _CHOICES[name]
        elif isinstance(default, tuple):
            kwargs.update(nargs=2, metavar=("START", "END"))
        elif name in ("teacher_model", "surrogate_model"):
            kwargs["metavar"] = "FILE"
        elif getattr(kwargs["type"], "__name__", "") in ("int", "float"):
            kwargs["metavar"] = "N" if kwargs["type"].__name__ == "int" else "X"
    group.add_argument(*flags, **kwargs).full_help = help_text


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """The data options of ``advcal analyze``, with ``advcal train``'s defaults."""
    defaults = dict(run_fields())
    for flag in ("subset", "validation_size", "label_noise", "data_seed"):
        parser.add_argument("--" + flag.replace("_", "-"), type=_ARG_TYPES[flag],
                            default=defaults[flag],
                            help=f"{_TRAIN_HELP[flag]} (default: {defaults[flag]})")


# ------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``advcal`` argument parser (subcommands train, compare, evaluate, analyze,
    demo). The options of ``train`` and ``analyze`` that come from the library are
    added when those commands are parsed.

    Example:

        >>> parser = build_parser()
        >>> parser.parse_args(["compare", "runs/a", "--no-figure"]).runs
        ['runs/a']
    """
    parser = _Parser(
        prog="advcal",
        description="Adversarial training with calibrated soft labels (keras-advcal): "
                    "train a run, compare runs, evaluate a saved model, measure label noise, or "
                    "run the demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'advcal COMMAND --help' for the options of a command. TensorFlow's "
               "start-up log lines are hidden unless TF_CPP_MIN_LOG_LEVEL=0.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "train", help="train one run and write its artifacts",
        usage="%(prog)s [OPTIONS]", populate=_add_run_options,
        description="Trains one model (by default TRADES with one-hot labels and AWP; "
                    "PGD-AT, calibrated targets or the ADR-style baseline with --objective, "
                    "--labels and --awp 0) and writes model.keras, history.csv/json (with T, "
                    "rho and the per-epoch robust accuracy on the test or development split), "
                    "curves.png, config.json, training_done.json, summary.json and "
                    "correctness_final.npz into --out (see --out). The options are checked, "
                    "and the data loaded, before anything is written. Defaults: the "
                    "robust-overfitting benchmark protocol (Fashion-MNIST, 500 training "
                    "images, small CNN, eps 0.1).")

    compare = commands.add_parser(
        "compare", help="table and figure of several runs",
        description="Prints best robust test accuracy (epoch), final, gap, smoothed gap, "
                    "early-stopped and clean accuracy of each run directory (finished or "
                    "still running) and draws all robust test accuracy curves in one "
                    "figure.")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR",
                         help="run directories written by 'advcal train'")
    compare.add_argument("--figure", default="compare.png", metavar="PNG",
                         help="where to write the figure (default: compare.png)")
    compare.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    compare.add_argument("--json", metavar="FILE", help="also write the rows as JSON")

    evaluate = commands.add_parser(
        "evaluate", usage="%(prog)s MODEL.keras --dataset NAME --epsilon X [OPTIONS]",
        help="robust accuracy of a saved model under several attacks",
        description="Loads a .keras model (a saved trainer or any Keras classifier that "
                    "outputs logits) and runs keras_advcal.evaluation.evaluate_robustness on "
                    "the test split of --dataset.")
    evaluate.add_argument("model", metavar="MODEL.keras", help="the saved model")
    evaluate.add_argument("--dataset", required=True, help="dataset whose test split is used")
    evaluate.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
    evaluate.add_argument("--epsilon", required=True, type=_number(float, 0),
                          help="L-inf radius on [0, 1] pixels")
    evaluate.add_argument("--attacks", default=DEFAULT_ATTACKS,
                          help=f"comma-separated attacks (default: {DEFAULT_ATTACKS}; also "
                               "apgd-dlr, fgsm)")
    evaluate.add_argument("--n", type=_number(int, 1, optional=("all",)), default=_N_NOT_GIVEN,
                          help="test examples evaluated, a fixed random subset ('all': the "
                               f"whole test split; default: {EVALUATE_N}, or the whole "
                               "test split when it is smaller)")
    evaluate.add_argument("--steps", type=_number(int, 1), default=100,
                          help="steps of the gradient attacks (default: 100)")
    evaluate.add_argument("--n-queries", type=_number(int, 1), default=5000,
                          help="queries of the Square attack (default: 5000)")
    evaluate.add_argument("--restarts", type=_number(int, 1), default=1,
                          help="random restarts of the gradient attacks (default: 1)")
    evaluate.add_argument("--batch-size", type=_number(int, 1), default=256,
                          help="examples per attack batch (default: 256)")
    evaluate.add_argument("--autoattack", action="store_true",
                          help="run AutoAttack instead of --attacks (keras_advcal.autoattack: "
                               "each attack on what the ones before it left; --steps, "
                               "--n-queries, --restarts and --cascade do not apply)")
    evaluate.add_argument("--version", choices=choices.AUTOATTACK_VERSIONS,
                          default="standard",
                          help="the AutoAttack cascade: standard (APGD-CE, APGD-T, FAB-T, "
                               "Square-5000, the reference's settings) or fast (PGD-20, "
                               "APGD-CE, APGD-T, Square-5000); default: standard")
    evaluate.add_argument("--cascade", action="store_true",
                          help="attack only the survivors of the previous attacks (faster; "
                               "no per-attack accuracy)")
    evaluate.add_argument("--seed", type=int, default=0, help="attack seed (default: 0)")
    evaluate.add_argument("--data-seed", type=int, default=0,
                          help="seed of the data splits (default: 0)")
    evaluate.add_argument("--json", metavar="FILE", help="write the result as JSON")

    analyze = commands.add_parser(
        "analyze", populate=_add_data_options,
        usage="%(prog)s REFERENCE.keras --dataset NAME --epsilon X [OPTIONS]", help="label noise of PGD examples (how far one-hot labels are from "
                        "a calibrated estimate of the true label distribution)",
        description="Makes PGD examples of a split of --dataset against --model (default: "
                    "the reference) and compares their one-hot labels with the "
                    "temperature-scaled prediction of the REFERENCE model, its temperature "
                    "fitted on PGD examples of the held-out validation split: mean total "
                    "variation, mean KL, and the fraction whose estimated true label "
                    "differs; the same on clean inputs. Writes label_noise.json and "
                    "label_noise.png into --out.")
    analyze.add_argument("reference", metavar="REFERENCE.keras",
                         help="a robust model (a saved trainer or a logits classifier), "
                              "e.g. the early-stopped best.keras of a PGD-AT run")
    analyze.add_argument("--model", metavar="MODEL.keras",
                         help="the model the examples are made against (default: the "
                              "reference)")
    analyze.add_argument("--dataset", required=True, help="dataset (as for 'advcal train')")
    analyze.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
    analyze.add_argument("--epsilon", required=True, type=_number(float, 0),
                         help="L-inf radius on [0, 1] pixels")
    analyze.add_argument("--steps", type=_number(int, 1), default=10,
                         help="PGD steps (default: 10)")
    analyze.add_argument("--step-size", type=_number(float, 0, optional=("default",)),
                         default=None, help="PGD step size (default: 2.5 * epsilon / steps)")
    analyze.add_argument("--split", choices=("train", "test"), default="train",
                         help="split whose labels are measured (default: train)")
    analyze.add_argument("--batch-size", type=_number(int, 1), default=256,
                         help="examples per attack batch (default: 256)")
    analyze.add_argument("--seed", type=int, default=0, help="attack seed (default: 0)")
    analyze.add_argument("--out", default="runs/label_noise",
                         help="output directory (default: runs/label_noise)")

    demo = commands.add_parser(
        "demo", help="PGD-AT, the default (TRADES + AWP) and calibrated PGD-AT on digits "
                     "(a few minutes)",
        description="Trains PGD-AT, the default recipe (TRADES, one-hot labels, AWP) and "
                    "calibrated PGD-AT (default CalibratedTeacher) on scikit-learn digits "
                    "with a small CNN and prints clean and PGD-20 accuracy on the test "
                    "split, with the final T and rho of the calibrated run.")
    demo.add_argument("--epochs", type=_number(int, 1), default=30,
                      help="training epochs of each model (default: 30)")
    demo.add_argument("--epsilon", type=_number(float, 0), default=0.15,
                      help="L-inf radius (default: 0.15; digits pixels have 17 levels)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    demo.add_argument("--out", default="runs/demo",
                      help="where the three runs are written (default: runs/demo)")
    demo.add_argument("--verbose", type=_number(int, 0, high=2), default=0,
                      help="Keras progress output of each run (default: 0)")
    return parser


# ------------------------------------------------------------------------ commands
def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.{digits}f}"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns (the first left-aligned).

    Example:

        >>> print(format_table([["a", "1.0"]], ["run", "acc"]))
        run  acc
        ---  ---
        a    1.0
    """
    table = [header] + rows
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]

    def line(row):
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(header), "  ".join(rule)] + [line(row) for row in rows])


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    experiment = _library("experiment")
    values: dict[str, Any] = {}
    options = vars(args).copy()
    options.pop("command", None)
    download = options.pop("download", False)
    overwrite = options.pop("overwrite", False)
    train_only = options.pop("train_only", False)
    config_file = options.pop("config", None)
    if config_file is not None:
        try:
            values.update(json.loads(Path(config_file).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"cannot read --config {config_file}: {error}")
    values.update(options)
    try:
        config = RunConfig.from_dict(values).validate()
    except (TypeError, ValueError) as error:
        parser.error(flag_names(str(error)))
    problem = settings_problem(config) or out_problem(config, overwrite=True)
    if problem:  # a file at --out is refused before the data is read
        parser.error(problem)
    experiment.set_threads(config.threads)
    sizes, splits, note = _load_splits(
        parser, config.dataset, download=download,
        sizes={name: getattr(config, name) for name in _SIZE_FLAGS},
        typed=set(values), loader=lambda sizes: experiment.load_data(
            dataclasses.replace(config, **sizes), download=download))
    config = dataclasses.replace(config, **sizes)
    problem = data_problem(config, splits) or out_problem(config, overwrite)
    if problem:
        parser.error(problem)
    if note:
        print(note, flush=True)
    for line in ignored_notes(config):
        print(line, flush=True)
    if overwrite:
        _clear_run(Path(config.out))
    print(f"advcal train: {config.dataset} ({len(splits.train[1])} training, "
          f"{len(splits.validation[1])} validation, {len(splits.test[1])} test images), "
          f"objective={config.objective}, labels={config.labels}"
          + (f", teacher={config.teacher}, loss={config.loss_form}, rule={config.rule}"
             if config.labels == "calibrated" else "")
          + f", epsilon={config.epsilon:g} -> {config.out}", flush=True)
    with warnings.catch_warnings():  # said above, in the command's words
        warnings.filterwarnings("ignore", message=r".* is ignored: only a run with ")
        summary = experiment.run(config, splits=splits, train_only=train_only)
    print()
    print(_summary_text(summary))
    if train_only:
        print(f"\nwrote {config.out}/: model.keras, history.csv, history.json, config.json, "
              "training_done.json (no final attacks: run the same command without "
              "--train-only to evaluate)")
        return 0
    print(f"\nwrote {config.out}/: model.keras, history.csv, history.json, curves.png, "
          "config.json, training_done.json, summary.json, correctness_final.npz")
    return 0


def ignored_notes(config: Any) -> list[str]:
    """One line per option given away from its default that the run does not read
    (:meth:`RunConfig.ignored_options`), in flags.

    Example:

        >>> from keras_advcal.experiment import RunConfig
        >>> ignored_notes(RunConfig(labels="hard", teacher="fixed"))
        ['advcal train: note: --teacher fixed is ignored: only a run with --labels calibrated reads it.']
    """
    lines = []
    for name, needs in config.ignored_options():
        needs = re.sub(r"(\w+)=(?:'(\w+)'|(\w+))",
                       lambda m: f"--{m[1].replace('_', '-')} {m[2] or m[3]}", needs)
        needs = needs.replace("--weight-average True", "--weight-average")
        needs = re.sub(r" or '(\w+)'", r" or \1", needs)
        lines.append(f"advcal train: note: --{name.replace('_', '-')} "
                     f"{_shown(getattr(config, name))} is ignored: only a run with {needs} "
                     "reads it.")
    return lines


def settings_problem(config: Any) -> str | None:
    """What in ``config`` would make ``experiment.run`` fail after it has started (an
    attack the library refuses, an unknown final attack), as a one-line message;
    ``None`` when nothing does. Cheap: builds the attacks, reads no data.

    Example:

        >>> from keras_advcal.experiment import RunConfig
        >>> settings_problem(RunConfig(epsilon=0.1)) is None
        True
        >>> print(settings_problem(RunConfig(final_attacks="pgd,apgd")))
        --final-attacks: unknown attack(s) apgd; choose from pgd, cw, apgd-ce, apgd-dlr, apgd-t, fab-t, square, fgsm
    """
    try:
        _library("experiment")._attacks(config)  # noqa: SLF001 - the run's own attacks
    except ValueError as error:
        return f"--epsilon {config.epsilon:g}: {error}"
    known = _library("evaluation").ATTACK_NAMES
    for flag, names in (("--final-attacks", config.final_attacks),
                        ("--final-strong-attacks", config.final_strong_attacks)):
        unknown = [name.strip() for name in names.split(",")
                   if name.strip() and name.strip().lower() not in known]
        if unknown:
            return f"{flag}: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(known)}"
    return None


def data_problem(config: Any, splits: Any) -> str | None:
    """Whether the loaded ``splits`` are too small for ``config``: calibrating T and
    rho needs enough validation and training images. A one-line message, or ``None``.

    Example:

        >>> from keras_advcal.experiment import RunConfig
        >>> splits = _library("data").load("digits", subset=150, validation_size=20)
        >>> config = RunConfig(dataset="digits", validation_size=20, labels="calibrated")
        >>> print(data_problem(config, splits))
        --validation-size 20: calibrating T and rho needs at least 100 validation images (--labels hard needs none).
    """
    if config.labels != "calibrated" or config.rule != "published":
        return None
    needed = _library("calibration").minimum_examples(config.acc_floor)
    for flag, labels, what in (("--validation-size", splits.validation[1], "validation"),
                               ("--subset", splits.train[1], "training")):
        if len(labels) < needed:
            return (f"{flag} {len(labels)}: calibrating T and rho needs at least {needed} "
                    f"{what} images (--labels hard needs none).")
    return None


#: What a run writes into --out (see RunConfig.out): removed by --overwrite.
RUN_ARTIFACTS = ("config.json", "history.csv", "history.json", "model.keras", "best.keras",
                 "training_done.json", "summary.json", "curves.png", "correctness_*.npz",
                 "evaluated_*.json", "backup")


def out_problem(config: Any, overwrite: bool = False) -> str | None:
    """Why ``config.out`` cannot take this run, as one line, or ``None``: a file
    there, or a run directory trained with other options (unless ``overwrite``). The
    same training options resume the run (or re-evaluate a finished one).

    Example:

        >>> from keras_advcal.experiment import RunConfig
        >>> print(out_problem(RunConfig(out="pyproject.toml")))
        --out pyproject.toml is a file, not a directory; choose another --out.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a directory; choose another --out."
    if overwrite or not (out / "config.json").is_file():
        return None
    try:
        before = RunConfig.from_stored(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return (f"--out {out} holds a run whose config.json this version cannot read; add "
                "--overwrite to replace it, or choose another --out.")

    def settings(run: Any) -> dict:
        values = run.training_settings()
        values.pop("out", None)
        return json.loads(json.dumps(values))

    old, new = settings(before), settings(config)
    changed = [key for key in new if old.get(key) != new[key]]
    if not changed:
        return None
    state = "finished run" if (out / "training_done.json").is_file() else "run"
    shown = ", ".join(f"--{key.replace('_', '-')} {_shown(old.get(key))} -> {_shown(new[key])}"
                      for key in changed[:3]) + (", ..." if len(changed) > 3 else "")
    return (f"--out {out} holds a {state} trained with other options ({shown}); add "
            "--overwrite to replace it, or choose another --out.")


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _clear_run(out: Path) -> None:
    """Removes what an earlier run wrote into ``out`` (:data:`RUN_ARTIFACTS`), so that
    nothing of it is resumed or mistaken for the new run's."""
    import shutil

    for pattern in RUN_ARTIFACTS:
        for path in out.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def describe_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not a Keras archive (a ``.keras`` zip with a
    ``config.json``), in a few words; ``None`` when it is one.

    Example:

        >>> describe_file("pyproject.toml")
        'a text file (pyproject.toml starts with "[build-system]")'
    """
    import zipfile

    path = Path(path)
    if path.is_dir():
        return ("a directory (a TensorFlow SavedModel? Keras 3 loads .keras files; export "
                "one with model.save('model.keras'))" if (path / "saved_model.pb").is_file()
                else "a directory")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "config.json" in archive.namelist():
                return None
        return "a zip archive without config.json, not a Keras model"
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return ("an HDF5 file (a legacy .h5 model? load it with keras.models.load_model and "
                "save it as .keras)")
    try:
        first = head.decode("utf-8").strip().splitlines()[0][:40]
    except (UnicodeDecodeError, IndexError):
        return f"{path.stat().st_size} bytes of binary data, not a Keras archive"
    return f'a text file ({path.name} starts with "{first}")'


def curve_split(summary: dict) -> str:
    """The short name of the split of a run's per-epoch curve in its summary keys:
    ``"dev"`` (``best_dev_adv_accuracy``...) or ``"test"``.

    Example:

        >>> curve_split({"best_dev_adv_accuracy": 0.5}), curve_split({})
        ('dev', 'test')
    """
    return "dev" if "best_dev_adv_accuracy" in summary else "test"


_SPLIT_NAMES = {"test": "test", "dev": "development"}


def _summary_text(summary: dict) -> str:
    split = curve_split(summary)
    lines = [
        f"robust {_SPLIT_NAMES[split]} accuracy (PGD curve): best "
        f"{_pct(summary.get(f'best_{split}_adv_accuracy'))}% at epoch "
        f"{summary.get('best_epoch')}, final "
        f"{_pct(summary.get(f'final_{split}_adv_accuracy'))}%, gap "
        f"{_pct(summary.get('gap'))}, smoothed gap {_pct(summary.get('smoothed_gap'))}",
        f"early-stopped (best validation epoch {summary.get('early_stopped_epoch')}): "
        f"{_pct(summary.get(f'early_stopped_{split}_adv_accuracy'))}%",
    ]
    if summary.get("train_only"):  # trained, not evaluated yet
        return "\n".join(lines + [f"training time {summary.get('train_seconds') or 0.0:.0f} s"])
    lines += [
        f"final: clean test {_pct(summary.get('final_test_clean_accuracy'))}%, "
        f"PGD-20 test {_pct(summary.get('final_pgd20_test_adv_accuracy'))}%, "
        f"training robust {_pct(summary.get('final_train_adv_accuracy'))}%",
    ]
    if summary.get("final_rho") is not None:
        lines.append(f"final T {summary.get('final_temperature', float('nan')):.3f}, "
                     f"rho {summary['final_rho']:.3f}")
    lines.append(f"wall time {summary.get('wall_seconds', 0.0):.0f} s")
    return "\n".join(lines)


COMPARE_HEADER = ["run", "curve", "best (epoch)", "final", "gap", "smoothed gap",
                  "early-stopped", "clean", "PGD-20", "status"]


def compare_rows(run_dirs: Sequence[str | os.PathLike]) -> list[dict]:
    """The summaries of ``run_dirs`` (finished or running), in order."""
    experiment = _library("experiment")
    rows = []
    for run_dir in run_dirs:
        summary = experiment.read_summary(run_dir)
        summary["dir"] = str(run_dir)
        rows.append(summary)
    return rows


def _compare_table(rows: list[dict]) -> str:
    body = []
    for row in rows:
        split = curve_split(row)
        best = (f"{_pct(row.get(f'best_{split}_adv_accuracy'))} ({row.get('best_epoch')})"
                if row.get(f"best_{split}_adv_accuracy") is not None else "-")
        clean = row.get("final_test_clean_accuracy", row.get("final_test_accuracy"))
        status = "done" if row.get("finished") else f"running ({row.get('epochs_done')} ep)"
        body.append([Path(row["dir"]).name or row["dir"], split, best,
                     _pct(row.get(f"final_{split}_adv_accuracy")), _pct(row.get("gap")),
                     _pct(row.get("smoothed_gap")),
                     _pct(row.get(f"early_stopped_{split}_adv_accuracy")), _pct(clean),
                     _pct(row.get("final_pgd20_test_adv_accuracy")), status])
    return format_table(body, COMPARE_HEADER)


def plot_comparison(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike,
                    labels: Sequence[str] | None = None, title: str = "") -> Any:
    """One figure: robust accuracy per epoch of every run (its test curve, or its
    development curve when it logs that instead), and T / rho of the runs that log
    them. Every evaluation is a marker, so a run evaluated once still shows.

    Returns:
        The (closed) matplotlib figure, written to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    experiment = _library("experiment")
    histories = [experiment.read_history(d) for d in run_dirs]
    names = list(labels) if labels is not None else [Path(d).name for d in run_dirs]
    calibrated = [i for i, h in enumerate(histories) if experiment.records(h, "rho")]
    panels = 3 if calibrated else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    splits = set()
    for index, (history, name) in enumerate(zip(histories, names)):
        for key, split in (("test_adv_accuracy", "test"), ("dev_adv_accuracy", "development")):
            pairs = experiment.records(history, key)
            if pairs:
                epochs, values = zip(*pairs)
                axes[0, 0].plot(np.add(epochs, 1), values, "-o", label=name, markersize=3,
                                color=colors[index % len(colors)], linewidth=1.3)
                splits.add(split)
                break
    split = splits.pop() if len(splits) == 1 else "test or development"
    axes[0, 0].set(xlabel="epoch", ylabel=f"robust {split} accuracy",
                   title=title or f"robust {split} accuracy per epoch")
    for panel, key in ((1, "temperature"), (2, "rho")):
        if panel >= panels:
            break
        ax = axes[0, panel]
        for index in calibrated:
            pairs = experiment.records(histories[index], key)
            if pairs:
                epochs, values = zip(*pairs)
                ax.plot(np.add(epochs, 1), values, "-o", label=names[index], markersize=2.5,
                        color=colors[index % len(colors)], linewidth=1.2)
        ax.set(xlabel="epoch", title="T" if key == "temperature" else "rho")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for run_dir in args.runs:
        path = Path(run_dir)
        if not path.is_dir():
            parser.error(f"run directory not found: {run_dir}")
        if not ((path / "summary.json").is_file() or (path / "history.json").is_file()):
            parser.error(f"{run_dir} is not a run directory (no summary.json or "
                         "history.json; write one with 'advcal train --out DIR')")
    rows = compare_rows(args.runs)
    print(_compare_table(rows))
    print("\nAccuracies in %; best, final, gaps and early-stopped: the run's per-epoch PGD "
          "curve on the split in column 'curve' (test or dev); gap = best - final; smoothed "
          "gap = best 3-evaluation moving average - mean of the last 3; clean and PGD-20: "
          "the final model on the test split.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.no_figure:
        plot_comparison(args.runs, args.figure)
        print(f"figure: {args.figure}")
    return 0


#: The size options of data.load that a command's defaults may exceed, and their flags.
_SIZE_FLAGS = {"subset": "--subset", "validation_size": "--validation-size",
               "test_size": "--test-size"}


def flag_names(message: str, flags: dict[str, str] | None = None) -> str:
    """``message`` (the library's words) with each option named as its flag: the
    RunConfig fields with an underscore (``test_size`` -> ``--test-size``), or
    ``flags``; a count on the command line is never a fraction.

    Example:

        >>> flag_names("test_size must be a count in [0, 359] or a fraction in [0, 1], got 2000.",
        ...            {"test_size": "--n"})
        '--n must be a count in [0, 359], got 2000.'
    """
    if flags is None:
        flags = {name: "--" + name.replace("_", "-") for name, _ in run_fields() if "_" in name}
    message = message.replace(" or a fraction in [0, 1]", "")
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
    return message


_TOO_LARGE = re.compile(r"^(\w+) must be a count in \[0, (\d+)\]")


def _load_splits(parser: argparse.ArgumentParser, name: str,
                 loader: Callable[[dict], Any], sizes: dict[str, Any], typed: set[str],
                 download: bool = False, flags: dict[str, str] = _SIZE_FLAGS
                 ) -> tuple[dict[str, Any], Any, str | None]:
    """``(sizes, loader(sizes), note)``, where a size the user did not type (not in
    ``typed``) that exceeds the dataset is lowered to what there is, which ``note``
    says (for the caller to print once its checks pass; else ``None``); or a parser
    error naming the flag, or saying why the dataset cannot be
    had (and that ``--download`` fetches it), with the closest known names for a
    misspelt one."""
    data_lib = _library("data")
    sizes = dict(sizes)
    lowered = []
    while True:
        try:
            splits = loader(sizes)
            break
        except data_lib.DatasetNotAvailableError as error:
            close = dataset_suggestions(name)
            if close and name not in close:
                parser.error(f"unknown dataset {name!r}; did you mean {' or '.join(close)}?")
            hint = ("" if download else " Run again with --download to fetch it (needs "
                    "internet), or see the ways below.")
            parser.error(f"dataset {name!r} is not available on this machine.{hint}\n{error}")
        except ValueError as error:
            match = _TOO_LARGE.match(str(error))
            size = match and match.group(1)
            if not match or size not in sizes or size in typed or sizes[size] is None \
                    or int(match.group(2)) >= sizes[size]:
                parser.error(flag_names(str(error), flags))
            lowered.append(f"{flags[size]} {match.group(2)} (the default, {sizes[size]}, "
                           "is more than there is)")
            sizes[size] = int(match.group(2))
    note = f"{parser.prog}: {name}: {'; '.join(lowered)}" if lowered else None
    return sizes, splits, note


#: Datasets the loader reads without TFDS (besides the TFDS names themselves).
LOCAL_DATASETS = ("digits", "fashion_mnist", "mnist")


def dataset_suggestions(name: str, count: int = 3) -> list[str]:
    """The known dataset names closest to ``name`` (digits, fashion_mnist, mnist and
    the datasets registered in TensorFlow Datasets), best first.

    Example:

        >>> dataset_suggestions("fashion_mnsit")
        ['fashion_mnist']
    """
    names = list(LOCAL_DATASETS)
    try:
        import tensorflow_datasets as tfds

        names += tfds.list_builders(with_community_datasets=False)
    except Exception:  # noqa: BLE001 - without TFDS, suggest among the local names
        pass
    return difflib.get_close_matches(str(name), list(dict.fromkeys(names)), n=count,
                                     cutoff=0.6)


def _check_model_file(parser: argparse.ArgumentParser, path: str) -> None:
    """A parser error unless ``path`` is a Keras archive: what it is instead."""
    if not Path(path).exists():
        parser.error(f"model file not found: {path}")
    what = describe_file(path)
    if what is not None:
        parser.error(f"{path} is not a Keras model (.keras): it is {what}.")


def _load_model(parser: argparse.ArgumentParser, path: str, input_shape: tuple, dataset: str,
                command: str):
    """A classifier from ``path`` whose inputs match the dataset's images, or ``None``
    (after printing why) when the file cannot be loaded."""
    experiment = _library("experiment")
    try:
        model = experiment.load_classifier(path)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported plainly
        print(f"advcal {command}: error: cannot load {path}: {error}", file=sys.stderr)
        return None
    expected = tuple(getattr(model, "input_shape", (None,) + tuple(input_shape))[1:])
    if None not in expected and expected != tuple(input_shape):
        parser.error(f"the model {path} takes inputs of shape {expected} but {dataset} "
                     f"images have shape {tuple(input_shape)}")
    return model


def _pgd(parser: argparse.ArgumentParser, epsilon: float, **options: Any):
    """``PGD(epsilon, **options)``, or a parser error with the attack's reason."""
    try:
        return _library("attacks").PGD(epsilon, **options)
    except ValueError as error:
        parser.error(f"--epsilon {epsilon:g}: {error}")


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_model_file(parser, args.model)
    evaluation = _library("evaluation")
    attacks = [name.strip().lower() for name in args.attacks.split(",") if name.strip()]
    unknown = [name for name in attacks if name not in evaluation.ATTACK_NAMES]
    if not attacks or unknown:
        parser.error(f"unknown attack(s) {', '.join(unknown) or '(none given)'}; choose "
                     f"from {', '.join(evaluation.ATTACK_NAMES)}")
    _pgd(parser, args.epsilon)
    data_lib = _library("data")
    _, splits, note = _load_splits(
        parser, args.dataset, download=args.download, flags={"test_size": "--n"},
        sizes={"test_size": EVALUATE_N if args.n == _N_NOT_GIVEN else args.n},
        typed=set() if args.n == _N_NOT_GIVEN else {"test_size"},
        loader=lambda sizes: data_lib.load(args.dataset, seed=args.data_seed,
                                           download=args.download, **sizes))
    model = _load_model(parser, args.model, splits.input_shape, args.dataset, "evaluate")
    if model is None:
        return 1
    if note:
        print(note, flush=True)
    print(f"advcal evaluate: {args.model} on {len(splits.test[1])} {args.dataset} test "
          f"images, epsilon={args.epsilon:g}", flush=True)
    if args.autoattack:
        print(f"AutoAttack, version {args.version}", flush=True)
        result = _library("autoattack").autoattack(
            model, *splits.test, args.epsilon, version=args.version,
            batch_size=args.batch_size, seed=args.seed, progress=sys.stdout.isatty())
    else:
        result = evaluation.evaluate_robustness(
            model, splits.test, args.epsilon, attacks=attacks, steps=args.steps,
            n_queries=args.n_queries, restarts=args.restarts, batch_size=args.batch_size,
            seed=args.seed, individual=not args.cascade, verbose=False)
    print(result.table())
    if args.json:
        Path(args.json).write_text(result.to_json())
        print(f"wrote {args.json}")
    return 0


def _analyze(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for path in (args.reference, args.model):
        if path is not None:
            _check_model_file(parser, path)
    attack = _pgd(parser, args.epsilon, steps=args.steps, step_size=args.step_size)
    data_lib = _library("data")
    _, splits, _ = _load_splits(
        parser, args.dataset, download=args.download,
        sizes={"subset": args.subset, "validation_size": args.validation_size},
        typed={"subset", "validation_size"},
        loader=lambda sizes: data_lib.load(args.dataset, seed=args.data_seed,
                                           label_noise=args.label_noise,
                                           download=args.download, **sizes))
    models = [_load_model(parser, path, splits.input_shape, args.dataset, "analyze")
              if path is not None else None for path in (args.reference, args.model)]
    if models[0] is None or (args.model is not None and models[1] is None):
        return 1
    data = splits.split(args.split)
    print(f"advcal analyze: {len(data[1])} {args.dataset} {args.split} images, PGD-"
          f"{args.steps} epsilon={args.epsilon:g}, reference {args.reference}", flush=True)
    report = _library("analysis").measure_label_noise(
        models[0], data, splits.validation, attack, model=models[1],
        batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_noise.json").write_text(json.dumps(
        dict(report.to_dict(), dataset=args.dataset, split=args.split,
             reference=args.reference, model=args.model or args.reference,
             steps=args.steps, label_noise=args.label_noise), indent=2))
    report.plot_histogram(out / "label_noise.png",
                          title=f"{args.dataset} {args.split}, epsilon {args.epsilon:g}")
    print(report.table())
    print(f"\nTV = 1 - p(label); KL = -log p(label); p = the reference's calibrated "
          f"prediction.\nwrote {out}/label_noise.json, {out}/label_noise.png")
    return 0


def demo_config(name: str, labels: str, epochs: int, epsilon: float, seed: int, out: str,
                verbose: int, objective: str = "pgd_at", awp_gamma: float = 0.0):
    """The RunConfig of one demo run on digits (by default PGD-AT without AWP).

    Example:

        >>> demo_config("x", "hard", 30, 0.15, 0, "runs/demo", 0).eval_every
        3
    """
    return RunConfig(dataset="digits", subset=None, validation_size=None, test_size=None,
                     width=32, dense=128, epsilon=epsilon, train_steps=5,
                     train_step_size=2.5 * epsilon / 5, eval_steps=10,
                     eval_step_size=2.5 * epsilon / 10, eval_every=max(1, epochs // 10),
                     labels=labels, objective=objective, awp_gamma=awp_gamma, epochs=epochs,
                     batch_size=64, seed=seed,
                     final_steps=20, out=str(Path(out) / name), verbose=verbose)


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    experiment = _library("experiment")
    print(f"advcal demo: PGD-AT, the default recipe (TRADES + AWP) and calibrated PGD-AT on "
          f"scikit-learn digits (8x8), "
          f"epsilon={args.epsilon:g}, {args.epochs} epochs each, seed {args.seed}", flush=True)
    rows = []
    default_gamma = RunConfig().awp_gamma
    for name, labels, objective, awp_gamma, title in (
            ("pgd_at", "hard", "pgd_at", 0.0, "PGD-AT (hard labels)"),
            ("default", "hard", "trades", default_gamma, "the default: TRADES + AWP"),
            ("calibrated", "calibrated", "pgd_at", 0.0, "calibrated PGD-AT (swa teacher)")):
        config = demo_config(name, labels, args.epochs, args.epsilon, args.seed, args.out,
                             args.verbose, objective, awp_gamma)
        print(f"training {title} ...", flush=True)
        summary = experiment.run(config)
        rows.append([title, _pct(summary.get("final_test_clean_accuracy")),
                     _pct(summary.get("final_pgd20_test_adv_accuracy")),
                     f"{_pct(summary.get('best_test_adv_accuracy'))} "
                     f"({summary.get('best_epoch')})",
                     _pct(summary.get("final_test_adv_accuracy")),
                     "-" if summary.get("final_temperature") is None
                     else f"{summary['final_temperature']:.2f}",
                     "-" if summary.get("final_rho") is None else f"{summary['final_rho']:.2f}",
                     f"{summary.get('wall_seconds', 0):.0f}"])
    print()
    print(format_table(rows, ["method", "clean %", "PGD-20 %", "best PGD-10 % (epoch)",
                              "final PGD-10 %", "T", "rho", "seconds"]))
    print(f"\nTest split: {args.out}/*/summary.json; curves: {args.out}/*/curves.png")
    return 0


_COMMANDS = {"train": _train, "compare": _compare, "evaluate": _evaluate,
             "analyze": _analyze, "demo": _demo}


def _unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for ``extras``, with the closest options of ``parser``."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    known = [option for action in parser._actions  # noqa: SLF001 - argparse has no public list
             for option in action.option_strings]
    hints = [f"{extra} -> {close[0]}" for extra in extras if extra.startswith("-")
             for close in [difflib.get_close_matches(extra.split("=")[0], known, n=1)]
             if close]
    return message + (f" (did you mean: {', '.join(hints)}?)" if hints else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``advcal`` command line; returns the exit status (2: bad options,
    reported in one message on stderr before anything is written).

    Example:

        >>> main(["compare", "/no/such/run"])  # doctest: +SKIP
        2
    """
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        command = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        if extras:  # reported by the command's parser, with its own usage line
            command.error(_unrecognized(extras, command))
        return _COMMANDS[args.command](args, command)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
