"""The benchmark scripts' own examples (their docstrings' doctests) still hold.

The scripts are not part of the package, so pytest's ``--doctest-modules`` does not
collect them; their analysis helpers (the replacement rule of the development study,
the README lines of the held-out report, the bootstrap, the step-cost arithmetic) are
checked here instead."""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["art_crosscheck", "development", "heldout", "label_noise", "recipes", "step_costs",
           "throughput"]


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}",
                                                      BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_examples(name):
    module = _load(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}.py has no examples"
    assert result.failed == 0


def test_development_rule_needs_two_seeds_and_a_margin():
    decide = _load("development").decide

    def rule(rows):
        return decide(rows, reference="default")

    base = {"variant": "default", "seeds": [0, 1], "dev_final_mean": 58.0,
            "dev_final_se": 0.5, "dev_smoothed_gap_mean": 0.5}
    # Higher by less than the larger standard error: no replacement.
    close = dict(base, variant="floor_0.8", dev_final_mean=58.4, dev_final_se=0.2)
    assert rule([base, close])["better"] == []
    # Higher by more, but overfitting: no replacement.
    gappy = dict(base, variant="floor_0.95", dev_final_mean=60.0, dev_smoothed_gap_mean=1.5)
    assert rule([base, gappy])["better"] == []
    # One seed cannot decide, and the study is not complete.
    single = dict(base, variant="swa_start_10", seeds=[0], dev_final_mean=65.0)
    decision = rule([base, single])
    assert decision["better"] == [] and "swa_start_10" in decision["waiting"]
    assert not decision["complete"]
    # Objective rows are not candidates for the default.
    trades = dict(base, variant="trades", dev_final_mean=70.0)
    assert rule([base, trades])["better"] == []


def test_development_rule_after_the_freeze_compares_with_the_frozen_default():
    development = _load("development")
    frozen = {"variant": development.FROZEN_DEFAULT, "seeds": [0, 1],
              "dev_final_mean": 59.8, "dev_final_se": 0.2, "dev_smoothed_gap_mean": 0.2}
    start = dict(frozen, variant="default", dev_final_mean=58.9, dev_final_se=0.6)
    rival = dict(frozen, variant="confidence_rule", dev_final_mean=61.0, dev_final_se=0.3)
    decision = development.decide([start, frozen, rival])
    assert decision["reference"] == development.FROZEN_DEFAULT
    # The starting default is a candidate like any other, and loses here.
    assert decision["better"] == ["confidence_rule"]
    assert "default" not in decision["waiting"]



def test_development_rule_prefers_a_tie_off_the_floor():
    development = _load("development")
    frozen = {"variant": "selection_minimum", "seeds": [0, 1], "dev_final_mean": 59.8,
              "dev_final_se": 0.2, "dev_smoothed_gap_mean": 0.2, "floor_bound_fraction": 0.73}
    tie = dict(frozen, variant="confidence_rule", dev_final_mean=59.5, dev_final_se=0.4,
               floor_bound_fraction=0.0)
    on_floor = dict(tie, variant="average_fits", floor_bound_fraction=0.9)
    worse = dict(tie, variant="calibration_250", dev_final_mean=58.0)
    decision = development.decide([frozen, tie, on_floor, worse],
                                  reference="selection_minimum")
    assert decision["better"] == []
    assert decision["tie_preferred"] == ["confidence_rule"]
    # No preference when the reference itself is mostly off the floor.
    decision = development.decide([dict(frozen, floor_bound_fraction=0.1), tie],
                                  reference="selection_minimum")
    assert decision["tie_preferred"] == []


def test_heldout_readme_lines_name_only_finished_rows(tmp_path):
    heldout = _load("heldout")
    cnn = {"subset": 500, "model": "small_cnn_w32_d256", "epsilon": 0.1}
    summary = {"settings": [dict(cnn, name="dev", role="development"),
                            dict(cnn, name="seed1", role="heldout")],
               "rows": [{"setting": "dev", "method": "pgd_at", "seeds": [0],
                         "final_worst_case_mean": 45.7},
                        {"setting": "dev", "method": "pgd_at_es", "seeds": [0],
                         "final_worst_case_mean": 50.8}],
               "comparisons": []}
    text = heldout.readme_lines(summary)
    assert "PGD-AT 45.7%" in text and "early-stopped 50.8%" in text
    assert "seed1" not in text and "support no claim" in text
    assert "500 training images, a small CNN (convolutions of 32 and 64 filters" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{heldout.README_MARKERS[0]}\nold\n{heldout.README_MARKERS[1]}\n"
                      "rest\n")
    heldout.replace_marked(readme, text, heldout.README_MARKERS)
    content = readme.read_text()
    assert "old" not in content and "PGD-AT 45.7%" in content
    assert content.startswith("intro\n") and content.endswith("rest\n")


