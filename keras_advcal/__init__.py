"""keras-advcal: adversarial training that does not overfit, for Keras 3 / TensorFlow.

Adversarial examples keep the one-hot label of their clean input although the
perturbation changes their true label distribution; fitting that noisy label is what
makes robust test accuracy peak and fall (robust overfitting). ``AdvCalTrainer`` fits
calibrated soft targets instead, with the temperature and mixing ratio fitted on
held-out data every epoch by the ``CalibratedTeacher`` callback.

Example:

    >>> import keras_advcal
    >>> keras_advcal.__version__
    '0.1.0'
"""

from keras_advcal import data, evaluation, models
from keras_advcal.analysis import LabelNoiseReport, measure_label_noise
from keras_advcal.attacks import FGSM, PGD, Attack
from keras_advcal.calibration import CalibrationResult, calibrate, fit_temperature
from keras_advcal.checks import InputError
from keras_advcal.evaluation import (RobustAccuracyTracker, RobustnessResult,
                                     evaluate_robustness, summarize_history)
from keras_advcal.teacher import CalibratedTeacher, calibrate_teacher
from keras_advcal.trainer import AdvCalTrainer

__version__ = "0.1.0"

__all__ = [
    "AdvCalTrainer",
    "Attack",
    "calibrate",
    "calibrate_teacher",
    "CalibratedTeacher",
    "CalibrationResult",
    "data",
    "evaluate_robustness",
    "evaluation",
    "FGSM",
    "fit_temperature",
    "InputError",
    "LabelNoiseReport",
    "measure_label_noise",
    "models",
    "PGD",
    "RobustAccuracyTracker",
    "RobustnessResult",
    "summarize_history",
    "__version__",
]
