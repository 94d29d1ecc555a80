"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), L-inf and L2.

FAB looks for the *smallest* perturbation that changes the prediction. At each
iteration it linearises the difference of two logits (the true class and a target
class) around the current point, which gives a hyperplane that approximates the
decision boundary, and projects onto it (within the input box) both the current
point and the clean input. The next point is a convex combination of the two
projections, biased towards the clean input (weight at most ``alpha_max``), with
an overshoot ``eta``. When the point is misclassified it is recorded if it is the
closest so far, and the iterate steps back towards the clean input by a factor
``beta``. An example counts as broken when the closest misclassified point lies
within ``epsilon``; the attack returns that point, and the clean input otherwise,
so every output is inside the threat model.

The iterates are confined to ``bounds`` but, as in the reference implementation,
not to the epsilon ball: FAB minimises the distance rather than searching a fixed
ball. Its random starts (restarts after the first) lie at distance
``epsilon / 2``.

``targeted=True`` is FAB-T of AutoAttack: one run per target class, the
``n_target_classes`` classes other than the label with the highest clean logits,
each run only on the examples that no earlier run broke. ``targeted=False``
linearises all classes at every iteration and picks the one whose linearised
boundary is closest (Croce & Hein's untargeted FAB; it needs one gradient per class).

Example:

    >>> import keras
    >>> from keras_advcal.fab import FAB
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> x = keras.random.uniform((4, 8, 8, 1))
    >>> x_adv = FAB(epsilon=0.1, steps=10, n_target_classes=2)(model, x, [0, 1, 2, 3])
    >>> bool(keras.ops.max(keras.ops.abs(x_adv - x)) <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from keras_advcal.apgd import _BIG, _misclassified, _where
from keras_advcal.attacks import Attack, _logits_float32

_TINY = 1e-12
_MIN_STEP = 1e-8  # FAB's floor on the two projection lengths (as in the paper's code)


def boundary_step(points: tf.Tensor, weights: tf.Tensor, offsets: tf.Tensor, norm: str,
                  bounds: tuple[float, float]) -> tf.Tensor:
    """Smallest step from each point onto a hyperplane, staying inside a box.

    For each row ``t`` of ``points`` with hyperplane ``{z : c + <w, z - t> = 0}``
    (``w`` the row of ``weights``, ``c`` the entry of ``offsets``: the value of the
    linear function at ``t``) it returns the ``d`` of smallest L-inf or L2 norm with
    ``c + <w, d> = 0`` and ``t + d`` inside ``bounds``. Such a ``d`` has the form
    ``d_i = -sign(c w_i) min(s a_i, room_i)``, where ``room_i`` is how far
    coordinate ``i`` can move towards the hyperplane before leaving the box and
    ``a_i = 1`` (L-inf) or ``|w_i|`` (L2); the scale ``s`` is found exactly by
    sorting the points where coordinates reach the box. Where even the box corner
    cannot reach the hyperplane, the step goes to that corner.

    Args:
        points: ``(batch, n)`` flattened inputs inside ``bounds``.
        weights: ``(batch, n)`` hyperplane normals.
        offsets: ``(batch,)`` values of the linear functions at ``points``.
        norm: ``"linf"`` or ``"l2"``.
        bounds: the box ``(low, high)``.

    Returns:
        ``(batch, n)`` steps.

    Example:

        >>> step = boundary_step(tf.constant([[0.5, 0.5]]), tf.constant([[1.0, 2.0]]),
        ...                      tf.constant([-0.3]), "linf", (0.0, 1.0))
        >>> [round(v, 4) for v in step.numpy()[0].tolist()]
        [0.1, 0.1]
        >>> step = boundary_step(tf.constant([[0.5, 0.5]]), tf.constant([[1.0, 2.0]]),
        ...                      tf.constant([-0.5]), "l2", (0.0, 1.0))
        >>> [round(v, 4) for v in step.numpy()[0].tolist()]
        [0.1, 0.2]
    """
    low, high = bounds
    direction = tf.where(offsets >= 0, 1.0, -1.0)[:, None] * weights  # decrease |c|
    needed = tf.abs(offsets)
    room = tf.where(direction > 0, points - low, high - points)
    room = tf.where(tf.equal(direction, 0.0), tf.zeros_like(room), tf.maximum(room, 0.0))
    magnitude = tf.abs(direction)
    scale = tf.ones_like(magnitude) if norm == "linf" else magnitude
    # Coordinate i moves by min(s * scale_i, room_i); it reaches the box at s = kink_i.
    kink = tf.math.divide_no_nan(room, scale)
    order = tf.argsort(kink, axis=-1)
    kink_sorted = tf.gather(kink, order, batch_dims=1)
    saturated = tf.gather(magnitude * room, order, batch_dims=1)
    slope = tf.gather(magnitude * scale, order, batch_dims=1)
    # Progress made at s = kink_k: coordinates before k are at the box, the others not.
    saturated_before = tf.cumsum(saturated, axis=-1, exclusive=True)
    slope_from = tf.cumsum(slope, axis=-1, reverse=True)
    progress = saturated_before + kink_sorted * slope_from
    k = tf.reduce_sum(tf.cast(progress < needed[:, None], tf.int32), axis=-1)
    reachable = k < tf.shape(points)[-1]
    k = tf.minimum(k, tf.shape(points)[-1] - 1)
    s = ((needed - tf.gather(saturated_before, k[:, None], batch_dims=1)[:, 0])
         / tf.maximum(tf.gather(slope_from, k[:, None], batch_dims=1)[:, 0], _TINY))
    move = tf.where(reachable[:, None], tf.minimum(tf.maximum(s, 0.0)[:, None] * scale, room),
                    room)  # out of reach: all the way to the box corner
    return -tf.sign(direction) * move


def _flat_norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """Norm of each row of a ``(batch, n)`` tensor."""
    if norm == "linf":
        return tf.reduce_max(tf.abs(t), axis=-1)
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=-1))


