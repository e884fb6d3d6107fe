"""The config object: profiles mean the same in Python, YAML and the CLI; components own their options;
old layouts convert; what decides a result is defined once."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eigenguard.config import (
    PROFILES,
    Component,
    Experiment,
    Placement,
    TrainConfig,
    load_yaml,
    make_config,
    merge_settings,
    no_defense,
    plain_weights_values,
    result_values,
)
from eigenguard.errors import EigenguardError
from eigenguard.pipeline import resolve
from eigenguard.run_directory import stored_config


def resolved(values: dict, settings: dict | None = None) -> TrainConfig:
    return resolve(make_config(merge_settings(values, settings or {})))


def test_profile_applies_in_python_as_on_the_cli(tmp_path: Path) -> None:
    python = TrainConfig(profile="quick")
    assert python.width == 0.25 and python.epochs == 12 and python.dataset == "fashion-mnist"
    path = tmp_path / "quick.yaml"
    path.write_text("profile: quick\n")
    assert make_config(load_yaml(path)) == python
    # the CLI builds its config from the same function `eigenguard train` uses
    code = "from eigenguard.config import make_config, merge_settings; import json; " + (
        "print(make_config(merge_settings({}, {'profile': 'quick'})).model_dump_json())"
    )
    cli = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert TrainConfig.model_validate_json(cli) == python
    assert TrainConfig().width == 1.0 and TrainConfig().epochs == 100  # the default profile is the paper's


def test_explicit_values_win_over_the_profile() -> None:
    cfg = TrainConfig(profile="quick", width=0.5, epochs=100)  # 100 is also the paper default: still wins
    assert cfg.width == 0.5 and cfg.epochs == 100 and cfg.train_subset == PROFILES["quick"]["train_subset"]
    assert TrainConfig(profile="quick", train_subset=None).train_subset is None


def test_precedence_profile_file_flags() -> None:
    cfg = make_config(merge_settings({"profile": "quick", "epochs": 7, "lr": 0.05}, {"epochs": 3}))
    assert cfg.profile == "quick"
    assert cfg.width == PROFILES["quick"]["width"]  # from the profile
    assert cfg.lr == 0.05  # from the file
    assert cfg.epochs == 3  # flag beats file


def test_components_own_their_options() -> None:
    cfg = resolved({"defense": {"name": "eigenguard", "k": 40}})
    assert cfg.defense.name == "eigenguard" and cfg.defense.options["k"] == 40
    assert cfg.defense.options["anchor_count"] == 100  # completed with the defense's defaults
    # one setting, two spellings: one config
    assert resolved({"defense": "ft"}) == resolved({"defense": {"name": "ft", "epochs": 10}})
    assert resolved({"defense": "eigenguard"}, {"defense.k": 40}) == cfg
    # a flag naming the same component keeps the file's options; another component replaces them
    base = {"attack": {"name": "blend", "alpha": 0.3}}
    assert merge_settings(base, {"attack": "blend"})["attack"] == {"name": "blend", "alpha": 0.3}
    assert merge_settings(base, {"attack": "badnets"})["attack"] == {"name": "badnets"}
    assert resolved({"attack": "clb"}).poison_rate == 0.8


def test_the_recommended_preset_is_the_defense_it_names() -> None:
    explicit = resolved({"defense": {"name": "inversion", "along": "principal", "confirm": "any"}})
    assert resolved({"defense": "recommended"}) == explicit  # one config, one cache key, one result
    assert resolved({"defense": "recommended"}, {"defense.confirm": "split"}).defense.options["confirm"] == "split"
    with pytest.raises(EigenguardError, match=r"allowed: abl, .*, recommended"):
        resolved({"defense": "recomended"})


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"dataset": "imagenet"}, "invalid dataset = 'imagenet': unknown dataset; allowed: .*cifar10"),
        ({"model": "resnet9"}, "invalid model = 'resnet9': unknown model; allowed: .*resnet18"),
        ({"attack": "trojan"}, "invalid attack = 'trojan': unknown attack; allowed: none, adap-blend, .*, badnets"),
        ({"defense": "magic"}, "invalid defense = 'magic': unknown defense; allowed: abl"),
        ({"poison_rate": 1.5}, r"invalid poison_rate = 1.5: must be in \[0, 1\]"),
        ({"poison_rate": -0.1}, r"invalid poison_rate = -0.1: must be in \[0, 1\]"),
        ({"epochs": -3}, "invalid epochs = -3: must be >= 1"),
        ({"profile": "fast"}, "invalid profile = 'fast': unknown profile; allowed: paper, quick"),
        ({"device": "tpu"}, "invalid device = 'tpu': allowed: auto, cpu, cuda"),
        ({"width": 0}, "invalid width = 0: must be > 0"),
        ({"schedule": "linear"}, "invalid schedule = 'linear'"),
        ({"epoch": 3}, "unknown option 'epoch'; allowed: profile, dataset"),
        ({"defense": "ft", "defense.epoch": 3}, "unknown option 'epoch' for defense 'ft'; allowed: epochs"),
        ({"attack": "sig", "attack.sigma": 3}, "unknown option 'sigma' for attack 'sig'; allowed: delta"),
        ({"defense": "eigenguard", "defense.at": "stage9"}, "at 'stage9' is not an insertion point of resnet18"),
        ({"defense": "eigenguard", "defense.k": 0}, "k = 0 for defense .eigenguard.; allowed: a whole number >= 1"),
        ({"defense": {"k": 3}}, "defense needs a name"),
        ({"seed.x": 1}, "only attack, defense, detector have options"),
    ],
)
def test_bad_values_give_one_line_errors(settings: dict, pattern: str) -> None:
    with pytest.raises(EigenguardError, match=pattern) as info:
        resolved({}, settings)
    assert "\n" not in str(info.value)


def test_yaml_loading(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text("dataset: mnist\npoison-rate: 0.05\n")
    assert load_yaml(good) == {"dataset": "mnist", "poison_rate": 0.05}
    bad = tmp_path / "b.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(EigenguardError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "c.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(EigenguardError, match="mapping"):
        load_yaml(listy)
    with pytest.raises(EigenguardError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")


def test_old_flat_layout_still_loads() -> None:
    """A config.yaml of eigenguard 0.1 (attack_options, defense_options, the guard's fields at top level)."""
    old = {
        "profile": "quick", "attack": "clb", "attack_options": {"epsilon": 0.1, "cache_dir": "/x"},
        "defense": "eigenguard", "defense_options": {}, "guard_at": "stage2", "k": 40, "momentum": 0.5,
        "history_init": "zeros", "guard_grad": "full", "guard_precision": "float64", "lowest_loss_samples": 7,
    }  # fmt: skip
    with pytest.raises(EigenguardError, match=r"'attack_options' is eigenguard 0\.1's layout: write attack: "):
        make_config(old)  # a config a user writes is read in today's layout only
    cfg = stored_config(old)  # a run directory, a store or an export of 0.1
    assert cfg.attack == Component(name="clb", epsilon=0.1)
    assert cfg.defense.options == {
        "at": "stage2", "k": 40, "momentum": 0.5, "history_init": "zeros", "grad": "full", "precision": "float64",
        "anchor_count": 7,
    }  # fmt: skip
    # another defense never read the guard fields: they are dropped, its own options kept
    ft = stored_config({"defense": "ft", "defense_options": {"epochs": 3}, "k": 20, "guard_at": "stage1"})
    assert ft.defense == Component(name="ft", epochs=3)
    with pytest.raises(EigenguardError, match="invalid defense_options = 3"):
        stored_config({"defense_options": 3})


def test_lowest_loss_samples_of_0_2_reads_as_anchors() -> None:
    """eigenguard 0.2 spelled the anchor count `lowest_loss_samples`; 0 meant none. Its run directories,
    stores and exports read as today's options; a user's config gets the unknown option's error."""
    assert stored_config({"defense": {"name": "eigenguard", "lowest_loss_samples": 7}}).defense == Component(
        name="eigenguard", anchor_count=7
    )
    assert resolve(stored_config({"defense": {"name": "eigenguard", "lowest_loss_samples": 0}})) == resolved(
        {"defense": {"name": "eigenguard", "anchors": "none"}}
    )
    with pytest.raises(EigenguardError, match="unknown option 'lowest_loss_samples' for defense 'eigenguard'"):
        resolved({"defense": "eigenguard"}, {"defense.lowest_loss_samples": 0})


def test_clean_run_records_zero_poison_rate() -> None:
    assert TrainConfig(attack="none", poison_rate=0.1).poison_rate == 0.0
    assert TrainConfig(attack={"name": "none", "alpha": 1}).attack == Component(name="none")


@pytest.mark.parametrize(("attack", "rate"), [("badnets", 0.1), ("wanet", 0.1), ("sig", 0.8), ("clb", 0.8)])
def test_poison_rate_defaults_to_the_attacks_paper_value(attack: str, rate: float) -> None:
    assert resolved({"attack": attack}).poison_rate == rate
    assert resolved({"attack": attack, "poison_rate": 0.05}).poison_rate == 0.05


def test_what_decides_a_result_is_defined_once() -> None:
    a = resolved({"profile": "quick", "defense": "ft"})
    placed = {"out": "x", "runs_dir": "r", "cache_dir": "c", "data_root": "d", "download": True, "device": "cpu",
              "checkpoint_every": 3}  # fmt: skip
    assert set(placed) == set(Placement.model_fields) == set(TrainConfig.model_fields) - set(Experiment.model_fields)
    assert result_values(a) == result_values(a.model_copy(update=placed))
    assert set(result_values(a)) == set(Experiment.model_fields)
    assert result_values(a) != result_values(a.model_copy(update={"seed": 1}))
    assert result_values(a) != result_values(a.model_copy(update={"eval_batch_size": 64}))  # ABL, SS read it
    # the no-defense model of a setting: its defense, the defender's budget and evaluation do not matter
    b = resolved({"profile": "quick", "defense": "eigenguard", "clean_samples": 10, "eval_every": 5})
    assert plain_weights_values(a) == plain_weights_values(b)
    assert plain_weights_values(a) != plain_weights_values(a.model_copy(update={"lr": 0.05}))
    assert no_defense(b).defense == Component(name="none") and no_defense(b).eval_every == 5


def test_config_round_trips_through_yaml() -> None:
    cfg = resolved({"profile": "quick", "attack": "clb", "defense": "nad"})
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump(), sort_keys=False)))
    assert again == cfg and resolve(again) == cfg


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=str)
def test_shipped_example_configs_resolve(path: Path) -> None:
    from eigenguard.attacks import create_attack
    from eigenguard.pipeline.components import build_defense

    values = yaml.safe_load(path.read_text())
    assert not {"attack_options", "defense_options", "k", "guard_at"} & set(values)  # today's layout
    config = resolved(load_yaml(path))
    build_defense(config)  # every option is known and valid
    if config.attack.name != "none":
        create_attack(config.attack.name, (1, 28, 28), **config.attack.options)