def test_heldout_headline_names_a_row_that_beats_the_default_and_only_that_one():
    heldout = _load("heldout")
    setting = {"name": "a", "role": "heldout", "kept": True, "subset": 500,
               "model": "small_cnn_w32_d256", "epsilon": 0.1}
    pooled = {"setting": "pooled_heldout", "seeds": {"a": 3}}
    rows = [{"setting": "a", "method": "calibrated_default", "final_clean_mean": 78.0,
             "smoothed_gap_mean": 1.0},
            {"setting": "a", "method": "trades_calibrated", "final_clean_mean": 72.5,
             "smoothed_gap_mean": 0.2}]
    summary = {"settings": [setting], "rows": rows,
               "comparisons": [dict(pooled, baseline="pgd_at_es_or_swa", diff_mean=0.0,
                                    ci95=[-0.9, 0.9]),
                               dict(pooled, baseline="trades_calibrated", diff_mean=-5.1,
                                    ci95=[-6.6, -3.4]),
                               dict(pooled, baseline="two_stage", diff_mean=0.1,
                                    ci95=[-0.9, 1.1]),
                               dict(pooled, baseline="adr", diff_mean=9.1,
                                    ci95=[7.9, 10.5])]}
    headline = heldout.headline(summary)
    assert "ties with what a careful user already does" in headline
    assert ("Calibrated TRADES does better than the default here: the default minus it "
            "-5.1 points pooled (95% interval [-6.6, -3.4]), at a final clean accuracy "
            "of 72.5% against the default's 78.0%") in headline
    assert "two-stage" not in headline and "ADR" not in headline
    assert "So far" not in headline
    short = dict(pooled, baseline="trades", diff_mean=-4.5, ci95=[-5.7, -3.3],
                 seeds={"a": 1})
    summary["comparisons"].append(short)
    assert "So far (1 of 2 seeds), TRADES does better than the default" in (
        heldout.headline(summary))
    sentence = heldout.other_rows_sentence(summary)
    assert "the two-stage recipe +0.1 points [-0.9, 1.1] (a tie)" in sentence
    assert "ADR +9.1 points [7.9, 10.5] (the default is better)" in sentence
    assert "(calibrated TRADES is better)" in sentence


def _finished_pgd_at_run(directory: Path, gap: float) -> None:
    import json

    import numpy as np

    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps(
        {"smoothed_gap": gap, "final_strong_test_adv_accuracy": 0.5}))
    np.savez(directory / "correctness_final.npz",
             test_strong_robust=np.array([1, 0, 1, 1], dtype=bool))


def test_heldout_exploratory_comparison_pairs_seeds_and_leaves_the_protocol_alone(tmp_path):
    import json

    import numpy as np

    heldout = _load("heldout")
    rng = np.random.default_rng(0)
    correct = {}
    for method, seeds in (("pgd_at", (0, 1, 2)), ("calibrated_default", (0, 1, 2)),
                          ("trades", (0, 1)), ("trades_calibrated", (0, 1, 2))):
        for seed in seeds:
            directory = heldout.run_dir(tmp_path, "seed1", method, seed)
            directory.mkdir(parents=True)
            correct[method, seed] = rng.random(40) < 0.5
            (directory / "summary.json").write_text(json.dumps(
                {"smoothed_gap": 0.05, "final_strong_test_adv_accuracy": 0.5}))
            np.savez(directory / "correctness_final.npz",
                     test_strong_robust=correct[method, seed])
    with_it = heldout.analyse(tmp_path)
    secondary = with_it["secondary_comparisons"]
    # Paired on the seeds both rows have (0 and 1), in points; no pooled number while
    # the other held-out settings are undecided.
    expected = 100 * np.mean([correct["trades_calibrated", s].astype(float)
                              - correct["trades", s] for s in (0, 1)])
    assert [(c["setting"], c["seeds"]) for c in secondary] == [("seed1", 2)]
    assert secondary[0]["diff_mean"] == pytest.approx(expected, abs=1e-3)
    low, high = secondary[0]["ci95"]
    assert low <= secondary[0]["diff_mean"] <= high
    # Drawn after the protocol's comparisons: without it they are the same numbers.
    heldout.SECONDARY = []
    without = heldout.analyse(tmp_path)
    assert without["secondary_comparisons"] == []
    assert without["comparisons"] == with_it["comparisons"] != []
    text = heldout.report(with_it)
    assert "`trades_calibrated` minus `trades`" in text and "Exploratory" in text