@keras.saving.register_keras_serializable(package="keras_advcal")
class FAB(Attack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020), targeted or not, L-inf or L2.

    See the module docstring for the algorithm. The defaults are those of FAB-T in
    the standard AutoAttack: ``steps=100``, ``restarts=1``, ``n_target_classes=9``,
    ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``.

    Args:
        epsilon: radius of the threat model: a point found farther away does not
            count, and the random starts lie at ``epsilon / 2``.
        steps: iterations per run (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        targeted: FAB-T (one run per target class) instead of untargeted FAB.
        n_target_classes: number of target classes of FAB-T (clipped to
            ``classes - 1``).
        restarts: runs per target (the first from the clean input, the others from
            random starts).
        alpha_max: largest weight of the projection of the clean input.
        eta: overshoot of the projections (>= 1).
        beta: backward step towards the clean input after a success (in (0, 1]).
        bounds: valid pixel range ``(low, high)``.
        seed: seed of the attack's own random stream (random starts only).

    Example:

        >>> attack = FAB(epsilon=8 / 255)
        >>> (attack.steps, attack.n_target_classes, attack.eta)
        (100, 9, 1.05)
        >>> FAB.from_config(attack.get_config()).targeted
        True
    """

    def __init__(self, epsilon: float, steps: int = 100, norm: str = "linf",
                 targeted: bool = True, n_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = None):
        super().__init__(epsilon=epsilon, norm=norm, bounds=bounds, seed=seed)
        for name, value in (("steps", steps), ("n_target_classes", n_target_classes),
                            ("restarts", restarts)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"alpha_max must lie in [0, 1], got {alpha_max!r}.")
        if not eta >= 1.0:
            raise ValueError(f"eta (the overshoot) must be at least 1, got {eta!r}.")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must lie in (0, 1], got {beta!r}.")
        self.steps = int(steps)
        self.targeted = bool(targeted)
        self.n_target_classes = int(n_target_classes)
        self.restarts = int(restarts)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(steps=self.steps, targeted=self.targeted,
                      n_target_classes=self.n_target_classes, restarts=self.restarts,
                      alpha_max=self.alpha_max, eta=self.eta, beta=self.beta)
        return config

    # -- the attack ----------------------------------------------------------------
    def perturb(self, model, x, y, seed):
        if self.epsilon == 0.0:
            return x
        clean_logits = _logits_float32(model, x)
        num_classes = clean_logits.shape[-1]
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"FAB needs at least 2 classes, the model has {num_classes}.")
        n_targets = 1
        targets = tf.expand_dims(y, 1)  # unused by untargeted runs
        if self.targeted:
            n_targets = self.n_target_classes
            if num_classes is not None:
                n_targets = min(n_targets, num_classes - 1)
            others = clean_logits - _BIG * tf.one_hot(y, tf.shape(clean_logits)[-1])
            targets = tf.math.top_k(others, k=n_targets).indices  # (batch, n_targets)
        n_runs = n_targets * self.restarts
        # A misclassified clean input is its own (zero-distance) adversarial example.
        broken = _misclassified(clean_logits, y)

        def cond(j, x_out, broken):
            return tf.logical_and(j < n_runs, tf.logical_not(tf.reduce_all(broken)))

        def body(j, x_out, broken):
            active = tf.where(tf.logical_not(broken))  # (n_active, 1)
            x_active = tf.gather_nd(x, active)
            target = tf.gather_nd(tf.gather(targets, j // self.restarts, axis=1), active)
            found, distance = self._run(model, x_active, tf.gather_nd(y, active), target,
                                        j % self.restarts > 0, seed)
            success = distance <= self.epsilon
            x_new = _where(success, found, x_active)
            return (j + 1, tf.tensor_scatter_nd_update(x_out, active, x_new),
                    tf.tensor_scatter_nd_update(broken, active, success))

        _, x_out, _ = tf.while_loop(cond, body, (tf.constant(0), x, broken),
                                    maximum_iterations=n_runs)
        return x_out

    def _start(self, x_flat: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
        """A random point at distance ``epsilon / 2`` from ``x_flat``, clipped to the box."""
        shape = tf.shape(x_flat)
        if self.norm == "linf":
            noise = keras.random.uniform(shape, -1.0, 1.0, dtype=x_flat.dtype, seed=seed)
        else:
            noise = keras.random.normal(shape, dtype=x_flat.dtype, seed=seed)
        noise = noise / tf.maximum(_flat_norm(noise, self.norm), _TINY)[:, None]
        return tf.clip_by_value(x_flat + 0.5 * self.epsilon * noise, *self.bounds)

    def _linearise(self, model: Callable, x_flat: tf.Tensor, shape: tf.Tensor,
                   y: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``f_k - f_y`` at ``x_flat`` and its gradient, for the target ``k`` (FAB-T)
        or for the class whose linearised boundary is closest (FAB)."""
        with tf.GradientTape() as tape:
            tape.watch(x_flat)
            logits = _logits_float32(model, tf.reshape(x_flat, shape))
            if self.targeted:
                values = (tf.gather(logits, target, batch_dims=1)
                          - tf.gather(logits, y, batch_dims=1))
            else:
                values = logits - tf.gather(logits, y, batch_dims=1)[:, None]
        if self.targeted:
            gradient = tape.gradient(values, x_flat,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return values, gradient
        jacobian = tape.batch_jacobian(values, x_flat,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
        dual = "l1" if self.norm == "linf" else "l2"
        lengths = (tf.reduce_sum(tf.abs(jacobian), axis=-1) if dual == "l1"
                   else tf.sqrt(tf.reduce_sum(tf.square(jacobian), axis=-1)))
        distance = tf.abs(values) / (lengths + _TINY)
        distance += _BIG * tf.one_hot(y, tf.shape(values)[-1])  # never the true class
        closest = tf.argmin(distance, axis=-1, output_type=tf.int32)
        return (tf.gather(values, closest, batch_dims=1),
                tf.gather(jacobian, closest, batch_dims=1))

    def _run(self, model: Callable, x: tf.Tensor, y: tf.Tensor, target: tf.Tensor,
             random_start: tf.Tensor, seed: keras.random.SeedGenerator
             ) -> tuple[tf.Tensor, tf.Tensor]:
        """One FAB run; returns the closest misclassified point found and its
        distance (``inf`` where none was found)."""
        shape = tf.shape(x)
        if x.shape[1:].is_fully_defined():  # keep the static shape the model needs
            shape = [-1, *x.shape[1:]]
            x0 = tf.reshape(x, [-1, x.shape[1:].num_elements()])
        else:
            x0 = tf.reshape(x, [shape[0], -1])
        x1 = tf.cond(random_start, lambda: self._start(x0, seed), lambda: x0)
        best = x0
        best_distance = tf.fill(tf.shape(x)[:1], float("inf"))
        low, high = self.bounds

        def body(i, x1, best, best_distance):
            value, gradient = self._linearise(model, x1, shape, y, target)
            value = tf.cast(value, x1.dtype)
            gradient = tf.cast(gradient, x1.dtype)
            # The same linearised boundary seen from the iterate and from the clean input.
            offset0 = value + tf.reduce_sum(gradient * (x0 - x1), axis=-1)
            d1 = boundary_step(x1, gradient, value, self.norm, self.bounds)
            d0 = boundary_step(x0, gradient, offset0, self.norm, self.bounds)
            a1 = tf.maximum(_flat_norm(d1, self.norm), _MIN_STEP)
            a0 = tf.maximum(_flat_norm(d0, self.norm), _MIN_STEP)
            alpha = tf.clip_by_value(a1 / (a1 + a0), 0.0, self.alpha_max)[:, None]
            x1 = tf.clip_by_value((1 - alpha) * (x1 + self.eta * d1)
                                  + alpha * (x0 + self.eta * d0), low, high)
            logits = _logits_float32(model, tf.reshape(x1, shape))
            fooled = _misclassified(logits, y)
            distance = _flat_norm(x1 - x0, self.norm)
            closer = tf.logical_and(fooled, distance < best_distance)
            best = _where(closer, x1, best)
            best_distance = tf.where(closer, distance, best_distance)
            x1 = _where(fooled, x0 + self.beta * (x1 - x0), x1)
            return i + 1, tf.stop_gradient(x1), best, best_distance

        _, _, best, best_distance = tf.while_loop(
            lambda i, *_: i < self.steps, body,
            (tf.constant(0), x1, best, best_distance), maximum_iterations=self.steps)
        return tf.reshape(best, shape), best_distance
