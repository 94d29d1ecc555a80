"""Gradient attacks for robust evaluation: PGD with restarts and Auto-PGD.

:class:`APGD` is the step-size-free PGD of Croce & Hein (2020, "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free attacks"),
the gradient part of AutoAttack, with the cross-entropy, DLR and targeted DLR
losses. :class:`PGDRestarts` is Madry et al.'s PGD repeated from several random
starts, keeping the worst case per example.

Both are :class:`keras_advcal.attacks.Attack` subclasses: call them as
``attack(model, x, y)``. All loops are ``tf.while_loop``; the per-example state
(step size, best point, success counters) lives in tensors, so one attack traces
to one small graph. A model whose gradients are undefined (a ``tf.round`` inside,
say) gets zero gradients rather than an error, so that the evaluation can warn
about gradient masking instead of crashing.

Example:

    >>> import keras
    >>> from keras_advcal.apgd import APGD
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> x = keras.random.uniform((4, 8, 8, 1))
    >>> x_adv = APGD(epsilon=0.1, steps=5)(model, x, [0, 1, 2, 3])
    >>> bool(keras.ops.max(keras.ops.abs(x_adv - x)) <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import tensorflow as tf

from keras_advcal.attacks import (PGD, Attack, _logits_float32, _per_example_norm,
                                  _random_start, cross_entropy_loss, margin_loss, project)

_APGD_LOSSES = ("ce", "dlr")
_DLR_EPS = 1e-12
_BIG = 1e9


# -- losses ------------------------------------------------------------------------
def _require_classes(logits: tf.Tensor, needed: int, name: str) -> None:
    classes = logits.shape[-1]
    if classes is not None and classes < needed:
        raise ValueError(f"{name} needs at least {needed} classes, the model has {classes}.")


def dlr_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Untargeted Difference-of-Logits-Ratio loss (Croce & Hein 2020), per example.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...``
    the sorted logits. It is invariant to shifting and rescaling the logits, so it
    does not saturate the way cross-entropy does. Needs at least 3 classes.

    Args:
        logits: ``(batch, classes)`` float tensor.
        labels: ``(batch,)`` integer labels.

    Returns:
        ``(batch,)`` tensor to maximise; positive where the example is misclassified.

    Example:

        >>> round(float(dlr_loss(tf.constant([[3.0, 1.0, 0.0]]), tf.constant([0]))[0]), 3)
        -0.667
    """
    _require_classes(logits, 3, "dlr_loss")
    ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
    margin = margin_loss(logits, labels)  # max_{i != y} z_i - z_y
    return margin / (ranked[:, 0] - ranked[:, 2] + _DLR_EPS)


def targeted_dlr_loss(logits: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Targeted DLR loss: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

    Needs at least 4 classes.

    Args:
        logits: ``(batch, classes)`` float tensor.
        labels: ``(batch,)`` true labels ``y``.
        targets: ``(batch,)`` target classes ``t``.

    Returns:
        ``(batch,)`` tensor to maximise; positive where ``t`` beats ``y``.

    Example:

        >>> z = tf.constant([[4.0, 2.0, 1.0, 0.0]])
        >>> float(targeted_dlr_loss(z, tf.constant([0]), tf.constant([1]))[0])
        -0.5714285969734192
    """
    _require_classes(logits, 4, "targeted_dlr_loss")
    ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
    true_logit = tf.gather(logits, labels, axis=1, batch_dims=1)
    target_logit = tf.gather(logits, targets, axis=1, batch_dims=1)
    scale = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + _DLR_EPS
    return -(true_logit - target_logit) / scale


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size.

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; only ``0 < w_j < steps`` are
    kept (a check after the last step would change nothing).

    Example:

        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    p_prev, p_cur = 0.0, 0.22
    points = []
    while p_cur < 1.0:
        # Rounding guards against 0.22 * 100 = 22.000000000000004 -> 23.
        w = math.ceil(round(p_cur * steps, 9))
        if 0 < w < steps and (not points or w > points[-1]):
            points.append(w)
        p_prev, p_cur = p_cur, p_cur + max(p_cur - p_prev - 0.03, 0.06)
    return points


# -- shared helpers ----------------------------------------------------------------
def _expand(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example vector so that it broadcasts against ``like``."""
    shape = tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0)
    return tf.reshape(tf.cast(values, like.dtype), shape)