def test_heldout_plan_starts_nothing_but_pgd_at_in_a_dropped_setting(tmp_path):
    heldout = _load("heldout")
    seeds = heldout.METHOD["pgd_at"].seeds
    for seed in seeds:  # PGD-AT barely overfits in large2000, clearly in seed1
        _finished_pgd_at_run(heldout.run_dir(tmp_path, "large2000", "pgd_at", seed), 0.01)
        _finished_pgd_at_run(heldout.run_dir(tmp_path, "seed1", "pgd_at", seed), 0.05)
    jobs, notes = heldout.plan(tmp_path, ["pgd_at", "adr"], ["large2000", "seed1"], None)
    adr = [job.name for job in jobs if job.method.name == "adr"]
    assert adr == [f"seed1/adr_s{seed}" for seed in heldout.METHOD["adr"].seeds]
    assert any("adr in large2000" in note and "dropped" in note for note in notes)
    # PGD-AT's own runs are still planned (and found finished) in both settings.
    assert {job.name for job in jobs if job.method.name == "pgd_at"} == {
        f"{setting}/pgd_at_s{seed}" for setting in ("large2000", "seed1") for seed in seeds}


def test_heldout_plan_waits_for_every_pgd_at_seed_before_dropping(tmp_path):
    heldout = _load("heldout")
    _finished_pgd_at_run(heldout.run_dir(tmp_path, "large2000", "pgd_at", 0), 0.0)
    jobs, notes = heldout.plan(tmp_path, ["adr"], ["large2000"], None)
    assert [job.name for job in jobs] == [f"large2000/adr_s{seed}"
                                          for seed in heldout.METHOD["adr"].seeds]
    assert notes == []


def test_heldout_reserve_settings_join_only_while_too_few_are_kept(tmp_path):
    import dataclasses

    heldout = _load("heldout")
    # The first round's settings with two more reserves like seed5 (wide64 and seed7,
    # the first round's other reserves, have joined the second round).
    reserve = heldout.SETTING["seed5"]
    synthetic = [s for s in heldout.SETTINGS if s.round == 1] + [
        dataclasses.replace(reserve, name=f"reserve{i}", data_seed=20 + i) for i in (1, 2)]
    heldout.SETTINGS[:] = synthetic
    heldout.SETTING.clear()
    heldout.SETTING.update({s.name: s for s in synthetic})
    first_round = [s for s in heldout.SETTINGS if s.role == "heldout" and not s.reserve]
    reserves = [s for s in heldout.SETTINGS if s.reserve]
    assert len(first_round) >= heldout.REQUIRED_HELDOUT and len(reserves) >= 2
    # Nothing decided: every first-round setting may still be kept, no reserve needed.
    jobs, notes = heldout.plan(tmp_path, ["pgd_at"], [s.name for s in heldout.SETTINGS], None)
    assert {job.run_dir.parent.name for job in jobs} == {"dev"} | {s.name for s in first_round}
    assert sum("reserve setting" in note for note in notes) == len(reserves)
    # Drop all but REQUIRED_HELDOUT - 2 first-round settings: two reserves are needed.
    dropped = first_round[heldout.REQUIRED_HELDOUT - 2:]
    for setting in dropped:
        for seed in heldout.METHOD["pgd_at"].seeds:
            _finished_pgd_at_run(heldout.run_dir(tmp_path, setting.name, "pgd_at", seed), 0.0)
    runs = heldout.collect(tmp_path)
    assert [heldout.active(runs, s) for s in reserves[:3]] == [True, True, False]
    # In an active reserve setting PGD-AT runs first; the others wait for it to be kept.
    jobs, notes = heldout.plan(tmp_path, ["pgd_at", "adr"], [reserves[0].name], None)
    assert {job.method.name for job in jobs} == {"pgd_at"}
    assert any(f"adr in {reserves[0].name}" in note and "waits" in note for note in notes)
    # A needed reserve that PGD-AT does not overfit in brings in the next one.
    for seed in heldout.METHOD["pgd_at"].seeds:
        _finished_pgd_at_run(heldout.run_dir(tmp_path, reserves[0].name, "pgd_at", seed), 0.0)
    runs = heldout.collect(tmp_path)
    assert [heldout.active(runs, s) for s in reserves[:3]] == [True, True, True]
    names = [s["name"] for s in heldout.analyse(tmp_path)["settings"]]
    assert reserves[2].name in names and all(s.name in names for s in first_round)


