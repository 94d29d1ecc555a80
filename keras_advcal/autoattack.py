"""AutoAttack (Croce & Hein 2020) in one call: the standard cascade, in TensorFlow.

:func:`autoattack` runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target
classes) and Square (5,000 queries), each on the examples that every attack before
it left robust, with the settings of the standard AutoAttack, and returns a
:class:`~keras_advcal.evaluation.RobustnessResult` with the accuracy after each
attack, per-example correctness and the sanity checks of
:func:`~keras_advcal.evaluation.evaluate_robustness`.

Settings against the reference implementation (``fra31/auto-attack``,
``version="standard"``):

* the same: the attacks and their order; APGD-CE and APGD-T with 100 iterations,
  1 restart, ``rho=0.75``, momentum 0.75, initial step ``2 * epsilon``, checkpoints
  of the paper; APGD-T with the targeted DLR loss on the 9 classes of highest clean
  logits after the label; FAB-T with 100 iterations, 1 restart, 9 targets,
  ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``; Square with ``p_init=0.8``, the
  margin loss, 5,000 queries and the schedule of ``p`` applied to the iteration
  number (``resc_schedule=False``); each attack only on the survivors of the ones
  before it.
* not the same: the random numbers (TensorFlow's, seeded by ``seed``); Square
  draws one window position per example (the reference: one per batch) and caps
  the window side at ``min(height, width) - 1`` (the reference: ``min(height,
  width)``), and its 5,000 queries include the initial one; Square is L-inf only
  here, so with ``norm="l2"`` the cascade ends after FAB-T (the reference runs an
  L2 Square); models with fewer than 4 classes are refused (APGD-T's DLR loss needs
  4), where the reference warns.

``version="fast"`` is the library's cheaper cascade, the final evaluation of
``benchmarks/heldout.py``: PGD-20 (cross-entropy, random start), APGD-CE, APGD-T
and Square-5000 with the schedule rescaled to the budget; no FAB-T.

The module itself is callable: ``keras_advcal.autoattack(model, x, y, epsilon)``
is ``keras_advcal.autoattack.autoattack(model, x, y, epsilon)``.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal.autoattack import autoattack
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> x = np.random.rand(8, 8, 8, 1).astype("float32"); y = np.arange(8)
    >>> result = autoattack(model, x, y, epsilon=0.0, progress=False)
    >>> result.attacks
    ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    >>> result.robust_accuracy == result.clean_accuracy
    True
"""

from __future__ import annotations

import sys
import time
import types
import warnings as warnings_module
from typing import Any, Callable

import keras
import numpy as np

from keras_advcal.apgd import APGD
from keras_advcal.attacks import PGD, Attack, _validate_common
from keras_advcal.checks import (check_image_shape, check_images, labels_to_indices,
                                  model_input_shape)
from keras_advcal.choices import AUTOATTACK_VERSIONS
from keras_advcal.evaluation import (RobustnessResult, _attack_pass, _batches,
                                     _clean_pass, _compile_attack, _compile_predict, _pct,
                                     _plain, _ProbabilitiesToLogits, _sanity_notes,
                                     _to_arrays, _zero_gradient_fractions)
from keras_advcal.fab import FAB
from keras_advcal.square import Square

__all__ = ["VERSIONS", "autoattack", "standard_attacks"]

VERSIONS = AUTOATTACK_VERSIONS


