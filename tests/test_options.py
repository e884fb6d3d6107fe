"""Options declared once (options.py): conversion, ranges, choices, and every component reading them."""

from typing import Literal

import pytest

from eigenguard.attacks import ATTACKS, create_attack
from eigenguard.defenses import DEFENSES, create_defense
from eigenguard.errors import EigenguardError
from eigenguard.options import Configurable, Spec, checked_options, component, option, option_like, options_of


@component
class Toy(Configurable):
    role = "toy"
    name = "toy"

    steps: int = option(3, "how many steps", ">= 1")
    rate: float = option(0.5, "a fraction", "(0, 1]")
    mode: Literal["a", "b"] = option("a", "which mode")
    limit: int | None = option(None, "a cap (null: none)", "[2, 10]")
    weights: tuple[float, ...] = option((1.0, 2.0), "weights", ">= 0")
    pair: tuple[int, int] = option((1, 2), "a pair")
    flag: bool = option(False, "a switch")
    label: str = option("x", "a word")


def test_values_are_converted_to_their_declared_type() -> None:
    toy = Toy(steps=4.0, rate=1, weights=[3, 4], pair=[5, 6])  # type: ignore[arg-type]
    assert (toy.steps, type(toy.steps)) == (4, int) and (toy.rate, type(toy.rate)) == (1.0, float)
    assert toy.weights == (3.0, 4.0) and toy.pair == (5, 6)
    assert options_of(toy) == {"steps": 4, "rate": 1.0, "mode": "a", "limit": None, "weights": (3.0, 4.0),
                               "pair": (5, 6), "flag": False, "label": "x"}  # fmt: skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"steps": 0}, "steps = 0 for toy 'toy'; allowed: a whole number >= 1"),
        ({"steps": 2.5}, "steps = 2.5 for toy 'toy'; allowed: a whole number >= 1"),
        ({"steps": True}, "steps = True"),
        ({"rate": 0}, r"rate = 0 for toy 'toy'; allowed: a number \(0, 1\]"),
        ({"rate": float("nan")}, "rate = nan"),
        ({"rate": "half"}, "rate = 'half'"),
        ({"mode": "c"}, r"mode = 'c' for toy 'toy'; allowed: a \| b"),
        ({"limit": 1}, r"limit = 1 for toy 'toy'; allowed: a whole number \[2, 10\] \| null"),
        ({"weights": [1, -1]}, "weights = "),
        ({"weights": 3}, "weights = 3"),
        ({"pair": [1, 2, 3]}, r"pair = \[1, 2, 3\] for toy 'toy'; allowed: a list of 2"),
        ({"flag": 1}, r"flag = 1 for toy 'toy'; allowed: true \| false"),
        ({"label": 3}, "label = 3 for toy 'toy'; allowed: text"),
        ({"speed": 1}, "unknown option 'speed' for toy 'toy'; allowed: steps, rate, mode"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_option_and_what_is_allowed(given: dict, message: str) -> None:
    with pytest.raises(EigenguardError, match=message):
        checked_options(Toy, given)
    if "unknown" not in message:
        with pytest.raises(EigenguardError, match=message):
            Toy(**given)


def test_none_is_allowed_only_where_declared() -> None:
    assert Toy(limit=None).limit is None and Toy(limit=2).limit == 2
    with pytest.raises(EigenguardError, match="steps = None"):
        Toy(steps=None)  # type: ignore[arg-type]


def test_ranges() -> None:
    assert Spec("", "[0, 1)").admits(0) and not Spec("", "[0, 1)").admits(1)
    assert Spec("", "(0, 1]").admits(1) and not Spec("", "(0, 1]").admits(0)
    assert Spec("", "> 0").admits(1e-9) and not Spec("", "> 0").admits(0)
    assert Spec("", "<= -1").admits(-1) and not Spec("", "<= -1").admits(0)
    with pytest.raises(ValueError, match="range"):
        Spec("", "0..1")


def test_option_like_copies_default_help_and_range() -> None:
    @component
    class Wrapper(Configurable):
        steps: int = option_like(Toy, "steps")

    assert Wrapper().steps == 3
    with pytest.raises(EigenguardError, match="allowed: a whole number >= 1"):
        Wrapper(steps=0)


def test_every_component_declares_help_for_every_option() -> None:
    for registry in (ATTACKS, DEFENSES):
        for name in registry.names():
            for key in registry.options(name):
                assert registry.help(name, key), f"{name}.{key} has no help"
                assert registry.allowed(name, key)


def test_describe_and_complete_read_the_declaration() -> None:
    for name in DEFENSES.names():
        defense = create_defense(name)
        assert defense.describe() == {"name": name, **options_of(defense)}
        assert list(DEFENSES.complete(name, {})) == list(DEFENSES.options(name))
    for name in ATTACKS.names():
        attack = create_attack(name, (3, 32, 32), target=1, seed=2)
        described = attack.describe()
        assert described["target"] == 1 and described["seed"] == 2 and described["name"] == name
    # a value given as 3.0 where a whole number belongs is the same setting, the same cell key
    assert DEFENSES.complete("ft", {"epochs": 3.0}) == DEFENSES.complete("ft", {"epochs": 3})