def _where(condition: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``tf.where`` with a per-example ``condition`` broadcast over ``a``'s axes."""
    if a.shape.rank is not None and a.shape.rank > 1:
        condition = tf.reshape(condition, tf.concat(
            [[-1], tf.ones([tf.rank(a) - 1], tf.int32)], axis=0))
    return tf.where(condition, a, b)


def _loss_and_gradient(model: Callable, x: tf.Tensor,
                       objective: Callable[[tf.Tensor], tf.Tensor]):
    """Per-example objective, its gradient wrt ``x`` (zeros where undefined), logits."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = _logits_float32(model, x)
        values = objective(logits)
        total = tf.reduce_sum(values)
    gradient = tape.gradient(total, x,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return values, tf.cast(gradient, x.dtype), logits


def _misclassified(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)


def _worst_case_over_runs(model: Callable, x: tf.Tensor, y: tf.Tensor, n_runs: int,
                          run: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Runs ``run(j)`` for ``j < n_runs`` and keeps, per example, a misclassified
    point if any run finds one, otherwise the one with the largest margin loss.

    Stops early once every example is misclassified. A single run is returned as
    it is (each run already keeps its own worst case).
    """
    if n_runs == 1:
        return run(tf.constant(0))
    logits = _logits_float32(model, x)
    best_fooled = _misclassified(logits, y)
    best_margin = margin_loss(logits, y)

    def cond(j, best_x, best_fooled, best_margin):
        return tf.logical_and(j < n_runs, tf.logical_not(tf.reduce_all(best_fooled)))

    def body(j, best_x, best_fooled, best_margin):
        candidate = tf.stop_gradient(run(j))
        logits = _logits_float32(model, candidate)
        fooled = _misclassified(logits, y)
        margin = margin_loss(logits, y)
        better = tf.logical_or(
            tf.logical_and(fooled, tf.logical_not(best_fooled)),
            tf.logical_and(tf.equal(fooled, best_fooled), margin > best_margin))
        return (j + 1, _where(better, candidate, best_x),
                tf.logical_or(best_fooled, fooled), tf.where(better, margin, best_margin))

    _, best_x, _, _ = tf.while_loop(
        cond, body, (tf.constant(0), x, best_fooled, best_margin),
        maximum_iterations=n_runs)
    return best_x


# -- PGD with restarts -------------------------------------------------------------
@keras.saving.register_keras_serializable(package="keras_advcal")
class PGDRestarts(PGD):
    """PGD from several random starts, keeping the worst case per example.

    Per example the result is a misclassified point if any restart found one,
    otherwise the point with the largest Carlini-Wagner margin (best wrong logit
    minus true logit) over the restarts. Restarts stop early once every example of
    the batch is misclassified. Undefined gradients count as zero.

    Args:
        epsilon: radius of the ball.
        step_size: step size (default ``2.5 * epsilon / steps``).
        steps: gradient steps per restart.
        restarts: number of random restarts (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        bounds: valid pixel range ``(low, high)``.
        loss: ``"ce"`` (cross-entropy) or ``"cw"`` (margin).
        random_start: start each restart from a random point of the ball.
        seed: seed of the attack's own random stream.

    Example:

        >>> attack = PGDRestarts(epsilon=0.1, steps=10, restarts=3, loss="cw")
        >>> PGDRestarts.from_config(attack.get_config()).restarts
        3
    """

    def __init__(self, epsilon: float, step_size: float | None = None, steps: int = 10,
                 restarts: int = 1, norm: str = "linf",
                 bounds: tuple[float, float] = (0.0, 1.0), loss: str = "ce",
                 random_start: bool = True, seed: int | None = None):
        super().__init__(epsilon=epsilon, step_size=step_size, steps=steps, norm=norm,
                         bounds=bounds, random_start=random_start, loss=loss, seed=seed)
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {restarts!r}.")
        self.restarts = int(restarts)

    def get_config(self) -> dict:
        config = super().get_config()
        config["restarts"] = self.restarts
        return config

    def _gradient(self, model, x_adv, y, reference=None):
        if self.loss == "kl":  # the KL from a clean prediction: PGD's own gradient
            return super()._gradient(model, x_adv, y, reference)
        objective = lambda logits: self._objective(logits, y)  # noqa: E731
        return _loss_and_gradient(model, x_adv, objective)[1]

    def _objective(self, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return cross_entropy_loss(logits, y) if self.loss == "ce" else margin_loss(logits, y)

    def perturb(self, model, x, y, seed):
        if self.epsilon == 0.0:
            return x
        single_run = super().perturb
        return _worst_case_over_runs(model, x, y, self.restarts,
                                     lambda j: single_run(model, x, y, seed))


# -- Auto-PGD ----------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="keras_advcal")
class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020): PGD with momentum and an adaptive step size.

    The step size starts at ``2 * epsilon``. At the checkpoints of
    :func:`apgd_checkpoints` it is halved, per example, when fewer than a fraction
    ``rho`` of the steps since the last checkpoint increased the loss, or when
    neither the step size nor the best loss changed since the last checkpoint; an
    example whose step is halved restarts from its best point (with no momentum).
    Steps use momentum ``alpha``: ``z = P(x_k + eta * sign(grad))``,
    ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1}))`` (for L2 the
    sign is replaced by the normalised gradient).

    With ``targeted=True`` the attack runs once per target class: the
    ``n_target_classes`` classes other than the label with the highest clean logits,
    in turn (this is APGD-T of AutoAttack with ``loss="dlr"``). Over targets and
    ``restarts`` it keeps, per example, a misclassified point if one was found,
    otherwise the one with the largest margin loss; runs stop once every example of
    the batch is misclassified.

    Args:
        epsilon: radius of the ball.
        steps: iterations per run (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy; targeted: minus the cross-entropy of the
            target) or ``"dlr"`` (Difference of Logits Ratio; targeted: targeted DLR,
            which needs at least 4 classes).
        targeted: run the targeted version.
        n_target_classes: number of target classes (clipped to ``classes - 1``).
        restarts: random restarts per target (>= 1).
        rho: fraction of successful steps below which the step size is halved.
        alpha: momentum coefficient.
        bounds: valid pixel range ``(low, high)``.
        seed: seed of the attack's own random stream.

    Example:

        >>> attack = APGD(epsilon=8 / 255, steps=100, loss="dlr", targeted=True)
        >>> APGD.from_config(attack.get_config()).n_target_classes
        9
    """

    def __init__(self, epsilon: float, steps: int = 100, norm: str = "linf",
                 loss: str = "ce", targeted: bool = False, n_target_classes: int = 9,
                 restarts: int = 1, rho: float = 0.75, alpha: float = 0.75,
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = None):
        super().__init__(epsilon=epsilon, norm=norm, bounds=bounds, seed=seed)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        if loss not in _APGD_LOSSES:
            raise ValueError(f"loss must be one of {_APGD_LOSSES}, got {loss!r}.")
        if int(n_target_classes) != n_target_classes or n_target_classes < 1:
            raise ValueError(
                f"n_target_classes must be a positive integer, got {n_target_classes!r}.")
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {restarts!r}.")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must lie in [0, 1], got {rho!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
        self.steps = int(steps)
        self.loss = loss
        self.targeted = bool(targeted)
        self.n_target_classes = int(n_target_classes)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.alpha = float(alpha)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(steps=self.steps, loss=self.loss, targeted=self.targeted,
                      n_target_classes=self.n_target_classes, restarts=self.restarts,
                      rho=self.rho, alpha=self.alpha)
        return config

    # -- objective -----------------------------------------------------------------
    def _objective(self, y: tf.Tensor, target: tf.Tensor) -> Callable[[tf.Tensor], tf.Tensor]:
        if not self.targeted:
            return lambda logits: (cross_entropy_loss(logits, y) if self.loss == "ce"
                                   else dlr_loss(logits, y))
        if self.loss == "ce":
            return lambda logits: -cross_entropy_loss(logits, target)
        return lambda logits: targeted_dlr_loss(logits, y, target)

    def _check_classes(self, num_classes: int | None) -> int:
        needed = 4 if (self.targeted and self.loss == "dlr") else 3 if self.loss == "dlr" else 2
        if num_classes is not None and num_classes < needed:
            raise ValueError(
                f"APGD with loss={self.loss!r}, targeted={self.targeted} needs at least "
                f"{needed} classes, the model has {num_classes}.")
        return num_classes

    # -- the attack ----------------------------------------------------------------
    def perturb(self, model, x, y, seed):
        if self.epsilon == 0.0:
            return x
        if not self.targeted:
            return _worst_case_over_runs(
                model, x, y, self.restarts, lambda j: self._run(model, x, y, y, seed))
        clean_logits = _logits_float32(model, x)
        num_classes = self._check_classes(clean_logits.shape[-1])
        n_targets = self.n_target_classes
        if num_classes is not None:
            n_targets = min(n_targets, num_classes - 1)
        others = clean_logits - _BIG * tf.one_hot(y, tf.shape(clean_logits)[-1])
        targets = tf.math.top_k(others, k=n_targets).indices  # (batch, n_targets)

        def run(j):
            target = tf.gather(targets, j % n_targets, axis=1)
            return self._run(model, x, y, target, seed)

        return _worst_case_over_runs(model, x, y, n_targets * self.restarts, run)

    def _step(self, x_cur: tf.Tensor, gradient: tf.Tensor, eta: tf.Tensor) -> tf.Tensor:
        if self.norm == "linf":
            direction = tf.sign(gradient)
        else:
            direction = gradient / tf.maximum(_per_example_norm(gradient, "l2"), 1e-12)
        return x_cur + _expand(eta, x_cur) * direction

    def _run(self, model: Callable, x: tf.Tensor, y: tf.Tensor, target: tf.Tensor,
             seed: keras.random.SeedGenerator) -> tf.Tensor:
        """One APGD run from a random start; returns a misclassified point where one
        was found, otherwise the point of highest objective.

        Iteration ``i`` (``0 <= i <= steps``) scores ``x_i``, updates the best point,
        applies the checkpoint rule at ``i`` and steps to ``x_{i+1}`` (the step taken
        at ``i = steps`` is discarded), so the model is traced once per run.
        """
        objective = self._objective(y, target)
        eps, norm, bounds = self.epsilon, self.norm, self.bounds
        checkpoints = tf.constant(apgd_checkpoints(self.steps) or [-1], tf.int32)
        x0 = project(_random_start(x, eps, norm, seed), x, eps, norm, bounds)
        batch = tf.shape(x)[0]
        minus_inf = tf.fill([batch], -float("inf"))
        state = dict(
            x_cur=x0, x_prev=x0, loss_last=minus_inf,
            x_best=x0, grad_best=tf.zeros_like(x0), loss_best=minus_inf,
            x_adv=x0, fooled=tf.zeros([batch], tf.bool),
            eta=tf.fill([batch], tf.cast(2.0 * eps, tf.float32)),
            successes=tf.zeros([batch], tf.float32),
            loss_best_at_check=minus_inf, reduced_at_check=tf.zeros([batch], tf.bool),
            last_check=tf.constant(0))

        def body(i, state):
            s = dict(state)
            loss, grad, logits = _loss_and_gradient(model, s["x_cur"], objective)
            fooled_now = _misclassified(logits, y)
            s["x_adv"] = _where(fooled_now, s["x_cur"], s["x_adv"])
            s["fooled"] = tf.logical_or(s["fooled"], fooled_now)
            s["successes"] += tf.cast(loss > s["loss_last"], tf.float32) * tf.cast(i > 0,
                                                                                  tf.float32)
            improved = loss > s["loss_best"]
            s["x_best"] = _where(improved, s["x_cur"], s["x_best"])
            s["grad_best"] = _where(improved, grad, s["grad_best"])
            s["loss_best"] = tf.where(improved, loss, s["loss_best"])
            s["loss_last"] = loss
            s["loss_best_at_check"] = tf.where(i == 0, loss, s["loss_best_at_check"])
            is_check = tf.reduce_any(tf.equal(checkpoints, i))
            s, grad = self._checkpoint(s, grad, i, is_check)

            momentum = tf.cast(tf.where(i == 0, 1.0, self.alpha), x.dtype)
            x_cur = s["x_cur"]
            z = project(self._step(x_cur, grad, s["eta"]), x, eps, norm, bounds)
            x_next = x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - s["x_prev"])
            s["x_prev"] = x_cur
            s["x_cur"] = tf.stop_gradient(project(x_next, x, eps, norm, bounds))
            return i + 1, s

        _, final = tf.while_loop(
            lambda i, _: i <= self.steps, body, (tf.constant(0), state),
            maximum_iterations=self.steps + 1)
        return _where(final["fooled"], final["x_adv"], final["x_best"])

    def _checkpoint(self, s: dict, grad: tf.Tensor, i: tf.Tensor, is_check: tf.Tensor
                    ) -> tuple[dict, tf.Tensor]:
        """Halves the step size, and moves back to the best point, where the
        conditions of Croce & Hein hold; a no-op unless ``is_check``."""
        interval = tf.cast(i - s["last_check"], tf.float32)
        too_few_successes = s["successes"] < self.rho * interval
        stalled = tf.logical_and(tf.logical_not(s["reduced_at_check"]),
                                 s["loss_best"] <= s["loss_best_at_check"])
        reduce = tf.logical_and(is_check, tf.logical_or(too_few_successes, stalled))
        s["eta"] = tf.where(reduce, 0.5 * s["eta"], s["eta"])
        s["x_cur"] = _where(reduce, s["x_best"], s["x_cur"])
        s["x_prev"] = _where(reduce, s["x_best"], s["x_prev"])
        s["loss_last"] = tf.where(reduce, s["loss_best"], s["loss_last"])
        s["reduced_at_check"] = tf.where(is_check, reduce, s["reduced_at_check"])
        s["loss_best_at_check"] = tf.where(is_check, s["loss_best"], s["loss_best_at_check"])
        s["successes"] = tf.where(is_check, tf.zeros_like(s["successes"]), s["successes"])
        s["last_check"] = tf.where(is_check, i, s["last_check"])
        return s, _where(reduce, s["grad_best"], grad)
