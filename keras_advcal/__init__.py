"""keras-advcal: adversarial training with calibrated soft targets, for Keras 3 / TensorFlow.

Adversarial examples keep the one-hot label of their clean input although the
perturbation changes their true label distribution; fitting that noisy label is what
makes robust test accuracy peak and fall (robust overfitting). ``AdvCalTrainer`` fits
calibrated soft targets instead, with the temperature and mixing ratio fitted on
held-out data every epoch by the ``CalibratedTeacher`` callback.

``import keras_advcal`` does not import TensorFlow (so that the ``advcal`` command
starts at once): the names below are imported when first used, all together, which
also registers the package's Keras classes for ``keras.models.load_model``.

Example:

    >>> import keras_advcal
    >>> keras_advcal.__version__
    '0.1.0'
    >>> keras_advcal.AdvCalTrainer.__name__
    'AdvCalTrainer'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Each public name and the module it comes from (a module itself when they match).
_EXPORTS = {
    "adr": "keras_advcal.adr",
    "data": "keras_advcal.data",
    "evaluation": "keras_advcal.evaluation",
    "models": "keras_advcal.models",
    "objectives": "keras_advcal.objectives",
    "reference": "keras_advcal.reference",
    "WeightAverage": "keras_advcal.averaging",
    "LabelNoiseReport": "keras_advcal.analysis",
    "measure_label_noise": "keras_advcal.analysis",
    "Attack": "keras_advcal.attacks",
    "FGSM": "keras_advcal.attacks",
    "PGD": "keras_advcal.attacks",
    "AWP": "keras_advcal.awp",
    "ClassifierCheckpoint": "keras_advcal.callbacks",
    "CalibrationResult": "keras_advcal.calibration",
    "calibrate": "keras_advcal.calibration",
    "fit_temperature": "keras_advcal.calibration",
    "InputError": "keras_advcal.checks",
    "RobustAccuracyTracker": "keras_advcal.evaluation",
    "RobustnessResult": "keras_advcal.evaluation",
    "evaluate_robustness": "keras_advcal.evaluation",
    "summarize_history": "keras_advcal.evaluation",
    "MART": "keras_advcal.objectives",
    "Objective": "keras_advcal.objectives",
    "PGDAT": "keras_advcal.objectives",
    "TRADES": "keras_advcal.objectives",
    "CalibratedTeacher": "keras_advcal.teacher",
    "calibrate_teacher": "keras_advcal.teacher",
    "AdvCalTrainer": "keras_advcal.trainer",
}

__all__ = sorted(_EXPORTS, key=str.lower) + ["__version__"]


def _is_module(name: str) -> bool:
    return _EXPORTS[name].rsplit(".", 1)[1] == name


def __getattr__(name: str) -> Any:
    """Imports the public API on first use of one of its names (PEP 562): a submodule
    alone (the package's own modules import each other this way), any other name
    with all the rest."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_advcal' has no attribute {name!r}")
    if _is_module(name):
        return importlib.import_module(_EXPORTS[name])
    for export, module_name in _EXPORTS.items():
        module = importlib.import_module(module_name)
        globals()[export] = module if _is_module(export) else getattr(module, export)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
