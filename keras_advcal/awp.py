"""Adversarial weight perturbation (AWP, Wu et al. 2020), inside the training step.

Before each descent step, AWP takes one ascent step on the weights: every kernel
``w`` (each trainable weight of rank >= 2; biases and normalisation parameters
stay) moves by

    v = gamma * ||w|| * g / ||g||,   g = d loss / d w,

layer by layer (``gamma`` is the size relative to the weight's norm), the loss being
the training objective's (TRADES, MART, calibrated targets: whatever the trainer
minimises). The descent gradient is taken at ``w + v``; the weights are then set
back to their exact values from before the ascent and the optimizer applies that
gradient to them. The ascent's forward pass runs in training mode, like the
published proxy model, but its moving statistics (BatchNorm) are put back too, so
only the descent pass updates them.

Everything runs inside the compiled ``train_step`` (no Python per batch), under XLA
and under a ``tf.distribute`` strategy (the ascent gradient is summed over the
replicas, so every replica takes the same step). The extra cost is one forward and
backward pass of the model per batch.

AWP is part of the library's default recipe: ``AdvCalTrainer(net, attack)`` (and
``advcal train``) trains TRADES (beta 6) with one-hot labels and ``AWP(DEFAULT_GAMMA)``,
gamma 0.01, which the library's study of recipes chose on its development split (0.01
against 0.03). ``AWP()`` keeps the published 5e-3; ``weight_perturbation=None``
(``--awp 0``) trains without weight perturbation: plain TRADES, or Madry et al.'s PGD-AT
with ``objective="pgd_at"``.

Example:

    >>> import keras, numpy as np
    >>> from keras_advcal import AdvCalTrainer, PGD
    >>> from keras_advcal.awp import AWP
    >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                         keras.layers.Dense(10)])
    >>> trainer = AdvCalTrainer(net, PGD(0.1, 0.05, 2), labels="hard",
    ...                         weight_perturbation=AWP(gamma=5e-3))
    >>> trainer.compile("adam")
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32"); y = np.arange(32) % 10
    >>> bool(np.isfinite(trainer.fit(x, y, epochs=1, verbose=0).history["loss"][0]))
    True
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from keras_advcal import checks

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _is_float(variable) -> bool:
    return str(getattr(variable.dtype, "name", variable.dtype)) in _FLOAT_DTYPES


def _read(variable) -> tf.Tensor:
    """The variable's current value as a tensor (a read that later assignments to
    the variable do not change)."""
    return tf.identity(tf.convert_to_tensor(variable))


def _sum_over_replicas(values: list[tf.Tensor]) -> list[tf.Tensor]:
    """The sum over the replicas of a ``tf.distribute`` strategy (one replica: as is)."""
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return values
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: the values are already global
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


#: The relative size of the default recipe's weight perturbation
#: (``AdvCalTrainer(net, attack)``, ``advcal train``): chosen by the library's study of
#: recipes on its development split (0.01 against 0.03; twice the published 5e-3).
DEFAULT_GAMMA = 0.01


@keras.saving.register_keras_serializable(package="keras_advcal")
class AWP:
    """Adversarial weight perturbation for
    ``AdvCalTrainer(..., weight_perturbation=AWP(gamma))``.

    Args:
        gamma: size of the weight perturbation relative to each kernel's norm (the
            published setting: 5e-3; the library's default recipe uses
            :data:`DEFAULT_GAMMA`, 0.01). 0 perturbs nothing.

    Example:

        >>> AWP(gamma=0.01).get_config()
        {'gamma': 0.01}
    """

    def __init__(self, gamma: float = 5e-3):
        self.gamma = checks.non_negative_number(gamma, "gamma")

    @staticmethod
    def perturbed_weights(model: keras.Model) -> list:
        """The weights AWP moves: the trainable weights of rank >= 2 (kernels).

        Example:

            >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            >>> [w.name for w in AWP.perturbed_weights(net)]
            ['kernel']
        """
        return [w for w in model.trainable_variables if len(w.shape) >= 2]

    def perturb(self, model: keras.Model, loss_fn: Callable[[], tf.Tensor]) -> list[tf.Tensor]:
        """The ascent step: moves each kernel of ``model`` by
        ``gamma * ||w|| * g / ||g||`` with ``g`` the gradient of ``loss_fn()``.

        Args:
            model: the model whose weights are perturbed.
            loss_fn: computes the loss to ascend (a forward pass of ``model``).

        Returns:
            The kernels' values before the step, for :meth:`restore`.

        Example:

            >>> import numpy as np
            >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            >>> awp = AWP(gamma=0.5)
            >>> before = [w.numpy() for w in AWP.perturbed_weights(net)]
            >>> saved = awp.perturb(net, lambda: tf.reduce_sum(net(tf.ones((1, 2)))))
            >>> moved = AWP.perturbed_weights(net)[0].numpy()
            >>> bool(np.isclose(np.linalg.norm(moved - before[0]),
            ...                 0.5 * np.linalg.norm(before[0])))
            True
            >>> awp.restore(net, saved)
            >>> bool(np.array_equal(AWP.perturbed_weights(net)[0].numpy(), before[0]))
            True
        """
        weights = self.perturbed_weights(model)
        statistics = [v for v in model.non_trainable_variables if _is_float(v)]
        statistics_before = [_read(v) for v in statistics]
        with tf.GradientTape() as tape:
            loss = loss_fn()
        gradients = tape.gradient(loss, weights,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        gradients = _sum_over_replicas(list(gradients))
        for variable, value in zip(statistics, statistics_before):
            variable.assign(value)
        saved = [_read(w) for w in weights]
        for weight, gradient, value in zip(weights, gradients, saved):
            value32 = tf.cast(value, "float32")
            gradient = tf.cast(gradient, "float32")
            step = self.gamma * tf.norm(value32) * tf.math.divide_no_nan(
                gradient, tf.norm(gradient))
            weight.assign(tf.cast(value32 + step, weight.dtype))
        return saved

    def restore(self, model: keras.Model, saved: list[tf.Tensor]) -> None:
        """Sets the kernels of ``model`` back to ``saved`` (from :meth:`perturb`)."""
        for weight, value in zip(self.perturbed_weights(model), saved):
            weight.assign(value)

    def get_config(self) -> dict:
        return {"gamma": self.gamma}

    @classmethod
    def from_config(cls, config: dict) -> "AWP":
        return cls(**config)

    def __repr__(self) -> str:
        return f"AWP(gamma={self.gamma!r})"


def get(identifier) -> AWP | None:
    """An :class:`AWP` from an instance, a serialized config or ``None`` (none).

    Example:

        >>> get({"gamma": 0.002}).gamma
        0.002
        >>> get(None) is None
        True
    """
    if identifier is None or isinstance(identifier, AWP):
        return identifier
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            identifier = keras.saving.deserialize_keras_object(identifier)
            if isinstance(identifier, AWP):
                return identifier
        else:
            return AWP.from_config(identifier)
    raise TypeError("`weight_perturbation` must be keras_advcal.AWP(gamma=...) or None, "
                    f"got {identifier!r}.")


__all__ = ["AWP", "get"]
