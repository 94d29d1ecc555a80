#!/usr/bin/env python
"""What one training step is made of: the attack, the update and AWP's ascent, timed apart.

The throughput benchmark measures whole epochs; this script times the parts of one
``AdvCalTrainer.train_step`` on a fixed batch, each as its own compiled function, in
CPU time with one TensorFlow thread (the work done, whatever else the machine runs):

* ``attack``: the training attack alone (``PGD-5``: five passes that differentiate
  the loss with respect to the *input*);
* ``step_hard``: the whole PGD-AT step (the attack, then one pass that differentiates
  with respect to the *weights*, and the optimizer's update);
* ``step_awp``: the same with ``AWP(5e-3)`` (one more weight-gradient pass, the
  perturbation of the kernels, and their restoration).

From them: ``update = step_hard - attack``, ``ascent = step_awp - step_hard`` and one
attack pass ``attack / steps``. The estimate "AWP costs one more forward and backward
pass", ``(steps + 1) / (steps + 2)`` of PGD-AT's examples per CPU-second, counts every
pass the same; the measured parts say how far a weight-gradient pass is from an
input-gradient one, and give the ratio that the parts predict,
``step_hard / step_awp``, to set beside the epoch-level measurement.

Usage::

    python benchmarks/step_costs.py                      # batch 128, width 32, 200 calls
    python benchmarks/step_costs.py --calls 50 --out /tmp/costs.json

Writes ``benchmarks/results/step_costs.json``. Example of the arithmetic:

    >>> parts({"attack": 10.0, "step_hard": 13.0, "step_awp": 16.0}, steps=5)["awp_ratio"]
    0.8125
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "step_costs.json"
EPSILON, STEPS, STEP_SIZE = 0.1, 5, 0.05


def parts(median_ms: dict, steps: int = STEPS) -> dict:
    """The derived parts of a step from the medians (ms) of the three timed calls."""
    attack, hard, awp = median_ms["attack"], median_ms["step_hard"], median_ms["step_awp"]
    return {"attack_pass": attack / steps, "update": hard - attack, "ascent": awp - hard,
            "awp_ratio": hard / awp, "one_pass_estimate": (steps + 1) / (steps + 2)}


def _cpu_ms(function, calls: int, rounds: int) -> list[float]:
    """Per-call CPU milliseconds of ``function()``, one value per round."""
    function()  # trace and warm up
    values = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            function()
        values.append(1000.0 * (time.process_time() - start) / calls)
    return values


def measure(batch_size: int, width: int, calls: int, rounds: int, seed: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_advcal import AWP, PGD, AdvCalTrainer, models

    rng = np.random.default_rng(seed)
    x = tf.constant(rng.random((batch_size, 28, 28, 1), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, batch_size))
    attack = PGD(epsilon=EPSILON, step_size=STEP_SIZE, steps=STEPS)

    def trainer(awp):
        keras.utils.set_random_seed(seed)
        net = models.small_cnn((28, 28, 1), num_classes=10, width=width, dense=8 * width)
        # As in the throughput benchmark: no clean-accuracy metric (its extra forward
        # pass would dilute the ratio).
        model = AdvCalTrainer(net, attack, labels="hard", track_clean_accuracy=False,
                              weight_perturbation=AWP(5e-3) if awp else None, objective="pgd_at")
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.build((None, 28, 28, 1))
        model.optimizer.build(model.trainable_variables)
        return model

    hard, awp = trainer(False), trainer(True)
    calls_of = {
        "attack": tf.function(lambda: hard.objective.attack(
            hard.attack, hard.student_logits, x, y, seed=hard.seed_generator)),
        "step_hard": tf.function(lambda: hard.train_step((x, y))),
        "step_awp": tf.function(lambda: awp.train_step((x, y))),
    }
    # Interleaved rounds: each round times every call once, in the same order.
    per_round = {name: [] for name in calls_of}
    for _ in range(rounds):
        for name, function in calls_of.items():
            per_round[name] += _cpu_ms(function, calls, 1)
    median = {name: statistics.median(values) for name, values in per_round.items()}
    return {"ms_per_call_median": median, "ms_per_call_rounds": per_round,
            "parts_ms": parts(median)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--calls", type=int, default=200, help="calls per round and part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.width, args.calls, args.rounds) < 1:
        parser.error("--batch-size, --width, --calls and --rounds must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    result = measure(args.batch_size, args.width, args.calls, args.rounds, args.seed)
    result.update(command="python benchmarks/step_costs.py " + " ".join(argv or sys.argv[1:]),
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), batch_size=args.batch_size,
                  width=args.width, steps=STEPS, calls=args.calls, rounds=args.rounds,
                  machine=f"{platform.platform()}, {os.cpu_count()} CPUs, load average "
                          f"{os.getloadavg()[0]:.1f}; one TensorFlow thread")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ms_per_call_median"], indent=2))
    print(json.dumps(result["parts_ms"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
