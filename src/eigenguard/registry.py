"""A tiny name -> factory registry, shared by datasets, models, attacks and defenses."""

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from eigenguard.errors import EigenguardError

T = TypeVar("T")
Ranges = dict[str, tuple[float, float | None]]  # option -> (lowest, highest or None), both allowed


class Registry(Generic[T]):
    """Maps a lowercase name to a factory. `kind` is used in error messages ("unknown model 'x'")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._entries:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._entries:
            raise EigenguardError(f"unknown {self.kind} '{name}'; allowed: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def options(self, name: str, positional: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keyword options a class entry's constructor takes, with defaults (minus `positional`)."""
        params = inspect.signature(self.get(name).__init__).parameters  # type: ignore[misc]
        skip = {"self", *positional}
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {k: p.default for k, p in params.items() if k not in skip and p.kind in kinds}

    def complete(self, name: str, options: dict[str, Any], positional: tuple[str, ...] = ()) -> dict[str, Any]:
        """Entry `name`'s options with every one it takes: `options` over its defaults (tuples as lists, so
        the result is plain YAML and JSON). An option it does not take, or a value of the wrong kind (a
        word where the default is a number, ...), is one EigenguardError."""
        allowed = self.options(name, positional)
        given = self._validated(name, options, allowed)
        late = getattr(self.get(name), "LATE_OPTIONS", ())
        merged = {**allowed, **given}
        return {k: _plain(v) for k, v in merged.items() if not (k in late and v == allowed[k])}

    def _validated(self, name: str, options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
        """`options`, each checked against entry `name`'s `allowed` options and their defaults, in order."""
        checked = {}
        for key, value in options.items():
            if key not in allowed:
                raise EigenguardError(
                    f"unknown option '{key}' for {self.kind} '{name}'; allowed: {', '.join(allowed) or '(none)'}"
                )
            checked[key] = self._in_range(name, key, self._checked(name, key, value, allowed[key]))
        return checked

    def range_text(self, name: str, key: str) -> str:
        """The range entry `name` declares for option `key`, as errors and `eigenguard list` say it: "0..1",
        ">= 1", or "" where it declares none."""
        low, high = getattr(self.get(name), "RANGES", {}).get(key, (None, None))
        if low is None:
            return ""
        return f">= {low}" if high is None else f"{low}..{high}"

    def _in_range(self, name: str, key: str, value: Any) -> Any:
        """`value`, or an EigenguardError when it lies outside the range entry `name` declares for `key`."""
        low, high = getattr(self.get(name), "RANGES", {}).get(key, (None, None))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and ((low is not None and value < low) or (high is not None and value > high)):
            allowed = self.range_text(name, key)
            raise EigenguardError(f"invalid {self.kind} option {key} = {value!r} for '{name}'; allowed: {allowed}")
        return value

    def _checked(self, name: str, key: str, value: Any, default: Any) -> Any:
        """`value` in its default's kind, or an EigenguardError: a number for a number (an int where a float
        is fine), a whole number for an int, true/false for a bool, text for text, a list for a list or
        tuple. A whole number given for a float becomes a float and a whole float for an int an int, so
        `u: 3` and `u: 3.0` are one setting (one configuration, one cell key)."""
        if isinstance(value, float) and not math.isfinite(value):
            raise EigenguardError(
                f"invalid {self.kind} option {key} = {value!r} for '{name}': must be a finite number "
                f"(default {default!r})"
            )
        if default is None or value is None:
            return value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = number and float(value).is_integer(), "a whole number"
        elif isinstance(default, float):
            ok, kind = number, "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "text"
        elif isinstance(default, tuple | list):
            ok, kind = isinstance(value, tuple | list), "a list"
        else:
            return value
        if not ok:
            raise EigenguardError(
                f"invalid {self.kind} option {key} = {value!r} for '{name}': must be {kind} (default {default!r})"
            )
        if isinstance(default, bool) or not number:
            return value
        return int(value) if isinstance(default, int) else float(value)

    def create(
        self,
        name: str,
        *args: Any,
        positional: tuple[str, ...] = (),
        fixed: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Build entry `name` from `args`, the `fixed` keywords and the user's `options`.

        An option it does not take, or a value it rejects, is one EigenguardError naming what is allowed.
        """
        options = self._validated(name, options, self.options(name, positional))
        try:
            return self.get(name)(*args, **(fixed or {}), **options)  # type: ignore[operator]
        except EigenguardError:  # already one line naming the value and what is allowed
            raise
        except (TypeError, ValueError) as e:  # e.g. a string where a number belongs
            raise EigenguardError(f"invalid {self.kind} options for '{name}': {e}") from None


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
