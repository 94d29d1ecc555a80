"""Every input an attack feeds the model lies inside the threat model.

The other attack tests read only the final output, which the last projection
repairs: an attack whose random start is not projected (its first step taken from
outside the ball or the pixel range) passes them while changing many output pixels.
Here the model records every input it receives while the attack runs (eagerly, so
every call of a loop is seen), and each must lie inside ``bounds`` and within
``epsilon`` of the clean input.

FAB is the exception by design: it searches for the *smallest* adversarial
perturbation, so its iterates are confined to ``bounds`` but not to the ball (as in
the reference implementation); only its output must lie in the ball. Its random
starts are checked on their own in ``tests/test_fab.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_advcal.apgd import APGD, PGDRestarts
from keras_advcal.attacks import FGSM, PGD
from keras_advcal.fab import FAB
from keras_advcal.square import Square
from tests.conftest import conv_dense_model

BOUNDS = (0.0, 1.0)


class RecordingModel:
    """Calls ``model`` and keeps a copy of every input batch."""

    def __init__(self, model):
        self.model = model
        self.inputs: list[np.ndarray] = []

    def __call__(self, x, training=False):
        self.inputs.append(np.array(x))
        return self.model(x, training=training)


def _clean_inputs(n=12, seed=0):
    """Digits-sized images, a third of their pixels on the edges of the range (where
    an unprojected start leaves it)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(*BOUNDS, (n, 8, 8, 1)).astype("float32")
    edges = rng.uniform(size=x.shape) < 1 / 3
    x[edges] = rng.choice(BOUNDS, size=int(edges.sum())).astype("float32")
    return x, rng.integers(0, 10, n).astype("int32")


def _distances(inputs, x, norm):
    """Distance of each row of ``inputs`` to the clean row it came from: the rows
    are a subset of the batch (APGD-T, FAB and Square query the survivors only),
    so each is matched to its nearest clean input."""
    flat = inputs.reshape(len(inputs), -1)[:, None, :] - x.reshape(len(x), -1)[None]
    size = np.abs(flat).max(-1) if norm == "linf" else np.linalg.norm(flat, axis=-1)
    return size.min(axis=1)


ATTACKS = {
    "pgd": lambda eps, norm: PGD(eps, steps=3, norm=norm, seed=0),
    "pgd-gaussian-start": lambda eps, norm: PGD(eps, steps=2, norm=norm, seed=0,
                                                start_std=eps),
    "pgd-long": lambda eps, norm: PGD(eps, steps=25, norm=norm, seed=0),  # tf.while_loop
    "pgd-restarts": lambda eps, norm: PGDRestarts(eps, steps=2, restarts=2, norm=norm,
                                                  loss="cw", seed=0),
    "fgsm": lambda eps, norm: FGSM(eps, norm=norm),
    "fgsm-rs": lambda eps, norm: FGSM(eps, norm=norm, random_start=True, seed=0),
    "apgd-ce": lambda eps, norm: APGD(eps, steps=5, norm=norm, seed=0),
    "apgd-t": lambda eps, norm: APGD(eps, steps=3, norm=norm, loss="dlr", targeted=True,
                                     n_target_classes=2, seed=0),
    "square": lambda eps, norm: Square(eps, n_queries=15, seed=0),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm,epsilon", [("linf", 0.1), ("l2", 1.0)])
def test_every_model_input_is_inside_the_threat_model(name, norm, epsilon):
    if name == "square" and norm == "l2":
        pytest.skip("Square is L-inf only")
    x, y = _clean_inputs()
    recorder = RecordingModel(conv_dense_model(seed=4))
    x_adv = ATTACKS[name](epsilon, norm)(recorder, x, y).numpy()
    assert len(recorder.inputs) >= 1
    inputs = np.concatenate(recorder.inputs)
    assert inputs.min() >= BOUNDS[0] and inputs.max() <= BOUNDS[1], name
    tolerance = epsilon * 1e-5 + 1e-6
    assert _distances(inputs, x, norm).max() <= epsilon + tolerance, name
    assert _distances(x_adv, x, norm).max() <= epsilon + tolerance


@pytest.mark.parametrize("norm,epsilon", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("targeted", [True, False])
def test_fab_inputs_stay_in_bounds_and_its_output_in_the_ball(norm, epsilon, targeted):
    x, y = _clean_inputs()
    recorder = RecordingModel(conv_dense_model(seed=4))
    attack = FAB(epsilon, steps=4, norm=norm, targeted=targeted, n_target_classes=2,
                 restarts=2, seed=0)
    x_adv = attack(recorder, x, y).numpy()
    inputs = np.concatenate(recorder.inputs)
    # The clean batch, then per run two calls per iteration on the survivors.
    assert len(recorder.inputs) >= 1 + 2 * 4
    assert inputs.min() >= BOUNDS[0] and inputs.max() <= BOUNDS[1]
    assert _distances(x_adv, x, norm).max() <= epsilon * (1 + 1e-5) + 1e-6
