"""The configuration of one training run (:class:`RunConfig`): what ``advcal train``
and the benchmarks pass to :func:`keras_advcal.experiment.run`.

It imports no TensorFlow, so that the command line lists its options, defaults and
choices at once; :mod:`keras_advcal.experiment` trains what it describes.

Example:

    >>> from keras_advcal.config import RunConfig
    >>> config = RunConfig(dataset="mnist", epsilon=0.3, objective="pgd_at")
    >>> config.validate().objective
    'pgd_at'
    >>> RunConfig.from_dict(config.to_dict()) == config
    True
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from keras_advcal.choices import (CALIBRATION_EXAMPLES, CURVE_SPLITS, FLOOR_EXAMPLES,
                                  LOSS_FORMS, LR_SCHEDULES, RULES, RUN_LABELS,
                                  RUN_OBJECTIVES, RUN_OPTIMIZERS, SELECTIONS,
                                  SURROGATE_EXAMPLES, TEACHER_KINDS, TWO_STAGE_EXAMPLES)


@dataclasses.dataclass
class RunConfig:
    """Everything one training run needs. Defaults: the benchmark protocol's setting
    (Fashion-MNIST, 500 images, small CNN, eps 0.1), trained with the library's default
    recipe, TRADES (beta 6) with one-hot labels and adversarial weight perturbation
    (gamma 0.01).

    Attributes:
        dataset: dataset name for :func:`keras_advcal.data.load`.
        subset: training subset size (``None``: the whole training pool).
        validation_size: held-out validation examples (``None``: the loader default).
        test_size: fixed random subset of the test split (``None``: all of it).
        data_seed: seed of the data splits (kept fixed across training seeds).
        development_size: examples of the training pool held out as the
            development split (0: none), where variants of the method are compared.
        test_seed: seed of the test subset's draw (``None``: ``data_seed``).
        test_offset: skip this many images of the seeded test permutation (test
            images that an earlier selection looked at).
        curve_split: the split of the per-epoch robust accuracy curve: ``"test"``
            (logged as ``test_adv_accuracy``) or ``"development"``
            (``dev_adv_accuracy``).
        curve_size: evaluate the per-epoch curve on the first ``curve_size`` images
            of its split only (``None``: all of them).
        label_noise: fraction of training labels flipped.
        model: model name for :func:`keras_advcal.models.get`.
        width, dense, batchnorm: small CNN options (ignored by other models);
            ``width`` is also PreActResNet-18's stem width (64 in the original).
        epsilon: L-inf radius on [0, 1] pixels.
        train_steps, train_step_size: training PGD (random start).
        eval_steps, eval_step_size: PGD of the validation metric, the calibration
            and the per-epoch test curve.
        eval_every: evaluate robust test accuracy every this many epochs (and at
            the last epoch).
        labels: ``"hard"`` (one-hot labels), ``"calibrated"`` or ``"adr"`` (the
            ADR-style baseline: EMA teacher on the clean input, annealed T and rho).
        objective: the training objective: ``"pgd_at"``, ``"trades"`` or ``"mart"``
            (:mod:`keras_advcal.objectives`); calibrated labels replace the one-hot
            label in its supervised term.
        beta: the ``beta`` of TRADES or MART (``None``: the objective's default, 6
            and 5).
        awp_gamma: adversarial weight perturbation of this relative size before
            every descent step (:class:`keras_advcal.AWP`; default 0.01, part of the
            default recipe; 0: none).
        rectified_targets: per-example ratios that keep every calibrated target on
            its label (``AdvCalTrainer(rectified_targets=True)``; calibrate with
            ``acc_floor=0``).
        teacher: teacher kind of the calibrated trainer: best, swa, ema or fixed.
        loss_form: ``"kd"`` or ``"soft"``.
        rule: calibration rule: published, confidence or fixed.
        acc_floor: accuracy floor of the published rule.
        selection: how the published rule picks its grid point: minimum (default:
            the literal rule) or one_standard_error.
        fixed_temperature, fixed_rho: ``T`` and ``rho`` of ``rule="fixed"``.
        swa_start_epoch: first epoch (from 0) averaged into an swa teacher.
        calibration_size: calibrate T and rho on the first ``calibration_size``
            validation images only (``None``: all of them); early stopping and the
            ``best`` teacher still read the whole validation split.
        surrogate_examples: where the surrogate's logits are taken: on the PGD
            examples made against the teacher (``"teacher"``) or on its own
            (``"surrogate"``).
        separate_surrogate_temperature: scale the surrogate by its own fitted
            temperature in the calibration's NLL.
        average_fits: use the mean of the successful fits of T and rho so far.
        floor_examples: where the accuracy floor is measured: ``"training"`` (the
            teacher's logits from the training steps) or ``"attack"`` (PGD examples of
            the training images made against the teacher).
        reuse_validation_examples: keep the calibration's validation PGD examples
            while they still fit the teacher (``calibration_examples="attack"``).
        calibration_examples: ``"validation_pass"`` (the teacher's and the student's
            logits on the PGD examples of the validation pass, made against the
            student; no attack of the calibration's own; at most the first 1,024
            validation images) or ``"attack"`` (PGD examples made against the teacher
            by the calibration).
        ema_decay: decay of the ema teacher (and of the ADR teacher).
        teacher_model: ``.keras`` file of a trained teacher (``teacher="fixed"``).
        surrogate_model: ``.keras`` file of the overfitted model of the two-stage
            recipe; when given with a fixed teacher, T and rho are calibrated once
            before training (``calibrate_teacher``) and kept fixed.
        two_stage_examples: which model that one-off calibration makes its PGD
            examples against: ``"surrogate"`` (the student's stand-in, as in
            training) or ``"teacher"`` (earlier versions; drives rho to ~0).
        adr_temperature: ``(start, end)`` of the ADR cosine temperature schedule.
        adr_rho: ``(start, end)`` of the ADR cosine rho schedule.
        epochs, batch_size: training epochs and batch size.
        learning_rate: the (initial) learning rate.
        optimizer: ``"adam"`` (the default) or ``"sgd"`` (with ``momentum``; the
            standard adversarial-training recipe is SGD, momentum 0.9, weight decay
            5e-4, learning rate 0.1 dropped tenfold twice).
        momentum: momentum of ``optimizer="sgd"``.
        weight_decay: weight decay of the optimizer (Keras' decoupled form: each step
            subtracts ``learning_rate * weight_decay * w``; 0: none).
        lr_schedule: ``"constant"`` or ``"piecewise"`` (the rate drops tenfold at each
            fraction of the training in ``lr_drops``).
        lr_drops: comma-separated fractions of the epochs at which ``"piecewise"``
            divides the learning rate by 10 (default ``"0.5,0.75"``: epochs 100 and 150
            of 200, as in Rice et al. 2020).
        seed: seed of the initialisation, shuffling and attacks.
        final_steps, final_step_size: the final PGD robust test accuracy (PGD-20).
        final_attacks: extra attacks of :func:`evaluate_robustness` run on the final
            model (comma separated, e.g. ``"apgd-ce,apgd-t"``; empty: none).
        final_attack_steps: steps of those attacks.
        final_square_queries: queries of the Square attack among them.
        final_strong_attacks: comma-separated attacks that continue the cascade on
            the first ``final_strong_size`` images of each final split only, on the
            examples that survived the others (e.g. ``"apgd-t,square"``: expensive
            attacks on a fixed subset). Reported as
            ``final_strong_<split>_adv_accuracy``, the worst case of every attack on
            that subset.
        final_strong_size: images of each final split that the strong attacks see
            (``None``: all).
        final_cascade: run each final attack only on the examples the previous
            ones left (cheaper; the worst case is the same, the per-attack accuracy
            alone is not measured).
        final_splits: comma-separated splits of the final evaluation (``test``,
            ``development``); per-example correctness of every evaluated model is
            written to ``correctness_<model>.npz``.
        weight_average: also keep the uniform average of the student's weights
            from ``swa_start_epoch`` on (:class:`keras_advcal.averaging.WeightAverage`)
            and evaluate it at the end like the final model.
        checkpoint_best: save ``best.keras`` (best validation robust accuracy).
        threads: TensorFlow intra/inter-op threads (0: TensorFlow's default).
        out: output directory.
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
    """

    dataset: str = "fashion_mnist"
    subset: int | None = 500
    validation_size: int | None = 500
    test_size: int | None = 2000
    data_seed: int = 0
    development_size: int = 0
    test_seed: int | None = None
    test_offset: int = 0
    curve_split: str = "test"
    curve_size: int | None = None
    label_noise: float = 0.0
    model: str = "cnn"
    width: int = 32
    dense: int = 256
    batchnorm: bool = False
    epsilon: float = 0.1
    train_steps: int = 5
    train_step_size: float = 0.05
    eval_steps: int = 10
    eval_step_size: float = 0.025
    eval_every: int = 3
    labels: str = "hard"
    objective: str = "trades"
    beta: float | None = None
    awp_gamma: float = 0.01
    rectified_targets: bool = False
    teacher: str = "swa"
    loss_form: str = "kd"
    rule: str = "published"
    acc_floor: float = 0.9
    selection: str = "minimum"
    fixed_temperature: float = 2.0
    fixed_rho: float = 0.5
    swa_start_epoch: int = 0
    calibration_size: int | None = None
    surrogate_examples: str = "teacher"
    separate_surrogate_temperature: bool = False
    average_fits: bool = False
    floor_examples: str = "training"
    reuse_validation_examples: bool = True
    calibration_examples: str = "validation_pass"
    ema_decay: float = 0.995
    teacher_model: str | None = None
    surrogate_model: str | None = None
    two_stage_examples: str = "surrogate"
    adr_temperature: tuple[float, float] = (2.5, 2.0)
    adr_rho: tuple[float, float] = (0.7, 0.95)
    epochs: int = 120
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_drops: str = "0.5,0.75"
    seed: int = 0
    final_steps: int = 20
    final_step_size: float | None = None
    final_attacks: str = ""
    final_attack_steps: int = 100
    final_square_queries: int = 5000
    final_strong_attacks: str = ""
    final_strong_size: int | None = None
    final_cascade: bool = False
    final_splits: str = "test"
    weight_average: bool = False
    checkpoint_best: bool = False
    threads: int = 0
    out: str = "runs/advcal"
    verbose: int = 1

    def __post_init__(self):
        self.adr_temperature = tuple(float(v) for v in self.adr_temperature)
        self.adr_rho = tuple(float(v) for v in self.adr_rho)

    def validate(self) -> "RunConfig":
        """Raises ``ValueError`` with a clear message for an invalid setting.

        Example:

            >>> RunConfig(epsilon=-1).validate()
            Traceback (most recent call last):
            ...
            ValueError: epsilon must be >= 0, got -1.
        """
        def check(ok: bool, message: str):
            if not ok:
                raise ValueError(message)

        check(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}.")
        check(not self.rectified_targets or self.labels == "calibrated",
              "rectified_targets needs labels='calibrated'.")
        for name in ("train_step_size", "eval_step_size", "learning_rate", "acc_floor",
                     "label_noise", "fixed_rho"):
            value = getattr(self, name)
            check(value >= 0, f"{name} must be >= 0, got {value}.")
        for name in ("train_steps", "eval_steps", "eval_every", "epochs", "batch_size",
                     "final_steps", "final_attack_steps"):
            value = getattr(self, name)
            check(int(value) == value and value >= 1,
                  f"{name} must be a positive integer, got {value}.")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}.")
        check(self.development_size >= 0 and self.test_offset >= 0,
              "development_size and test_offset must be >= 0.")
        for name, allowed in FIELD_CHOICES.items():
            value = getattr(self, name)
            check(value in allowed, f"{name} must be one of {allowed}, got {value!r}.")
        check(self.curve_size is None or self.curve_size >= 1,
              f"curve_size must be a positive integer or None, got {self.curve_size}.")
        check(self.final_square_queries >= 1, "final_square_queries must be >= 1.")
        check(self.final_strong_size is None or self.final_strong_size >= 1,
              "final_strong_size must be a positive integer or None.")
        splits = self.final_split_names
        check(bool(splits) and all(name in CURVE_SPLITS for name in splits),
              f"final_splits must name splits among {CURVE_SPLITS}, got {self.final_splits!r}.")
        if "development" in splits or self.curve_split == "development":
            check(self.development_size > 0, "a development curve or final evaluation needs "
                  "development_size > 0.")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}.")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}.")
        try:
            drops = self.lr_drop_fractions
        except ValueError:
            drops = None
        check(drops is not None and all(0 < d < 1 for d in drops)
              and list(drops) == sorted(set(drops)),
              "lr_drops must be increasing comma-separated fractions in (0, 1), got "
              f"{self.lr_drops!r}.")
        check(self.labels != "adr" or self.objective == "pgd_at", "labels='adr' is the ADR "
              "baseline, which trains with the pgd_at objective, not "
              f"{self.objective!r}: set objective='pgd_at' (on the command line: --labels adr "
              "--objective pgd_at).")
        if self.beta is not None:
            check(self.objective in ("trades", "mart"),
                  f"beta applies to objective trades or mart, not {self.objective!r}.")
            check(math.isfinite(self.beta) and self.beta >= 0,
                  f"beta must be >= 0, got {self.beta}.")
        check(math.isfinite(self.awp_gamma) and self.awp_gamma >= 0,
              f"awp_gamma must be >= 0, got {self.awp_gamma}.")
        check(self.acc_floor <= 1.0, f"acc_floor must be in [0, 1], got {self.acc_floor}.")
        check(self.fixed_rho <= 1.0, f"fixed_rho must be in [0, 1], got {self.fixed_rho}.")
        check(self.fixed_temperature > 0, "fixed_temperature must be > 0, got "
              f"{self.fixed_temperature}.")
        check(0.0 < self.ema_decay < 1.0, f"ema_decay must be in (0, 1), got {self.ema_decay}.")
        check(self.label_noise < 1.0, f"label_noise must be < 1, got {self.label_noise}.")
        check(self.swa_start_epoch >= 0, "swa_start_epoch must be >= 0.")
        check(self.calibration_size is None or self.calibration_size >= 1,
              f"calibration_size must be a positive integer or None, got "
              f"{self.calibration_size}.")
        if self.teacher == "fixed" and self.labels == "calibrated":
            check(self.teacher_model is not None,
                  "teacher='fixed' needs teacher_model: the .keras file of a trained teacher.")
        if self.surrogate_model is not None:
            check(self.teacher == "fixed" and self.labels == "calibrated",
                  "surrogate_model (the two-stage recipe) needs labels='calibrated' and "
                  "teacher='fixed'.")
        for path in (self.teacher_model, self.surrogate_model):
            if path is not None:
                check(Path(path).is_file(), f"model file not found: {path}")
        check(len(self.adr_temperature) == 2 and min(self.adr_temperature) > 0,
              "adr_temperature must be two positive numbers (start, end).")
        check(len(self.adr_rho) == 2 and all(0 <= v <= 1 for v in self.adr_rho),
              "adr_rho must be two numbers in [0, 1] (start, end).")
        return self

    @property
    def lr_drop_fractions(self) -> tuple[float, ...]:
        """``lr_drops`` as numbers.

        Example:

            >>> RunConfig().lr_drop_fractions
            (0.5, 0.75)
        """
        return tuple(float(v) for v in self.lr_drops.split(",") if v.strip())

    def to_dict(self) -> dict:
        """A JSON-friendly dict."""
        out = dataclasses.asdict(self)
        out["adr_temperature"] = list(self.adr_temperature)
        out["adr_rho"] = list(self.adr_rho)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """Builds a config from a dict; unknown keys raise ``ValueError``.

        Example:

            >>> RunConfig.from_dict({"epochs": 3}).epochs
            3
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown RunConfig option(s): {', '.join(unknown)}.")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: dict) -> "RunConfig":
        """Builds the config of a run from what its directory recorded (``config.json``,
        ``training_done.json``), written by this or an earlier version.

        A stored config holds every option that existed when it was written; an option
        it lacks was added later. For most options that is harmless (their default
        reproduces what the library did before), but the default of a few has changed
        since they were added (:data:`ADDED_WITH`): a run written before
        ``objective`` existed trained PGD-AT, not today's default TRADES, and one
        written before ``awp_gamma`` existed had no weight perturbation. Those take the
        value they were added with; :meth:`from_dict` (a user's partial config) takes
        today's defaults.

        Example:

            >>> RunConfig.from_stored({"epochs": 3}).objective
            'pgd_at'
            >>> RunConfig.from_dict({"epochs": 3}).objective
            'trades'
        """
        return cls.from_dict({**ADDED_WITH, **values})

    @property
    def final_split_names(self) -> list[str]:
        """The splits of the final evaluation, in order."""
        return [name.strip() for name in self.final_splits.split(",") if name.strip()]

    @property
    def is_calibrated(self) -> bool:
        return self.labels in ("calibrated", "adr")

    def training_settings(self) -> dict:
        """The settings that determine the trained model: all but what the run prints,
        its threads and its final evaluation (:data:`NOT_TRAINING`).

        Example:

            >>> "final_attacks" in RunConfig().training_settings()
            False
        """
        return {key: value for key, value in self.to_dict().items()
                if key not in NOT_TRAINING}

    def ignored_options(self) -> list[tuple[str, str]]:
        """The options set away from their defaults that this run does not read, each
        with the setting that would read it: ``(field, "labels='calibrated'")``.

        A one-hot (``labels="hard"``) run ignores the calibrated targets' options, an
        Adam run the momentum, a constant rate its drops, PGD-AT the ``beta`` of
        TRADES and MART.

        Example:

            >>> RunConfig(labels="hard", teacher="fixed", momentum=0.5).ignored_options()
            [('teacher', "labels='calibrated'"), ('momentum', "optimizer='sgd'")]
            >>> RunConfig(labels="calibrated", teacher="fixed").ignored_options()
            []
        """
        default = RunConfig()
        calibrated = self.labels == "calibrated"
        reads = {name: (calibrated, "labels='calibrated'") for name in CALIBRATED_OPTIONS}
        reads.update(
            adr_temperature=(self.labels == "adr", "labels='adr'"),
            adr_rho=(self.labels == "adr", "labels='adr'"),
            ema_decay=(self.labels == "adr" or (calibrated and self.teacher == "ema"),
                       "labels='adr' or teacher='ema'"),
            swa_start_epoch=(self.weight_average or (calibrated and self.teacher == "swa"),
                             "weight_average=True or teacher='swa'"),
            momentum=(self.optimizer == "sgd", "optimizer='sgd'"),
            lr_drops=(self.lr_schedule == "piecewise", "lr_schedule='piecewise'"),
            beta=(self.objective != "pgd_at", "objective='trades' or 'mart'"))
        return [(field.name, reads[field.name][1]) for field in dataclasses.fields(self)
                if field.name in reads and not reads[field.name][0]
                and getattr(self, field.name) != getattr(default, field.name)]


#: The fields that take one of a list of names, and the names each accepts.
FIELD_CHOICES = {"curve_split": CURVE_SPLITS, "labels": RUN_LABELS,
                 "objective": RUN_OBJECTIVES, "optimizer": RUN_OPTIMIZERS,
                 "lr_schedule": LR_SCHEDULES, "teacher": TEACHER_KINDS,
                 "loss_form": LOSS_FORMS, "rule": RULES, "selection": SELECTIONS,
                 "floor_examples": FLOOR_EXAMPLES, "surrogate_examples": SURROGATE_EXAMPLES,
                 "calibration_examples": CALIBRATION_EXAMPLES,
                 "two_stage_examples": TWO_STAGE_EXAMPLES}

#: Options whose default has changed since they were added, with the value they were
#: added with: what a stored run config that lacks them (written before they existed)
#: means (:meth:`RunConfig.from_stored`). Options added with today's default need no
#: entry.
ADDED_WITH = {"objective": "pgd_at", "awp_gamma": 0.0}

#: RunConfig fields that do not change the trained model: what it prints, its threads,
#: and the final evaluation (a trained run evaluated with other attacks is not retrained).
NOT_TRAINING = ("verbose", "threads", "final_steps", "final_step_size", "final_attacks",
                "final_attack_steps", "final_square_queries", "final_cascade",
                "final_splits", "final_strong_attacks", "final_strong_size")
#: The RunConfig fields that only the calibrated targets read (``labels="calibrated"``).
CALIBRATED_OPTIONS = (
    "teacher", "loss_form", "rule", "acc_floor", "selection", "fixed_temperature",
    "fixed_rho", "teacher_model", "surrogate_model", "calibration_size",
    "surrogate_examples", "separate_surrogate_temperature", "average_fits",
    "floor_examples", "reuse_validation_examples", "calibration_examples",
    "two_stage_examples")
