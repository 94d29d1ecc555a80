"""Square attack (Andriushchenko et al. 2020), a score-based black-box attack.

Square uses only the model's outputs, never its gradients, so it is the check on
gradient masking in a robust evaluation: if it finds adversarial examples that the
gradient attacks miss, the gradients are lying. This is the L-inf version with the
margin loss: it starts from vertical stripes of ``+-epsilon`` and at each query
redraws a random square window of the perturbation to ``+-epsilon`` (one sign per
channel), keeping the change when the margin loss grows. The window covers a
fraction ``p`` of the image that shrinks on the paper's schedule.

Queries go only to the examples still correctly classified: each iteration
gathers those examples, calls the model on them alone and scatters the scores back.

Example:

    >>> import keras
    >>> from keras_advcal.square import Square
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(10)])
    >>> x = keras.random.uniform((4, 8, 8, 1))
    >>> x_adv = Square(epsilon=0.1, n_queries=20, seed=0)(model, x, [0, 1, 2, 3])
    >>> bool(keras.ops.max(keras.ops.abs(x_adv - x)) <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from keras_advcal.attacks import Attack, _logits_float32, margin_loss

# Iterations (on a 10,000-query scale) after which the window fraction p halves.
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_MAX_SEED = 2**31 - 1


def square_p_schedule(p_init: float, iteration: tf.Tensor, n_queries: int) -> tf.Tensor:
    """Fraction of pixels changed at ``iteration`` (Andriushchenko et al. 2020).

    The iteration is rescaled to a 10,000-query budget; ``p`` halves after
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

    Example:

        >>> round(float(square_p_schedule(0.8, tf.constant(100), 10_000)), 6)
        0.2
    """
    scaled = tf.floor(tf.cast(iteration, tf.float32) * 10_000.0 / float(n_queries))
    halvings = tf.reduce_sum(tf.cast(scaled > tf.constant(_P_SCHEDULE, tf.float32), tf.float32))
    return p_init / tf.pow(2.0, halvings)


def _window_side(p: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Side of the square window: ``round(sqrt(p * h * w))`` clipped to ``[1, min(h, w) - 1]``."""
    area = tf.cast(height * width, tf.float32)
    side = tf.cast(tf.round(tf.sqrt(p * area)), tf.int32)
    return tf.clip_by_value(side, 1, tf.maximum(tf.minimum(height, width) - 1, 1))


