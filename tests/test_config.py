"""RunConfig on its own: round trips, refusals, what trains and what it ignores."""

import dataclasses

import pytest

from keras_advcal.config import NOT_TRAINING, RunConfig


def test_round_trip_through_a_dict():
    config = RunConfig(dataset="mnist", epsilon=0.3, optimizer="sgd", momentum=0.9,
                       adr_temperature=(2.0, 1.0))
    assert RunConfig.from_dict(config.to_dict()) == config


def test_unknown_and_invalid_options_are_refused_by_name():
    with pytest.raises(ValueError, match="Unknown RunConfig option"):
        RunConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        RunConfig(epsilon=-0.1).validate()


def test_training_settings_leave_out_only_what_does_not_change_the_model():
    config = RunConfig()
    settings = config.training_settings()
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    assert set(settings) == fields - set(NOT_TRAINING)
    evaluated_otherwise = dataclasses.replace(config, final_strong_attacks="fab-t",
                                              final_cascade=False, verbose=0)
    assert evaluated_otherwise.training_settings() == settings
    assert dataclasses.replace(config, epochs=3).training_settings() != settings


def test_ignored_options_name_what_would_read_them():
    assert RunConfig(labels="hard", rule="fixed", lr_drops="0.5").ignored_options() == [
        ("rule", "labels='calibrated'"), ("lr_drops", "lr_schedule='piecewise'")]
    assert RunConfig(labels="adr", adr_rho=(0.1, 0.2), ema_decay=0.9).ignored_options() == []


def test_adr_labels_with_the_default_objective_say_which_objective_to_set():
    """The default objective is TRADES; the ADR baseline needs PGD-AT's, and says so."""
    with pytest.raises(ValueError, match=r"not 'trades': set objective='pgd_at' \(on the "
                                         r"command line: --labels adr --objective pgd_at\)"):
        RunConfig(labels="adr").validate()
    assert RunConfig(labels="adr", objective="pgd_at").validate().labels == "adr"


def test_a_stored_config_lacking_a_later_option_means_what_the_library_did_then():
    # A config.json written before `objective` and `awp_gamma` existed describes a
    # PGD-AT run without weight perturbation, not today's default recipe.
    stored = {key: value for key, value in RunConfig(objective="pgd_at", awp_gamma=0.0)
              .to_dict().items() if key not in ("objective", "awp_gamma")}
    old = RunConfig.from_stored(stored)
    assert (old.objective, old.awp_gamma) == ("pgd_at", 0.0)
    # A user's partial config takes today's defaults.
    assert (RunConfig.from_dict({}).objective, RunConfig.from_dict({}).awp_gamma) == \
        (RunConfig().objective, RunConfig().awp_gamma) == ("trades", 0.01)
    # A complete stored config round-trips, whatever its values.
    config = RunConfig(objective="trades", awp_gamma=0.03, epochs=7)
    assert RunConfig.from_stored(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown RunConfig option"):
        RunConfig.from_stored({"epoch": 3})
