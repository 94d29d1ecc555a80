"""The choice lists live in one TensorFlow-free module and the implementing modules
use those very objects."""

import subprocess
import sys

from keras_advcal import autoattack, calibration, choices, experiment, models, targets, teacher


def test_implementing_modules_use_the_same_lists():
    assert calibration.RULES is choices.RULES
    assert calibration.SELECTIONS is choices.SELECTIONS
    assert targets.LOSS_FORMS is choices.LOSS_FORMS
    assert teacher.TEACHER_KINDS is choices.TEACHER_KINDS
    assert teacher.CALIBRATION_EXAMPLES is choices.CALIBRATION_EXAMPLES
    assert experiment.RUN_LABELS is choices.RUN_LABELS
    assert autoattack.VERSIONS is choices.AUTOATTACK_VERSIONS


def test_model_names_are_the_registry():
    assert list(choices.MODEL_NAMES) == models.available()


def test_choices_and_config_import_no_tensorflow():
    code = ("import sys\nimport keras_advcal.config, keras_advcal.choices\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
