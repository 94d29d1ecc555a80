"""keras_advcal.objectives: each objective's per-example loss against a hand
computation, the TRADES attack, where the calibrated target enters, bad arguments."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import AdvCalTrainer, PGD, objectives
from keras_advcal.apgd import APGD
from keras_advcal.attacks import kl_divergence
from keras_advcal.config import RunConfig
from keras_advcal.objectives import ADR, MART, PGDAT, TRADES
from keras_advcal.targets import Target
from tests.conftest import tiny_cnn

# A fixed batch: row 0 classified correctly on x' (MART's wrong class is the runner-up),
# row 1 misclassified on x', rows 2-3 with large logits.
Y = np.array([0, 2, 1, 2])
CLEAN = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [8.0, -4.0, 1.0], [-3.0, 0.0, 12.0]])
ADV = np.array([[1.0, 0.8, -0.5], [1.5, 0.2, -0.3], [2.0, 3.0, -6.0], [4.0, 1.0, 5.0]])
TEACHER = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0], [2.0, 0.5, 0.0], [0.0, 0.0, 3.0]])
T, RHO = 2.0, 0.6


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softmax(z):
    return np.exp(_log_softmax(z))


def _ce(z, y):
    return -_log_softmax(z)[np.arange(len(y)), y]


def _kl(p_logits, q_logits):
    return (_softmax(p_logits) * (_log_softmax(p_logits) - _log_softmax(q_logits))).sum(axis=1)


def _calibrated_kd(z, y, g):
    """(1 - rho) CE(z, y) + rho T^2 H(softmax(g / T), softmax(z / T))."""
    distill = -(_softmax(g / T) * _log_softmax(z / T)).sum(axis=1)
    return (1 - RHO) * _ce(z, y) + RHO * T ** 2 * distill


def _calibrated_soft(z, y, g):
    target = RHO * _softmax(g / T) + (1 - RHO) * np.eye(z.shape[1])[y]
    return -(target * _log_softmax(z)).sum(axis=1)


def _mart(clean, adv, y, beta, supervised):
    p = _softmax(adv)
    wrong = np.where(np.eye(3)[y] == 1, -np.inf, p).max(axis=1)
    boosted = supervised - np.log(1.0001 - wrong + 1e-12)
    q_y = _softmax(clean)[np.arange(len(y)), y]
    return boosted + beta * _kl(clean, adv) * (1.0000001 - q_y)


def _loss(objective, target):
    return objective.per_example_loss(target, tf.constant(CLEAN, "float32"),
                                      tf.constant(ADV, "float32")).numpy()


def _calibrated(loss_form):
    return Target(Y, TEACHER, T, RHO, loss_form)


# ------------------------------------------------------------------- the losses
def test_pgd_at_loss_is_the_cross_entropy_on_x_adv():
    np.testing.assert_allclose(_loss(PGDAT(), Y), _ce(ADV, Y), rtol=1e-5)
    np.testing.assert_allclose(_loss(PGDAT(), _calibrated("kd")),
                               _calibrated_kd(ADV, Y, TEACHER), rtol=1e-5)
    np.testing.assert_allclose(_loss(PGDAT(), _calibrated("soft")),
                               _calibrated_soft(ADV, Y, TEACHER), rtol=1e-5)


def test_trades_loss_is_clean_cross_entropy_plus_beta_kl():
    expected = _ce(CLEAN, Y) + 6.0 * _kl(CLEAN, ADV)
    np.testing.assert_allclose(_loss(TRADES(), Y), expected, rtol=1e-5)
    np.testing.assert_allclose(_loss(TRADES(beta=1.5), Y),
                               _ce(CLEAN, Y) + 1.5 * _kl(CLEAN, ADV), rtol=1e-5)
    # Calibrated: the target replaces y in the clean cross-entropy, the KL stays.
    np.testing.assert_allclose(_loss(TRADES(), _calibrated("kd")),
                               _calibrated_kd(CLEAN, Y, TEACHER) + 6.0 * _kl(CLEAN, ADV),
                               rtol=1e-5)


def test_mart_loss_is_boosted_cross_entropy_plus_weighted_kl():
    # Row 0: y is the most likely class of x', so the margin term takes the runner-up.
    assert _softmax(ADV)[0].argmax() == Y[0] and _softmax(ADV)[1].argmax() != Y[1]
    np.testing.assert_allclose(_loss(MART(), Y), _mart(CLEAN, ADV, Y, 5.0, _ce(ADV, Y)),
                               rtol=1e-5)
    np.testing.assert_allclose(_loss(MART(beta=2.0), Y),
                               _mart(CLEAN, ADV, Y, 2.0, _ce(ADV, Y)), rtol=1e-5)
    # Calibrated: only the CE part of the boosted CE changes.
    np.testing.assert_allclose(_loss(MART(), _calibrated("soft")),
                               _mart(CLEAN, ADV, Y, 5.0, _calibrated_soft(ADV, Y, TEACHER)),
                               rtol=1e-5)


def test_adr_target_uses_the_rectified_per_example_ratio():
    adr = ADR()
    rho = adr.target_ratio(RHO, tf.constant(TEACHER, "float32"), Y, T).numpy()
    probs = _softmax(TEACHER / T)
    expected = np.clip(RHO - (probs.max(1) - probs[np.arange(4), Y]), 0, 1)
    np.testing.assert_allclose(rho, expected, rtol=1e-6)
    assert rho[0] == pytest.approx(RHO)
    assert rho[2] < RHO  # the teacher prefers class 0 to the label 1
    assert adr.teacher_input == "clean" and PGDAT().target_ratio(RHO, None, Y, T) == RHO


def test_losses_are_finite_for_extreme_logits():
    clean = tf.constant([[1e4, -1e4, 0.0]]); adv = tf.constant([[-1e4, 1e4, 0.0]])
    for objective in (PGDAT(), TRADES(), MART()):
        assert np.all(np.isfinite(objective.per_example_loss([0], clean, adv).numpy()))


def test_trades_and_mart_gradients_flow_through_the_clean_logits():
    clean = tf.Variable(CLEAN, dtype="float32")
    for objective in (TRADES(), MART()):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(objective.per_example_loss(Y, clean, tf.constant(ADV, "float32")))
        assert np.abs(tape.gradient(loss, clean).numpy()).sum() > 0


# ------------------------------------------------------------------ the attacks
@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(4)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"), keras.layers.Dense(5)])


def test_trades_attack_is_the_trainers_pgd_maximising_the_kl():
    attack = PGD(0.1, 0.03, 7, norm="l2", bounds=(-1.0, 1.0))
    trades_attack = TRADES().training_attack(attack)
    config = trades_attack.get_config()
    assert (config["loss"], config["random_start"], config["start_std"]) == ("kl", True, 0.001)
    for key in ("epsilon", "step_size", "steps", "norm", "bounds"):
        assert config[key] == attack.get_config()[key], key
    mine = PGD(0.1, steps=3, loss="kl", start_std=0.01)
    assert TRADES().training_attack(mine) is mine  # a KL attack is used as given
    assert PGDAT().training_attack(attack) is attack and MART().training_attack(attack) is attack


@pytest.mark.parametrize("norm, epsilon, step", [("linf", 0.1, 0.03), ("l2", 0.5, 0.2)])
def test_trades_attack_increases_the_kl_inside_the_ball_and_bounds(dense_model, norm,
                                                                   epsilon, step):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (32, 6, 6, 1)).astype("float32")
    x[:4], x[4:8] = 0.0, 1.0  # pixels on the bounds, where the projection matters
    y = rng.integers(0, 5, 32)
    clean = dense_model(x)

    def kl_after(steps):
        attack = PGD(epsilon, step, steps, norm=norm)
        x_adv = TRADES().attack(attack, dense_model, x, y, seed=keras.random.SeedGenerator(3))
        return x_adv.numpy(), kl_divergence(clean, dense_model(x_adv))

    x_adv, kl = kl_after(10)
    _, kl_one_step = kl_after(1)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(32, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert np.all(size <= epsilon + 1e-5) and np.mean(size) > 0.5 * epsilon
    assert float(tf.reduce_mean(kl)) > 2.0 * float(tf.reduce_mean(kl_one_step)) > 0.0
    # The random start alone (std 0.001) barely moves the prediction.
    start = x + 0.001 * rng.standard_normal(x.shape).astype("float32")
    kl_start = kl_divergence(clean, dense_model(np.clip(start, 0, 1)))
    assert float(tf.reduce_mean(kl)) > 100 * float(tf.reduce_mean(kl_start))


def test_trades_attack_compiles_under_xla(dense_model):
    x = np.random.default_rng(1).uniform(0, 1, (8, 6, 6, 1)).astype("float32")
    generator = keras.random.SeedGenerator(0)
    attack = PGD(0.1, 0.03, 3)
    run = tf.function(lambda x: TRADES().attack(attack, dense_model, x, tf.zeros(8, "int32"),
                                                seed=generator), jit_compile=True)
    x_adv = run(x).numpy()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and np.abs(x_adv - x).max() > 0.05


# ------------------------------------------------------- inside the trainer
def _expected_step_loss(trainer, x, y, seed_state, teacher_on):
    """The loss of one training step computed outside the trainer: the same attack
    (same random state), the objective on student(x), student(x'), the target from
    the teacher on ``teacher_on`` ("clean" or "adversarial")."""
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(seed_state)
    x_adv = trainer.objective.attack(trainer.attack, trainer.student_logits, x, y,
                                     seed=generator)
    target = Target(y)
    if trainer.labels == "calibrated":
        seen = x if teacher_on == "clean" else x_adv
        target = Target(y, trainer.teacher(seen), 2.0, 0.5, "kd")
    per_example = trainer.objective.per_example_loss(target, trainer.student(x),
                                                     trainer.student(x_adv))
    return float(tf.reduce_mean(per_example))


@pytest.mark.parametrize("objective", ["trades", "mart"])
@pytest.mark.parametrize("labels", ["hard", "calibrated"])
def test_train_step_computes_the_objective_with_the_teacher_on_its_input(digits, objective,
                                                                        labels):
    x, y = digits[0][:48], digits[1][:48]
    teacher = tiny_cnn(9) if labels == "calibrated" else None
    kwargs = dict(teacher=teacher, temperature=2.0, rho=0.5) if teacher is not None else {}
    # No weight perturbation (on by default): the loss is of these weights, unmoved.
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, 0.03, 3), labels=labels,
                            objective=objective, seed=4, weight_perturbation=None, **kwargs)
    trainer.compile(keras.optimizers.SGD(0.0))  # no update: the loss is of these weights
    state = trainer.seed_generator.state.numpy()
    logs = trainer.train_on_batch(x, y, return_dict=True)
    teacher_on = objectives.get(objective).teacher_input
    expected = _expected_step_loss(trainer, x, y, state, teacher_on)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    if labels == "calibrated":
        other = "adversarial" if teacher_on == "clean" else "clean"
        assert abs(_expected_step_loss(trainer, x, y, state, other) - expected) > 1e-4


def test_trainer_default_recipe_is_trades_with_one_hot_labels_and_awp():
    """The frozen default recipe: AdvCalTrainer(net, attack) is TRADES (beta 6) with
    one-hot labels and AWP (gamma 0.01); plain TRADES and PGD-AT are arguments away."""
    trainer = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=2))
    assert trainer.labels == "hard" and trainer.objective == TRADES(beta=6.0)
    assert trainer.weight_perturbation.gamma == 0.01 and trainer.training_attack.loss == "kl"
    plain = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=2), weight_perturbation=None)
    assert plain.weight_perturbation is None
    pgd_at = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=2), objective="pgd_at",
                           weight_perturbation=None)
    assert pgd_at.objective == PGDAT() and pgd_at.training_attack is pgd_at.attack
    # The command line's default is the same recipe.
    config = RunConfig()
    assert (config.objective, config.labels, config.awp_gamma) == ("trades", "hard", 0.01)
    trades = AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=2), objective=TRADES(beta=3.0),
                           labels="calibrated")
    assert trades.objective.beta == 3.0 and trades.training_attack.loss == "kl"


# ------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("make, error, message", [
    (lambda: TRADES(beta=-1.0), ValueError, "`beta`"),
    (lambda: MART(beta=float("nan")), ValueError, "`beta`"),
    (lambda: TRADES(beta="six"), ValueError, "`beta`"),
    (lambda: objectives.get("madry"), ValueError, "`objective` must be one of"),
    (lambda: objectives.get("pgd_at", beta=2.0), ValueError, "`beta` applies to"),
    (lambda: objectives.get(TRADES(), beta=2.0), ValueError, "`beta`"),
    (lambda: AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), objective="nope",
                           labels="calibrated"), ValueError,
     "`objective`"),
    (lambda: AdvCalTrainer(tiny_cnn(0), APGD(0.1, steps=2), objective="trades",
                           labels="calibrated"), TypeError,
     "`attack`"),
    (lambda: AdvCalTrainer(tiny_cnn(0), PGD(0.1, steps=1), labels="hard", objective="adr"),
     ValueError, "needs labels='calibrated'"),
])
def test_bad_arguments_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_names_and_serialization():
    assert objectives.NAMES == ("pgd_at", "trades", "mart", "adr")
    assert objectives.get("TRADES").beta == 6.0 and objectives.get("mart").beta == 5.0
    for objective in (PGDAT(), TRADES(beta=2.5), MART(beta=1.0), ADR()):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(objective))
        assert restored == objective and objectives.get(objective) is objective
