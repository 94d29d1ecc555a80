"""Projected gradient attacks (PGD, FGSM) in pure TensorFlow.

Every attack is a callable ``attack(model, x, y) -> x_adv`` with ``x`` a batch of
images in ``bounds`` and ``y`` integer labels. PGD maximises the cross-entropy
(``"ce"``), the Carlini-Wagner margin (``"cw"``) or, for TRADES, the KL divergence
``KL(f(x) || f(x'))`` from the model's own prediction on the clean input (``"kl"``,
where ``y`` is not used). An attack of at most
:data:`MAX_UNROLLED_STEPS` steps (the training attacks) is unrolled into the graph;
a longer one (evaluation) runs as a ``tf.while_loop``, so its graph stays small.
Either way it runs inside a compiled ``train_step``, under XLA
(``jit_compile=True``) and under a ``tf.distribute`` strategy. The model is always
called in inference mode (``training=False``).

Example:

    >>> import keras
    >>> from keras_advcal.attacks import PGD
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> attack = PGD(epsilon=0.1, step_size=0.025, steps=10)
    >>> x = keras.random.uniform((4, 8, 8, 1))
    >>> x_adv = attack(model, x, [0, 1, 2, 3])
    >>> bool(keras.ops.max(keras.ops.abs(x_adv - x)) <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_advcal import checks

_NORMS = ("linf", "l2")
_LOSSES = ("ce", "cw", "kl")
_TINY = 1e-12

#: Attacks with at most this many steps are unrolled into the graph instead of a
#: ``tf.while_loop``. On CPU with TensorFlow's oneDNN kernels (the x86 default), PGD
#: training through ``fit`` with the loop ran at 0.62-0.77 of the speed of a bare
#: unrolled loop in 13 of the 19 processes measured, which ones varying from process
#: to process; with the attack unrolled, all 14 processes measured ran at 0.91-1.09
#: (``benchmarks/RESULTS.md``, Throughput). Unrolled, the graph grows by one forward
#: and backward pass of the model per step, cheap for the few steps of a training
#: attack.
MAX_UNROLLED_STEPS = 20


def margin_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Carlini-Wagner margin: best wrong logit minus the true logit, per example.

    Args:
        logits: ``(batch, classes)`` float tensor.
        labels: ``(batch,)`` integer labels.

    Returns:
        ``(batch,)`` tensor; positive where the example is misclassified.

    Example:

        >>> float(margin_loss(tf.constant([[2.0, 1.0]]), tf.constant([0]))[0])
        -1.0
    """
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    true_logit = tf.reduce_sum(onehot * logits, axis=-1)
    # Push the true class far down so that it never wins the max.
    other = tf.reduce_max(logits - onehot * tf.constant(1e9, logits.dtype), axis=-1)
    return other - true_logit


def cross_entropy_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example sparse cross-entropy from logits.

    Example:

        >>> round(float(cross_entropy_loss(tf.constant([[0.0, 0.0]]), tf.constant([1]))[0]), 4)
        0.6931
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def kl_divergence(reference_logits: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """``KL(softmax(reference_logits) || softmax(logits))`` per example, from logits
    (stable for large logits). TRADES' robust term, and what its attack maximises.

    Args:
        reference_logits: ``(batch, classes)`` logits of the reference distribution
            (the model on the clean input).
        logits: ``(batch, classes)`` logits compared with it (the adversarial input).

    Returns:
        ``(batch,)`` non-negative tensor; zero where the two distributions agree.

    Example:

        >>> float(kl_divergence(tf.constant([[1.0, 2.0]]), tf.constant([[1.0, 2.0]]))[0])
        0.0
        >>> round(float(kl_divergence(tf.constant([[0.0, 0.0]]),
        ...                           tf.constant([[0.0, 1.0]]))[0]), 4)
        0.1201
    """
    reference_log_probs = tf.nn.log_softmax(reference_logits, axis=-1)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return tf.reduce_sum(tf.exp(reference_log_probs) * (reference_log_probs - log_probs),
                         axis=-1)


_LOSS_FUNCTIONS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "ce": cross_entropy_loss,
    "cw": margin_loss,
}


def _per_example_norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """Norm of each example of ``t`` (all axes but the first), kept broadcastable."""
    axes = tf.range(1, tf.rank(t))
    if norm == "linf":
        value = tf.reduce_max(tf.abs(t), axis=axes, keepdims=True)
    else:
        value = tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))
    return value