def _window_mask(batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor, side: tf.Tensor,
                 seed: tf.Tensor) -> tf.Tensor:
    """A ``(batch, h, w, 1)`` boolean mask with one random ``side x side`` square
    per example."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([batch], seeds[0], 0, height - side + 1, tf.int32)
    left = tf.random.stateless_uniform([batch], seeds[1], 0, width - side + 1, tf.int32)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = tf.logical_and(rows >= top[:, None], rows < (top + side)[:, None])
    in_cols = tf.logical_and(cols >= left[:, None], cols < (left + side)[:, None])
    mask = tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])
    return mask[..., None]


def _random_signs(shape: tf.Tensor, seed: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    bits = tf.random.stateless_uniform(shape, seed, 0, 2, tf.int32)
    return tf.cast(2 * bits - 1, dtype)


@keras.saving.register_keras_serializable(package="keras_advcal")
class Square(Attack):
    """Score-based Square attack (L-inf) with the margin loss.

    Args:
        epsilon: radius of the L-inf ball.
        n_queries: model queries per example (the first one scores the initial
            stripes); an example stops being queried once misclassified.
        p_init: initial fraction of pixels changed per query (0.8 in the paper for
            L-inf; 0.05 is their choice for adversarially trained models on ImageNet).
        norm: ``"linf"``; ``"l2"`` raises ``NotImplementedError``.
        bounds: valid pixel range ``(low, high)``.
        seed: seed of the attack's own random stream.
        rescale_schedule: rescale the schedule of ``p`` to ``n_queries`` (the
            paper's choice for budgets other than 10,000); ``False`` applies it to
            the iteration number as it is, as the standard AutoAttack does (with
            5,000 queries ``p`` then halves only 7 times).

    Inputs must be images ``(batch, height, width, channels)`` (NHWC) with
    height and width at least 2.

    Example:

        >>> attack = Square(epsilon=0.1, n_queries=500)
        >>> Square.from_config(attack.get_config()).n_queries
        500
    """

    def __init__(self, epsilon: float, n_queries: int = 1000, p_init: float = 0.8,
                 norm: str = "linf", bounds: tuple[float, float] = (0.0, 1.0),
                 seed: int | None = None, rescale_schedule: bool = True):
        super().__init__(epsilon=epsilon, norm=norm, bounds=bounds, seed=seed)
        if norm != "linf":
            raise NotImplementedError(
                "Square is implemented for norm='linf' only; for L2 use the gradient "
                "attacks (APGD, PGDRestarts) or evaluate without 'square'.")
        if int(n_queries) != n_queries or n_queries < 1:
            raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}.")
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}.")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.rescale_schedule = bool(rescale_schedule)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(n_queries=self.n_queries, p_init=self.p_init)
        if not self.rescale_schedule:  # (configs saved before the option stay the same)
            config["rescale_schedule"] = False
        return config

    def perturb(self, model, x, y, seed):
        if x.shape.rank != 4:
            raise ValueError(
                f"Square expects NHWC images (batch, height, width, channels), got an "
                f"input of shape {x.shape}.")
        if self.epsilon == 0.0:
            return x
        base_seed = keras.random.randint((2,), 0, _MAX_SEED, seed=seed, dtype="int32")
        x_best = self._initial_point(x, base_seed)
        margin_best = margin_loss(_logits_float32(model, x_best), y)
        return self._search(model, x, y, x_best, margin_best, base_seed)

    def _initial_point(self, x: tf.Tensor, base_seed: tf.Tensor) -> tf.Tensor:
        """Vertical stripes: one random sign per column and channel."""
        shape = tf.shape(x)
        stripe_shape = tf.stack([shape[0], 1, shape[2], shape[3]])
        signs = _random_signs(stripe_shape, base_seed, x.dtype)
        return tf.clip_by_value(x + self.epsilon * signs, self.bounds[0], self.bounds[1])

    def _propose(self, x: tf.Tensor, x_best: tf.Tensor, iteration: tf.Tensor,
                 base_seed: tf.Tensor) -> tf.Tensor:
        """Redraws one random square window of each example's perturbation."""
        shape = tf.shape(x)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        step_seed = tf.random.experimental.stateless_fold_in(base_seed, iteration)
        window_seed, sign_seed = tf.unstack(
            tf.random.experimental.stateless_split(step_seed, 2))
        schedule_queries = self.n_queries if self.rescale_schedule else 10_000
        side = _window_side(square_p_schedule(self.p_init, iteration, schedule_queries),
                            height, width)
        mask = _window_mask(batch, height, width, side, window_seed)
        signs = _random_signs(tf.stack([batch, 1, 1, channels]), sign_seed, x.dtype)
        delta = tf.where(mask, self.epsilon * signs, x_best - x)
        return tf.clip_by_value(x + delta, self.bounds[0], self.bounds[1])

    def _search(self, model: Callable, x: tf.Tensor, y: tf.Tensor, x_best: tf.Tensor,
                margin_best: tf.Tensor, base_seed: tf.Tensor) -> tf.Tensor:
        def cond(i, x_best, margin_best):
            return tf.logical_and(i < self.n_queries, tf.reduce_any(margin_best < 0))

        def body(i, x_best, margin_best):
            proposal = self._propose(x, x_best, i, base_seed)
            active = tf.where(margin_best < 0)  # (n_active, 1) indices
            logits = _logits_float32(model, tf.gather_nd(proposal, active))
            margin_active = margin_loss(logits, tf.gather_nd(y, active))
            margin_new = tf.tensor_scatter_nd_update(
                tf.fill(tf.shape(margin_best), -float("inf")), active, margin_active)
            improved = margin_new > margin_best
            mask = tf.reshape(improved, [-1, 1, 1, 1])
            return (i + 1, tf.where(mask, proposal, x_best),
                    tf.where(improved, margin_new, margin_best))

        _, x_best, _ = tf.while_loop(
            cond, body, (tf.constant(1), x_best, margin_best),
            maximum_iterations=self.n_queries)
        return x_best