def test_heldout_pools_only_once_every_held_out_setting_is_decided(tmp_path):
    heldout = _load("heldout")
    first_round = [s.name for s in heldout.SETTINGS
                   if s.role == "heldout" and not s.reserve and s.round == 1]

    def overfitting_setting(name):
        for seed in heldout.METHOD["pgd_at"].seeds:
            _finished_pgd_at_run(heldout.run_dir(tmp_path, name, "pgd_at", seed), 0.05)
        _finished_pgd_at_run(heldout.run_dir(tmp_path, name, "calibrated_default", 0), 0.0)

    def pooled(summary):
        return [c for c in summary["comparisons"]
                if c["setting"] == "pooled_heldout" and c["baseline"] == "pgd_at"]

    overfitting_setting(first_round[0])
    summary = heldout.analyse(tmp_path)
    # One setting is kept, the others are undecided: a per-setting number, no pooled one.
    assert any(c["setting"] == first_round[0] and c["baseline"] == "pgd_at"
               for c in summary["comparisons"])
    assert pooled(summary) == []
    for name in first_round[1:]:
        overfitting_setting(name)
    summary = heldout.analyse(tmp_path)
    assert [c["settings"] for c in pooled(summary)] == [first_round]


def test_heldout_second_round_settings_and_their_keep_rule(tmp_path):
    """The second round's settings configure MNIST, the reduced PreActResNet-18 and the
    SGD recipe; only PGD-AT runs there until its seeds keep the setting, and the first
    round's pooled analysis does not read them."""
    heldout = _load("heldout")
    mnist = heldout.SETTING["mnist_eps03"].config()
    assert (mnist["dataset"], mnist["epsilon"], mnist["train_step_size"],
            mnist["eval_step_size"]) == ("mnist", 0.3, 0.15, 0.075)
    assert mnist["test_size"] == mnist["final_strong_size"] == mnist["curve_size"] == 1000
    resnet = heldout.SETTING["resnet_bn"].config()
    assert (resnet["model"], resnet["width"], resnet["subset"]) == ("preact_resnet18", 8, 1000)
    sgd = heldout.SETTING["sgd_piecewise"].config()
    assert (sgd["optimizer"], sgd["momentum"], sgd["weight_decay"], sgd["lr_schedule"]) == (
        "sgd", 0.9, 5e-4, "piecewise")
    # The first round's configs are as before (no model key, the 8,000 test images).
    assert "model" not in heldout.SETTING["seed1"].config()
    assert heldout.SETTING["seed1"].config()["test_size"] == 8000

    jobs, notes = heldout.plan(tmp_path, ["pgd_at", "trades", "adr"], ["mnist_eps03"], None)
    assert [job.name for job in jobs] == [f"mnist_eps03/pgd_at_s{s}" for s in (0, 1, 2)]
    assert any("trades in mnist_eps03" in note and "waits" in note for note in notes)
    for seed in (0, 1, 2):
        _finished_pgd_at_run(heldout.run_dir(tmp_path, "mnist_eps03", "pgd_at", seed), 0.05)
    jobs, _ = heldout.plan(tmp_path, ["pgd_at", "trades", "adr"], ["mnist_eps03"], None)
    # Kept: TRADES starts on three seeds with its early-stopped and averaged models;
    # ADR is not a second-round row.
    trades = [job for job in jobs if job.method.name == "trades"]
    assert [job.seed for job in trades] == [0, 1, 2]
    assert trades[0].config["checkpoint_best"] and trades[0].config["weight_average"]
    assert not [job for job in jobs if job.method.name == "adr"]
    summary = heldout.analyse(tmp_path)
    entry = [s for s in summary["settings"] if s["name"] == "mnist_eps03"][0]
    assert entry["kept"] is True and entry["round"] == 2 and entry["dataset"] == "mnist"
    assert all(c["setting"] != "mnist_eps03" for c in summary["comparisons"])