def project(x_adv: tf.Tensor, x: tf.Tensor, epsilon: float, norm: str,
            bounds: tuple[float, float]) -> tf.Tensor:
    """Projects ``x_adv`` onto the ``norm`` ball of radius ``epsilon`` around ``x``
    intersected with the box ``bounds``.

    For L-inf the intersection is exact; for L2 the ball projection comes first and
    the box clip after it, which can only shrink the perturbation (``x`` lies in
    the box), so the result is inside both sets.

    Example:

        >>> x = tf.zeros((1, 2)); far = tf.constant([[5.0, -5.0]])
        >>> project(far, x, 0.5, "linf", (0.0, 1.0)).numpy().tolist()
        [[0.5, 0.0]]
    """
    delta = x_adv - x
    if norm == "linf":
        delta = tf.clip_by_value(delta, -epsilon, epsilon)
    else:
        length = _per_example_norm(delta, "l2")
        factor = tf.minimum(1.0, epsilon / tf.maximum(length, _TINY))
        delta = delta * factor
    return tf.clip_by_value(x + delta, bounds[0], bounds[1])


def _validate_common(epsilon: float, bounds: tuple[float, float], norm: str) -> tuple[float, float]:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}.") from error
    if not low < high:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}.")
    epsilon = float(epsilon)
    if epsilon != epsilon or epsilon < 0:
        raise ValueError(f"epsilon must be a non-negative number, got {epsilon!r}.")
    if norm == "linf" and epsilon > high - low:
        raise ValueError(
            f"epsilon={epsilon} is larger than the range of bounds={bounds!r} "
            f"({high - low}); an L-inf ball that large covers every input. Pixels are "
            "expected in [0, 1] (normalise inside the model), so epsilon is usually "
            "a fraction such as 8/255 or 0.1.")
    return low, high


