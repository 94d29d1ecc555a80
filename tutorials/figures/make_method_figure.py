"""Draws tutorials/figures/targets.png: how the calibrated target changes with T and rho.

The target of an adversarial example x' with label y is

    target(x') = rho * softmax(g(x') / T) + (1 - rho) * onehot(y)

The figure uses one example of a 5-class problem whose teacher logits g(x') put class 1
a little above the labelled class 0: the perturbation pushed x' across the teacher's
boundary, so its true label distribution is no longer one-hot.
Left: the target distribution for a few (T, rho). Right: the target's probability of
the labelled class over the published rule's (T, rho) grid; above the white line the
target no longer puts its largest mass on the label (the rule's accuracy floor allows
that for at most 10% of the training targets).

Run from the repository root:

    python tutorials/figures/make_method_figure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "targets.png"
TEACHER_LOGITS = np.array([1.5, 2.0, 0.3, -0.5, -1.0])
LABEL = 0


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def target(temperature: float, rho: float | np.ndarray) -> np.ndarray:
    """Calibrated target of the example for one T and one or several rho."""
    rho = np.asarray(rho, dtype="float64")[..., None]
    onehot = np.eye(len(TEACHER_LOGITS))[LABEL]
    return rho * softmax(TEACHER_LOGITS / temperature) + (1.0 - rho) * onehot


def main() -> int:
    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "advcal"})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6),
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    settings = [(1.0, 0.0, "rho = 0 (one-hot, PGD-AT)"), (1.0, 0.5, "T = 1, rho = 0.5"),
                (4.0, 0.5, "T = 4, rho = 0.5"), (1.0, 1.0, "T = 1, rho = 1 (teacher)")]
    classes = np.arange(len(TEACHER_LOGITS))
    width = 0.2
    for index, (temperature, rho, label) in enumerate(settings):
        left.bar(classes + (index - 1.5) * width, target(temperature, rho), width,
                 label=label)
    left.set_xticks(classes, [f"class {k}" + (" (y)" if k == LABEL else "")
                              for k in classes])
    left.set_ylabel("target probability")
    left.set_ylim(0, 1.05)
    left.set_title("target(x') for a few (T, rho)")
    left.legend(frameon=False)

    # The published rule's grid: T log-spaced in [0.2, 16], rho in [0.01, 1].
    temperatures = np.geomspace(0.2, 16.0, 100)
    rhos = np.linspace(0.01, 1.0, 100)
    grid = np.stack([target(t, rhos) for t in temperatures], axis=1)  # (rho, T, K)
    mesh = right.pcolormesh(temperatures, rhos, grid[..., LABEL], shading="auto",
                            cmap="viridis", vmin=0.0, vmax=1.0)
    agrees = (grid.argmax(axis=-1) == LABEL).astype(float)
    right.contour(temperatures, rhos, agrees, levels=[0.5], colors="white",
                  linewidths=1.5)
    right.text(0.25, 0.93, "argmax is not y", color="white")
    right.text(4.0, 0.2, "argmax is y", color="white")
    right.set_xscale("log")
    right.set_xlabel("temperature T")
    right.set_ylabel("rho")
    right.set_title("target probability of the label y")
    fig.colorbar(mesh, ax=right)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110, metadata={"Software": None})
    print("wrote", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