def _trained_pgd_at_run(directory: Path, curve: list[float]) -> None:
    """A PGD-AT run that has trained and stopped (``--train-only``): its history and
    marker, no summary."""
    import json

    directory.mkdir(parents=True)
    (directory / "history.json").write_text(json.dumps(
        {"epoch": list(range(len(curve))), "test_adv_accuracy": curve,
         "test_accuracy": [0.9] * len(curve)}))
    (directory / "training_done.json").write_text(json.dumps({"train_seconds": 60.0}))


def test_heldout_second_round_pgd_at_trains_first_and_the_keep_rule_reads_its_curves(
        tmp_path):
    """Until a second-round setting is decided its PGD-AT runs stop after training; the
    keep rule reads the gap of their curves (a run that only trained counts), and once
    the setting is kept the same runs are planned again, in full, for their final
    attacks. First-round runs are never cut short."""
    heldout = _load("heldout")
    robust_overfitting = _load("robust_overfitting")
    jobs, _ = heldout.plan(tmp_path, ["pgd_at"], ["sgd_piecewise", "seed1"], None)
    assert {job.name: job.train_only for job in jobs if job.seed == 0} == {
        "seed1/pgd_at_s0": False, "sgd_piecewise/pgd_at_s0": True}
    # A curve that peaks at 0.6 and ends at 0.5 overfits (smoothed gap 10 points).
    overfit = [0.3] * 3 + [0.6] * 6 + [0.5] * 6
    _finished_pgd_at_run(heldout.run_dir(tmp_path, "sgd_piecewise", "pgd_at", 0), 0.05)
    for seed in (1, 2):
        _trained_pgd_at_run(heldout.run_dir(tmp_path, "sgd_piecewise", "pgd_at", seed),
                            overfit)
    runs = heldout.collect(tmp_path)
    gap, count = heldout._gap_so_far(runs, heldout.SETTING["sgd_piecewise"])
    assert count == 3 and gap > heldout.KEEP_GAP
    # Those two runs are done as train-only jobs, not as full ones.
    job = jobs[-1]
    assert robust_overfitting.done(dataclasses.replace(job, train_only=True))
    assert not robust_overfitting.done(dataclasses.replace(job, train_only=False))
    # Kept: PGD-AT's unevaluated seeds run in full (their final attacks) and TRADES starts.
    jobs, _ = heldout.plan(tmp_path, ["pgd_at", "trades"], ["sgd_piecewise"], None)
    pgd_at = [job for job in jobs if job.method.name == "pgd_at"]
    assert [job.train_only for job in pgd_at] == [False, False, False]
    assert [robust_overfitting.done(job) for job in pgd_at] == [True, False, False]
    assert [job.seed for job in jobs if job.method.name == "trades"] == [0, 1, 2]


def test_heldout_default_v3_runs_trades_with_awp_in_kept_second_round_settings(tmp_path):
    """The reopened freeze's default (TRADES + AWP 0.01) gets runs of its own, three
    seeds, in kept second-round settings only, after TRADES within a seed; every other
    row of the protocol names gamma 0 (the library's default has AWP now)."""
    heldout = _load("heldout")
    for seed in (0, 1, 2):
        _finished_pgd_at_run(heldout.run_dir(tmp_path, "mnist_eps03", "pgd_at", seed), 0.05)
    jobs, _ = heldout.plan(tmp_path, ["pgd_at", "trades", "default_v3"],
                           ["mnist_eps03", "seed1"], None)
    v3 = [job for job in jobs if job.method.name == "default_v3"]
    assert [(job.run_dir.parent.name, job.seed) for job in v3] == [
        ("mnist_eps03", 0), ("mnist_eps03", 1), ("mnist_eps03", 2)]
    assert (v3[0].config["objective"], v3[0].config["labels"], v3[0].config["awp_gamma"]) == (
        "trades", "hard", 0.01)
    assert not v3[0].config.get("checkpoint_best") and not v3[0].config.get("weight_average")
    names = [job.name for job in jobs if job.seed == 0 and job.run_dir.parent.name ==
             "mnist_eps03"]
    assert names.index("mnist_eps03/trades_s0") < names.index("mnist_eps03/default_v3_s0")
    assert all(job.config["awp_gamma"] == 0.0 for job in jobs
               if job.method.name != "default_v3")
    assert "default_v3" in heldout.ROUND2_METHODS