class Attack:
    """Base class: holds the threat model (``epsilon``, ``norm``, ``bounds``) and the
    random seed, and provides Keras serialization.

    Subclasses implement :meth:`perturb`. Call an attack as ``attack(model, x, y)``;
    ``y`` may be integer labels ``(batch,)`` or one-hot ``(batch, classes)``.

    Args:
        epsilon: radius of the perturbation ball (same units as the pixels).
        norm: ``"linf"`` or ``"l2"``.
        bounds: ``(low, high)`` valid pixel range; adversarial inputs never leave it.
        seed: integer seed of the attack's own random stream (used when the caller
            does not pass a ``seed`` generator).

    Example:

        A random-noise attack, written as a subclass:

        >>> class UniformNoise(Attack):
        ...     def perturb(self, model, x, y, seed):
        ...         noise = keras.random.uniform(tf.shape(x), -self.epsilon, self.epsilon,
        ...                                      seed=seed)
        ...         return tf.clip_by_value(x + noise, *self.bounds)
        >>> x = tf.fill((2, 4, 4, 1), 0.5)
        >>> x_adv = UniformNoise(epsilon=0.1, seed=0)(lambda v: v, x, [0, 1])
        >>> bool(tf.reduce_max(tf.abs(x_adv - x)) <= 0.1)
        True
    """

    def __init__(self, epsilon: float, norm: str = "linf",
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = None):
        low, high = _validate_common(epsilon, bounds, norm)
        self.epsilon = float(epsilon)
        self.norm = norm
        self.bounds = (low, high)
        self.seed = seed
        self._seed_generator = None

    # -- randomness -----------------------------------------------------------------
    @property
    def seed_generator(self) -> keras.random.SeedGenerator:
        """The attack's own ``keras.random.SeedGenerator`` (created on first use)."""
        if self._seed_generator is None:
            self._seed_generator = keras.random.SeedGenerator(self.seed)
        return self._seed_generator

    def __call__(self, model: Callable, x: Any, y: Any,
                 seed: keras.random.SeedGenerator | None = None) -> tf.Tensor:
        """Returns adversarial examples of ``x`` for ``model``.

        Args:
            model: a callable returning logits, called as ``model(x, training=False)``.
            x: float images inside ``bounds``.
            y: integer labels ``(batch,)`` (or one-hot ``(batch, classes)``).
            seed: optional seed generator to draw the random start from (the trainer
                passes its own so that its random state is saved with it).

        Raises:
            InputError: called eagerly with images outside ``bounds`` (0-255 pixels
                for an attack on [0, 1], say) or with NaN/Inf values, which the
                attack would otherwise clip into the bounds without a word.
        """
        if tf.executing_eagerly():  # a direct call: check the pixels (traced calls
            # inside a train step see data that fit() has already checked)
            checks.check_images(x, self.bounds, name="x")
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            x = tf.cast(x, "float32")
        y = tf.convert_to_tensor(y)
        if y.shape.rank is not None and y.shape.rank == 2:
            y = tf.argmax(y, axis=-1)
        y = tf.cast(y, "int32")
        return tf.stop_gradient(self.perturb(model, x, y, seed or self.seed_generator))

    def perturb(self, model: Callable, x: tf.Tensor, y: tf.Tensor,
                seed: keras.random.SeedGenerator) -> tf.Tensor:
        raise NotImplementedError

    # -- serialization -------------------------------------------------------------
    def get_config(self) -> dict:
        return {"epsilon": self.epsilon, "norm": self.norm, "bounds": list(self.bounds),
                "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict) -> "Attack":
        config = dict(config)
        if "bounds" in config:
            config["bounds"] = tuple(config["bounds"])
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _logits_float32(model: Callable, x: tf.Tensor) -> tf.Tensor:
    """Model logits in float32, so that gradients and their sign are computed in
    full precision under a mixed-precision policy."""
    return tf.cast(model(x, training=False), "float32")


def _random_start(x: tf.Tensor, epsilon: float, norm: str,
                  seed: keras.random.SeedGenerator, std: float | None = None) -> tf.Tensor:
    """``x`` plus random noise: uniform in the ball, or Gaussian of standard deviation
    ``std`` per pixel when given (the caller projects the result)."""
    shape = tf.shape(x)
    if std is not None:
        noise = keras.random.normal(shape, stddev=std, dtype=x.dtype, seed=seed)
    elif norm == "linf":
        noise = keras.random.uniform(shape, -epsilon, epsilon, dtype=x.dtype, seed=seed)
    else:
        direction = keras.random.normal(shape, dtype=x.dtype, seed=seed)
        direction = direction / tf.maximum(_per_example_norm(direction, "l2"), _TINY)
        batch_shape = tf.concat([shape[:1], tf.ones_like(shape[1:])], axis=0)
        radius = keras.random.uniform(batch_shape, 0.0, epsilon, dtype=x.dtype, seed=seed)
        noise = direction * radius
    return x + noise


@keras.saving.register_keras_serializable(package="keras_advcal")
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018), L-inf or L2.

    Args:
        epsilon: radius of the ball.
        step_size: size of each step (for L2, the length of the normalised step).
        steps: number of gradient steps (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        bounds: valid pixel range ``(low, high)``.
        random_start: start from a uniform point in the ball (the Madry et al. setting).
        loss: ``"ce"`` (cross-entropy, the default), ``"cw"`` (Carlini-Wagner margin)
            or ``"kl"`` (``KL(f(x) || f(x'))`` from the model's inference-mode
            prediction on ``x``: the TRADES attack; needs a random start, since its
            gradient is zero at ``x' = x``).
        start_std: with ``random_start``, draw the start from a Gaussian of this
            standard deviation per pixel instead of uniformly in the ball (TRADES:
            0.001); the start is projected onto the ball and ``bounds`` like every
            step.
        seed: seed of the attack's own random stream.

    Example:

        >>> attack = PGD(epsilon=8 / 255, step_size=2 / 255, steps=10)
        >>> attack.get_config()["steps"]
        10
        >>> PGD(0.1, steps=5, loss="kl", start_std=0.001).loss
        'kl'
    """

    def __init__(self, epsilon: float, step_size: float | None = None, steps: int = 10,
                 norm: str = "linf", bounds: tuple[float, float] = (0.0, 1.0),
                 random_start: bool = True, loss: str = "ce", seed: int | None = None,
                 start_std: float | None = None):
        super().__init__(epsilon=epsilon, norm=norm, bounds=bounds, seed=seed)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}.")
        if start_std is not None:
            start_std = float(start_std)
            if not start_std > 0 or start_std == float("inf"):
                raise ValueError(f"start_std must be a positive number or None, got "
                                 f"{start_std!r}.")
        self.start_std = start_std
        if step_size is None:
            step_size = 2.5 * self.epsilon / steps
        step_size = float(step_size)
        if step_size < 0 or step_size != step_size:
            raise ValueError(f"step_size must be a non-negative number, got {step_size!r}.")
        self.step_size = step_size
        self.steps = int(steps)
        self.random_start = bool(random_start)
        self.loss = loss

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(step_size=self.step_size, steps=self.steps,
                      random_start=self.random_start, loss=self.loss)
        if self.start_std is not None:  # (configs saved before the option stay the same)
            config["start_std"] = self.start_std
        return config

    def _gradient(self, model: Callable, x_adv: tf.Tensor, y: tf.Tensor,
                  reference: tf.Tensor | None = None) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = _logits_float32(model, x_adv)
            if self.loss == "kl":
                objective = tf.reduce_sum(kl_divergence(reference, logits))
            else:
                objective = tf.reduce_sum(_LOSS_FUNCTIONS[self.loss](logits, y))
        # A model without a gradient path to its input (e.g. a rounding layer) gets a
        # zero gradient rather than None, so the attack runs and evaluation warns.
        return tape.gradient(objective, x_adv,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _step(self, x_adv: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
        gradient = tf.cast(gradient, x_adv.dtype)
        if self.norm == "linf":
            return x_adv + self.step_size * tf.sign(gradient)
        length = _per_example_norm(gradient, "l2")
        return x_adv + self.step_size * gradient / tf.maximum(length, _TINY)

    def perturb(self, model, x, y, seed):
        if self.epsilon == 0.0 or self.steps == 0:
            return x
        # The KL attack's reference: the model's prediction on the clean input.
        reference = (tf.stop_gradient(_logits_float32(model, x)) if self.loss == "kl"
                     else None)
        x_adv = (_random_start(x, self.epsilon, self.norm, seed, self.start_std)
                 if self.random_start else x)
        x_adv = project(x_adv, x, self.epsilon, self.norm, self.bounds)

        def step(x_adv):
            gradient = self._gradient(model, x_adv, y, reference)
            x_next = project(self._step(x_adv, gradient), x, self.epsilon, self.norm, self.bounds)
            return tf.stop_gradient(x_next)

        if self.steps <= MAX_UNROLLED_STEPS:
            for _ in range(self.steps):
                x_adv = step(x_adv)
            return x_adv
        _, x_adv = tf.while_loop(
            lambda i, _: i < self.steps, lambda i, x_adv: (i + 1, step(x_adv)),
            (tf.constant(0), x_adv), maximum_iterations=self.steps)
        return x_adv


@keras.saving.register_keras_serializable(package="keras_advcal")
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size
    ``epsilon``; with ``random_start=True`` it is the FGSM-RS of Wong et al. 2020
    (a step of ``step_size``, default ``1.25 * epsilon``, from a random start).

    Args:
        epsilon: radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        bounds: valid pixel range ``(low, high)``.
        random_start: step from a uniform point in the ball (FGSM-RS).
        step_size: size of the step (default: ``epsilon``, or ``1.25 * epsilon`` with
            ``random_start``).
        loss: ``"ce"``, ``"cw"`` or ``"kl"``, as for :class:`PGD`.
        seed: seed of the attack's own random stream.
        start_std: with ``random_start``, a Gaussian start of this standard deviation
            per pixel instead of a uniform one, as for :class:`PGD`.

    Example:

        >>> FGSM(epsilon=0.1).steps
        1
        >>> FGSM(epsilon=0.1, random_start=True).step_size
        0.125
    """

    def __init__(self, epsilon: float, norm: str = "linf",
                 bounds: tuple[float, float] = (0.0, 1.0), random_start: bool = False,
                 step_size: float | None = None, loss: str = "ce", seed: int | None = None,
                 start_std: float | None = None):
        if step_size is None:
            step_size = 1.25 * float(epsilon) if random_start else float(epsilon)
        super().__init__(epsilon=epsilon, step_size=step_size, steps=1, norm=norm,
                         bounds=bounds, random_start=random_start, loss=loss, seed=seed,
                         start_std=start_std)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("steps")
        return config


def get(identifier: Any) -> Attack:
    """Returns an attack from an instance, a config dict or a serialized object.

    Example:

        >>> get({"class_name": "PGD", "config": {"epsilon": 0.1}}).epsilon
        0.1
    """
    if isinstance(identifier, Attack):
        return identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        classes = {"PGD": PGD, "FGSM": FGSM}
        if name in classes and "module" not in identifier:
            return classes[name].from_config(identifier.get("config", {}))
        return keras.saving.deserialize_keras_object(identifier)
    raise TypeError(
        f"Expected an Attack (for example keras_advcal.PGD(...)), got {identifier!r}.")
