"""Tests of keras_advcal.attacks: bounds, strength, graph/XLA use, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_advcal import attacks
from keras_advcal.attacks import FGSM, PGD
from tests.conftest import tiny_cnn


def _linf(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).reshape(len(a), -1).max(axis=1)


def _l2(a, b):
    return np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).reshape(len(a), -1).sum(axis=1))


@pytest.fixture(scope="module")
def random_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"), keras.layers.Dense(5)])


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0), (0.2, 0.7)])
@pytest.mark.parametrize("make_attack", [
    lambda b: PGD(0.1, 0.03, 7, norm="linf", bounds=b),
    lambda b: PGD(0.5, 0.2, 7, norm="l2", bounds=b),
    lambda b: PGD(0.1, 0.03, 5, norm="linf", bounds=b, loss="cw"),
    lambda b: FGSM(0.1, bounds=b),
    lambda b: FGSM(0.1, bounds=b, random_start=True),
    lambda b: FGSM(0.4, norm="l2", bounds=b),
    lambda b: PGD(0.1, 0.03, 5, norm="linf", bounds=b, loss="kl", start_std=0.001),
    lambda b: PGD(0.5, 0.2, 5, norm="l2", bounds=b, loss="kl", start_std=0.001),
], ids=["pgd-linf", "pgd-l2", "pgd-cw", "fgsm", "fgsm-rs", "fgsm-l2", "pgd-kl", "pgd-kl-l2"])
def test_perturbation_stays_in_ball_and_bounds(random_model, make_attack, bounds):
    attack = make_attack(bounds)
    rng = np.random.default_rng(0)
    x = rng.uniform(bounds[0], bounds[1], (16, 6, 6, 3)).astype("float32")
    # Put some pixels exactly on the bounds, where clipping matters.
    x[:4] = bounds[0]
    x[4:8] = bounds[1]
    y = rng.integers(0, 5, 16)
    x_adv = attack(random_model, x, y).numpy()
    assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1]
    distance = _linf(x_adv, x) if attack.norm == "linf" else _l2(x_adv, x)
    assert np.all(distance <= attack.epsilon + 1e-5)
    assert np.any(distance > 0), "the attack moved nothing"


def test_pgd_increases_loss_over_clean(random_model):
    x = np.random.default_rng(1).uniform(0, 1, (32, 6, 6, 3)).astype("float32")
    y = np.random.default_rng(2).integers(0, 5, 32)
    attack = PGD(0.05, 0.01, 10, random_start=False)
    clean = attacks.cross_entropy_loss(random_model(x), y).numpy()
    adv = attacks.cross_entropy_loss(random_model(attack(random_model, x, y)), y).numpy()
    assert np.all(adv >= clean - 1e-5)
    assert adv.mean() > clean.mean()


def test_epsilon_zero_returns_input(random_model):
    x = np.random.default_rng(0).uniform(0, 1, (4, 6, 6, 3)).astype("float32")
    assert np.array_equal(PGD(0.0, steps=3)(random_model, x, [0, 1, 2, 3]).numpy(), x)


def test_one_hot_labels_give_the_same_attack(random_model):
    x = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 3)).astype("float32")
    y = np.arange(8) % 5
    attack = PGD(0.1, 0.03, 3, random_start=False)
    a = attack(random_model, x, y).numpy()
    b = attack(random_model, x, np.eye(5)[y]).numpy()
    np.testing.assert_array_equal(a, b)


def test_random_start_is_seeded(random_model):
    x = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 3)).astype("float32")
    y = np.arange(8) % 5
    a = PGD(0.1, 0.03, 2, seed=3)(random_model, x, y).numpy()
    b = PGD(0.1, 0.03, 2, seed=3)(random_model, x, y).numpy()
    np.testing.assert_array_equal(a, b)


def test_attack_runs_in_tf_function_and_xla(random_model):
    attack = PGD(0.1, 0.03, 4, seed=0)
    x = tf.random.uniform((8, 6, 6, 3))
    y = tf.zeros(8, "int32")
    graph = tf.function(lambda x, y: attack(random_model, x, y))
    xla = tf.function(lambda x, y: attack(random_model, x, y), jit_compile=True)
    for fn in (graph, xla):
        x_adv = fn(x, y).numpy()
        assert _linf(x_adv, x.numpy()).max() <= 0.1 + 1e-5


def _graph(attack, model):
    x = tf.TensorSpec((None, 6, 6, 3)); y = tf.TensorSpec((None,), tf.int32)
    fn = tf.function(lambda x, y: attack(model, x, y))
    return fn.get_concrete_function(x, y).graph.as_graph_def()


def _has_loop(graph_def):
    return any(node.op in ("While", "StatelessWhile") for node in graph_def.node)


def test_short_attacks_unroll_and_long_ones_loop(random_model):
    """Training attacks (few steps) are unrolled; a long attack is a while loop whose
    graph does not grow with the number of steps."""
    short, longest = 2, attacks.MAX_UNROLLED_STEPS
    assert not _has_loop(_graph(PGD(0.1, 0.01, longest), random_model))
    assert (len(_graph(PGD(0.1, 0.01, short + 1), random_model).node)
            > len(_graph(PGD(0.1, 0.01, short), random_model).node))
    looped = _graph(PGD(0.1, 0.01, longest + 1), random_model)
    assert _has_loop(looped)
    assert len(_graph(PGD(0.1, 0.01, 50), random_model).node) == len(looped.node)


def test_unrolled_and_looped_attacks_agree(random_model, monkeypatch):
    x = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 3)).astype("float32")
    y = np.arange(8) % 5
    unrolled = PGD(0.1, 0.03, 5, seed=3)(random_model, x, y).numpy()
    monkeypatch.setattr(attacks, "MAX_UNROLLED_STEPS", 0)
    looped = PGD(0.1, 0.03, 5, seed=3)(random_model, x, y).numpy()
    np.testing.assert_allclose(unrolled, looped, atol=1e-6)


def test_attack_strength_undefended_vs_adversarially_trained(digits):
    """An undefended digits model drops to <= 10% under PGD where a PGD-trained one
    keeps far more."""
    from keras_advcal import AdvCalTrainer

    x_train, y_train, x_test, y_test = digits
    attack = PGD(0.2, 0.05, 10, seed=0)
    plain = tiny_cnn(0)
    plain.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    robust = AdvCalTrainer(tiny_cnn(0), PGD(0.2, 0.05, 5), labels="hard", seed=0,
                           objective="pgd_at")
    robust.compile(keras.optimizers.Adam(2e-3))
    robust.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)

    def accuracy(model, inputs):
        return float(np.mean(np.argmax(model.predict(inputs, verbose=0), 1) == y_test))

    assert accuracy(plain, x_test) > 0.9
    plain_robust = accuracy(plain, attack(plain, x_test, y_test))
    trained_robust = accuracy(robust.model, attack(robust.model, x_test, y_test))
    assert plain_robust <= 0.10
    assert trained_robust >= plain_robust + 0.25


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=-0.1), "non-negative"),
    (dict(epsilon=2.0), "larger than the range"),
    (dict(epsilon=0.1, norm="l1"), "norm must be"),
    (dict(epsilon=0.1, bounds=(1.0, 0.0)), "low < high"),
    (dict(epsilon=0.1, steps=0), "positive integer"),
    (dict(epsilon=0.1, loss="mse"), "loss must be"),
    (dict(epsilon=0.1, step_size=-1.0), "step_size"),
    (dict(epsilon=0.1, start_std=0.0), "start_std"),
    (dict(epsilon=0.1, start_std=float("nan")), "start_std"),
])
def test_bad_attack_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PGD(**kwargs)


@pytest.mark.parametrize("attack", [PGD(0.1, 0.02, 7, norm="l2", bounds=(-1.0, 1.0), loss="cw",
                                        seed=4), FGSM(0.3, random_start=True),
                                    PGD(0.1, 0.02, 3, loss="kl", start_std=0.002)])
def test_config_round_trip(attack):
    config = attack.get_config()
    again = type(attack).from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(restored) is type(attack) and restored.get_config() == config
    assert attacks.get(keras.saving.serialize_keras_object(attack)).get_config() == config


def test_start_std_is_only_in_the_configs_that_set_it():
    assert "start_std" not in PGD(0.1).get_config()
    assert FGSM(0.1, random_start=True, start_std=0.01).get_config()["start_std"] == 0.01


def test_kl_divergence_values():
    a = tf.constant([[0.0, 0.0], [3.0, -1.0]]); b = tf.constant([[0.0, 1.0], [3.0, -1.0]])
    p, q = np.array([0.5, 0.5]), np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(attacks.kl_divergence(a, b).numpy(),
                               [np.sum(p * np.log(p / q)), 0.0], atol=1e-6)
    assert float(attacks.kl_divergence(b, a)[0]) != pytest.approx(float(
        attacks.kl_divergence(a, b)[0]))  # not symmetric


def test_kl_attack_maximises_the_kl_from_the_clean_prediction(random_model):
    x = np.random.default_rng(3).uniform(0, 1, (16, 6, 6, 3)).astype("float32")
    y = np.zeros(16, "int32")  # not used by the KL attack
    clean = random_model(x)
    gaussian = PGD(0.05, 0.01, 8, loss="kl", start_std=0.001, seed=1)
    uniform = PGD(0.05, 0.01, 8, loss="kl", seed=1)  # start uniform in the ball
    for attack in (gaussian, uniform):
        x_adv = attack(random_model, x, y)
        kl = attacks.kl_divergence(clean, random_model(x_adv)).numpy()
        start = PGD(0.05, 0.01, 1, loss="kl", start_std=attack.start_std, seed=1)
        kl_one = attacks.kl_divergence(clean, random_model(start(random_model, x, y))).numpy()
        assert kl.mean() > 2 * kl_one.mean() > 0


def test_margin_loss_sign():
    logits = tf.constant([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    np.testing.assert_allclose(attacks.margin_loss(logits, tf.constant([0, 0])).numpy(),
                               [-2.0, 2.0])


def test_get_rejects_non_attacks():
    with pytest.raises(TypeError, match="Expected an Attack"):
        attacks.get("pgd")


@pytest.mark.parametrize("make_attack", [lambda: PGD(0.1, 0.03, 3), lambda: FGSM(0.1)])
def test_direct_call_refuses_pixels_outside_the_bounds(random_model, make_attack):
    # 0-255 pixels given to an attack on [0, 1] were clipped into [0, 1] without a word.
    x = np.full((2, 6, 6, 3), 200.0, "float32")
    with pytest.raises(ValueError, match=r"outside the attack's bounds.*divide by 200"):
        make_attack()(random_model, x, [0, 1])
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_attack()(random_model, x, [0, 1])


def test_traced_call_skips_the_eager_pixel_check(random_model):
    # Inside a tf.function (a train step) the attack runs on symbolic tensors.
    attack = PGD(0.1, 0.03, 3)
    run = tf.function(lambda x, y: attack(random_model, x, y))
    x = np.full((2, 6, 6, 3), 0.5, "float32")
    x_adv = run(tf.constant(x), tf.constant([0, 1]))
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 0.1 + 1e-6