def test_heldout_reads_the_protocols_attack_before_a_fab_t_stage(tmp_path):
    """A run evaluated with FAB-T after the four attacks keeps the protocol's number
    (after Square) as its worst case; the row reports FAB-T's change beside it."""
    import json

    import numpy as np

    heldout = _load("heldout")
    directory = heldout.run_dir(tmp_path, "seed7", "pgd_at", 0)
    directory.mkdir(parents=True)
    square = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    fab = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    (directory / "summary.json").write_text(json.dumps(
        {"smoothed_gap": 0.05, "final_strong_test_adv_accuracy": float(fab.mean())}))
    np.savez(directory / "correctness_final.npz", test_strong_after_square=square,
             **{"test_strong_after_fab-t": fab}, test_strong_robust=fab)
    run = heldout.collect(tmp_path)[("seed7", "pgd_at")][0]
    assert run["worst"] == 0.5 and run["with_fab_t"] == 0.375
    assert np.array_equal(run["correct"], square.astype(np.float32))
    row = [r for r in heldout.analyse(tmp_path)["rows"] if r["method"] == "pgd_at"][0]
    assert row["final_worst_case_mean"] == 50.0 and row["fab_t_change_mean"] == -12.5


def _finished_dev_run(directory: Path, robust: float, clean: float, gap: float = 0.01,
                      **parts: dict) -> None:
    import json

    directory.mkdir(parents=True)
    summary = {"final_worst_case_dev_adv_accuracy": robust, "final_dev_clean_accuracy": clean,
               "smoothed_gap": gap}
    for key, (part_robust, part_clean) in parts.items():
        summary[key] = {"final_worst_case_dev_adv_accuracy": part_robust,
                        "final_dev_clean_accuracy": part_clean}
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "config.json").write_text(json.dumps({"labels": "hard"}))
    (directory / "training_done.json").write_text("{}")


def test_recipes_plan_adds_the_awp_rows_once_the_sweep_has_chosen_gamma(tmp_path):
    recipes = _load("recipes")
    names = [job.name for job in recipes.plan(tmp_path)]
    assert names[:4] == ["trades_hard_s0", "trades_calibrated_clean_s0",
                         "default_averaged_s0", "trades_hard_s1"]
    assert names[-2:] == ["trades_awp_0.01_s0", "trades_awp_0.03_s0"]
    assert not any(name.startswith(("trades_awp_s", "trades_calibrated_clean_awp"))
                   for name in names)
    trades = recipes.plan(tmp_path)[0].config
    assert trades["objective"] == "trades" and trades["checkpoint_best"] and trades["weight_average"]
    _finished_dev_run(recipes.run_dir(tmp_path, "trades_awp_0.01", 0), 0.60, 0.80)
    _finished_dev_run(recipes.run_dir(tmp_path, "trades_awp_0.03", 0), 0.62, 0.78)
    assert recipes.chosen_gamma(tmp_path) == 0.03
    jobs = {job.name: job for job in recipes.plan(tmp_path)}
    assert "trades_awp_s0" not in jobs  # the sweep's run is its seed 0
    assert jobs["trades_awp_s1"].config["awp_gamma"] == 0.03
    assert jobs["trades_calibrated_clean_awp_s2"].config["labels"] == "calibrated"
    row = recipes.measure(tmp_path, recipes.ROW["trades_awp"])
    assert row["seeds"] == [0] and row["robust_mean"] == 62.0


