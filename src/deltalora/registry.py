"""One registry type for everything users add: backbones, task sources, scorers, probe sets, encoders, generators.

A :class:`Registry` is a plain ``dict`` (name -> entry) filled by a decorator, so adding a backbone or a
probe set is one decorated function, and a name registered twice is a programming error caught at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry(dict[str, Any]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, make: Callable[[Any], Any] | None = None) -> Callable[[T], T]:
        """Decorator storing the decorated object (or ``make(obj)``) under ``name``; returns the object unchanged."""

        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj if make is None else make(obj)
            return obj

        return deco

    def lookup(self, name: str, error: type[Exception], hint: str) -> Any:
        """The entry under ``name``, or ``error("unknown <kind> 'name'; <hint>")`` (one line, for the user)."""
        try:
            return self[name]
        except KeyError:
            raise error(f"unknown {self.kind} {name!r}; {hint}") from None

    def copy(self) -> Registry:
        new = Registry(self.kind)
        new.update(self)
        return new
