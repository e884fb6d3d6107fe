"""Options, declared once: a component is a dataclass, and each of its options is a field made by `option`.

    @component
    class Blend(Attack):
        alpha: float = option(0.2, "weight of the noise pattern in the blend", "(0, 1]")

The field's type says what a value may be (int, float, bool, str, a Literal of choices, a tuple, `X | None`),
`option` gives its default, its help text and its range. Everything else reads that one declaration:
construction checks and converts the values (`Configurable.__post_init__`), the registry completes a
config with the defaults, `eigenguard list` shows the help and ranges, and `describe` records the values.
A bad value is one EigenguardError naming the option and what is allowed.

Ranges are written as `eigenguard list` shows them: ">= 1", "> 0", "[0, 1]", "(0, 1]", "[2, 255]".
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, Union, dataclass_transform, get_args, get_origin

from eigenguard.errors import EigenguardError

_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
_BOUND = re.compile(rf"^(>=|>|<=|<)\s*({_NUMBER})$")
_INTERVAL = re.compile(rf"^([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])$")


@dataclass(frozen=True)
class Spec:
    """What `option` attaches to a field: help text and the allowed range (text, "" for any)."""

    help: str
    range: str = ""

    def __post_init__(self) -> None:
        if self.range and not (_BOUND.match(self.range) or _INTERVAL.match(self.range)):
            raise ValueError(f"range {self.range!r} is not '>= a', '> a', '<= b', '< b' or an interval '[a, b)'")

    def admits(self, value: float) -> bool:
        """Whether the number `value` lies in the range."""
        if bound := _BOUND.match(self.range):
            op, limit = bound.group(1), float(bound.group(2))
            return {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]
        if interval := _INTERVAL.match(self.range):
            left, low, high, right = interval.groups()
            above = value >= float(low) if left == "[" else value > float(low)
            below = value <= float(high) if right == "]" else value < float(high)
            return above and below
        return True


def option(default: Any, help: str, range: str = "") -> Any:
    """A component's option: its default, what it means (one line) and the allowed range of a number."""
    return field(default=default, metadata={"option": Spec(help, range)})


_SAME: Any = object()


def option_like(cls: type, key: str, default: Any = _SAME) -> Any:
    """An option declared as `cls` declares its option `key` (help, range, and its default unless another is
    given): for a component that passes those options on, e.g. the sieve defense to its detector."""
    original = _declared(cls)[key]
    return field(default=original.default if default is _SAME else default, metadata=dict(original.metadata))


T = TypeVar("T")


@dataclass_transform(field_specifiers=(option, option_like, field))
def component(cls: type[T]) -> type[T]:
    """Make `cls` a dataclass (identity equality, so components stay usable as dict keys and in sets)."""
    return dataclass(eq=False)(cls)


class Configurable:
    """A component whose options are declared with `option`. `role` names it in messages ("attack")."""

    role: ClassVar[str] = "component"
    name: ClassVar[str] = "component"

    def __post_init__(self) -> None:
        for key, value in checked_options(type(self), options_of(self)).items():
            object.__setattr__(self, key, value)  # frozen dataclasses too


def options_of(obj: Any) -> dict[str, Any]:
    """The current values of `obj`'s declared options."""
    return {key: getattr(obj, key) for key in _declared(type(obj))}


@cache
def _declared(cls: type) -> dict[str, dataclasses.Field[Any]]:
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f for f in dataclasses.fields(cls) if "option" in f.metadata}


@cache
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def spec(cls: type, key: str) -> Spec:
    return _declared(cls)[key].metadata["option"]


def checked_options(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` of `cls`'s options, each converted to its declared type and checked against its range; an
    option it does not declare, or a value it does not allow, is one EigenguardError."""
    declared = _declared(cls)
    checked = {}
    for key, value in values.items():
        if key not in declared:
            allowed = ", ".join(declared) or "(none)"
            raise EigenguardError(f"unknown option '{key}' for {_owner(cls)}; allowed: {allowed}")
        checked[key] = _value(cls, key, _types(cls)[key], value)
    return checked


def allowed_text(cls: type, key: str) -> str:
    """What option `key` of `cls` allows, as errors and `eigenguard list` say it: "(0, 1]", "patch | blend"."""
    return _allowed(_types(cls)[key], spec(cls, key).range)


def _allowed(annotation: Any, range_: str) -> str:
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in args)
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [_allowed(a, range_) for a in args if a is not type(None)]
        return " | ".join([*inner, "null"])
    if annotation is bool:
        return "true | false"
    if annotation in (int, float):
        kind = "a whole number" if annotation is int else "a number"
        return f"{kind} {range_}" if range_ else kind
    if annotation is str:
        return "text"
    if get_origin(annotation) is tuple:
        item = _allowed(args[0], range_) if args else "values"
        return f"a list of {len(args)} ({item})" if args and args[-1] is not Ellipsis else f"a list ({item})"
    return getattr(annotation, "__name__", str(annotation))


def _owner(cls: type) -> str:
    return f"{getattr(cls, 'role', 'component')} '{getattr(cls, 'name', cls.__name__)}'"


def _value(cls: type, key: str, annotation: Any, value: Any) -> Any:
    """`value` converted to `annotation` (a whole float to int, an int to float, a list to a tuple), or an
    EigenguardError naming the option and what is allowed."""
    converted = _convert(annotation, value, spec(cls, key))
    if converted is _REFUSED:
        raise EigenguardError(
            f"invalid option {key} = {value!r} for {_owner(cls)}; allowed: {_allowed(annotation, spec(cls, key).range)}"
        )
    return converted


_REFUSED = object()


def _convert(annotation: Any, value: Any, spec_: Spec) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and (out := _convert(arg, value, spec_)) is not _REFUSED:
                return out
        return _REFUSED
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _REFUSED
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return _REFUSED
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return _REFUSED
        out = tuple(_convert(a, v, spec_) for a, v in zip(items, value, strict=True))
        return _REFUSED if any(o is _REFUSED for o in out) else out
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is bool:
        return value if isinstance(value, bool) else _REFUSED
    if annotation is int or annotation is float:
        if not number or not math.isfinite(value) or (annotation is int and not float(value).is_integer()):
            return _REFUSED
        value = annotation(value)  # 3 and 3.0 are one setting: one value, one cell key
        return value if spec_.admits(value) else _REFUSED
    if annotation is str:
        return value if isinstance(value, str) else _REFUSED
    return value


def defaults_of(cls: type) -> dict[str, Any]:
    """The options `cls` declares, with their defaults, in declaration order."""
    return {key: f.default for key, f in _declared(cls).items()}
