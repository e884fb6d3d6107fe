"""A tiny name -> factory registry, shared by datasets, models, attacks and defenses."""

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from eigenguard.errors import EigenguardError

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

    def options(self, name: str, positional: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keyword options a class entry's constructor takes, with defaults (minus `positional`)."""
        params = inspect.signature(self.get(name).__init__).parameters  # type: ignore[misc]
        skip = {"self", *positional}
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {k: p.default for k, p in params.items() if k not in skip and p.kind in kinds}

    def complete(self, name: str, options: dict[str, Any], positional: tuple[str, ...] = ()) -> dict[str, Any]:
        """Entry `name`'s options with every one it takes: `options` over its defaults (tuples as lists, so
        the result is plain YAML and JSON). An option it does not take is one EigenguardError."""
        allowed = self.options(name, positional)
        for key in options:
            if key not in allowed:
                raise EigenguardError(
                    f"unknown option '{key}' for {self.kind} '{name}'; allowed: {', '.join(allowed) or '(none)'}"
                )
        return {k: _plain(v) for k, v in {**allowed, **options}.items()}

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
        allowed = self.options(name, positional)
        for key in options:
            if key not in allowed:
                raise EigenguardError(
                    f"unknown option '{key}' for {self.kind} '{name}'; allowed: {', '.join(allowed) or '(none)'}"
                )
        try:
            return self.get(name)(*args, **(fixed or {}), **options)  # type: ignore[operator]
        except (TypeError, ValueError) as e:  # e.g. a string where a number belongs
            raise EigenguardError(f"invalid options {options} for {self.kind} '{name}': {e}") from None


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
