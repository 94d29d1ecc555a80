"""The names of the library's choices: what each option of a run accepts.

Kept apart from the modules that implement them so that the run configuration
(:mod:`keras_advcal.config`) and the ``advcal`` command line read them without
importing TensorFlow. The implementing modules import their names from here
(``keras_advcal.calibration.RULES`` is :data:`RULES`).

Example:

    >>> from keras_advcal import choices
    >>> choices.RULES
    ('published', 'confidence', 'fixed')
    >>> "trades" in choices.RUN_OBJECTIVES
    True
"""

from __future__ import annotations

#: Label modes of a run: the trainer's two, plus the ADR-style baseline.
RUN_LABELS = ("hard", "calibrated", "adr")
#: Objectives of a run (the ADR baseline's own objective comes with labels="adr").
RUN_OBJECTIVES = ("pgd_at", "trades", "mart")
#: Splits a run can evaluate per epoch and at the end.
CURVE_SPLITS = ("test", "development")
#: Optimizers and learning-rate schedules of a run.
RUN_OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "piecewise")
#: The models of :func:`keras_advcal.models.get`, by name.
MODEL_NAMES = ("cnn", "preact_resnet18", "small_cnn", "wide_resnet", "wrn")

#: Calibration rules and how the published rule picks its grid point
#: (:mod:`keras_advcal.calibration`).
RULES = ("published", "confidence", "fixed")
SELECTIONS = ("one_standard_error", "minimum")
#: How calibrated targets enter the loss (:mod:`keras_advcal.targets`).
LOSS_FORMS = ("kd", "soft")

#: The teacher kinds of :class:`keras_advcal.CalibratedTeacher`.
TEACHER_KINDS = ("best", "swa", "ema", "fixed")
#: Where the calibration's surrogate logits are taken.
SURROGATE_EXAMPLES = ("teacher", "surrogate")
#: Which model ``calibrate_teacher`` makes its PGD examples against.
TWO_STAGE_EXAMPLES = ("surrogate", "teacher")
#: Where the accuracy floor is measured.
FLOOR_EXAMPLES = ("training", "attack")
#: Where the calibration's held-out logits come from.
CALIBRATION_EXAMPLES = ("validation_pass", "attack")

#: The cascades of :func:`keras_advcal.autoattack`.
AUTOATTACK_VERSIONS = ("standard", "fast")
