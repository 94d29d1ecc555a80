"""Times the README's quick start, as written, and estimates its full-size version.

The quick start is the first ``python`` block under "## Quick start" in README.md. This
script runs that block unchanged (in a temporary folder, so the saved model lands
there) and prints the wall time, the time of each epoch and the machine it ran on.
With ``--full-epochs N`` it then runs the full-size variant (the sizes of
:data:`FULL_SIZE` substituted into the same block) for ``N`` epochs only, and
estimates the time of its ``FULL_EPOCHS`` epochs from the measured ones: the first
epoch (which includes tracing) plus ``FULL_EPOCHS - 1`` times the mean of the others.

Run from the repository root::

    python tutorials/scripts/time_quickstart.py --full-epochs 2

With ``--autoattack`` it then runs the standard AutoAttack
(:func:`keras_advcal.autoattack.autoattack`: APGD-CE, APGD-T, FAB-T, Square-5000) on the
classifier the quick start trained, on its 1,000 test images, and prints the time of
each attack and the robust accuracy.

The README's statement of the time is written from this output by hand; the machine
and its load are part of the number.

Example:

    >>> code = quick_start_code(README.read_text())
    >>> "trainer.fit(" in code and "full-size" not in code
    True
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: The quick start's settings and the full-size ones that replace them (each must
#: occur exactly once in the README's block).
FULL_SIZE = {
    "subset=1000": "subset=5000",
    "validation_size=500": "validation_size=1000",
    "step_size=0.05, steps=5": "step_size=0.025, steps=10",
}
FULL_EPOCHS = 30
EPOCHS = re.compile(r"epochs=(\d+)")
CALLBACKS = "callbacks=[teacher]"


def quick_start_code(readme: str) -> str:
    """The first ``python`` code block after the "## Quick start" heading.

    Args:
        readme: the text of README.md.

    Returns:
        The block's source.

    Example:

        >>> quick_start_code("## Quick start\\n\\n```python\\nx = 1\\n```\\n")
        'x = 1\\n'
    """
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    if match is None:
        raise ValueError("README.md has no python block under '## Quick start'.")
    return match.group(1)


def _replace_once(code: str, old: str, new: str) -> str:
    if code.count(old) != 1:
        raise ValueError(f"{old!r} occurs {code.count(old)} times in the quick start, "
                         "expected once: update this script with the README.")
    return code.replace(old, new)


def timed(code: str) -> str:
    """``code`` with the epoch timer ``_EPOCH_TIMER`` added to ``fit``'s callbacks (or
    given as its only callback when the quick start passes none).

    Example:

        >>> timed("fit(callbacks=[teacher])")
        'fit(callbacks=[teacher, _EPOCH_TIMER])'
        >>> timed("trainer.fit(x, f(y), epochs=5)")
        'trainer.fit(x, f(y), epochs=5, callbacks=[_EPOCH_TIMER])'
    """
    if CALLBACKS in code:
        return _replace_once(code, CALLBACKS, "callbacks=[teacher, _EPOCH_TIMER]")
    if code.count(".fit(") != 1:
        raise ValueError("the quick start must call fit once: update this script with "
                         "the README.")
    start = code.index(".fit(") + len(".fit(")
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(code[end], 0)
        end += 1
    return code[:end - 1] + ", callbacks=[_EPOCH_TIMER]" + code[end - 1:]


def full_size(code: str, epochs: int) -> str:
    """The quick start with the full-size settings, trained for ``epochs`` epochs.

    Example:

        >>> full_size("subset=1000 validation_size=500 step_size=0.05, steps=5 epochs=5",
        ...           2)
        'subset=5000 validation_size=1000 step_size=0.025, steps=10 epochs=2'
    """
    for old, new in FULL_SIZE.items():
        code = _replace_once(code, old, new)
    if len(EPOCHS.findall(code)) != 1:
        raise ValueError("the quick start must set epochs= exactly once.")
    return EPOCHS.sub(f"epochs={epochs}", code)


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall seconds of every epoch, calibration at its end included."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.calibration: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            if "calibration_seconds" in (logs or {}):  # logged by CalibratedTeacher
                self.calibration.append(float(logs["calibration_seconds"]))

    return EpochTimer()


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values) + " s"


def run(code: str):
    """Runs ``code`` (with the epoch timer) in a temporary folder; returns the wall
    seconds, the timer (``seconds`` of each epoch; ``calibration``, the part of
    each that the calibration took, when the teacher logs it) and the namespace the
    code left (its ``trainer`` and ``ds``)."""
    timer = _epoch_timer()
    namespace = {"__name__": "__quickstart__", "_EPOCH_TIMER": timer}
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            start = time.perf_counter()
            exec(compile(timed(code), "README.md quick start", "exec"), namespace)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(previous)
    return seconds, timer, namespace


def time_autoattack(namespace: dict, epsilon: float = 0.1) -> str:
    """Runs the standard AutoAttack on the classifier the quick start trained, on its
    test images; returns the line to print (seconds per attack and in all, robust
    accuracy)."""
    from keras_advcal.autoattack import autoattack

    model, (x, y) = namespace["trainer"].model, namespace["ds"].test
    start = time.perf_counter()
    result = autoattack(model, x, y, epsilon, progress=False)
    seconds = time.perf_counter() - start
    stages = ", ".join(f"{name} {value:.0f} s" for name, value in result.seconds.items())
    return (f"autoattack (standard, eps {epsilon}) on the quick start's classifier, "
            f"{result.n_examples} test images: {seconds:.0f} s ({seconds / 60:.1f} min, "
            f"{seconds / result.n_examples:.2f} s per image; {stages}); clean "
            f"{result.clean_accuracy:.1%}, robust {result.robust_accuracy:.1%}")


def machine() -> str:
    """One line: CPU model, cores TensorFlow may use, load average, Python and
    TensorFlow versions."""
    import tensorflow as tf

    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = names[0].strip() if names else model
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, load average {load}; Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--full-epochs", type=int, default=0,
                        help="also run the full-size variant for this many epochs (>= 2) "
                             "and estimate its full time (default: 0, skip)")
    parser.add_argument("--autoattack", action="store_true",
                        help="then run the standard AutoAttack on the quick start's "
                             "classifier and its test images, timed")
    args = parser.parse_args(argv)
    if args.full_epochs == 1:
        parser.error("--full-epochs needs at least 2 epochs (the first includes tracing)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    code = quick_start_code(README.read_text())
    print(f"before: {machine()}", flush=True)
    seconds, timer, namespace = run(code)
    print(f"quick start: {seconds:.0f} s wall ({seconds / 60:.1f} min); epochs "
          f"{_seconds(timer.seconds)}", flush=True)
    if timer.calibration:
        print(f"  of which the calibration: {_seconds(timer.calibration)}", flush=True)
    if args.autoattack:
        print(time_autoattack(namespace), flush=True)
    if args.full_epochs:
        _, timer, _ = run(full_size(code, args.full_epochs))
        steady = sum(timer.seconds[1:]) / len(timer.seconds[1:])
        estimate = timer.seconds[0] + (FULL_EPOCHS - 1) * steady
        print(f"full size, {args.full_epochs} epochs measured: {_seconds(timer.seconds)}; "
              f"estimate for {FULL_EPOCHS} epochs: {estimate:.0f} s ({estimate / 60:.0f} min) "
              "of training", flush=True)
        if timer.calibration:
            print(f"  of which the calibration: {_seconds(timer.calibration)}", flush=True)
    print(f"after: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