def standard_attacks(epsilon: float, norm: str = "linf", version: str = "standard",
                     num_classes: int = 10, bounds: tuple[float, float] = (0.0, 1.0),
                     seed: int = 0) -> list[tuple[str, Attack]]:
    """The ``(name, attack)`` cascade that :func:`autoattack` runs.

    Args:
        epsilon: radius of the threat model.
        norm: ``"linf"`` or ``"l2"`` (no Square with L2).
        version: ``"standard"`` (AutoAttack's) or ``"fast"`` (see the module docstring).
        num_classes: classes of the model (caps the targets at ``num_classes - 1``).
        bounds: valid pixel range.
        seed: attack ``i`` of the cascade gets the seed ``seed + i``.

    Example:

        >>> [name for name, _ in standard_attacks(8 / 255)]
        ['apgd-ce', 'apgd-t', 'fab-t', 'square']
        >>> [name for name, _ in standard_attacks(0.5, norm="l2", version="fast")]
        ['pgd-20', 'apgd-ce', 'apgd-t']
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}.")
    if int(num_classes) != num_classes or num_classes < 4:
        raise ValueError(
            f"AutoAttack needs a classifier of at least 4 classes (APGD-T's targeted DLR "
            f"loss), got num_classes={num_classes!r}.")
    targets = min(9, int(num_classes) - 1)
    common = dict(epsilon=epsilon, norm=norm, bounds=bounds)
    cascade: list[tuple[str, Callable[[int], Attack]]] = [
        ("apgd-ce", lambda s: APGD(steps=100, loss="ce", restarts=1, rho=0.75, seed=s,
                                   **common)),
        ("apgd-t", lambda s: APGD(steps=100, loss="dlr", targeted=True,
                                  n_target_classes=targets, restarts=1, rho=0.75, seed=s,
                                  **common)),
    ]
    if version == "standard":
        cascade.append(("fab-t", lambda s: FAB(steps=100, targeted=True,
                                               n_target_classes=targets, restarts=1,
                                               alpha_max=0.1, eta=1.05, beta=0.9, seed=s,
                                               **common)))
    else:
        cascade.insert(0, ("pgd-20", lambda s: PGD(steps=20, seed=s, **common)))
    if norm == "linf":
        cascade.append(("square", lambda s: Square(
            n_queries=5000, p_init=0.8, rescale_schedule=version == "fast", seed=s,
            **common)))
    return [(name, build(seed + index)) for index, (name, build) in enumerate(cascade)]


def autoattack(model: Callable, x: Any, y: Any, epsilon: float, norm: str = "linf",
               version: str = "standard", *, progress: bool = True,
               batch_size: int = 256, bounds: tuple[float, float] = (0.0, 1.0),
               seed: int = 0, from_logits: bool = True) -> RobustnessResult:
    """Robust accuracy under AutoAttack's standard cascade, with sanity checks.

    Only the examples classified correctly on clean inputs are attacked, each attack
    only on those that the attacks before it did not break (a cascade:
    ``accuracy_alone`` is ``None`` for every attack). See the module docstring for
    which settings match the reference implementation.

    Args:
        model: a Keras model (or callable ``model(x, training=False)``) returning
            logits (with ``from_logits=False``, probabilities).
        x: images inside ``bounds``.
        y: integer labels (or one-hot).
        epsilon: radius of the threat model (L-inf: e.g. 8/255; L2: e.g. 0.5).
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square-5000) or ``"fast"``
            (PGD-20, APGD-CE, APGD-T, Square-5000).
        progress: show a progress bar per attack and a line when it ends.
        batch_size: examples per attack call.
        bounds: valid pixel range.
        seed: attack ``i`` of the cascade gets the seed ``seed + i``.
        from_logits: ``False`` when the model outputs probabilities.

    Returns:
        A :class:`~keras_advcal.evaluation.RobustnessResult`;
        ``result.config["version"]`` names the cascade.

    Raises:
        ValueError: on a bad ``norm``, ``epsilon``, ``version``, ``bounds`` or
            ``batch_size``, or a model of fewer than 4 classes.
        keras_advcal.checks.InputError: on bad data (pixels outside ``bounds``,
            mismatched lengths).

    Example:

        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(4)])
        >>> x = np.random.rand(6, 4, 4, 1).astype("float32"); y = np.arange(6) % 4
        >>> r = autoattack(model, x, y, 0.5, norm="l2", version="fast", progress=False)
        >>> r.attacks, r.accuracy_alone["apgd-ce"]
        (['pgd-20', 'apgd-ce', 'apgd-t'], None)
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}.")
    _validate_common(epsilon, bounds, norm)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    x, y = _to_arrays((x, y))
    check_image_shape(x.shape, model_input_shape(model), name="x")
    check_images(x, bounds, name="x")
    attacked = model if from_logits else _ProbabilitiesToLogits(model)
    predict = _compile_predict(attacked, x)
    clean_pred, probability_like, num_classes = _clean_pass(predict, x, y, batch_size)
    labels_to_indices(y, num_classes, name="y")  # a label out of range counts as an error
    repeat_pred = _clean_pass(predict, x, y, batch_size)[0]
    named = standard_attacks(epsilon, norm, version, num_classes, bounds, seed)
    notes = _clean_notes(probability_like and from_logits,
                         int(np.sum(repeat_pred != clean_pred)))
    clean_correct = clean_pred == y
    robust = clean_correct.copy()
    seconds: dict[str, float] = {}
    masks: dict[str, np.ndarray] = {}  # per attack: not broken by it (True if not attacked)
    broken_outside: list[str] = []
    if progress:
        print(f"[autoattack] {version}: {len(x)} examples, {norm} epsilon={epsilon:g}, "
              f"clean accuracy {_pct(float(np.mean(clean_correct)))}", flush=True)
    for name, attack in named:
        start = time.perf_counter()
        attacked_indices = np.flatnonzero(robust)
        survived, valid = _run_attack(attacked, attack, name, x, y, attacked_indices,
                                      batch_size, epsilon, progress)
        seconds[name] = time.perf_counter() - start
        masks[name] = np.ones(len(x), bool)
        masks[name][attacked_indices] = survived
        robust = robust & masks[name]
        if not valid:
            broken_outside.append(name)
        if progress:
            print(f"[autoattack] after {name}: {_pct(float(np.mean(robust)))} robust, "
                  f"{int(np.sum(~survived))} broken ({seconds[name]:.1f} s)", flush=True)
    stages = np.logical_and.accumulate([clean_correct, *masks.values()])[1:]
    cumulative_masks = dict(zip(masks, stages))
    cumulative = {name: float(np.mean(mask)) for name, mask in cumulative_masks.items()}
    notes.extend(f"{name} returned inputs outside the {norm} ball of radius {epsilon} or "
                 f"outside bounds {tuple(bounds)}: the attack is broken."
                 for name in broken_outside)
    zero_margin, zero_ce = _zero_gradient_fractions(attacked, x, y,
                                                    np.flatnonzero(clean_correct), batch_size)
    notes.extend(_sanity_notes(named, masks, {name: None for name, _ in named}, cumulative,
                               clean_correct, zero_margin, zero_ce, individual=False))
    settings = dict(version=version, batch_size=batch_size, bounds=list(bounds), seed=seed,
                    individual=False, from_logits=from_logits, attacks={})
    for name, attack in named:
        settings["attacks"][name] = {"class_name": type(attack).__name__,
                                     "config": attack.get_config()}
    result = RobustnessResult(
        clean_accuracy=float(np.mean(clean_correct)), robust_accuracy=float(np.mean(robust)),
        n_examples=len(x), epsilon=float(epsilon), norm=norm,
        attacks=[name for name, _ in named],
        accuracy_alone={name: None for name, _ in named}, accuracy_cumulative=cumulative,
        seconds=seconds, warnings=notes, config=_plain(settings), robust_mask=robust, clean_mask=clean_correct, cumulative_masks=cumulative_masks)
    for message in notes:
        warnings_module.warn(message, RuntimeWarning, stacklevel=2)
    if progress:
        print(result.table(), flush=True)
    return result