def test_recipes_rows_read_the_final_best_and_average_models(tmp_path):
    recipes = _load("recipes")
    for seed, shift in zip((0, 1, 2), (0.0, 0.01, 0.02)):
        _finished_dev_run(recipes.run_dir(tmp_path, "trades_hard", seed), 0.60 + shift, 0.80,
                          best_checkpoint=(0.61 + shift, 0.78),
                          weight_average=(0.63 + shift, 0.795))
    summary = recipes.analyse(tmp_path)
    rows = {r["row"]: r for r in summary["rows"]}
    assert rows["trades_hard"]["robust_mean"] == pytest.approx(61.0)
    assert rows["trades_hard_es"]["robust_mean"] == pytest.approx(62.0)
    assert rows["trades_hard_es"]["smoothed_gap_mean"] is None
    assert rows["trades_hard_swa"]["clean_mean"] == pytest.approx(79.5)
    decision = summary["decision"]
    # Every other candidate is missing: the winner among these is provisional.
    assert decision["winner"] == "trades_hard_swa" and not decision["complete"]
    assert "default" in decision["waiting"]
    assert "Provisional" in recipes.report(summary)


def test_throughput_skips_the_torch_row_when_torch_does_not_import(monkeypatch, tmp_path,
                                                                   capsys):
    throughput = _load("throughput")
    measured = []

    def fake_measure(spec, timeout):
        measured.append(spec["method"])
        return dict(spec, error="not measured in this test")

    monkeypatch.setattr(throughput, "_importable", lambda module: module != "torch")
    monkeypatch.setattr(throughput, "_measure", fake_measure)
    out = tmp_path / "throughput.json"
    throughput.main(["--methods", "hard", throughput.TORCH, "--train-size", "256",
                     "--epochs", "2", "--out", str(out)])
    assert measured == ["hard"]
    assert "torch-pgd-at needs torch, which does not import here" in capsys.readouterr().out
    assert [r["method"] for r in json.loads(out.read_text())["results"]] == ["hard"]
    with pytest.raises(SystemExit, match="no method left"):
        throughput.main(["--methods", throughput.TORCH, "--out", str(out)])


def test_throughput_torch_row_is_a_paired_ratio_to_hard_in_words():
    throughput = _load("throughput")
    config = {"batch_size": 128, "width": 32, "val_size": 1000, "train_size": 4096,
              "train_examples_per_epoch": 4096, "torch_threads": 1}
    runs = []
    for round_index, (hard, torch) in enumerate([(800.0, 400.0), (600.0, 200.0)]):
        runs.append(dict(config, method="hard", round=round_index,
                         examples_per_cpu_second=hard, examples_per_second=hard / 2))
        runs.append(dict(config, method=throughput.TORCH, round=round_index,
                         examples_per_cpu_second=torch, examples_per_second=torch / 2))
    rows = {r["method"]: r for r in throughput.combine(runs)}
    torch_row = rows[throughput.TORCH]
    # The median of the per-round ratios (1/2 and 1/3), not the ratio of the medians.
    assert torch_row["cpu_ratio_to_hard"] == pytest.approx(5 / 12)
    assert torch_row["ratio_to_hard"] == pytest.approx(5 / 12)
    assert "cpu_ratio_to_hard" not in rows["hard"]
    (line,) = [f for f in throughput.findings(list(rows.values())) if "PyTorch" in f]
    assert "keras-advcal is 2.40x as fast as PyTorch" in line
    assert "PyTorch: PyTorch / keras-advcal 0.42 (rounds 0.33-0.50);" in line
    assert "per 4,096-image epoch" in line


def test_a_resumed_run_keeps_the_log_of_its_training(tmp_path):
    """A run resumed for its final attacks used to truncate train.log, losing the
    output of its training; the log is now appended to, with a line where each process
    starts."""
    robust_overfitting = _load("robust_overfitting")
    with robust_overfitting.open_run_log(tmp_path) as log:
        log.write("Epoch 120/120\n")
    assert (tmp_path / "train.log").read_text() == "Epoch 120/120\n"  # no marker first
    with robust_overfitting.open_run_log(tmp_path) as log:
        log.write("final attack\n")
    text = (tmp_path / "train.log").read_text()
    assert text.startswith("Epoch 120/120\n") and text.endswith("final attack\n")
    assert "the run resumes" in text
