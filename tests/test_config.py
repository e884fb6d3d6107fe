from pathlib import Path

import pytest

from eigenguard.config import PROFILES, TrainConfig, load_yaml, resolve_config
from eigenguard.errors import EigenguardError


def test_precedence_profile_file_flags() -> None:
    cfg = resolve_config({"profile": "quick", "epochs": 7, "lr": 0.05}, {"epochs": 3, "seed": None})
    assert cfg.profile == "quick"
    assert cfg.width == PROFILES["quick"]["width"]  # from the profile
    assert cfg.lr == 0.05  # from the file
    assert cfg.epochs == 3  # flag beats file
    assert cfg.seed == 0  # None flag means "not given"


def test_default_profile_is_paper() -> None:
    cfg = resolve_config({}, {})
    assert cfg.profile == "paper" and cfg.epochs == 100 and cfg.batch_size == 256 and cfg.lr == 0.1


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"dataset": "imagenet"}, "invalid dataset = 'imagenet': unknown dataset; allowed: .*cifar10"),
        ({"model": "resnet9"}, "invalid model = 'resnet9': unknown model; allowed: .*resnet18"),
        ({"attack": "trojan"}, "invalid attack = 'trojan': unknown attack; allowed: none, badnets"),
        ({"poison_rate": 1.5}, r"invalid poison_rate = 1.5: must be in \[0, 1\]"),
        ({"poison_rate": -0.1}, r"invalid poison_rate = -0.1: must be in \[0, 1\]"),
        ({"epochs": -3}, "invalid epochs = -3: must be >= 1"),
        ({"profile": "fast"}, "invalid profile = 'fast': unknown profile; allowed: paper, quick"),
        ({"device": "tpu"}, "invalid device = 'tpu': allowed: auto, cpu, cuda"),
        ({"width": 0}, "invalid width = 0: must be > 0"),
        ({"schedule": "linear"}, "invalid schedule = 'linear'"),
        ({"epoch": 3}, "unknown option 'epoch'; allowed: profile, dataset"),
    ],
)
def test_bad_values_give_one_line_errors(overrides: dict, pattern: str) -> None:
    with pytest.raises(EigenguardError, match=pattern) as info:
        resolve_config({}, overrides)
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


def test_clean_run_records_zero_poison_rate() -> None:
    assert TrainConfig(attack="none", poison_rate=0.1).poison_rate == 0.0


@pytest.mark.parametrize(("attack", "rate"), [("badnets", 0.1), ("wanet", 0.1), ("sig", 0.8), ("clb", 0.8)])
def test_poison_rate_defaults_to_the_attacks_paper_value(attack: str, rate: float) -> None:
    assert resolve_config({}, {"attack": attack}).poison_rate == rate
    assert resolve_config({}, {"attack": attack, "poison_rate": 0.05}).poison_rate == 0.05


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=str)
def test_shipped_example_configs_resolve(path: Path) -> None:
    from eigenguard.attacks import create_attack
    from eigenguard.defenses import create_defense

    config = resolve_config(load_yaml(path), {})
    create_defense(config.defense, **config.defense_options)  # every option is known and valid
    if config.attack != "none":
        create_attack(config.attack, (1, 28, 28), **config.attack_options)