def _clean_notes(probability_like: bool, changed: int) -> list[str]:
    """The warnings about the clean passes: a softmax output, a randomised model."""
    notes = []
    if probability_like:
        notes.append("the model's outputs look like probabilities (every row in [0, 1] "
                     "summing to 1): attacks need logits, so remove the final softmax or "
                     "pass from_logits=False.")
    if changed:
        notes.append(f"predictions changed between two clean passes on {changed} examples: "
                     "the model is randomised in inference mode, so robust accuracy is "
                     "unreliable (use an EOT attack).")
    return notes


def _run_attack(model: Callable, attack: Attack, name: str, x: np.ndarray, y: np.ndarray,
                indices: np.ndarray, batch_size: int, epsilon: float, progress: bool
                ) -> tuple[np.ndarray, bool]:
    """Per-index correctness under ``attack`` on ``x[indices]``, batch by batch with
    a progress bar, and whether every output stayed inside the threat model."""
    if len(indices) == 0:
        return np.zeros(0, bool), True
    run = _compile_attack(model, attack, x)
    bar = keras.utils.Progbar(len(indices), unit_name="example") if progress else None
    if progress:
        print(f"[autoattack] {name} on {len(indices)} examples", flush=True)
    parts, valid, done = [], True, 0
    for index in _batches(indices, batch_size):
        correct, batch_valid = _attack_pass(run, x, y, index, batch_size, attack, epsilon)
        parts.append(correct)
        valid &= batch_valid
        done += len(index)
        if bar is not None:
            bar.update(done, finalize=done == len(indices))
    return np.concatenate(parts), valid


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`autoattack`: ``keras_advcal.autoattack`` is
    the module (Python binds a package's submodules to its attributes on import),
    and calling it runs the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> RobustnessResult:
        return autoattack(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
