"""A tiny name -> factory registry, shared by datasets, models, attacks and defenses."""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

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
