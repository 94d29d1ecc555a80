"""``import keras_advcal`` alone, in a fresh interpreter: cheap (no TensorFlow), enough to
``keras.models.load_model`` a saved trainer whichever is imported first, and every
public submodule reachable as an attribute."""

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import keras_advcal
from keras_advcal import AWP, PGD, AdvCalTrainer, objectives

from tests.conftest import tiny_cnn

PACKAGE = Path(keras_advcal.__file__).parent


def _python(code: str) -> str:
    """Runs ``code`` in a fresh interpreter; its stdout (fails on a non-zero exit)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def saved_trainer(tmp_path_factory):
    """A trained AdvCalTrainer with TRADES and AWP (classes of three modules), saved."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[:64] / 16.0).astype("float32")[..., None]
    y = data.target[:64].astype("int32")
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.05, 2),
                            objective=objectives.get("trades", beta=None),
                            weight_perturbation=AWP(0.004), seed=1, labels="calibrated")
    trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("saved") / "trainer.keras"
    trainer.save(path)
    return path


@pytest.mark.parametrize("imports", [
    "import keras_advcal\nimport keras",
    "import keras\nimport keras_advcal",
    "import keras_advcal\nimport tensorflow as tf\nkeras = tf.keras",
], ids=["package-first", "keras-first", "tensorflow-first"])
def test_import_keras_advcal_is_enough_to_load_a_saved_trainer(saved_trainer, imports):
    out = _python(f"{imports}\n"
                  f"model = keras.models.load_model({str(saved_trainer)!r}, safe_mode=True)\n"
                  "print(type(model).__name__, model.objective.name, "
                  "model.weight_perturbation.gamma, type(model.attack).__name__)")
    assert out.split() == ["AdvCalTrainer", "trades", "0.004", "PGD"]


def test_import_keras_advcal_imports_no_tensorflow_and_reaches_every_submodule():
    public = sorted(info.name for info in pkgutil.iter_modules([str(PACKAGE)])
                    if not info.name.startswith("_"))
    assert {"attacks", "trainer", "teacher", "calibration", "cli", "experiment"} <= set(public)
    out = _python("import sys, types\n"
                  "import keras_advcal as kac\n"
                  "print('tensorflow' in sys.modules)\n"
                  "print(kac.attacks.PGD(0.1, 0.05, 2).steps)\n"
                  f"for name in {public!r}:\n"
                  "    assert isinstance(getattr(kac, name), types.ModuleType), name\n"
                  f"print(all(name in dir(kac) for name in {public!r}))\n"
                  "print(hasattr(kac, 'no_such_module'), hasattr(kac, '_private'))")
    assert out.split() == ["False", "2", "True", "False", "False"]


def test_every_module_that_registers_keras_classes_is_imported_with_keras():
    registering = sorted(path.stem for path in PACKAGE.glob("*.py")
                         if re.search(r"register_keras_serializable\(", path.read_text()))
    assert sorted(keras_advcal._KERAS_MODULES) == registering  # noqa: SLF001
