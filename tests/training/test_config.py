"""Training config: paper defaults, shipped recipes, --set overrides, TOML round trip, one-line errors."""

from __future__ import annotations

import pytest
import tomllib

from tagger.errors import TaggerError
from tagger.models import model_entry
from tagger.training.config import (
    TrainConfig,
    build_config,
    config_from_dict,
    read_recipe,
    recipe_names,
    to_toml,
)

REQUIRED = ("audioset-ast", "audioset-passt", "audioset-htsat", "audioset-psla", "audioset-panns", "esc50-ast",
            "esc50-passt", "esc50-efficientat", "fsd50k-psla", "speechcommands-ast")


def test_every_required_recipe_ships_and_builds_a_valid_config():
    assert set(REQUIRED) <= set(recipe_names())
    for name in recipe_names():
        config = build_config(name)
        model_entry(config.model.arch)  # the recipe names a registered model
        assert to_toml(config) and config_from_dict(tomllib.loads(to_toml(config))) == config


@pytest.mark.parametrize(("recipe", "expected"), [
    ("audioset-ast", {"optim.lr": 1e-5, "optim.betas": [0.95, 0.999], "optim.weight_decay": 5e-7,
                      "augment.wave_mixup_alpha": 10.0, "augment.freqm": 48, "augment.timem": 192,
                      "schedule.warmup_steps": 1000, "schedule.decay_start": 2, "data.batch_size": 12,
                      "data.sampler": "balanced", "run.epochs": 5}),
    ("audioset-passt", {"optim.name": "adamw", "optim.lr": 2e-5, "optim.weight_decay": 1e-4,
                        "data.epoch_length": 100000, "data.replacement": False, "data.balance_formula": "passt",
                        "augment.wave_mixup_alpha": 2.0, "augment.wave_mixup_max": True, "augment.gain_db": 7,
                        "augment.spec_mixup": "perm", "schedule.kind": "exp-warmup-linear-down"}),
    ("audioset-htsat", {"optim.weight_decay": 0.05, "optim.clip_grad": 1.0, "augment.spec_mixup": "flip",
                        "augment.spec_mixup_alpha": 0.5, "schedule.kind": "htsat", "data.batch_size": 128}),
    ("audioset-panns", {"optim.amsgrad": True, "augment.spec_mixup": "pairs", "augment.spec_mixup_alpha": 1.0,
                        "data.batch_size": 64, "schedule.kind": "constant"}),
    ("esc50-efficientat", {"optim.lr": 6e-5, "run.epochs": 80, "augment.gain_db": 12, "schedule.warmup_len": 10,
                           "schedule.ramp_down_len": 65, "task": "multiclass", "loss.kind": "ce"}),
    ("fsd50k-psla", {"data.batch_size": 24, "optim.lr": 5e-4, "run.epochs": 40,
                     "model.kwargs": {"target_length": 3000}}),
])
def test_recipes_carry_the_papers_settings(recipe, expected):
    config = build_config(recipe)
    for dotted, value in expected.items():
        actual = config
        for part in dotted.split("."):
            actual = getattr(actual, part)
        assert actual == value, dotted


def test_overrides_are_typed_and_applied_in_order():
    config = build_config("esc50-ast", ["optim.lr=3e-4", "run.epochs=7", "data.replacement=false",
                                        "optim.betas=[0.9, 0.98]", "model.kwargs.input_tdim=256",
                                        "run.epochs=8"], arch="ast-tiny224")
    assert config.optim.lr == 3e-4 and config.run.epochs == 8 and config.data.replacement is False
    assert config.optim.betas == [0.9, 0.98] and config.model.arch == "ast-tiny224"
    assert config.model.kwargs == {"fstride": 10, "tstride": 10, "input_tdim": 256, "norm": "ast-esc50"}


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "unknown setting 'optim.lrr'"),
    ("nope.x=1", "unknown setting 'nope.x'"),
    ("run.epochs=two", "expected an integer"),
    ("run.epochs=2.5", "expected an integer"),
    ("data.replacement=maybe", "expected true or false"),
    ("optim.name=sgd", "optim.name='sgd' must be one of adam, adamw"),
    ("optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("augment.wave_mixup=1.5", "is a probability"),
    ("optim.betas=[0.9]", "must be two numbers"),
    ("optim.lr", "write it as section.key=value"),
    ("data.batch_size=3", None),  # fine on its own
])
def test_bad_settings_name_the_setting(override, message):
    if message is None:
        build_config(None, [override], arch="panns-cnn6")
        return
    with pytest.raises(TaggerError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_config(None, [override], arch="panns-cnn6")


def test_pairs_mixup_needs_an_even_batch():
    with pytest.raises(TaggerError, match="must be even"):
        build_config("audioset-panns", ["data.batch_size=31"])


def test_a_model_is_required_and_recipes_are_checked():
    with pytest.raises(TaggerError, match="no model chosen"):
        build_config(None, [])
    with pytest.raises(TaggerError, match="unknown recipe 'nope'"):
        build_config("nope", [], arch="panns-cnn6")


def test_recipe_files_from_disk_and_their_errors(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "x"\n[model]\narch = "panns-cnn6"\n[optim]\nlr = 0.01\n')
    assert build_config(str(path)).optim.lr == 0.01
    assert read_recipe(str(path)) == {"model": {"arch": "panns-cnn6"}, "optim": {"lr": 0.01}}
    path.write_text("[optim\nlr = 1")
    with pytest.raises(TaggerError, match="not valid TOML"):
        build_config(str(path))
    path.write_text("[optim]\nlearning_rate = 1")
    with pytest.raises(TaggerError, match="unknown setting 'optim.learning_rate'"):
        build_config(str(path), arch="panns-cnn6")
    with pytest.raises(TaggerError, match="does not exist"):
        build_config(str(tmp_path / "missing.toml"))


def test_defaults_are_the_dataclass_defaults():
    assert build_config(None, [], arch="panns-cnn6").optim == TrainConfig().optim
