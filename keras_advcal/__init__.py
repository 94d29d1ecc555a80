"""keras-advcal: adversarial training that resists robust overfitting, for Keras 3 / TensorFlow.

Adversarial examples keep the one-hot label of their clean input although the
perturbation changes their true label distribution; fitting that noisy label is what
makes robust test accuracy peak and fall (robust overfitting). ``AdvCalTrainer`` trains
any Keras classifier against PGD: by default with TRADES, one-hot labels and
adversarial weight perturbation (``AWP(gamma=0.01)``; the recipe the library's study of
recipes picked on its development split), or with calibrated soft targets
(``labels="calibrated"``), whose temperature and mixing ratio the ``CalibratedTeacher``
callback fits on held-out data every epoch. ``weight_perturbation=None`` turns the
weight perturbation off (plain TRADES; with ``objective="pgd_at"``, Madry et al.'s
PGD-AT).

``import keras_advcal`` does not import TensorFlow (so that the ``advcal`` command
starts at once). The names below, and every submodule (``keras_advcal.attacks``...),
are imported when first used. The package's Keras classes (``AdvCalTrainer``, the
attacks, the objectives) register themselves with Keras as soon as Keras is imported,
before or after this package, so that ``keras.models.load_model`` reads anything the
library saved after ``import keras_advcal`` alone.

Example:

    >>> import keras_advcal
    >>> keras_advcal.__version__
    '0.1.0'
    >>> keras_advcal.AdvCalTrainer.__name__
    'AdvCalTrainer'
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import pkgutil
import sys
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
    "FAB": "keras_advcal.fab",
    "autoattack": "keras_advcal.autoattack",  # the module, callable as the function
}

__all__ = sorted(_EXPORTS, key=str.lower) + ["__version__"]


#: The modules that register Keras classes (``keras.saving.register_keras_serializable``):
#: imported as soon as Keras is, so that ``keras.models.load_model`` finds their classes.
_KERAS_MODULES = ("adr", "apgd", "attacks", "awp", "fab", "objectives", "square", "trainer")


def _is_module(name: str) -> bool:
    return _EXPORTS[name].rsplit(".", 1)[1] == name


def _is_submodule(name: str) -> bool:
    """Whether ``keras_advcal.<name>`` is a public module of the package."""
    return (not name.startswith("_") and name.isidentifier()
            and importlib.util.find_spec(f"{__name__}.{name}") is not None)


def __getattr__(name: str) -> Any:
    """Imports the public API on first use of one of its names (PEP 562): a submodule
    alone (``keras_advcal.attacks``; the package's own modules import each other this
    way), any other name with all the rest.

    Example:

        >>> import keras_advcal
        >>> keras_advcal.attacks.PGD.__name__
        'PGD'
    """
    if name not in _EXPORTS:
        if _is_submodule(name):
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'keras_advcal' has no attribute {name!r}")
    if _is_module(name):
        return importlib.import_module(_EXPORTS[name])
    for export, module_name in _EXPORTS.items():
        module = importlib.import_module(module_name)
        globals()[export] = module if _is_module(export) else getattr(module, export)
    return globals()[name]


def __dir__() -> list[str]:
    submodules = [info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_")]
    return sorted(set(globals()) | set(_EXPORTS) | set(submodules))


# ------------------------------------------------- Keras classes, registered on time
# Keras finds a saved object's class only among the registered ones, and a class
# registers when its module is imported. Importing them here would import TensorFlow
# (seconds) for every `advcal --help`; so they are imported once Keras is, right after
# the import of keras, tensorflow or a module of this package completes with none of
# them still half-initialised (keras and tensorflow import each other).
_WATCHED = ("keras", "tensorflow")


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _watched(name: str) -> bool:
    """keras, tensorflow, their submodules and this package's modules."""
    return name.split(".")[0] in _WATCHED or name.startswith(f"{__name__}.")


def _register_keras_classes(just_loaded: str = "") -> None:
    """Imports :data:`_KERAS_MODULES` once Keras is imported and neither Keras,
    TensorFlow nor a module of this package is still initialising (``just_loaded``,
    whose code has just run, excepted)."""
    if _KerasImportHook.done or "keras" not in sys.modules:
        return
    if any(_watched(name) and _initializing(name) for name in list(sys.modules)
           if name != just_loaded):
        return
    _KerasImportHook.done = True
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not isinstance(finder, _KerasImportHook)]
    for module in _KERAS_MODULES:
        importlib.import_module(f"{__name__}.{module}")


class _ThenRegister(importlib.abc.Loader):
    """A module's own loader, then :func:`_register_keras_classes`."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader  # the real one again
        _register_keras_classes(just_loaded=module.__name__)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """Finds keras, tensorflow and this package's modules with the other finders and
    runs :func:`_register_keras_classes` after each of them has loaded."""

    done = False

    def find_spec(self, fullname, path=None, target=None):
        if self.done or not (fullname in _WATCHED or fullname.startswith(f"{__name__}.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenRegister(spec.loader)
        return spec


if "keras" in sys.modules and not _initializing("keras"):
    _KerasImportHook.done = True
    for _module in _KERAS_MODULES:
        importlib.import_module(f"{__name__}.{_module}")
else:
    sys.meta_path.insert(0, _KerasImportHook())
