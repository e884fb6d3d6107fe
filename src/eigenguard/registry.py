"""A tiny name -> factory registry, shared by datasets, models, attacks and defenses."""

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from eigenguard.errors import EigenguardError
from eigenguard.options import allowed_text, checked_options, defaults_of, spec

T = TypeVar("T")


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

    def options(self, name: str) -> dict[str, Any]:
        """The options entry `name` declares (options.py), with their defaults."""
        return defaults_of(self.get(name))

    def complete(self, name: str, given: dict[str, Any]) -> dict[str, Any]:
        """Entry `name`'s options with every one it takes: `given` over its defaults (tuples as lists, so
        the result is plain YAML and JSON). An option it does not take, or a value it does not allow, is
        one EigenguardError."""
        merged = {**self.options(name), **checked_options(self.get(name), given)}
        return {k: _plain(v) for k, v in merged.items()}

    def allowed(self, name: str, key: str) -> str:
        """What option `key` of entry `name` allows, as errors and `eigenguard list` say it."""
        return allowed_text(self.get(name), key)

    def help(self, name: str, key: str) -> str:
        """What option `key` of entry `name` means (one line)."""
        return spec(self.get(name), key).help

    def create(self, name: str, *args: Any, fixed: dict[str, Any] | None = None, **given: Any) -> Any:
        """Build entry `name` from `args`, the `fixed` keywords and the user's `given` options; an option it
        does not take, or a value it does not allow, is one EigenguardError naming what is allowed."""
        cls = self.get(name)
        return cls(*args, **(fixed or {}), **checked_options(cls, given))  # type: ignore[operator]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
